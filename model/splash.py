"""Pallas splash attention (TPU) for Seed-OSS: causal by index within equal segment ids.

Layout: q [B, T, N, H], k/v [B, S, K, H], segment ids int32 [B, T]; returns [B, T, N, H].
Query head n reads kv head n // G (G = N / K); each kv head runs one MQA splash kernel over its
G query heads, vmapped over kv heads and batch. Under a mesh with axes data/fsdp/tensor the
kernel runs in `shard_map`, batch over (data, fsdp) and kv heads over tensor when K divides.

The kernel only lowers for TPU devices. On a TPU host the default backend says so; when a CPU
host compiles ahead of time for a TPU topology (`ppp compile`), the default backend is the CPU
while the program targets TPU devices, so the compile runs inside `tpu_target()` to say that.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import jax
import jax.numpy as jnp

_TPU_TARGET = contextvars.ContextVar("ppp_splash_tpu_target", default=False)

# MaxText's default splash tiles (sa_block_q / sa_block_kv / ..._dkv = 512); clipped to T.
DEFAULT_BLOCK = 512


def block_sizes(t: int, s: int, block: int = DEFAULT_BLOCK):
    """Forward and backward tiles of `block` (or the whole length when shorter)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

    bq, bkv = min(block, t), min(block, s)
    return sk.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq,
                         block_kv_dkv=bkv, block_kv_dkv_compute=bkv, block_q_dq=bq,
                         block_kv_dq=bkv)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, q_segment_ids: jax.Array,
                     kv_segment_ids: jax.Array, *, block: int = DEFAULT_BLOCK) -> jax.Array:
    """Causal (by index) splash attention within equal segment ids. [B, T, N, H].

    Self-attention only (T == S). T must be a multiple of the tile (`block`, or T itself).
    Segment id 0 (padding) attends only to other padding, which keeps those rows finite.
    """
    check_tpu_target()
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    b, t, n, h = q.shape
    s, kvh = k.shape[1], k.shape[2]
    if t != s:
        raise NotImplementedError("splash attention is wired for self-attention without a cache")
    sizes = block_sizes(t, s, block)
    if t % sizes.block_q or s % sizes.block_kv:
        raise ValueError(f"splash attention: sequence length {t} is not a multiple of the tile "
                         f"{sizes.block_q}; pad the batch to a multiple of {block}")

    def per_shard(q, k, v, qs, ks):
        n_local, k_local = q.shape[2], k.shape[2]
        g = n_local // k_local
        mask = sm.MultiHeadMask([sm.CausalMask((t, s)) for _ in range(g)])
        kernel = sk.make_splash_mqa_single_device(mask, block_sizes=sizes)
        scale = jnp.asarray(h ** -0.5, q.dtype)
        qg = (q * scale).reshape(q.shape[0], t, k_local, g, h).transpose(0, 2, 3, 1, 4)  # [B,K,G,T,H]
        kk = k.transpose(0, 2, 1, 3)  # [B, K, S, H]
        vv = v.transpose(0, 2, 1, 3)

        def one_example(qg_b, k_b, v_b, qs_b, ks_b):
            seg = sk.SegmentIds(q=qs_b, kv=ks_b)
            return jax.vmap(lambda qq, kq, vq: kernel(qq, kq, vq, segment_ids=seg))(qg_b, k_b, v_b)

        o = jax.vmap(one_example)(qg, kk, vv, qs, ks)  # [B, K, G, T, H]
        return o.transpose(0, 3, 1, 2, 4).reshape(q.shape[0], t, n_local, h)

    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or not {"data", "fsdp", "tensor"} <= set(mesh.axis_names):
        return per_shard(q, k, v, q_segment_ids, kv_segment_ids)
    P = jax.sharding.PartitionSpec
    batch = ("data", "fsdp")
    heads = "tensor" if kvh % mesh.shape["tensor"] == 0 else None
    fn = jax.shard_map(per_shard, mesh=mesh,
                       in_specs=(P(batch, None, heads), P(batch, None, heads),
                                 P(batch, None, heads), P(batch), P(batch)),
                       out_specs=P(batch, None, heads), check_vma=False)
    return fn(q, k, v, q_segment_ids, kv_segment_ids)


@contextlib.contextmanager
def tpu_target() -> Iterator[None]:
    """Declares that programs traced inside target TPU devices (AOT compile from a non-TPU host)."""
    token = _TPU_TARGET.set(True)
    try:
        yield
    finally:
        _TPU_TARGET.reset(token)


def check_tpu_target() -> None:
    """Raises a clear error when splash attention would be lowered for a non-TPU backend."""
    if jax.default_backend() != "tpu" and not _TPU_TARGET.get():
        raise NotImplementedError(
            f"attention_impl='splash' needs a TPU (Pallas splash attention), but the backend is "
            f"{jax.default_backend()!r}; use attention_impl='xla' or 'cudnn' here (ahead-of-time "
            f"TPU compiles from another host run inside ppp_jax.model.splash.tpu_target())")
