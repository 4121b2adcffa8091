"""The KV-cache protocol the model calls, and `DenseKVCache`, a simple contiguous cache.

How the model uses a cache (see `SeedOssForCausalLM.hidden`):

    states = cache.layer_states()                 # pytree, every leaf with a leading L axis
    for each layer l (inside lax.scan over states):
        out, new_state_l = cache.attend(states[l], q, k, v, q_positions, q_segment_ids)
    cache = cache.replace_layer_states(stacked new states).advance(q_segment_ids)

`attend` gets q [B, T, N, H] and k/v [B, T, K, H] after RoPE, in the compute dtype, plus
q_positions / q_segment_ids int32 [B, T]; it writes k/v into its layer state and returns the
attention output [B, T, N, H] over everything cached so far plus the new tokens. Everything that
is shared by all layers (lengths, page tables, segment ids of cached slots) lives on the cache
object and is closed over by the scan; `advance` updates it once per forward call.

DenseKVCache layout (one buffer per k and v, all layers):

    k, v          [L, B, S, K, H]   rotated keys / values, S = max_len slots per row
    lengths       int32 [B]         slots filled per row; the next call writes at lengths[b] + t
    segment_ids   int32 [B, S]      segment id of each filled slot; 0 = empty or padding

A query at slot lengths[b] + t attends to slot s iff s <= lengths[b] + t and both have the same
nonzero segment id. A call of T tokens always consumes T slots of every row (padding tokens
included; they carry segment 0 and are never attended). The caller keeps lengths + T <= S:
`dynamic_update_slice` clamps out-of-range writes, it does not raise.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
from flax import struct

from ppp_jax.model.attention import attention_core, segment_causal_mask
from ppp_jax.model.config import ModelConfig
from ppp_jax.model.layers import dtype_of


@runtime_checkable
class KVCache(Protocol):
    """What `SeedOssForCausalLM.hidden(..., cache=...)` needs from a cache. Must be a pytree."""

    def layer_states(self) -> Any:
        """Per-layer state as a pytree whose leaves all have a leading L axis (scanned over)."""
        ...

    def attend(self, layer_state: Any, q: jax.Array, k: jax.Array, v: jax.Array,
               q_positions: jax.Array, q_segment_ids: jax.Array) -> tuple[jax.Array, Any]:
        """One layer: store k/v [B, T, K, H], attend q [B, T, N, H] -> (out [B, T, N, H],
        new layer state with the same structure as `layer_state`)."""
        ...

    def replace_layer_states(self, stacked: Any) -> KVCache:
        """The cache with its per-layer states replaced by `stacked` (leading L axis)."""
        ...

    def advance(self, q_segment_ids: jax.Array) -> KVCache:
        """Called once after all layers: record that the T tokens of this call are cached."""
        ...


def _write_rows(buf: jax.Array, new: jax.Array, starts: jax.Array) -> jax.Array:
    """buf [B, S, ...], new [B, T, ...], starts int32 [B] -> buf with new at [b, starts[b]:+T]."""
    return jax.vmap(lambda b, n, s: jax.lax.dynamic_update_slice_in_dim(b, n, s, axis=0))(
        buf, new.astype(buf.dtype), starts)


@struct.dataclass
class DenseKVCache:
    """Contiguous per-row KV cache (layout in the module docstring). A pytree."""

    k: jax.Array  # [L, B, S, K, H]
    v: jax.Array  # [L, B, S, K, H]
    lengths: jax.Array  # int32 [B]
    segment_ids: jax.Array  # int32 [B, S]
    attention_impl: str = struct.field(pytree_node=False, default="xla")

    @classmethod
    def create(cls, config: ModelConfig, batch: int, max_len: int,
               dtype: str | jnp.dtype | None = None) -> DenseKVCache:
        """An empty cache of `max_len` slots per row; dtype defaults to the compute dtype."""
        dtype = dtype_of(config.dtype) if dtype is None else jnp.dtype(dtype)
        shape = (config.num_layers, batch, max_len, config.num_kv_heads, config.head_dim)
        # splash attention is wired for cache-free self-attention only; cached calls use XLA.
        impl = "xla" if config.attention_impl == "splash" else config.attention_impl
        return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
                   lengths=jnp.zeros((batch,), jnp.int32),
                   segment_ids=jnp.zeros((batch, max_len), jnp.int32), attention_impl=impl)

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def layer_states(self) -> dict[str, jax.Array]:
        return {"k": self.k, "v": self.v}

    def replace_layer_states(self, stacked: dict[str, jax.Array]) -> DenseKVCache:
        return self.replace(k=stacked["k"], v=stacked["v"])

    def attend(self, layer_state: dict[str, jax.Array], q: jax.Array, k: jax.Array, v: jax.Array,
               q_positions: jax.Array, q_segment_ids: jax.Array):
        del q_positions  # keys are stored rotated; slots, not positions, order the cache
        t = q.shape[1]
        k_all = _write_rows(layer_state["k"], k, self.lengths)  # [B, S, K, H]
        v_all = _write_rows(layer_state["v"], v, self.lengths)
        seg_all = _write_rows(self.segment_ids, q_segment_ids, self.lengths)  # [B, S]
        q_index = self.lengths[:, None] + jnp.arange(t, dtype=jnp.int32)  # [B, T]
        kv_index = jnp.arange(self.max_len, dtype=jnp.int32)
        mask = segment_causal_mask(q_segment_ids, seg_all, q_index, kv_index)
        out = attention_core(self.attention_impl, q, k_all.astype(q.dtype),
                             v_all.astype(q.dtype), mask)
        return out, {"k": k_all, "v": v_all}

    def advance(self, q_segment_ids: jax.Array) -> DenseKVCache:
        t = q_segment_ids.shape[1]
        return self.replace(segment_ids=_write_rows(self.segment_ids, q_segment_ids, self.lengths),
                            lengths=self.lengths + t)
