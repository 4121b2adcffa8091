"""Building blocks of the Seed-OSS decoder: parameters with logical axes, Linear, Embed, RMSNorm,
RoPE and the SwiGLU MLP.

Numerics follow the Hugging Face eager implementation cast for cast (seed_oss.md §2.3-2.5), with
`dtype` the compute (activation) dtype:

- Linear: matmul with float32 accumulation, bias added in float32, one cast to `dtype`
  (what torch's `F.linear` with bias does in bf16). With `dot_chunk` > 0 the contraction is split
  into slices of that many input features, one dot each, added in float32 (`chunked_dot`).
- RMSNorm: statistics in float32, normalized value cast to `dtype` first, then multiplied by the
  weight in `dtype`.
- RoPE: inverse frequencies and angles in float32 (`1 / theta ** (arange(0, H, 2) / H)` in jnp
  float32, bitwise equal to torch's), cos/sin in float32 then cast to `dtype`; the rotation itself
  runs in `dtype`. Half-split ("rotate_half") layout.
- SiLU in float32, then cast.

Stacking: every module takes `stack: int | None`. With `stack=L` each parameter gets a leading
`[L, ...]` axis named "layers"; the decoder scans over it, merging one slice at a time back into
the same module class, so the per-layer code never sees the L axis.
"""

from __future__ import annotations

import math

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ppp_jax.model import axes as ax
from ppp_jax.model import sharding as shd

F32 = jnp.float32
_INIT_STD = 0.02  # HF initializer_range; weights are normally loaded, not trained from scratch


def dtype_of(name: str) -> jnp.dtype:
    """`"bfloat16"` -> `jnp.bfloat16` etc."""
    return jnp.dtype(name)


def make_param(
    rngs: nnx.Rngs | None,
    shape: Sequence[int],
    names: Sequence[str],
    dtype: jnp.dtype,
    *,
    init: str,
    stack: int | None = None,
) -> nnx.Param:
    """An `nnx.Param` of `shape` (plus a leading `stack` axis) carrying logical axis names.

    init: "normal" (std 0.02), "zeros" or "ones". The names live in the metadata key
    `out_sharding` (`axes.SHARDING_METADATA_KEY`), with eager sharding off so no mesh is needed.
    """
    shape = tuple(shape)
    names = tuple(names)
    if len(shape) != len(names):
        raise ValueError(f"param shape {shape} and axis names {names} differ in rank")
    if stack is not None:
        shape = (stack, *shape)
        names = (ax.LAYERS, *names)
    if init == "normal":
        value = _INIT_STD * jax.random.normal(rngs.params(), shape, F32)
        value = value.astype(dtype)
    elif init == "zeros":
        value = jnp.zeros(shape, dtype)
    elif init == "ones":
        value = jnp.ones(shape, dtype)
    else:
        raise ValueError(f"unknown init {init!r}")
    return nnx.Param(value, out_sharding=names, eager_sharding=False)


