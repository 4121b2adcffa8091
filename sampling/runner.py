"""The engine's compiled device programs: chunked prefill, a multi-step decode block, page copies.

The weights are a jit *argument* (`graphdef, state = nnx.split(model)` once; `nnx.merge` inside
the traced function), so `update_params` swaps them with no recompilation. The KV pools are
donated to every program and come back updated, so they are never copied.

Compilations (counted in `ModelRunner.traces`):
  prefill  once per (rows bucket, chunk bucket), e.g. (1, 256)
  decode   once per row bucket B (`EngineConfig.decode_buckets`: the live sequences packed
           into the smallest bucket; fixed page-table width W, fixed steps per block), plus once
           more per bucket with top-log-prob outputs, the first time a request asks for them
  copy     once per number-of-pages bucket (copy-on-write of shared prefixes)

Shapes: B rows of a decode block (a bucket of live slots), W page-table width, k decode steps per block, MS max stop ids per request.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ppp_jax.sampling.paged_cache import PagedKVCache
from ppp_jax.sampling.strategies import (policy_logprobs, request_keys, sample_from_logprobs,
                                         top_logprobs)


class SlotRow(NamedTuple):
    """One live slot's row of a `SlotBatch` (host values; see `SlotBatch` for the fields)."""

    pages: Sequence[int]  # the sequence's KV pages, in order (the page-table row, zero-padded)
    cache_len: int
    last_token: int
    num_generated: int
    max_new_tokens: int
    stop_ids: Sequence[int]  # at most max_stop_tokens ids
    temperature: float
    top_k: int
    top_p: float
    seed: int


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["page_table", "cache_lens", "last_token", "active", "num_generated",
                                "max_new_tokens", "stop_ids", "temperature", "top_k", "top_p",
                                "seeds"],
                   meta_fields=[])
