"""Grouped-query self-attention of Seed-OSS, masks from segment ids, and the attention kernels.

Shapes (letters as in `config.py`): q [B, T, N, H], k/v [B, S, K, H], mask bool [B, T, S]
(True = may attend). Query head n reads kv head n // G (HF's `repeat_kv` order).

Masking rule (no cache): token t attends to token s iff s <= t (by index in the row) and both carry
the same nonzero segment id. Segment id 0 marks padding, so left padding, right padding and packed
rows are all exact; a padding query attends only to itself (finite, never NaN), and its output
is ignored.

Kernels, chosen by `ModelConfig.attention_impl`:
- "xla": explicit einsums. Emulates HF eager numerics: scores rounded to `dtype`, scaled
  (float32 multiply, rounded again), softmax in float32, probabilities cast to `dtype`.
- "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")` on GPU; on other backends the
  same call with `implementation=None` (XLA), so the code path runs in CPU tests.
- "splash": Pallas splash attention (`model/splash.py`, TPU only) under `shard_map`; other
  backends raise unless an AOT compile for TPU declares its target (`splash.tpu_target()`).

Sequence (context) parallelism: inside `sharding.using_mesh`, q and the attention output are
pinned as [B, T, N, H] with T on the `sequence` mesh axis (if any) and k/v as [B, S, K, H] with S
whole, so GSPMD all-gathers k/v over `sequence` (and reduce-scatters their gradients) while each
device keeps its block of queries. The mask is built for the whole [T, S] from global indices and
partitioned with the queries, so every query block sees its own causal offset. Splash does the
same by hand (see `splash.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import nnx

from ppp_jax.model import axes as ax
from ppp_jax.model import sharding as shd
from ppp_jax.model import splash
from ppp_jax.model.layers import F32, Linear, RMSNorm, apply_rope

if TYPE_CHECKING:
    from ppp_jax.model.kv_cache import KVCache

_MASKED = float(jnp.finfo(F32).min)


def segment_causal_mask(q_segment_ids: jax.Array, kv_segment_ids: jax.Array,
                        q_index: jax.Array, kv_index: jax.Array) -> jax.Array:
    """bool [B, T, S]: kv_index[s] <= q_index[t], same segment, segment nonzero.

    q_segment_ids int [B, T]; kv_segment_ids int [B, S]; q_index int [B, T] or [T];
    kv_index int [B, S] or [S] (slot indices, not RoPE positions). A padding query (segment 0)
    attends only to its own slot, so no row is fully masked in any kernel (some fused kernels
    return NaN for fully masked rows); real tokens never see padding.
    """
    q_index = jnp.broadcast_to(q_index, q_segment_ids.shape)
    kv_index = jnp.broadcast_to(kv_index, kv_segment_ids.shape)
    causal = kv_index[:, None, :] <= q_index[:, :, None]
    same = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    real = causal & same & (kv_segment_ids[:, None, :] != 0)
    pad_self = (q_segment_ids[:, :, None] == 0) & (kv_index[:, None, :] == q_index[:, :, None])
    return real | pad_self


def xla_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *,
                  dropout: nnx.Dropout | None = None,
                  dropout_key: jax.Array | None = None) -> jax.Array:
    """Explicit-einsum attention with HF-eager cast points. Returns [B, T, N, H] in q's dtype.

    Dropout (if a key is given) is applied to the probabilities, as HF does in training mode.
    """
    b, t, n, h = q.shape
    kv = k.shape[2]
    dtype = q.dtype
    qg = q.reshape(b, t, kv, n // kv, h)  # [B, T, K, G, H]
    s = jnp.einsum("btkgh,bskh->bkgts", qg, k, preferred_element_type=F32).astype(dtype)
    s = (s.astype(F32) * F32(h ** -0.5)).astype(dtype)  # torch: bf16 tensor * python float
    s = jnp.where(mask[:, None, None, :, :], s.astype(F32), _MASKED)
    p = jax.nn.softmax(s, axis=-1).astype(dtype)  # [B, K, G, T, S]
    if dropout is not None and dropout_key is not None:
        p = dropout(p, deterministic=False, rngs=dropout_key)
    o = jnp.einsum("bkgts,bskh->btkgh", p, v, preferred_element_type=F32).astype(dtype)
    return o.reshape(b, t, n, h)


def cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """`jax.nn.dot_product_attention`, cuDNN on GPU, XLA elsewhere. [B, T, N, H]."""
    impl = "cudnn" if jax.default_backend() == "gpu" else None
    if impl == "cudnn" and q.dtype not in (jnp.bfloat16, jnp.float16):
        raise ValueError(f"attention_impl='cudnn' needs bfloat16 or float16 compute on GPU, got "
                         f"{q.dtype}; set dtype='bfloat16' or use attention_impl='xla'")
    return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, :, :],
                                        scale=q.shape[-1] ** -0.5, implementation=impl)


def attention_core(impl: str, q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *,
                   q_segment_ids: jax.Array | None = None, kv_segment_ids: jax.Array | None = None,
                   dropout: nnx.Dropout | None = None,
                   dropout_key: jax.Array | None = None) -> jax.Array:
    """Dispatches to the kernel named by `impl` ("xla" | "cudnn" | "splash"). [B, T, N, H].

    `mask` [B, T, S] is used by "xla" and "cudnn"; "splash" rebuilds it from the segment ids
    (causal by index), so it needs `q_segment_ids` and `kv_segment_ids`.
    """
    use_dropout = dropout is not None and dropout_key is not None and dropout.rate > 0
    if impl == "xla":
        return xla_attention(q, k, v, mask, dropout=dropout, dropout_key=dropout_key)
    if use_dropout:
        raise NotImplementedError(
            f"attention-probability dropout is implemented only for attention_impl='xla', not "
            f"{impl!r}; set attention_dropout=0 or use 'xla'")
    if impl == "cudnn":
        return cudnn_attention(q, k, v, mask)
    if impl == "splash":
        return splash.splash_attention(q, k, v, q_segment_ids, kv_segment_ids)
    raise ValueError(f"unknown attention_impl {impl!r}")


class Attention(nnx.Module):
    """Seed-OSS GQA attention: q/k/v projections (+bias), RoPE, attention, o_proj (+opt. bias).

    Params: q_proj.kernel [D, N, H], k_proj/v_proj.kernel [D, K, H], biases [N, H]/[K, H] iff
    attention_bias; o_proj.kernel [N, H, D], bias [D] iff attention_out_bias; with qk_norm
    (Qwen3) q_norm.scale / k_norm.scale [H], an RMSNorm of each head's q and k before RoPE.
    """

    def __init__(self, dim: int, num_heads: int, num_kv_heads: int, head_dim: int, *,
                 qkv_bias: bool, out_bias: bool, impl: str, dropout_rate: float,
                 dtype: jnp.dtype, param_dtype: jnp.dtype, stack: int | None = None,
                 rngs: nnx.Rngs, qk_norm: bool = False, norm_eps: float = 1e-6,
                 dot_chunk: int = 0):
        kw = dict(dtype=dtype, param_dtype=param_dtype, stack=stack, rngs=rngs,
                  dot_chunk=dot_chunk)
        self.impl = impl
        self.q_proj = Linear((dim,), (num_heads, head_dim), (ax.EMBED,), (ax.HEADS, ax.HEAD_DIM),
                             use_bias=qkv_bias, **kw)
        self.k_proj = Linear((dim,), (num_kv_heads, head_dim), (ax.EMBED,),
                             (ax.KV_HEADS, ax.HEAD_DIM), use_bias=qkv_bias, **kw)
        self.v_proj = Linear((dim,), (num_kv_heads, head_dim), (ax.EMBED,),
                             (ax.KV_HEADS, ax.HEAD_DIM), use_bias=qkv_bias, **kw)
        self.o_proj = Linear((num_heads, head_dim), (dim,), (ax.HEADS, ax.HEAD_DIM), (ax.EMBED,),
                             use_bias=out_bias, **kw)
        self.dropout = nnx.Dropout(dropout_rate)
        self.qk_norm = qk_norm
        if qk_norm:
            norm = dict(eps=norm_eps, dtype=dtype, param_dtype=param_dtype, stack=stack,
                        axis=ax.HEAD_DIM)
            self.q_norm = RMSNorm(head_dim, **norm)
            self.k_norm = RMSNorm(head_dim, **norm)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, positions: jax.Array,
                 segment_ids: jax.Array, *, cache: KVCache | None = None, layer_state=None,
                 dropout_key: jax.Array | None = None):
        """x [B, T, D]; cos/sin [B, T, H]; positions, segment_ids int32 [B, T].

        Returns (out [B, T, D] in `dtype`, new layer cache state or None).
        """
        q, k = self.q_proj(x), self.k_proj(x)  # [B, T, N, H], [B, T, K, H]
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rope(q, cos, sin)  # bias (and norm) rotated too
        k = apply_rope(k, cos, sin)
        v = self.v_proj(x)  # [B, T, K, H]
        if cache is None:
            # Context parallelism (no-op off-mesh): queries keep their T shard, k/v are gathered.
            q = shd.constrain(q, ax.ACT_BTNH, name="q")
            k = shd.constrain(k, ax.ACT_BSKH, name="k")
            v = shd.constrain(v, ax.ACT_BSKH, name="v")
            index = jnp.arange(x.shape[1], dtype=jnp.int32)
            mask = segment_causal_mask(segment_ids, segment_ids, index, index)
            mask = shd.constrain(mask, ax.ACT_BTS, name="attention mask")
            o = attention_core(self.impl, q, k, v, mask, q_segment_ids=segment_ids,
                               kv_segment_ids=segment_ids, dropout=self.dropout,
                               dropout_key=dropout_key)
            o = shd.constrain(o, ax.ACT_BTNH, name="attention out")
            new_state = None
        else:
            o, new_state = cache.attend(layer_state, q, k, v, positions, segment_ids)
        return self.o_proj(o), new_state


# Re-exported for kv_cache implementations that want the same kernels.
__all__ = ["Attention", "attention_core", "cudnn_attention", "segment_causal_mask",
           "xla_attention"]