def chunked_dot(x: jax.Array, kernel: jax.Array, x_axes: Sequence[int], k_axes: Sequence[int],
                chunk: int) -> jax.Array:
    """`dot_general` of x and kernel over the paired axes (x_axes[i] with k_axes[i]; no batch
    axes), float32 accumulation: x's remaining axes first, then the kernel's.

    chunk 0 (or one not smaller than the contraction): one dot. chunk c > 0: the first paired axis
    is cut into slices covering about c input features each (max(1, c // the size of the other
    paired axes) entries), one dot per slice, and the partial products are added in float32 in
    order. Why: XLA:CPU's float32 dot sums a contraction in long running sums, which on
    SmolLM2-135M's projections (K = 576, 1536) puts it 1.4-1.6 times as far from float64 as
    torch's CPU matmul; sums of 128-wide slices are about 0.5-0.7 times as far
    (docs/model_io.md). The result is the same sum in another order (float32 rounding apart).
    """
    x_axes, k_axes = tuple(x_axes), tuple(k_axes)
    dims = ((x_axes, k_axes), ((), ()))
    rest = math.prod(kernel.shape[a] for a in k_axes[1:])
    size = kernel.shape[k_axes[0]]
    step = max(1, chunk // rest)
    if chunk <= 0 or step >= size:
        return jax.lax.dot_general(x, kernel, dims, preferred_element_type=F32)
    y = None
    for start in range(0, size, step):
        stop = min(start + step, size)
        part = jax.lax.dot_general(jax.lax.slice_in_dim(x, start, stop, axis=x_axes[0]),
                                   jax.lax.slice_in_dim(kernel, start, stop, axis=k_axes[0]),
                                   dims, preferred_element_type=F32)
        y = part if y is None else y + part
    return y


class Linear(nnx.Module):
    """y[..., *out] = sum over in of x[..., *in] * kernel[*in, *out] (+ bias[*out]).

    kernel: [*in_shape, *out_shape] (logical names `in_names + out_names`), bias: [*out_shape].
    x is cast to `dtype`; the product accumulates in float32 (in slices of `dot_chunk` input
    features when > 0, see `chunked_dot`); the bias is added in float32; the result is cast to
    `dtype` once.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        out_shape: Sequence[int],
        in_names: Sequence[str],
        out_names: Sequence[str],
        *,
        use_bias: bool,
        dtype: jnp.dtype,
        param_dtype: jnp.dtype,
        stack: int | None = None,
        rngs: nnx.Rngs,
        dot_chunk: int = 0,
    ):
        self.n_in = len(in_shape)
        self.dtype = dtype
        self.dot_chunk = dot_chunk
        self.kernel = make_param(rngs, (*in_shape, *out_shape), (*in_names, *out_names),
                                 param_dtype, init="normal", stack=stack)
        self.bias = (make_param(rngs, out_shape, out_names, param_dtype, init="zeros", stack=stack)
                     if use_bias else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...].astype(self.dtype)
        n_in = self.n_in
        y = chunked_dot(x.astype(self.dtype), kernel, range(x.ndim - n_in, x.ndim), range(n_in),
                        self.dot_chunk)
        if self.bias is not None:
            y = y + self.bias[...].astype(F32)
        return y.astype(self.dtype)


class Embed(nnx.Module):
    """Token embedding `embedding [V, D]` ("vocab", "embed"). Plain lookup, no scaling."""

    def __init__(self, vocab_size: int, dim: int, *, dtype: jnp.dtype, param_dtype: jnp.dtype,
                 rngs: nnx.Rngs):
        self.dtype = dtype
        self.embedding = make_param(rngs, (vocab_size, dim), (ax.VOCAB, ax.EMBED), param_dtype,
                                    init="normal")

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """tokens int [B, T] -> [B, T, D] in `dtype`."""
        return jnp.take(self.embedding[...], tokens, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        """Tied logits: x [B, T, D] -> x @ embedding^T [B, T, V], float32 accumulation, `dtype`."""
        table = self.embedding[...].astype(self.dtype)
        y = jnp.einsum("btd,vd->btv", x.astype(self.dtype), table, preferred_element_type=F32)
        return y.astype(self.dtype)


class RMSNorm(nnx.Module):
    """HF/Llama RMSNorm: `scale * cast(x32 * rsqrt(mean(x32^2) + eps))`, `scale [D]` ("embed")."""

    def __init__(self, dim: int, *, eps: float, dtype: jnp.dtype, param_dtype: jnp.dtype,
                 stack: int | None = None, rngs: nnx.Rngs | None = None, axis: str = ax.EMBED):
        self.eps = eps
        self.dtype = dtype
        self.scale = make_param(rngs, (dim,), (axis,), param_dtype, init="ones", stack=stack)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [..., D] (any float dtype) -> [..., D] in `dtype`."""
        x32 = x.astype(F32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(self.dtype) * y.astype(self.dtype)


# ---- RoPE ------------------------------------------------------------------------------------


def rope_inv_freq(head_dim: int, theta: float, rope_type: str = "default", factor: float = 1.0,
                  low_freq_factor: float = 1.0, high_freq_factor: float = 4.0,
                  original_max_position: int = 8192, beta_fast: float = 32.0,
                  beta_slow: float = 1.0, truncate: bool = True) -> jax.Array:
    """float32 [H/2]: 1 / theta^(2j/H), scaled as transformers scales it for `rope_type`.

    "linear": every frequency / factor. "llama3": wavelengths longer than
    original_max_position / low_freq_factor are divided by factor, shorter than
    original_max_position / high_freq_factor kept, the band between interpolated. Written in
    transformers' order of float32 operations (the default equals torch's bitwise).
    """
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=F32) / head_dim))
    if rope_type == "linear":
        return inv_freq / factor
    if rope_type == "llama3":
        low_wavelen = original_max_position / low_freq_factor
        high_wavelen = original_max_position / high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = jnp.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (original_max_position / wavelen - low_freq_factor) / (
            high_freq_factor - low_freq_factor)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return jnp.where(medium, smoothed, scaled)
    if rope_type == "yarn":
        low, high = yarn_correction_range(beta_fast, beta_slow, head_dim, theta,
                                          original_max_position, truncate)
        if low == high:
            high += 0.001  # as transformers: no zero-width ramp
        ramp = jnp.clip((jnp.arange(head_dim // 2, dtype=F32) - low) / (high - low), 0, 1)
        extrapolation = 1 - ramp
        interpolated = 1.0 / (factor * (theta ** (jnp.arange(0, head_dim, 2, dtype=F32) / head_dim)))
        return interpolated * (1 - extrapolation) + inv_freq * extrapolation
    if rope_type != "default":
        raise ValueError(f"unknown rope_type {rope_type!r}")
    return inv_freq


def yarn_correction_range(beta_fast: float, beta_slow: float, head_dim: int, theta: float,
                          original_max_position: int, truncate: bool) -> tuple[float, float]:
    """The rotary dims between which yarn ramps from extrapolation to interpolation: those that
    turn beta_fast and beta_slow times over the original context (transformers' formula)."""
    def dim_of(rotations: float) -> float:
        return (head_dim * math.log(original_max_position / (rotations * 2 * math.pi))) / (
            2 * math.log(theta))

    low, high = dim_of(beta_fast), dim_of(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, head_dim - 1)


def rope_tables(positions: jax.Array, head_dim: int, theta: float,
                dtype: jnp.dtype, inv_freq: jax.Array | None = None,
                attention_factor: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """positions int [B, T] -> (cos, sin), each [B, T, H] in `dtype` (computed in float32).
    inv_freq: float32 [H/2] (default: plain RoPE of `theta`; see `rope_inv_freq`).
    attention_factor: cos and sin are multiplied by it in float32 (yarn's scaling)."""
    if inv_freq is None:
        inv_freq = rope_inv_freq(head_dim, theta)
    ang = positions.astype(F32)[..., None] * inv_freq  # [B, T, H/2]
    emb = jnp.concatenate([ang, ang], axis=-1)  # [B, T, H]
    if attention_factor != 1.0:
        return ((jnp.cos(emb) * attention_factor).astype(dtype),
                (jnp.sin(emb) * attention_factor).astype(dtype))
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Half-split rotation. x [B, T, n, H], cos/sin [B, T, H] -> [B, T, n, H] (x's dtype)."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)  # rotate_half
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


# ---- MLP -------------------------------------------------------------------------------------


class MLP(nnx.Module):
    """SwiGLU: `down(silu(gate(x)) * up(x))`; gate/up [D, F], down [F, D]; SiLU in float32."""

    def __init__(self, dim: int, hidden: int, *, use_bias: bool, dtype: jnp.dtype,
                 param_dtype: jnp.dtype, stack: int | None = None, rngs: nnx.Rngs,
                 dot_chunk: int = 0):
        kw = dict(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, stack=stack, rngs=rngs,
                  dot_chunk=dot_chunk)
        self.dtype = dtype
        self.gate_proj = Linear((dim,), (hidden,), (ax.EMBED,), (ax.MLP,), **kw)
        self.up_proj = Linear((dim,), (hidden,), (ax.EMBED,), (ax.MLP,), **kw)
        self.down_proj = Linear((hidden,), (dim,), (ax.MLP,), (ax.EMBED,), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, T, D] -> [B, T, D] in `dtype`."""
        gate = jax.nn.silu(self.gate_proj(x).astype(F32)).astype(self.dtype)
        # [B, T, F]; F over tensor, T over sequence under the default rules (no-op off-mesh)
        hidden = shd.constrain(gate * self.up_proj(x), ax.ACT_BTF, name="mlp hidden")
        return self.down_proj(hidden)