@dataclasses.dataclass(frozen=True)
class SlotBatch:
    """Host-built inputs of one decode block, one row per slot.

    page_table int32 [B, W]; cache_lens int32 [B] (tokens cached, = position of last_token);
    last_token int32 [B] (sampled, not yet cached); active bool [B];
    num_generated int32 [B] (index of the next sampled token, keys the RNG);
    max_new_tokens int32 [B]; stop_ids int32 [B, MS] (-1 = unused);
    temperature f32 [B]; top_k int32 [B]; top_p f32 [B]; seeds uint32 [B].
    """

    page_table: jax.Array
    cache_lens: jax.Array
    last_token: jax.Array
    active: jax.Array
    num_generated: jax.Array
    max_new_tokens: jax.Array
    stop_ids: jax.Array
    temperature: jax.Array
    top_k: jax.Array
    top_p: jax.Array
    seeds: jax.Array

    @classmethod
    def build(cls, num_slots: int, table_width: int, max_stop_tokens: int,
              rows: Mapping[int, SlotRow] | None = None) -> SlotBatch:
        """The one way a SlotBatch is made: numpy arrays of `num_slots` rows, in the dtypes the
        decode program is compiled for. `rows` maps a slot index to its `SlotRow` (that row is
        active); every other slot is idle (inactive, page table all trash page 0, no stop ids,
        top_p 1). `build(b, w, ms)` with no rows is the all-idle batch of a warmup."""
        zeros = lambda dt: np.zeros(num_slots, dt)  # noqa: E731
        batch = cls(page_table=np.zeros((num_slots, table_width), np.int32),
                    cache_lens=zeros(np.int32), last_token=zeros(np.int32), active=zeros(bool),
                    num_generated=zeros(np.int32), max_new_tokens=zeros(np.int32),
                    stop_ids=np.full((num_slots, max_stop_tokens), -1, np.int32),
                    temperature=zeros(np.float32), top_k=zeros(np.int32),
                    top_p=np.ones(num_slots, np.float32), seeds=zeros(np.uint32))
        for i, row in (rows or {}).items():
            batch.set_row(i, row)
        return batch

    def set_row(self, i: int, row: SlotRow) -> None:
        """Makes slot i active with `row`'s values. Every value is converted and range-checked
        first (ValueError / OverflowError, e.g. an id beyond int32 or more stop ids than MS), so
        a row that does not fit leaves the batch as it was."""
        width, num_stop = self.page_table.shape[1], self.stop_ids.shape[1]
        if len(row.pages) > width:
            raise ValueError(f"{len(row.pages)} pages do not fit a page-table row of {width}")
        if len(row.stop_ids) > num_stop:
            raise ValueError(f"{len(row.stop_ids)} stop ids, the batch holds {num_stop}")
        pages = np.asarray(row.pages, np.int64)
        stop_ids = np.asarray(row.stop_ids, np.int64)
        ints = np.asarray([row.cache_len, row.last_token, row.num_generated, row.max_new_tokens,
                           row.top_k], np.int64)
        info = np.iinfo(np.int32)
        for name, values in (("pages", pages), ("stop_ids", stop_ids), ("counts", ints)):
            if values.size and (values.min() < info.min or values.max() > info.max):
                raise OverflowError(f"{name} {values.tolist()} do not fit int32")
        if not 0 <= row.seed < 2**32:
            raise OverflowError(f"seed {row.seed} does not fit uint32")
        temperature, top_p = np.float32(row.temperature), np.float32(row.top_p)
        self.page_table[i] = 0
        self.page_table[i, : len(pages)] = pages
        self.stop_ids[i] = -1
        self.stop_ids[i, : len(stop_ids)] = stop_ids
        (self.cache_lens[i], self.last_token[i], self.num_generated[i], self.max_new_tokens[i],
         self.top_k[i]) = ints
        self.temperature[i], self.top_p[i], self.seeds[i] = temperature, top_p, row.seed
        self.active[i] = True

    def clear_row(self, i: int) -> None:
        """Makes slot i idle again (as `build` leaves a slot with no row)."""
        self.page_table[i] = 0
        self.stop_ids[i] = -1
        for name in ("cache_lens", "last_token", "num_generated", "max_new_tokens", "top_k",
                     "temperature", "seeds"):
            getattr(self, name)[i] = 0
        self.top_p[i] = 1
        self.active[i] = False


