"""A paged KV cache on the model's cache protocol (`cache.attend` inside the layer scan).

Layout (letters as in `ppp_jax.model.config`: L layers, P pages, S page size, K kv heads,
H head dim, B rows, T new tokens per row, W page-table width):

    k_pages, v_pages   [L, P, S, K, H]  one global pool per layer, in the compute dtype
    page_table         int32 [B, W]     page ids of each row, in order: token at position p
                                        lives in page page_table[b, p // S], offset p % S
    cache_lens         int32 [B]        tokens of each row already in the pool before this call

Memory is the pool, shared by every sequence, so it scales with live tokens rather than with
rows x maximum length. Page 0 is the trash page (see `page_allocator.py`): padding tokens
(segment id 0) write there and nothing ever reads it.

How one forward call uses it. `layer_states()` hands the model's layer scan only the layer
index [L]; inside the scan, `attend(layer, q, k, v, q_positions, q_segment_ids)`
  1. attends each query to the row's cached tokens (positions < cache_lens[b]) by walking the
     row's pages in blocks with an online softmax; the loop runs ceil(max(cache_lens) / block)
     times, so compute tracks the longest *live* row, not W, and nothing recompiles as rows grow;
     (a decode call with `decode_attention="cpu_kernel"` reads the pages in place instead, with
     the C++ custom call of `sampling/cpu_kernels/`, and merges its softmax state the same way);
  2. attends to the new tokens of this call, causally by position (chunked prefill: T = chunk;
     decode: T = 1);
  3. returns the new k/v and their flat pool slots as the "new layer state".
`replace_layer_states(stacked)` then scatters all layers' new k/v into the pool in one update
after the scan (the pool is donated by the engine, so the update is in place). The new tokens'
positions must continue the row: positions cache_lens[b] + 0, 1, ... for the non-padding tokens.

Numerics follow the model's "xla" attention cast points: scores are rounded to the compute dtype
and scaled by H**-0.5 in float32; the softmax runs in float32 (online, block by block).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from ppp_jax.sampling import cpu_kernels
from ppp_jax.sampling.page_allocator import TRASH_PAGE

F32 = jnp.float32
_NEG = -1e30


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["k_pages", "v_pages", "page_table", "cache_lens"],
                   meta_fields=["block_pages", "decode_attention"])
@dataclasses.dataclass(frozen=True)
class PagedKVCache:
    """The pool plus the page tables of the rows of one forward call (a pytree).

    Attributes:
      k_pages, v_pages: [L, P, S, K, H] in the compute dtype.
      page_table: int32 [B, W]; unused entries may hold any valid page id (0 is fine).
        W must be a multiple of `block_pages`.
      cache_lens: int32 [B], tokens already cached per row.
      block_pages: static; pages read per step of the attention loop (block = block_pages * S
        keys per row).
      decode_attention: static; how a decode call (T == 1) attends to the cached tokens: "xla"
        (the loop over blocks of pages below) or "cpu_kernel" (`cpu_kernels`'s C++ custom call,
        which reads the pages in place: CPU, one device; float32/bfloat16 only, other dtypes
        keep the loop). Prefill always uses the loop. The engine resolves its config's "auto".
    """

    k_pages: jax.Array
    v_pages: jax.Array
    page_table: jax.Array
    cache_lens: jax.Array
    block_pages: int = 8
    decode_attention: str = "xla"

    @property
    def page_size(self) -> int:
        return self.k_pages.shape[2]

    @staticmethod
    def init_pool(num_layers: int, num_pages: int, page_size: int, num_kv_heads: int,
                  head_dim: int, dtype, sharding=None) -> tuple[jax.Array, jax.Array]:
        """Zero k and v pools [L, P, S, K, H], optionally placed with `sharding`."""
        shape = (num_layers, num_pages, page_size, num_kv_heads, head_dim)
        make = functools.partial(jnp.zeros, shape, dtype)
        if sharding is not None:
            make = jax.jit(make, out_shardings=sharding)
        return make(), make()

    # ---- the model's cache protocol ------------------------------------------------------

    def layer_states(self) -> jax.Array:
        """int32 [L]: the scan hands each layer its own index; the pool is closed over."""
        return jnp.arange(self.k_pages.shape[0], dtype=jnp.int32)

    def attend(self, layer: jax.Array, q: jax.Array, k: jax.Array, v: jax.Array,
               q_positions: jax.Array, q_segment_ids: jax.Array):
        """Attention of this call's queries over the row's cached tokens and the new tokens.

        Args:
          layer: int32 [] index into the pool.
          q: [B, T, N, H]; k, v: [B, T, K, H] (after RoPE, compute dtype).
          q_positions: int32 [B, T] absolute positions of the new tokens.
          q_segment_ids: int32 [B, T]; 0 marks padding (not written, not attended to).
        Returns:
          (out [B, T, N, H] in q's dtype, {"k": k, "v": v, "slot": int32 [B, T]} for
          `replace_layer_states`).
        """
        b, t, n, h = q.shape
        kvh = k.shape[2]
        dtype = q.dtype
        scale = F32(h ** -0.5)
        g = n // kvh
        if t == 1:  # decode: one query per row
            qg = q.reshape(b, t, kvh, g, h)  # [B, T, K, G, H]

            def dot_qk(keys):  # keys [B, S', K, H] -> f32 [B, K, G, T, S']
                return jnp.einsum("btkgh,bskh->bkgts", qg, keys, preferred_element_type=F32)

            def pv(p, values):  # p f32 [B, K, G, T, S'], values [B, S', K, H] -> [B, K, G, T, H]
                return jnp.einsum("bkgts,bskh->bkgth", p, values.astype(F32))
        else:
            # Prefill: the queries once as [B, K, G*T, H], the keys and values of a block as
            # [B, K, S', H] (a small copy fused into their gather), so both dots are plain
            # batched matmuls over (B, K) with no transposes of the [B, K, G, T, S'] scores or
            # of the output inside the loop over cached blocks: about twice as fast on a CPU
            # (docs/benchmarks.md). The same products as decode's [B, T, K, G, H] layout; XLA's
            # CPU dot may sum them in another order for some shapes (float32 rounding).
            qk = q.reshape(b, t, kvh, g, h).transpose(0, 2, 3, 1, 4).reshape(b, kvh, g * t, h)

            def dot_qk(keys):
                s = jnp.einsum("bkqh,bksh->bkqs", qk, keys.transpose(0, 2, 1, 3),
                               preferred_element_type=F32)
                return s.reshape(b, kvh, g, t, keys.shape[1])

            def pv(p, values):
                out = jnp.einsum("bkqs,bksh->bkqh", p.reshape(b, kvh, g * t, -1),
                                 values.astype(F32).transpose(0, 2, 1, 3))
                return out.reshape(b, kvh, g, t, h)

        def scores(keys):  # keys [B, S', K, H] -> f32 [B, K, G, T, S'], model cast points
            s = dot_qk(keys).astype(dtype)
            return (s.astype(F32) * scale).astype(dtype).astype(F32)

        # New tokens of this call: causal by position, padding excluded.
        valid_new = ((q_positions[:, None, :] <= q_positions[:, :, None])
                     & (q_segment_ids[:, None, :] != 0))[:, None, None]  # [B, 1, 1, T, T]
        s = jnp.where(valid_new, scores(k), _NEG)
        m = jnp.max(s, axis=-1)  # [B, K, G, T]
        p = jnp.where(valid_new, jnp.exp(s - m[..., None]), 0.0)
        l = jnp.sum(p, axis=-1)
        acc = pv(p, v)

        page_size = self.page_size
        if t == 1 and self.decode_attention == "cpu_kernel" and cpu_kernels.supports(
                dtype, self.k_pages.dtype):
            # The kernel's softmax state over the cached tokens, merged with the new token's
            # by the loop body's rule (a row with nothing cached gives m = -1e30, l = acc = 0).
            m_c, l_c, acc_c = cpu_kernels.paged_decode_attention(
                qg[:, 0], self.k_pages, self.v_pages, self.page_table, self.cache_lens, layer,
                compute_dtype=dtype)
            m_c, l_c, acc_c = m_c[..., None], l_c[..., None], acc_c[..., None, :]
            m_new = jnp.maximum(m, m_c)
            corr, corr_c = jnp.exp(m - m_new), jnp.exp(m_c - m_new)
            l = l * corr + l_c * corr_c
            acc = acc * corr[..., None] + acc_c * corr_c[..., None]
        else:
            m, l, acc = self._attend_cached_blocks(layer, m, l, acc, scores, pv)
        out = acc / jnp.maximum(l, jnp.finfo(F32).tiny)[..., None]  # [B, K, G, T, H]
        out = out.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h).astype(dtype)

        width = self.page_table.shape[1]
        page_idx = jnp.clip(q_positions // page_size, 0, width - 1)
        page = jnp.take_along_axis(self.page_table, page_idx, axis=1)
        in_range = (q_segment_ids != 0) & (q_positions // page_size < width)
        slot = jnp.where(in_range, page, TRASH_PAGE) * page_size + q_positions % page_size
        return out, {"k": k, "v": v, "slot": slot.astype(jnp.int32)}

    def _attend_cached_blocks(self, layer, m, l, acc, scores, pv):
        """The XLA path over the cached tokens: one block of pages at a time, online softmax,
        continuing the state (m, l [B, K, G, T], acc [B, K, G, T, H]) of the new tokens."""
        b = self.page_table.shape[0]
        kvh, h = self.k_pages.shape[3:]
        page_size = self.page_size
        block = self.block_pages * page_size
        num_blocks = (jnp.max(self.cache_lens) + block - 1) // block

        def body(i, carry):
            m, l, acc = carry
            pages = jax.lax.dynamic_slice_in_dim(self.page_table, i * self.block_pages,
                                                 self.block_pages, axis=1)  # [B, bp]
            kb = self.k_pages[layer, pages].reshape(b, block, kvh, h)  # one gather per block
            vb = self.v_pages[layer, pages].reshape(b, block, kvh, h)
            key_pos = i * block + jnp.arange(block)
            valid = (key_pos[None, :] < self.cache_lens[:, None])[:, None, None, None, :]
            s = jnp.where(valid, scores(kb), _NEG)
            m_new = jnp.maximum(m, jnp.max(s, axis=-1))
            corr = jnp.exp(m - m_new)
            # exp(_NEG - m_new) is exactly 0 wherever a row already has a real score (every
            # real query does: it attends to itself), so no second mask here; only queries of
            # padding, whose outputs are never used, see 1s.
            p = jnp.exp(s - m_new[..., None])
            return m_new, l * corr + jnp.sum(p, axis=-1), acc * corr[..., None] + pv(p, vb)

        return jax.lax.fori_loop(0, num_blocks, body, (m, l, acc))

    def replace_layer_states(self, stacked) -> PagedKVCache:
        """Writes the new k/v of every layer into the pool: stacked["k"/"v"] [L, B, T, K, H]."""
        num_layers, num_pages, page_size, kvh, h = self.k_pages.shape
        slots = stacked["slot"][0].reshape(-1)  # identical for every layer

        def write(pool, new):
            flat = pool.reshape(num_layers, num_pages * page_size, kvh, h)
            flat = flat.at[:, slots].set(new.reshape(num_layers, -1, kvh, h).astype(pool.dtype))
            return flat.reshape(pool.shape)

        return dataclasses.replace(self, k_pages=write(self.k_pages, stacked["k"]),
                                   v_pages=write(self.v_pages, stacked["v"]))

    def advance(self, q_segment_ids: jax.Array) -> PagedKVCache:
        """Counts this call's non-padding tokens as cached (the engine also tracks this)."""
        return dataclasses.replace(
            self, cache_lens=self.cache_lens + jnp.sum(q_segment_ids != 0, axis=1, dtype=jnp.int32))
