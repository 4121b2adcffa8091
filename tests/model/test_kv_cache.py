"""DenseKVCache: prefill + token-by-token decode equals one full forward; greedy_generate."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from ppp_jax.model import testing as mt
from ppp_jax.model.config import tiny
from ppp_jax.model.generate import greedy_generate
from ppp_jax.model.kv_cache import DenseKVCache, KVCache
from tests import numerics as nm

CFG = tiny(num_kv_heads=2, num_layers=3, attention_out_bias=True)  # V=67 D=24 N=4 K=2 H=10 L=3
B, P, T_NEW, S = 3, 6, 5, 13  # prompt 6 (left padded), decode 5, cache 13 slots (prime, > 11)


@jax.jit(static_argnums=(0,))
def _step(graphdef, state, cache, tokens, positions, segs):
    model = nnx.merge(graphdef, state)
    hidden, cache = model.hidden(tokens, positions, segs, cache=cache)
    return model.logits(hidden), cache


def _prompts():
    """Left-padded prompts: row lengths 6, 4, 1; tokens [B, P], segs (0 = pad), positions."""
    rng = np.random.RandomState(0)
    lens = [6, 4, 1]
    tokens = rng.randint(3, CFG.vocab_size, (B, P + T_NEW)).astype(np.int32)
    segs = np.ones((B, P + T_NEW), np.int32)
    for i, n in enumerate(lens):
        segs[i, : P - n] = 0
        tokens[i, : P - n] = CFG.pad_token_id
    positions = np.maximum(np.cumsum(segs, axis=1) - 1, 0).astype(np.int32)
    return tokens, positions, segs


@pytest.mark.parametrize("impl", ["xla", "cudnn"])
def test_prefill_then_decode_equals_full_forward(impl):
    model = mt.make_model(CFG.replace(attention_impl=impl), seed=7)
    graphdef, state = nnx.split(model)
    tokens, positions, segs = _prompts()
    full = mt.jit_logits(model, tokens, positions, segs)  # [B, P + T_NEW, V]

    cache = DenseKVCache.create(model.config, B, S)
    assert isinstance(cache, KVCache)
    logits, cache = _step(graphdef, state, cache, tokens[:, :P], positions[:, :P], segs[:, :P])
    pieces = [np.asarray(logits)]
    for t in range(P, P + T_NEW):
        sl = slice(t, t + 1)
        logits, cache = _step(graphdef, state, cache, tokens[:, sl], positions[:, sl], segs[:, sl])
        pieces.append(np.asarray(logits))
    incremental = np.concatenate(pieces, axis=1)
    real = segs.astype(bool)
    # other programs and shapes than the full forward: two float32 evaluations of the forward
    tol = nm.f32_forward_atol(nm.transformer_path_length(CFG, P + T_NEW), np.abs(full[real]).max())
    np.testing.assert_allclose(incremental[real], full[real], atol=tol, rtol=0)
    np.testing.assert_array_equal(np.asarray(cache.lengths), [P + T_NEW] * B)
    np.testing.assert_array_equal(np.asarray(cache.segment_ids)[:, : P + T_NEW], segs)
    assert not np.asarray(cache.segment_ids)[:, P + T_NEW:].any()


def test_decode_in_uneven_chunks_and_cache_is_a_pytree():
    """Prefill 6, decode 1, 1, then append a 3-token chunk (a session's next turn): the same
    logits; the cache passes through jit as a pytree with static attention_impl."""
    model = mt.make_model(CFG, seed=8)
    graphdef, state = nnx.split(model)
    tokens, positions, segs = _prompts()
    full = mt.jit_logits(model, tokens, positions, segs)
    cache = DenseKVCache.create(model.config, B, S)
    assert jax.tree.structure(cache).num_leaves == 4
    pieces, start = [], 0
    for n in (6, 1, 1, 3):
        sl = slice(start, start + n)
        logits, cache = _step(graphdef, state, cache, tokens[:, sl], positions[:, sl], segs[:, sl])
        pieces.append(np.asarray(logits))
        start += n
    real = segs.astype(bool)
    tol = nm.f32_forward_atol(nm.transformer_path_length(CFG, P + T_NEW), np.abs(full[real]).max())
    np.testing.assert_allclose(np.concatenate(pieces, 1)[real], full[real], atol=tol, rtol=0)


def test_stale_slots_are_not_attended():
    """Garbage in the unfilled slots of a fresh cache changes nothing (masked by segment 0)."""
    model = mt.make_model(CFG, seed=9)
    graphdef, state = nnx.split(model)
    tokens, positions, segs = _prompts()
    clean = DenseKVCache.create(model.config, B, S)
    dirty = clean.replace(k=clean.k + 100.0, v=clean.v - 50.0)
    a, _ = _step(graphdef, state, clean, tokens[:, :P], positions[:, :P], segs[:, :P])
    b, _ = _step(graphdef, state, dirty, tokens[:, :P], positions[:, :P], segs[:, :P])
    real = segs[:, :P].astype(bool)
    # bit-identical: the same jitted program and shapes, and masked slots add exact zeros
    np.testing.assert_array_equal(np.asarray(a)[real], np.asarray(b)[real])


def test_greedy_generate_matches_argmax_of_full_forward():
    model = mt.make_model(CFG, seed=10)
    prompts = [[5, 9, 11, 30, 2 + 40], [7, 8]]
    out = greedy_generate(model, prompts, max_new_tokens=6)
    for prompt, gen in zip(prompts, out):
        assert len(gen) == 6
        # teacher-forced check, one row alone, no cache: each generated token is the argmax
        # of the full forward at the position before it
        seq = np.array([prompt + gen])
        logits = mt.jit_logits(model, seq, np.arange(seq.shape[1])[None])
        assert logits[0, len(prompt) - 1:-1].argmax(-1).tolist() == gen
    # single-prompt form, and the eos stop (eos included, nothing after it)
    eos = out[1][2]
    stopped = greedy_generate(model, prompts[1], max_new_tokens=6, eos_id=eos)
    assert stopped == out[1][: out[1].index(eos) + 1]
    assert len(stopped) <= 3
