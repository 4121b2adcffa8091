"""Pallas splash attention (TPU) for Seed-OSS: causal by index within equal segment ids.

Layout: q [B, T, N, H], k/v [B, S, K, H], segment ids int32 [B, T]; returns [B, T, N, H].
Query head n reads kv head n // G (G = N / K); each kv head runs one MQA splash kernel over its
G query heads, vmapped over kv heads and batch. Under a mesh with axes data/fsdp/tensor the
kernel runs in `shard_map`, batch over (data, fsdp) and kv heads over tensor when K divides.

Sequence (context) parallelism: when the mesh also has a `sequence` axis of size P > 1, the
queries (and their segment ids) enter the `shard_map` split into P blocks along T while k/v and
their segment ids enter whole (all-gathered). The kernel is built once for the whole [T, S]
causal mask with `q_seq_shards=P`, and its block-sparsity metadata is passed into the
`shard_map` split the same way (`SplashAttentionKernel.manual_sharding_spec`), so the kernel on
device p evaluates the causal mask at the global query indices of block p — the offset of its
query block — and skips the kv tiles entirely above the diagonal. (MaxText wires its context
parallelism the same way.)

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


def _kernel(t: int, s: int, g: int, sizes, q_seq_shards: int, interpret: bool):
    """The MQA splash kernel for G query heads over the whole causal [T, S] mask; its mask
    metadata is laid out for `q_seq_shards` query blocks."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    mask = sm.MultiHeadMask([sm.CausalMask((t, s)) for _ in range(g)])
    return sk.make_splash_mqa(mask, block_sizes=sizes, head_shards=1, q_seq_shards=q_seq_shards,
                              interpret=interpret)


def _attend_local(kernel, q, k, v, qs, ks):
    """One device's share: q [b, t, n, H] (t = this device's query block), k/v [b, S, k, H],
    segment ids qs [b, t], ks [b, S] -> [b, t, n, H]."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

    b, t, n_local, h = q.shape
    k_local = k.shape[2]
    g = n_local // k_local
    scale = jnp.asarray(h ** -0.5, q.dtype)
    qg = (q * scale).reshape(b, t, k_local, g, h).transpose(0, 2, 3, 1, 4)  # [b, K, G, t, H]
    kk = k.transpose(0, 2, 1, 3)  # [b, K, S, H]
    vv = v.transpose(0, 2, 1, 3)

    def one_example(qg_b, k_b, v_b, qs_b, ks_b):
        seg = sk.SegmentIds(q=qs_b, kv=ks_b)
        return jax.vmap(lambda qq, kq, vq: kernel(qq, kq, vq, segment_ids=seg))(qg_b, k_b, v_b)

    o = jax.vmap(one_example)(qg, kk, vv, qs, ks)  # [b, K, G, t, H]
    return o.transpose(0, 3, 1, 2, 4).reshape(b, t, n_local, h)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, q_segment_ids: jax.Array,
                     kv_segment_ids: jax.Array, *, block: int = DEFAULT_BLOCK,
                     interpret: bool = False) -> jax.Array:
    """Causal (by index) splash attention within equal segment ids. [B, T, N, H].

    Self-attention only (T == S). T must be a multiple of the tile (`block`, or T itself); with
    a `sequence` mesh axis of size P, T / P must be (each device's query block).
    Segment id 0 (padding) attends only to other padding, which keeps those rows finite.
    interpret: run the Pallas kernel in interpret mode (any backend; tests only, slow).
    """
    if not interpret:
        check_tpu_target()
    b, t, n, h = q.shape
    s, kvh = k.shape[1], k.shape[2]
    if t != s:
        raise NotImplementedError("splash attention is wired for self-attention without a cache")
    mesh = jax.sharding.get_abstract_mesh()
    sharded = not (mesh is None or mesh.empty) and {"data", "fsdp", "tensor"} <= set(mesh.axis_names)
    seq = mesh.shape["sequence"] if sharded and "sequence" in mesh.axis_names else 1
    if t % seq:
        raise ValueError(f"splash attention: sequence length {t} is not divisible by the "
                         f"'sequence' mesh axis of size {seq}")
    sizes = block_sizes(t // seq, s, block)
    if (t // seq) % sizes.block_q or s % sizes.block_kv:
        raise ValueError(f"splash attention: sequence length {t} (per device {t // seq}) is not a "
                         f"multiple of the tile {sizes.block_q}; pad the batch to a multiple of "
                         f"{block * seq}")
    if not sharded:
        kernel = _kernel(t, s, n // kvh, sizes, 1, interpret)
        return _attend_local(kernel, q, k, v, q_segment_ids, kv_segment_ids)
    P = jax.sharding.PartitionSpec
    batch = ("data", "fsdp")
    heads = "tensor" if kvh % mesh.shape["tensor"] == 0 else None
    # Query heads per kv head are the same on every shard (N and K split alike, or K whole).
    g = n // kvh
    kernel = _kernel(t, s, g, sizes, seq, interpret)
    q_seq = "sequence" if seq > 1 else None
    kernel_spec = kernel.manual_sharding_spec(jax.sharding.NamedSharding(mesh, P(None, q_seq)))
    fn = jax.shard_map(_attend_local, mesh=mesh,
                       in_specs=(kernel_spec, P(batch, q_seq, heads), P(batch, None, heads),
                                 P(batch, None, heads), P(batch, q_seq), P(batch)),
                       out_specs=P(batch, q_seq, heads), check_vma=False)
    return fn(kernel, q, k, v, q_segment_ids, kv_segment_ids)


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
