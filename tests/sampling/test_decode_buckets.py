"""Decode cost follows the live slots: a block runs over the smallest row bucket that holds the
occupied slots (`EngineConfig.decode_rows` / `decode_buckets`), packed into its first rows."""

from __future__ import annotations

import numpy as np
import pytest

from ppp_jax.sampling.config import EngineConfig
from ppp_jax.sampling.engine import Engine
from ppp_jax.sampling.params import Request, SamplingParams

from .conftest import SMALL_ENGINE, logprob_atol

SLOTS = 8
# CPU-style buckets below 8 rows, so the 8 slots run buckets 1, 2, 4 and 8; FIXED: always 8.
BUCKETED = EngineConfig(**{**SMALL_ENGINE.__dict__, "num_slots": SLOTS,
                           "decode_rows": (1, 2, 4)})
FIXED = EngineConfig(**{**SMALL_ENGINE.__dict__, "num_slots": SLOTS, "decode_rows": (SLOTS,)})


def _requests():
    """10 requests on 8 slots, finishing at different times (budgets 2..45, some stop early on
    an id), so the live count falls through every bucket; even ones greedy, odd ones sampled."""
    rng = np.random.default_rng(7)
    budgets = [45, 2, 17, 9, 31, 5, 24, 12, 38, 3]
    out = []
    for i, budget in enumerate(budgets):
        prompt = rng.integers(3, 97, size=int(rng.integers(1, 40))).tolist()
        out.append(Request(prompt, SamplingParams(
            temperature=0.0 if i % 2 == 0 else 1.0, max_new_tokens=budget, seed=200 + i,
            stop_token_ids=(int(rng.integers(3, 97)),) if i % 3 == 0 else ())))
    return out


def test_buckets_are_powers_of_two_from_8_then_num_slots():
    assert EngineConfig(num_slots=32).decode_buckets == (8, 16, 32)
    assert EngineConfig(num_slots=12).decode_buckets == (8, 12)
    assert EngineConfig(num_slots=8).decode_buckets == (8,)
    assert EngineConfig(num_slots=4).decode_buckets == (4,)
    assert BUCKETED.decode_buckets == (1, 2, 4, 8)
    assert FIXED.decode_buckets == (8,)
    assert EngineConfig(num_slots=12, decode_rows=(3, 6)).decode_buckets == (3, 6, 12)
    for bad in ((4, 2), (0, 4), (16,)):
        with pytest.raises(ValueError, match="decode_rows"):
            EngineConfig(num_slots=12, decode_rows=bad)


@pytest.fixture(scope="module")
def both(tiny_model):
    """(results, stats, compilations) of the same requests on the bucketed and the fixed engine."""
    out = {}
    for name, cfg in (("bucketed", BUCKETED), ("fixed", FIXED)):
        with Engine(tiny_model, cfg) as eng:
            results = eng.generate_batch(_requests())
            out[name] = (results, eng.stats(), dict(eng.compilations))
    return out


def test_results_equal_a_fixed_batch(both, tiny_model):
    (bucketed, _, _), (fixed, _, _) = both["bucketed"], both["fixed"]
    assert [r.finish_reason for r in fixed].count("length") < len(fixed)  # some stopped early
    assert len({len(r.token_ids) for r in fixed}) > 5  # they finish at different times
    atol = logprob_atol(tiny_model, [q.prompt_ids + r.token_ids
                                     for q, r in zip(_requests(), fixed)])
    for a, b in zip(bucketed, fixed):
        assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=atol, rtol=0)


def test_blocks_run_over_the_live_rows_with_one_program_per_bucket(both):
    (_, bucketed, compiled), (_, fixed, fixed_compiled) = both["bucketed"], both["fixed"]
    # The fixed engine computes all 8 rows in every block; the bucketed one only a bucket.
    assert fixed["decode_rows"] == SLOTS * fixed["decode_blocks"]
    assert bucketed["decode_rows"] < 0.75 * fixed["decode_rows"]
    assert bucketed["decode_tokens"] == fixed["decode_tokens"]
    # Bounded: at most one decode program per bucket (4 here); the fixed engine has one.
    assert 1 < compiled["decode"] <= len(BUCKETED.decode_buckets)
    assert fixed_compiled["decode"] == 1


def test_one_request_on_many_slots_runs_one_row(tiny_model):
    with Engine(tiny_model, BUCKETED) as eng:
        [res] = eng.generate_batch([Request([5, 6, 7], SamplingParams(0.0, max_new_tokens=20))])
        stats = eng.stats()
    assert len(res.token_ids) == 20
    assert stats["decode_rows"] == stats["decode_blocks"]  # every block: a bucket of one row


def test_a_bucket_runs_the_program_of_an_engine_that_size(tiny_model, engine):
    """4 live requests on the 8-slot engine run the very program of a 4-slot engine (the
    session's SMALL_ENGINE: same pool, same page tables): the cost of the bucket, not of the
    engine's size. Lowered only, nothing compiled."""
    assert engine.config.num_slots == 4 and 4 in BUCKETED.decode_buckets
    with Engine(tiny_model, BUCKETED) as big:
        assert big.lower_decode(rows=4).as_text() == engine.lower_decode().as_text()
        assert big.lower_decode(rows=8).as_text() != engine.lower_decode().as_text()
