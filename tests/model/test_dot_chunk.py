"""`ModelConfig.dot_chunk`: float32 projections as sums of dots over slices of the contraction.

Why it exists (docs/model_io.md, bench/parity_ops.py): XLA:CPU's float32 dot sums a contraction in
long running sums, 1.4-1.6 times as far from float64 as torch's CPU matmul on SmolLM2-135M's
projections; the sum of the dots of 128-wide slices is about half as far as torch's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from ppp_jax.model.config import ModelConfig, ModelConfigError, tiny
from ppp_jax.model.layers import Linear, chunked_dot
from ppp_jax.model.transformer import SeedOssForCausalLM


def _dots(fn, *args) -> int:
    return str(jax.make_jaxpr(fn)(*args)).count("dot_general")


@pytest.mark.parametrize("in_shape,chunk,n_dots", [
    ((10,), 0, 1), ((10,), 10, 1), ((10,), 64, 1), ((10,), 3, 4), ((10,), 4, 3), ((10,), 1, 10),
    ((3, 4), 8, 2), ((3, 4), 4, 3), ((3, 4), 3, 3), ((3, 4), 12, 1),
])
def test_chunked_dot_slices_the_contraction_and_stays_exact(in_shape, chunk, n_dots):
    """Small integers multiply and add exactly in float32 in any order, so every slicing (a
    remainder slice; two contracted axes, cut along the first by chunk // 4 entries) must give
    the exact product; the number of dots says the contraction really was cut."""
    rng = np.random.default_rng(0)
    x = rng.integers(-8, 9, (2, 3, *in_shape)).astype(np.float32)
    k = rng.integers(-8, 9, (*in_shape, 5)).astype(np.float32)
    n = len(in_shape)
    x_axes, k_axes = tuple(range(2, 2 + n)), tuple(range(n))
    got = np.asarray(chunked_dot(jnp.asarray(x), jnp.asarray(k), x_axes, k_axes, chunk))
    want = np.tensordot(x.astype(np.int64), k.astype(np.int64), (x_axes, k_axes))
    np.testing.assert_array_equal(got, want)
    assert _dots(lambda a, b: chunked_dot(a, b, x_axes, k_axes, chunk), x, k) == n_dots


def test_dot_chunk_brings_a_float32_projection_under_torchs_error():
    """A [37, 1536] x [1536, 576] projection (SmolLM2's down_proj shape, weights of its scale):
    one XLA:CPU dot is further from float64 than torch's `F.linear`, in 128-wide slices nearer
    (measured 2026-12-03, mean |Δ|: one dot 6.1e-7, slices 2.6e-7, torch 4.0e-7)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((37, 1536)).astype(np.float32)
    w = (0.05 * rng.standard_normal((1536, 576))).astype(np.float32)
    ref = x.astype(np.float64) @ w.astype(np.float64)

    def err(chunk):
        lin = Linear((1536,), (576,), ("mlp",), ("embed",), use_bias=False, dtype=jnp.float32,
                     param_dtype=jnp.float32, rngs=nnx.Rngs(0), dot_chunk=chunk)
        lin.kernel[...] = jnp.asarray(w)
        return np.abs(np.asarray(jax.jit(lambda a: lin(a))(jnp.asarray(x)), np.float64) - ref)

    one, sliced = err(0), err(128)
    with torch.no_grad():
        hf = np.abs(torch.nn.functional.linear(torch.tensor(x), torch.tensor(w.T.copy()))
                    .double().numpy() - ref)
    print(f"mean |Δ| one dot {one.mean():.2e}, slices {sliced.mean():.2e}, torch {hf.mean():.2e}")
    assert sliced.mean() <= hf.mean()
    assert sliced.max() <= hf.max()
    assert sliced.mean() <= 0.7 * one.mean()


def test_dot_chunk_reaches_every_layer_projection_only():
    """The option is every decoder projection's (q/k/v/o, gate/up/down), not the lm_head's: wide
    outputs make the partial sums costly (docs/model.md). Logits agree with the one-dot model to
    float32 rounding."""
    cfg = tiny(num_layers=2, tie_word_embeddings=False)
    chunked = SeedOssForCausalLM(cfg.replace(dot_chunk=8), rngs=nnx.Rngs(0))
    plain = SeedOssForCausalLM(cfg, rngs=nnx.Rngs(0))
    linears = {".".join(map(str, p)): m.dot_chunk for p, m in nnx.iter_graph(chunked)
               if isinstance(m, Linear)}
    assert linears == {**{f"layers.attn.{n}_proj": 8 for n in "qkvo"},
                       **{f"layers.mlp.{n}_proj": 8 for n in ("gate", "up", "down")},
                       "lm_head": 0}
    tokens = jnp.arange(14, dtype=jnp.int32).reshape(2, 7) % cfg.vocab_size
    positions = jnp.broadcast_to(jnp.arange(7, dtype=jnp.int32), (2, 7))
    a, b = (np.asarray(m(tokens, positions)) for m in (chunked, plain))
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())
    assert (_dots(lambda: chunked(tokens, positions)) > _dots(lambda: plain(tokens, positions)))


def test_dot_chunk_is_validated_and_stored():
    with pytest.raises(ModelConfigError, match="dot_chunk"):
        tiny(dot_chunk=-1)
    with pytest.raises(ModelConfigError, match="dot_chunk"):
        tiny(dot_chunk=True)
    cfg = tiny(dot_chunk=128)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert "dot_chunk" not in cfg.to_hf_dict()