class ModelRunner:
    """Owns the jitted prefill/decode/copy programs for one model graph."""

    def __init__(self, graphdef: nnx.GraphDef, *, block_pages: int, decode_steps: int,
                 max_seq_len: int, prefill_row_invariant: bool = False,
                 decode_attention: str = "xla"):
        self.graphdef = graphdef
        # "xla" or "cpu_kernel" (resolved by the engine), for PagedKVCache.decode_attention
        self.decode_attention = decode_attention
        self.prefill_row_invariant = prefill_row_invariant
        self.block_pages = block_pages
        self.decode_steps = decode_steps
        self.max_seq_len = max_seq_len
        self.traces: collections.Counter[str] = collections.Counter()
        self._prefill = jax.jit(self._prefill_impl, donate_argnums=(1, 2))
        # num_top is static: the default program (0) has no top-k in it, and a request asking
        # for top log-probs compiles the one variant with MAX_TOP_LOGPROBS once.
        self._decode = jax.jit(self._decode_impl, donate_argnums=(1, 2),
                               static_argnames=("num_top",))
        self._copy = jax.jit(self._copy_impl, donate_argnums=(0, 1))

    # ---- the compiled programs -------------------------------------------------------------

    @property
    def prefill_program(self) -> Callable:
        """The jitted prefill program `prefill` calls: (state, k_pool, v_pool, tokens, positions,
        segment_ids, page_table, cache_lens) -> (k_pool, v_pool), pools donated. Its `.lower(...)`
        gives what the engine compiles (`ppp_jax.scale.compile_engine` AOT-compiles it)."""
        return self._prefill

    @property
    def decode_program(self) -> Callable:
        """The jitted decode-block program `decode` calls: (state, k_pool, v_pool, SlotBatch,
        num_steps int32[], num_top=static int) -> (k_pool, v_pool, tokens, logprobs, num_valid
        [, top_ids, top_logprobs when num_top > 0]), pools donated."""
        return self._decode

    def use_programs(self, *, prefill: Callable | None = None,
                     decode: Callable | None = None) -> None:
        """Makes `prefill` / `decode` call these instead of the jitted programs from now on
        (e.g. AOT-compiled executables of `prefill_program` / `decode_program`, which take the
        same arguments). None keeps the current one."""
        if prefill is not None:
            self._prefill = prefill
        if decode is not None:
            self._decode = decode

    # ---- prefill ---------------------------------------------------------------------------

    def prefill(self, state, k_pool, v_pool, tokens, positions, segment_ids, page_table,
                cache_lens):
        """Writes the K/V of `tokens` [Bp, C] into the pool. Returns (k_pool, v_pool).

        positions/segment_ids int32 [Bp, C] (segment 0 = padding); page_table int32 [Bp, W];
        cache_lens int32 [Bp]. No logits are computed: the last prompt token is fed by the first
        decode step, which samples the first new token.

        With `prefill_row_invariant`, the rows are computed one after the other inside the
        program (a scan over rows), so each row's matmuls have the shapes of a one-row call and
        its K/V do not depend on the other rows: XLA picks dot kernels, and so summation orders,
        by problem size, and a [Bp * C, D] projection can round differently from a [C, D] one.
        """
        return self._prefill(state, k_pool, v_pool, tokens, positions, segment_ids, page_table,
                             cache_lens)

    def _prefill_impl(self, state, k_pool, v_pool, tokens, positions, segment_ids, page_table,
                      cache_lens):
        self.traces["prefill"] += 1
        model = nnx.merge(self.graphdef, state)

        def rows(k_pool, v_pool, tokens, positions, segment_ids, page_table, cache_lens):
            cache = PagedKVCache(k_pool, v_pool, page_table, cache_lens, self.block_pages,
                                 self.decode_attention)
            _, cache = model.hidden(tokens, positions, segment_ids, cache=cache)
            return cache.k_pages, cache.v_pages

        if not self.prefill_row_invariant:
            return rows(k_pool, v_pool, tokens, positions, segment_ids, page_table, cache_lens)

        def one_row(pools, row):  # every array of `row` is one row, kept 2-D / 1-D as [1, ...]
            return rows(*pools, *(x[None] for x in row)), None

        pools, _ = jax.lax.scan(one_row, (k_pool, v_pool),
                                (tokens, positions, segment_ids, page_table, cache_lens))
        return pools

    # ---- decode ----------------------------------------------------------------------------

    def decode(self, state, k_pool, v_pool, batch: SlotBatch, num_steps: int | None = None,
               num_top: int = 0):
        """Runs up to `num_steps` (<= decode_steps, default all) steps for all slots; stops early
        when no row is active. `num_steps` is a traced value: any count reuses one compilation.

        num_top: static; when > 0, also the `num_top` most likely tokens of every step (one more
        compilation per distinct value; the engine uses 0 or MAX_TOP_LOGPROBS).

        Returns (k_pool, v_pool, tokens int32 [B, k], logprobs f32 [B, k], num_valid int32 [B],
        top_ids int32 [B, k, num_top] | None, top_logprobs f32 [B, k, num_top] | None): row b's
        sampled tokens are tokens[b, :num_valid[b]]; the tops are None when num_top == 0.
        """
        steps = self.decode_steps if num_steps is None else min(num_steps, self.decode_steps)
        if num_top == 0:  # the default program, without the top-k outputs
            return (*self._decode(state, k_pool, v_pool, batch, jnp.int32(steps)), None, None)
        return self._decode(state, k_pool, v_pool, batch, jnp.int32(steps), num_top=num_top)

    def lower_decode(self, state, k_pool, v_pool, batch: SlotBatch, num_top: int = 0):
        """`decode_program` lowered (a `jax.stages.Lowered`, not run) for these arguments, as
        `decode` calls it; the arguments may be arrays or `jax.ShapeDtypeStruct`s."""
        steps = jax.ShapeDtypeStruct((), jnp.int32)  # traced: any count is this one program
        if num_top == 0:
            return self._decode.lower(state, k_pool, v_pool, batch, steps)
        return self._decode.lower(state, k_pool, v_pool, batch, steps, num_top=num_top)

    def _decode_impl(self, state, k_pool, v_pool, batch: SlotBatch, num_steps, num_top: int = 0):
        self.traces["decode" if num_top == 0 else f"decode_top{num_top}"] += 1
        model = nnx.merge(self.graphdef, state)
        num_slots = batch.last_token.shape[0]
        steps = self.decode_steps
        out_tokens = jnp.zeros((num_slots, steps), jnp.int32)
        out_logp = jnp.zeros((num_slots, steps), jnp.float32)
        num_valid = jnp.zeros((num_slots,), jnp.int32)
        # Top log-probs ride in the carry only when asked for (static), so the default
        # program is the same as without the feature.
        tops = ((jnp.zeros((num_slots, steps, num_top), jnp.int32),
                 jnp.zeros((num_slots, steps, num_top), jnp.float32)) if num_top else ())

        def cond(carry):
            i, active = carry[0], carry[3]
            return (i < num_steps) & jnp.any(active)

        def body(carry):
            i, k_pool, v_pool, active, lens, last, gen, out_tokens, out_logp, num_valid = carry[:10]
            cache = PagedKVCache(k_pool, v_pool, batch.page_table, lens, self.block_pages,
                                 self.decode_attention)
            seg = active.astype(jnp.int32)[:, None]
            hidden, cache = model.hidden(last[:, None], lens[:, None], seg, cache=cache)
            logits = model.logits(hidden)[:, 0].astype(jnp.float32)  # [B, V]
            keys = request_keys(batch.seeds, gen)
            logp = policy_logprobs(logits, batch.temperature)
            tok, tok_logp = sample_from_logprobs(logp, batch.temperature, batch.top_k,
                                                 batch.top_p, keys)
            out_tokens = out_tokens.at[:, i].set(tok)
            out_logp = out_logp.at[:, i].set(tok_logp)
            new_tops = ()
            if num_top:
                top_ids, top_lp = top_logprobs(logp, num_top)
                new_tops = (carry[10].at[:, i].set(top_ids), carry[11].at[:, i].set(top_lp))
            step = active.astype(jnp.int32)
            num_valid, lens, gen = num_valid + step, lens + step, gen + step
            stop = (jnp.any(tok[:, None] == batch.stop_ids, axis=1)
                    | (gen >= batch.max_new_tokens) | (lens + 1 >= self.max_seq_len))
            last = jnp.where(active, tok, last)
            active = active & ~stop
            return (i + 1, cache.k_pages, cache.v_pages, active, lens, last, gen, out_tokens,
                    out_logp, num_valid, *new_tops)

        carry = (jnp.int32(0), k_pool, v_pool, batch.active, batch.cache_lens, batch.last_token,
                 batch.num_generated, out_tokens, out_logp, num_valid, *tops)
        carry = jax.lax.while_loop(cond, body, carry)
        return carry[1], carry[2], carry[7], carry[8], carry[9], *carry[10:]

    # ---- copy-on-write -------------------------------------------------------------------------

    def copy_pages(self, k_pool, v_pool, src, dst):
        """Copies pages src[i] -> dst[i] in every layer (int32 [n]; pad with 0 -> 0)."""
        return self._copy(k_pool, v_pool, src, dst)

    def _copy_impl(self, k_pool, v_pool, src, dst):
        self.traces["copy"] += 1
        return k_pool.at[:, dst].set(k_pool[:, src]), v_pool.at[:, dst].set(v_pool[:, src])
