"""The engine's sizes (`EngineConfig`): slots, KV pages, prefill buckets. One engine replica's
shape; the run config's `engine` section (`ppp_jax.config.compile.EngineSpec`) is this plus where
the replicas live."""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """Sizes of the engine. All are static: they fix the compiled shapes.

    Attributes:
      num_slots: B, sequences decoded together (continuous batching fills freed slots).
      decode_rows: row-count buckets of the decode block, ascending, at most num_slots: a block
        runs over the smallest bucket that holds the live sequences (packed into its first
        rows), so its cost follows the live slots, not num_slots. () = the powers of two from 8
        below num_slots, then num_slots (32 slots: 8, 16, 32); num_slots is always the last
        bucket. One decode program is compiled per bucket (and per top-log-prob variant), so
        each bucket is one more compile at start-up. No bucket below 8 by default: on an
        accelerator a step of fewer rows reads the same weights and costs about the same; on a
        CPU, where small batches are cheaper, list them (`[1, 2, 4]`). `[num_slots]` gives the
        single program of a fixed batch.
      page_size: S, tokens per KV page.
      num_pages: P, pages in the pool (page 0 is reserved); memory = 2 * L * P * S * K * H * bytes.
      max_seq_len: longest sequence (context + generation) one slot can hold.
      decode_steps: decode steps per host round-trip (one compiled while-loop).
      prefill_chunks: chunk-length buckets for prefill, ascending; a prompt is prefilled in chunks
        of the largest bucket, its remainder as a sum of buckets, only the last one padded, chosen
        to compute the fewest tokens counting each extra call as the smallest bucket's worth
        (`scheduler._chunk_split`): with (16, 64, 128, 256) a 200-token remainder runs as
        128 + 64 + 16 rather than one 256 chunk. Each bucket is one more compiled program per
        row bucket.
      prefill_rows: row-count buckets for batched prefill, ascending.
      block_pages: pages read per step of the paged-attention loop.
      max_stop_tokens: most stop ids per request.
      kv_dtype: dtype of the KV pool (None: the model's compute dtype).
      prefill_row_invariant: make a prompt's K/V (and so every later log-prob) bit-identical
        whichever prompts are prefilled with it: one call's rows are computed one after the
        other inside the program, and only rows whose own chunk bucket is the same share a call.
        Without it, batched rows run as one [rows * chunk, D] matmul whose rounding can differ
        from a one-row call's (XLA chooses dot kernels by size) in the last bits. It gives up
        the larger matmuls of batching (on accelerators, weights are read once per row), so it
        is off by default; `prefill_rows: [1]` is invariant without it.
      decode_attention: how a decode step attends to the cached tokens. "xla": a loop over
        blocks of pages in XLA (each block gathered, then two dots). "cpu_kernel": a C++ XLA FFI
        custom call (`sampling/cpu_kernels/`, compiled with the system's g++ on first use and
        cached) that reads the pages where they lie; CPU, an engine on one device, float32 or
        bfloat16 only. "auto" (default): the kernel when the engine runs on one CPU device and
        the kernel builds (else, with one warning, XLA); XLA on accelerators and sharded meshes.
        Same results up to float32 summation order (docs/sampling.md).
    """

    num_slots: int = 8
    decode_rows: tuple[int, ...] = ()
    page_size: int = 16
    num_pages: int = 1024
    max_seq_len: int = 4096
    decode_steps: int = 8
    prefill_chunks: tuple[int, ...] = (32, 128, 512)
    prefill_rows: tuple[int, ...] = (1, 4)
    block_pages: int = 8
    max_stop_tokens: int = 8
    kv_dtype: str | None = None
    prefill_row_invariant: bool = False
    decode_attention: Literal["auto", "xla", "cpu_kernel"] = "auto"

    def __post_init__(self):
        for name in ("num_slots", "page_size", "max_seq_len", "decode_steps", "block_pages",
                     "max_stop_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"EngineConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("prefill_chunks", "prefill_rows"):
            v = getattr(self, name)
            if not v or list(v) != sorted(set(v)) or v[0] < 1:
                raise ValueError(f"EngineConfig.{name} must be ascending positive ints, got {v}")
        if self.decode_attention not in ("auto", "xla", "cpu_kernel"):
            raise ValueError(f"EngineConfig.decode_attention must be auto, xla or cpu_kernel, "
                             f"got {self.decode_attention!r}")
        rows = self.decode_rows
        if rows and (list(rows) != sorted(set(rows)) or rows[0] < 1 or rows[-1] > self.num_slots):
            raise ValueError(f"EngineConfig.decode_rows must be ascending positive ints of at most "
                             f"num_slots={self.num_slots}, got {rows}")
        if self.num_pages - 1 < self.pages_per_seq:
            raise ValueError(
                f"EngineConfig: the pool ({self.num_pages} pages, one reserved) must hold one "
                f"sequence of max_seq_len={self.max_seq_len} tokens = {self.pages_per_seq} pages "
                f"of {self.page_size}")

    @property
    def pages_per_seq(self) -> int:
        return -(-self.max_seq_len // self.page_size)

    @property
    def decode_buckets(self) -> tuple[int, ...]:
        """The decode block's row counts, ascending, the last num_slots (see `decode_rows`)."""
        rows = self.decode_rows or tuple(2**i for i in range(3, self.num_slots.bit_length())
                                         if 2**i < self.num_slots)
        return tuple(r for r in rows if r < self.num_slots) + (self.num_slots,)

    @property
    def table_width(self) -> int:
        """W: page-table columns, pages_per_seq rounded up to a multiple of block_pages."""
        return -(-self.pages_per_seq // self.block_pages) * self.block_pages
