"""A prompt's uncached remainder is prefilled as a sum of chunk buckets, not one padded bucket."""

from __future__ import annotations

import dataclasses

import numpy as np

from ppp_jax.sampling.engine import Engine
from ppp_jax.sampling.params import Request, SamplingParams
from ppp_jax.sampling.scheduler import _chunk_split, _next_chunk

from .conftest import SMALL_ENGINE, logprob_atol


def test_chunk_split_trades_padding_for_calls():
    # bench/multiturn.py's turn: 200 uncached tokens with buckets (16, 64, 128, 256) run as
    # 128 + 64 + 16 (208 computed), not one 256 chunk (56 padding tokens).
    assert _chunk_split(200, (16, 64, 128, 256)) == (128, 64, 16)
    assert _chunk_split(255, (16, 64, 128, 256)) == (256,)  # 1 padding token: one call
    assert _chunk_split(60, (16, 64, 256)) == (64,)  # 64 = 16 * 4 computed, one call wins
    # Each call after the first costs the smallest bucket: 4 calls of 64+64+64+16 (208 + 48)
    # do not beat one 256 chunk, 2 calls of 8 (16 + 8) beat one 32.
    assert _chunk_split(200, (16, 64, 256)) == (256,)
    assert _chunk_split(13, (8, 32)) == (8, 8)
    assert _chunk_split(5, (8, 32)) == (8,)
    assert _chunk_split(200, (32, 128, 512)) == (128, 128)
    assert _chunk_split(4000, (1, 4096)) == (4096,)  # not 4000 one-token calls
    for n in range(1, 257):  # never more computed tokens than the one padded bucket
        split = _chunk_split(n, (16, 64, 128, 256))
        assert sum(split) >= n and sum(split) - split[-1] < n
        assert sum(split) <= next(b for b in (16, 64, 128, 256) if b >= n)
        assert list(split) == sorted(split, reverse=True)
    # A longer remainder takes the largest bucket first; the last call takes what is left.
    pieces, left = [], 300
    while left:
        pieces.append(_next_chunk(left, (8, 32)))
        left -= pieces[-1]
    assert pieces == [32] * 9 + [8, 4]


def test_engine_prefills_the_split_and_matches_one_padded_chunk(tiny_model, monkeypatch):
    # 14 prompt tokens: 13 are prefilled (the last is fed by the first decode step). With
    # chunks (8, 32) they run as two 8-token calls (16 computed) where one 32-token call ran
    # before; greedy tokens equal an engine with the single bucket (32,), log-probs within the
    # float32 bound of two evaluations.
    prompt = list(range(30, 44))
    params = SamplingParams(temperature=0.0, max_new_tokens=9)
    with Engine(tiny_model, SMALL_ENGINE) as eng:
        chunks = []
        prefill = eng._core.runner.prefill

        def spy(state, k_pool, v_pool, tokens, *args):
            chunks.append(int(np.asarray(tokens).shape[1]))
            return prefill(state, k_pool, v_pool, tokens, *args)

        monkeypatch.setattr(eng._core.runner, "prefill", spy)
        split = eng.generate_batch([Request(prompt, params)])[0]
    assert chunks == [8, 8]
    with Engine(tiny_model, dataclasses.replace(SMALL_ENGINE, prefill_chunks=(32,))) as eng:
        one = eng.generate_batch([Request(prompt, params)])[0]
    assert split.token_ids == one.token_ids
    np.testing.assert_allclose(split.logprobs, one.logprobs, rtol=0,
                               atol=logprob_atol(tiny_model, [prompt + one.token_ids], 0.0))
