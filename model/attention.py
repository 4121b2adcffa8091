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
- "splash": Pallas splash attention (TPU only) under `shard_map`; other backends raise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import nnx

from ppp_jax.model import axes as ax
from ppp_jax.model.layers import F32, Linear, apply_rope

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


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, q_segment_ids: jax.Array,
                     kv_segment_ids: jax.Array) -> jax.Array:
    """Pallas splash attention (TPU): causal by index within equal segment ids. [B, T, N, H].

    Only for self-attention over the tokens of this call (no cache): T == S. Runs under
    `shard_map` when a mesh with axes ("data", "fsdp", "tensor") is active (batch over
    data+fsdp, heads over tensor), otherwise directly. Segment id 0 (padding) attends only to
    other padding, which keeps those rows finite; their output is ignored.
    """
    if jax.default_backend() != "tpu":
        raise NotImplementedError(
            f"attention_impl='splash' needs a TPU (Pallas splash attention), but the backend is "
            f"{jax.default_backend()!r}; use attention_impl='xla' or 'cudnn' here")
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    b, t, n, h = q.shape
    s = k.shape[1]
    if t != s:
        raise NotImplementedError("splash attention is wired for self-attention without a cache")
    kvh = k.shape[2]

    def per_shard(q, k, v, qs, ks):
        n_local, k_local = q.shape[2], k.shape[2]
        mask = sm.MultiHeadMask([sm.CausalMask((t, s)) for _ in range(n_local // k_local)])
        kernel = sk.make_splash_mqa_single_device(mask)
        # splash wants [heads, T, H] per example; group query heads under their kv head.
        qg = q.reshape(q.shape[0], t, k_local, n_local // k_local, h).transpose(0, 2, 3, 1, 4)
        kk = k.transpose(0, 2, 1, 3)
        vv = v.transpose(0, 2, 1, 3)
        qg = qg * jnp.asarray(h ** -0.5, qg.dtype)

        def one(qg_b, k_b, v_b, qs_b, ks_b):  # qg_b [K, G, T, H], k_b [K, S, H]
            seg = sk.SegmentIds(q=qs_b, kv=ks_b)
            return jax.vmap(lambda qq, kk_, vv_: kernel(qq, kk_, vv_, segment_ids=seg))(
                qg_b, k_b, v_b)

        o = jax.vmap(one)(qg, kk, vv, qs, ks)  # [B, K, G, T, H]
        return o.transpose(0, 3, 1, 2, 4).reshape(q.shape[0], t, n_local, h)

    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or not {"data", "fsdp", "tensor"} <= set(mesh.axis_names):
        return per_shard(q, k, v, q_segment_ids, kv_segment_ids)
    P = jax.sharding.PartitionSpec
    batch = ("data", "fsdp")
    heads = "tensor" if kvh % mesh.shape["tensor"] == 0 else None
    fn = jax.shard_map(per_shard, mesh=mesh,
                       in_specs=(P(batch, None, heads), P(batch, None, heads), P(batch, None, heads),
                                 P(batch), P(batch)),
                       out_specs=P(batch, None, heads), check_vma=False)
    return fn(q, k, v, q_segment_ids, kv_segment_ids)


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
        return splash_attention(q, k, v, q_segment_ids, kv_segment_ids)
    raise ValueError(f"unknown attention_impl {impl!r}")


class Attention(nnx.Module):
    """Seed-OSS GQA attention: q/k/v projections (+bias), RoPE, attention, o_proj (+opt. bias).

    Params: q_proj.kernel [D, N, H], k_proj/v_proj.kernel [D, K, H], biases [N, H]/[K, H] iff
    attention_bias; o_proj.kernel [N, H, D], bias [D] iff attention_out_bias.
    """

    def __init__(self, dim: int, num_heads: int, num_kv_heads: int, head_dim: int, *,
                 qkv_bias: bool, out_bias: bool, impl: str, dropout_rate: float,
                 dtype: jnp.dtype, param_dtype: jnp.dtype, stack: int | None = None,
                 rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, stack=stack, rngs=rngs)
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

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, positions: jax.Array,
                 segment_ids: jax.Array, *, cache: KVCache | None = None, layer_state=None,
                 dropout_key: jax.Array | None = None):
        """x [B, T, D]; cos/sin [B, T, H]; positions, segment_ids int32 [B, T].

        Returns (out [B, T, D] in `dtype`, new layer cache state or None).
        """
        q = apply_rope(self.q_proj(x), cos, sin)  # [B, T, N, H]; bias is rotated too
        k = apply_rope(self.k_proj(x), cos, sin)  # [B, T, K, H]
        v = self.v_proj(x)  # [B, T, K, H]
        if cache is None:
            index = jnp.arange(x.shape[1], dtype=jnp.int32)
            mask = segment_causal_mask(segment_ids, segment_ids, index, index)
            o = attention_core(self.impl, q, k, v, mask, q_segment_ids=segment_ids,
                               kv_segment_ids=segment_ids, dropout=self.dropout,
                               dropout_key=dropout_key)
            new_state = None
        else:
            o, new_state = cache.attend(layer_state, q, k, v, positions, segment_ids)
        return self.o_proj(o), new_state


# Re-exported for kv_cache implementations that want the same kernels.
__all__ = ["Attention", "attention_core", "cudnn_attention", "segment_causal_mask",
           "splash_attention", "xla_attention"]
