"""`EngineConfig.prefill_row_invariant`: a prompt's K/V, and so its log-probs, are bit-identical
whether it is prefilled alone or in one call with other prompts."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ppp_jax.sampling.engine import Engine
from ppp_jax.sampling.params import Request, SamplingParams

from .conftest import SMALL_ENGINE

# A (29 tokens) and neighbours whose lengths put them in other chunk buckets (8 and 32) or in
# A's; batched without the flag, A would run in a [4 * 32, D] matmul instead of [32, D].
PROMPT = [(7 * i + 3) % 90 + 4 for i in range(29)]
NEIGHBOURS = [[5, 9, 11], list(range(20, 50)), [(3 * i) % 80 + 10 for i in range(40)]]


@pytest.fixture(scope="module")
def invariant_engine(tiny_model):
    eng = Engine(tiny_model, dataclasses.replace(SMALL_ENGINE, prefill_row_invariant=True))
    yield eng
    eng.close()


def _run(engine, with_neighbours: bool):
    """Generates from PROMPT (in a session, so its pages survive) and returns its result and
    the K/V of its context, [L, n, K, H] each, read from the pool."""
    params = SamplingParams(temperature=0.9, seed=4, max_new_tokens=12)
    reqs = [Request(PROMPT, params, session_id="a")]
    if with_neighbours:
        reqs += [Request(p, dataclasses.replace(params, seed=i)) for i, p in enumerate(NEIGHBOURS)]
    result = engine.generate_batch(reqs)[0]  # submitted together: prefilled in one round
    kv, size = engine.session_kv("a"), engine.config.page_size
    n = kv.cached
    engine.end_session("a")
    assert n == len(PROMPT) + 11 and kv.num_pages * size >= n
    return result, kv.k[:, :n], kv.v[:, :n]


def test_prefill_alone_or_batched_is_bit_identical(invariant_engine):
    before = invariant_engine.stats().get("prefill_tokens", 0)
    alone, k1, v1 = _run(invariant_engine, with_neighbours=False)
    batched, k4, v4 = _run(invariant_engine, with_neighbours=True)
    assert invariant_engine.compilations["prefill"] >= 2  # a multi-row call did run
    assert invariant_engine.stats()["prefill_tokens"] - before == 2 * 28 + sum(
        len(p) - 1 for p in NEIGHBOURS)
    # bit-identity is the feature under test: each row's K/V come from matmuls of one-row
    # shapes (a scan over rows), the same kernels as a one-row call (sampling/runner.py)
    assert np.array_equal(k1, k4) and np.array_equal(v1, v4)
    assert batched.token_ids == alone.token_ids and batched.logprobs == alone.logprobs
