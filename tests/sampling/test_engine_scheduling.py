"""Continuous batching, sessions, shared prefixes, memory pressure, weights, cancellation."""

from __future__ import annotations

import asyncio

import jax
import numpy as np
import pytest
from flax import nnx

from ppp_jax.sampling.engine import Engine
from ppp_jax.sampling.params import Request, RequestError, SamplingParams
from ppp_jax.sampling.config import EngineConfig

from .conftest import SMALL_ENGINE, logprob_atol


def _mixed_requests(n=10, seed=0):
    """Mixed prompt lengths (1..60) and budgets; even ones greedy, odd ones sampled."""
    rng = np.random.default_rng(seed)
    reqs = []
    for i in range(n):
        prompt = rng.integers(3, 97, size=int(rng.integers(1, 61))).tolist()
        params = SamplingParams(temperature=0.0 if i % 2 == 0 else 1.0, top_k=0 if i % 4 else 30,
                                max_new_tokens=int(rng.integers(3, 50)), seed=100 + i)
        reqs.append(Request(prompt, params))
    return reqs


def _same(a, b, atol):
    """Same tokens and finish; log-probs within `atol` (a derived float32 bound, conftest's
    logprob_atol: other batch compositions run other prefill buckets and rows; 0 only for the
    same program on the same inputs)."""
    assert a.token_ids == b.token_ids
    assert a.finish_reason == b.finish_reason
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=atol, rtol=0)


def _fresh(reqs):
    return [Request(r.prompt_ids, r.params, session_id=r.session_id) for r in reqs]


@pytest.fixture(scope="module")
def alone(engine):
    """Each mixed request run by itself."""
    return [engine.generate_batch([r])[0] for r in _fresh(_mixed_requests())]


@pytest.fixture(scope="module")
def mixed_tol(tiny_model, alone):
    """The log-prob bound for the mixed requests (all at T = 1: greedy ones report T = 1)."""
    return logprob_atol(tiny_model, [r.prompt_ids + a.token_ids
                                     for r, a in zip(_mixed_requests(), alone)])


def test_continuous_batching_equals_each_request_alone(engine, alone, mixed_tol):
    reqs = _fresh(_mixed_requests())  # 10 requests, 4 slots: slots are refilled as they free
    together = engine.generate_batch(reqs)
    for a, b in zip(alone, together):
        _same(a, b, mixed_tol)
    stats = engine.stats()
    assert stats["pages_used"] == 0 and stats["active"] == 0  # everything was returned


def test_async_callers_share_the_batch(engine, alone, mixed_tol):
    async def main():
        return await asyncio.gather(*(engine.generate(r) for r in _fresh(_mixed_requests())))

    for a, b in zip(alone, asyncio.run(main())):
        _same(a, b, mixed_tol)


def test_memory_pressure_preempts_and_evicts_without_changing_results(tiny_model, alone, mixed_tol):
    # 4 slots but room for only ~2.5 sequences of the longest length: sequences get preempted
    # and re-prefilled, and an idle session gets evicted; results must not change.
    cfg = EngineConfig(num_slots=4, page_size=4, num_pages=40, max_seq_len=120, decode_steps=8,
                       prefill_chunks=(8, 32), prefill_rows=(1, 4), block_pages=4)
    with Engine(tiny_model, cfg) as eng:
        turn1 = eng.generate_batch([Request([4, 5, 6, 7, 8], SamplingParams(0.0, max_new_tokens=20),
                                            session_id="s")])[0]
        held = eng.stats()["pages_used"]
        assert held == -(-(5 + 20 - 1) // 4)  # the idle session keeps its pages
        for a, b in zip(alone, eng.generate_batch(_fresh(_mixed_requests()))):
            _same(a, b, mixed_tol)
        stats = eng.stats()
        assert stats["preemptions"] > 0 and stats["session_evictions"] == 1
        turn2 = eng.generate_batch([Request([9, 10], SamplingParams(0.0, max_new_tokens=10),
                                            session_id="s")])[0]
        conversation = [4, 5, 6, 7, 8] + turn1.token_ids + [9, 10]
        ref = eng.generate_batch([Request(conversation, SamplingParams(0.0, max_new_tokens=10))])[0]
        _same(turn2, ref, logprob_atol(tiny_model, [conversation + ref.token_ids]))
        eng.end_session("s")
        assert eng.stats()["pages_used"] == 0


def test_session_turns_equal_reprefilling_the_conversation(engine, tiny_model):
    prompt1 = list(range(20, 47))  # 27 tokens: crosses pages and prefill chunks
    p1 = SamplingParams(temperature=0.9, max_new_tokens=13, seed=5)
    turn1 = engine.generate_batch([Request(prompt1, p1, session_id="ep")])[0]
    before = engine.stats()
    prompt2 = [50, 51, 52, 53, 54, 55, 56]
    p2 = SamplingParams(temperature=0.9, max_new_tokens=21, seed=6)
    turn2 = engine.generate_batch([Request(prompt2, p2, session_id="ep")])[0]
    after = engine.stats()
    # Only the new turn was prefilled: the last sampled token of turn 1 plus prompt2 minus the
    # token fed by the first decode step.
    assert after["prefill_tokens"] - before["prefill_tokens"] == len(prompt2)
    assert turn2.prompt_len == len(prompt1) + len(turn1.token_ids) + len(prompt2)
    ref = engine.generate_batch([Request(prompt1 + turn1.token_ids + prompt2, p2)])[0]
    _same(turn2, ref, logprob_atol(tiny_model, [prompt1 + turn1.token_ids + prompt2 + ref.token_ids],
                                   temperature=0.9))
    with pytest.raises(RequestError, match="in flight"):
        fut = engine.submit(Request([1], SamplingParams(max_new_tokens=100), session_id="busy"))
        engine.submit(Request([2], SamplingParams(max_new_tokens=1), session_id="busy")).result()
    fut.result()
    engine.end_session("busy")
    engine.end_session("ep")
    assert engine.stats()["pages_used"] == 0


def test_grpo_group_shares_prompt_pages(engine, tiny_model):
    prompt = list(range(30, 60))  # 30 tokens: 29 cached = 7 full pages + a partial one
    group = [Request(prompt, SamplingParams(temperature=1.0, max_new_tokens=12, seed=s))
             for s in range(6)]
    alone = [engine.generate_batch([Request(r.prompt_ids, r.params)])[0] for r in group]
    before = engine.stats()
    shared = engine.generate_batch(group)
    after = engine.stats()
    tol = logprob_atol(tiny_model, [prompt + r.token_ids for r in alone])
    for a, b in zip(alone, shared):
        _same(a, b, tol)
    assert after["prefill_tokens"] - before["prefill_tokens"] == len(prompt) - 1  # prefilled once
    assert after["prefix_hits"] - before.get("prefix_hits", 0) == len(group) - 1
    assert len({tuple(r.token_ids) for r in shared}) > 1  # different seeds, different samples
    assert after["pages_used"] == 0 and after["prefix_entries"] == 0


def test_stop_tokens_and_length_limits(engine):
    probe = engine.generate_batch([Request([8, 9, 10], SamplingParams(0.0, max_new_tokens=12))])[0]
    stop = probe.token_ids[5]
    first = probe.token_ids.index(stop)
    res = engine.generate_batch([Request([8, 9, 10], SamplingParams(0.0, max_new_tokens=12,
                                                                  stop_token_ids=(stop,)))])[0]
    assert res.finish_reason == "stop" and res.token_ids == probe.token_ids[: first + 1]
    # the same request alone, the same programs and inputs: equal (1e-6 is slack, not needed)
    np.testing.assert_allclose(res.logprobs, probe.logprobs[: first + 1], atol=1e-6)
    # The engine's max_seq_len caps the context plus generation.
    long = engine.generate_batch([Request(list(range(3, 97)) * 2, SamplingParams(0.0, max_new_tokens=50))])[0]
    assert long.finish_reason == "length" and long.prompt_len + len(long.token_ids) == SMALL_ENGINE.max_seq_len
    with pytest.raises(RequestError, match="max_seq_len"):
        engine.generate_batch([Request([5] * SMALL_ENGINE.max_seq_len, SamplingParams())])


def test_cancel_returns_partial_result(engine):
    req = Request([3, 4], SamplingParams(temperature=1.0, max_new_tokens=150, seed=1))
    fut = engine.submit(req)
    engine.cancel(req.request_id)
    res = fut.result()
    assert res.finish_reason == "cancelled" and len(res.token_ids) < 150
    assert engine.stats()["pages_used"] == 0


def test_update_params_swaps_weights_without_recompiling(engine, tiny_model):
    req = lambda: Request([11, 12, 13, 14], SamplingParams(0.0, max_new_tokens=16))  # noqa: E731
    base = engine.generate_batch([req()])[0]
    compiled = engine.compilations
    state = nnx.state(tiny_model)
    scaled = jax.tree.map(lambda x: x * 1.5, state)
    engine.update_params(scaled)
    changed = engine.generate_batch([req()])[0]
    engine.update_params(state)
    restored = engine.generate_batch([req()])[0]
    assert engine.compilations == compiled
    # At most one decode program per row bucket; one prefill program per (rows, chunk) bucket.
    assert compiled["decode"] <= len(SMALL_ENGINE.decode_buckets)
    assert compiled["prefill"] <= len(SMALL_ENGINE.prefill_rows) * len(SMALL_ENGINE.prefill_chunks)
    assert changed.logprobs != base.logprobs
    _same(restored, base, atol=0)  # the same program, weights (bit for bit) and request
    with pytest.raises(ValueError):
        engine.update_params(jax.tree.map(lambda x: x.astype(np.float16), state))
