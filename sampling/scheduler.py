"""The host side of the engine: sequences, slots, sessions, shared prefixes, memory pressure.

`EngineCore.step()` does one round of work, always in this order:
  1. drop cancelled sequences;
  2. admit waiting sequences into free slots (FCFS): give each the KV pages of everything it has
     not cached yet, share a prompt prefix that another sequence is prefilling or has prefilled
     (GRPO groups), then prefill what is still uncached in chunks, all but the last token;
  3. run one decode block (`decode_steps` steps) over the occupied slots, packed into the first
     rows of the smallest `EngineConfig.decode_buckets` row count that holds them (a block's
     cost follows the live sequences, not num_slots); the first step of a new sequence feeds
     its last prompt token and samples its first new token.

Invariant of a sequence in a slot: `cached == len(tokens) - 1`; tokens[-1] is the next token to
feed. A sequence's K/V live in its `pages` (page j holds positions [j*S, (j+1)*S)).

Memory pressure (not enough free pages) is resolved by freeing, in this order: cached prefixes,
idle sessions (least recently used first), pages held by waiting sequences, and finally (only to
let running sequences grow) the most recently admitted running sequences, which are preempted
and go back to the front of the queue with everything they generated; they are re-prefilled
later and continue exactly where they were (the RNG is keyed by (seed, token index)). Nothing
crashes for lack of memory as long as one sequence of `max_seq_len` tokens fits in the pool,
which `EngineConfig` checks.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import logging
import math
import random
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ppp_jax.sampling.config import EngineConfig
from ppp_jax.sampling.page_allocator import PageAllocator
from ppp_jax.sampling.params import (MAX_TOP_LOGPROBS, GenerationResult, Request, RequestError,
                                     TokenCallback, TopLogprobs)
from ppp_jax.sampling.runner import ModelRunner, SlotBatch, SlotRow

log = logging.getLogger(__name__)

# The decode program holds token ids, counts and top-k in int32.
INT32_MAX = 2**31 - 1


def _bucket(n: int, buckets: tuple[int, ...]) -> int:
    for b in buckets:
        if b >= n:
            return b
    return buckets[-1]


@functools.lru_cache(maxsize=4096)
def _chunk_split(n: int, buckets: tuple[int, ...]) -> tuple[int, ...]:
    """How `n` uncached tokens (n <= the largest bucket) are prefilled: the chunk buckets of the
    calls, largest first, the last one padded. It minimises the tokens computed (real +
    padding) plus, for every call after the first, the smallest bucket's worth of tokens (a
    call's own cost: dispatch, a pass over the cached pages), then the number of calls. With
    buckets (16, 64, 128, 256), 200 tokens run as 128 + 64 + 16 (208 computed, 3 calls) rather
    than one 256 chunk (28% padding); 255 as one 256 chunk; with (1, 4096), 4000 tokens as one
    4096 chunk, not 4000 calls."""
    cost = lambda c: (c[0] + (c[1] - 1) * buckets[0], c[1])  # noqa: E731
    best: list[tuple[int, int, tuple[int, ...]]] = [(0, 0, ())]  # best[m]: m tokens
    for m in range(1, n + 1):  # bottom-up, no recursion (buckets like (1, 4096) are allowed)
        cands = []
        for b in buckets:
            if b >= m:
                cands.append((b, 1, (b,)))
            else:
                total, calls, rest = best[m - b]
                cands.append((b + total, 1 + calls, tuple(sorted((b, *rest), reverse=True))))
        best.append(min(cands, key=cost))
    return best[n][2]


def _next_chunk(remaining: int, buckets: tuple[int, ...]) -> int:
    """Tokens of a sequence's next prefill call: the largest bucket while more than it remains,
    then the pieces of `_chunk_split` (the last piece: everything left)."""
    if remaining >= buckets[-1]:
        return buckets[-1]
    return min(_chunk_split(remaining, buckets)[0], remaining)


def _prefix_key(tokens: list[int]) -> bytes:
    return hashlib.blake2b(np.asarray(tokens, np.int64).tobytes(), digest_size=16).digest()


@dataclasses.dataclass(eq=False)
class Sequence:
    """One request in flight (host state)."""

    request: Request
    tokens: list[int]  # whole context: session history + prompt + generated so far
    prompt_len: int  # context length before the first sampled token
    seed: int
    on_tokens: TokenCallback | None
    on_done: Callable[[GenerationResult | None, BaseException | None], None]
    pages: list[int] = dataclasses.field(default_factory=list)
    cached: int = 0
    out_tokens: list[int] = dataclasses.field(default_factory=list)
    out_logprobs: list[float] = dataclasses.field(default_factory=list)
    out_top: list[TopLogprobs] = dataclasses.field(default_factory=list)
    slot: int | None = None
    admitted_at: int = -1
    cancelled: bool = False
    history_len: int = 0  # tokens of session history before this request's prompt
    _key: bytes | None = None

    @property
    def params(self):
        return self.request.params

    def prefix_key(self) -> bytes | None:
        """Key of tokens[:-1] if this sequence could share a cached prefix (nothing cached)."""
        if self.pages or self.cached or len(self.tokens) < 2:
            return None
        if self._key is None:
            self._key = _prefix_key(self.tokens[:-1])
        return self._key


@dataclasses.dataclass(eq=False)
class Session:
    """An episode's conversation and the KV pages holding it between turns."""

    session_id: str
    tokens: list[int] = dataclasses.field(default_factory=list)
    pages: list[int] = dataclasses.field(default_factory=list)
    cached: int = 0
    busy: bool = False
    last_used: int = 0


@dataclasses.dataclass(frozen=True, eq=False)
class SessionKV:
    """What the KV pool holds for an idle session (`EngineCore.session_kv`).

    cached: tokens of its context whose K/V are cached; num_pages: pages it holds;
    k, v: numpy [L, cached, K, H], position-ordered host copies.
    """

    cached: int
    num_pages: int
    k: np.ndarray
    v: np.ndarray


@dataclasses.dataclass(eq=False)
class PrefixEntry:
    """KV pages of a prompt prefix (tokens[:-1] of some sequence) kept for sharing."""

    pages: list[int]
    length: int
    last_used: int


class EngineCore:
    """Single-threaded scheduler over a `ModelRunner`. Not thread-safe: `engine.Engine` drives it
    from one background thread."""

    def __init__(self, runner: ModelRunner, state: Any, k_pool, v_pool, config: EngineConfig, *,
                 vocab_size: int | None = None):
        self.runner = runner
        # Top log-probs are computed for MAX_TOP_LOGPROBS tokens (one compiled variant) and cut
        # per request; a vocabulary smaller than that caps it (needed only by tiny test models).
        self.max_top = min(MAX_TOP_LOGPROBS, vocab_size or MAX_TOP_LOGPROBS)
        self.vocab_size = vocab_size
        self.state = state
        self.k_pool, self.v_pool = k_pool, v_pool
        self.config = config
        self.allocator = PageAllocator(config.num_pages)
        self.slots: list[Sequence | None] = [None] * config.num_slots
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.sessions: dict[str, Session] = {}
        self.prefixes: dict[bytes, PrefixEntry] = {}
        self._tick = 0
        self._seed_rng = random.Random(0x5EED)
        self.counters = collections.Counter()

    # ---- requests -------------------------------------------------------------------------

    def add_request(self, request: Request, on_done, on_tokens: TokenCallback | None = None) -> None:
        """Queues a request. Errors (too long, busy session, out-of-range parameters, ...) go to
        on_done(None, error) and touch nothing else. on_tokens(new_ids, new_logprobs,
        new_top_logprobs) follows each decode block that sampled tokens for it
        (`TokenCallback`)."""
        if self.released:
            self._notify(on_done, None, RuntimeError(
                "the engine's memory is released for a training update; update_params brings "
                "it back"))
            return
        try:
            seq = self._make_sequence(request, on_done, on_tokens)
        except Exception as e:  # noqa: BLE001 - one bad request fails only itself
            self._notify(on_done, None, e)
            return
        self.waiting.append(seq)

    @staticmethod
    def _notify(on_done, result, error) -> None:
        try:
            on_done(result, error)
        except Exception:  # noqa: BLE001 - a broken callback must not stop the engine
            log.exception("on_done callback failed")

    def _make_sequence(self, request: Request, on_done, on_tokens) -> Sequence:
        c = self.config
        p = request.params
        if not request.prompt_ids:
            raise RequestError("prompt_ids must not be empty")
        self._check_fits(request)
        if len(p.stop_token_ids) > c.max_stop_tokens:
            raise RequestError(f"at most {c.max_stop_tokens} stop token ids, got {len(p.stop_token_ids)}")
        if p.top_logprobs > self.max_top:
            raise RequestError(f"top_logprobs must be at most {self.max_top} for this model, "
                               f"got {p.top_logprobs}")
        history: list[int] = []
        pages: list[int] = []
        cached = 0
        if request.session_id is not None:
            session = self.sessions.setdefault(request.session_id, Session(request.session_id))
            if session.busy:
                raise RequestError(f"session {request.session_id!r} already has a request in flight")
            history, pages, cached = session.tokens, session.pages, session.cached
        tokens = history + request.prompt_ids
        if len(tokens) >= c.max_seq_len:
            where = f" (session {request.session_id!r} holds {len(history)})" if history else ""
            raise RequestError(
                f"context of {len(tokens)} tokens{where} leaves no room to generate: "
                f"max_seq_len is {c.max_seq_len}")
        if request.session_id is not None:
            session.busy, session.pages, session.cached = True, [], 0  # pages move to the sequence
        seed = p.seed if p.seed is not None else self._seed_rng.getrandbits(32)
        return Sequence(request=request, tokens=tokens, prompt_len=len(tokens), seed=seed,
                        on_tokens=on_tokens, on_done=on_done, pages=pages, cached=cached,
                        history_len=len(history))

    def _check_fits(self, request: Request) -> None:
        """Raises RequestError when a value of the request cannot go into the device programs'
        arrays (int32 ids and counts, float32 temperatures): checked here, at admission, so that
        building a batch never fails for everybody because of one request."""
        p = request.params
        vocab = self.vocab_size or INT32_MAX + 1
        bad = next((t for t in request.prompt_ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise RequestError(f"prompt_ids: token id {bad} is outside the vocabulary [0, {vocab})")
        for name, value in (("max_new_tokens", p.max_new_tokens), ("top_k", p.top_k)):
            if not 0 <= value <= INT32_MAX:
                raise RequestError(f"{name} must be at most {INT32_MAX}, got {value}")
        bad = next((t for t in p.stop_token_ids if not 0 <= t <= INT32_MAX), None)
        if bad is not None:
            raise RequestError(f"stop_token_ids: {bad} is not a token id in [0, {INT32_MAX}]")
        if not math.isfinite(p.temperature) or p.temperature > 3e38:
            raise RequestError(f"temperature must be a finite float32, got {p.temperature}")

    def cancel(self, request_id: str) -> None:
        """Marks the request cancelled; the next step finishes it with reason "cancelled"."""
        for seq in self._in_flight():
            if seq.request.request_id == request_id:
                seq.cancelled = True

    def end_session(self, session_id: str) -> None:
        """Frees a session's pages and forgets it (a request in flight keeps running)."""
        session = self.sessions.get(session_id)
        if session is None:
            return
        if session.busy:  # the in-flight sequence owns the pages; forget when it finishes
            session.session_id = ""
        else:
            self._free(session.pages)
        del self.sessions[session_id]

    def warmup(self, top_logprobs: bool = False) -> None:
        """Compiles every prefill bucket and the decode block of every row bucket now, on
        all-padding inputs (they write only to the trash page), so no request waits for a
        compilation later.
        top_logprobs: also the decode variant that returns top log-probs (otherwise compiled
        by the first request that asks for them)."""
        c = self.config
        for rows in c.prefill_rows:
            for chunk in c.prefill_chunks:
                z = np.zeros((rows, chunk), np.int32)
                self.k_pool, self.v_pool = self.runner.prefill(
                    self.state, self.k_pool, self.v_pool, z, z, z,
                    np.zeros((rows, c.table_width), np.int32), np.zeros(rows, np.int32))
        for rows in c.decode_buckets:
            batch = self._slot_batch(rows)
            for num_top in (0, self.max_top) if top_logprobs else (0,):
                self.k_pool, self.v_pool, *_ = self.runner.decode(
                    self.state, self.k_pool, self.v_pool, batch, 1, num_top)
        self._copy_pages([(0, 0)])

    def has_work(self) -> bool:
        return bool(self.waiting) or any(s is not None for s in self.slots)

    def stats(self) -> dict[str, int]:
        """Counters: KV pages (used/free/total), slots, queue, sessions, cached tokens."""
        live = [s for s in self.slots if s is not None]
        return {
            "pages_used": self.allocator.num_used,
            "pages_free": self.allocator.num_free,
            "pages_total": self.allocator.capacity,
            "page_size": self.config.page_size,
            "active": len(live),
            "waiting": len(self.waiting),
            "sessions": len(self.sessions),
            "cached_tokens": sum(s.cached for s in live) + sum(s.cached for s in self.waiting)
            + sum(s.cached for s in self.sessions.values()),
            "prefix_entries": len(self.prefixes),
            **{k: v for k, v in self.counters.items()},
        }

    @property
    def released(self) -> bool:
        """Whether `release_memory` dropped the pools and weights (until `update_state`)."""
        return self.state is None

    def release_memory(self) -> None:
        """Drops this engine's references to its K/V pools and weights, so that their device
        memory is freed for a training update (nothing else must be running). Every cached
        session and prefix is forgotten with the pools. The next `update_state` re-creates the
        pools (zeros, same shape, dtype and sharding) and installs the given weights.

        Weights the engine shares with someone else (the trainer's own params with
        `engine_layout: training`) stay alive through that other holder; only the engine's
        reference goes."""
        if self.released:
            return
        if self.has_work():
            raise RuntimeError("release_memory: requests are still running or waiting")
        self.sessions.clear()
        self.prefixes.clear()
        self.allocator = PageAllocator(self.config.num_pages)  # every page free, as at start
        k = self.k_pool
        self._pool_layout = jax.ShapeDtypeStruct(k.shape, k.dtype, sharding=k.sharding)
        self._state_layout = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
            if isinstance(x, jax.Array) else x, self.state)
        self.state = None
        self.k_pool = self.v_pool = None
        self.counters["memory_releases"] += 1

    def _restore_pools(self) -> None:
        layout = self._pool_layout
        make = jax.jit(lambda: jnp.zeros(layout.shape, layout.dtype), out_shardings=layout.sharding)
        self.k_pool, self.v_pool = make(), make()

    def update_state(self, new_state: Any) -> None:
        """Swaps in new weights (same tree, shapes and dtypes as the current ones; leaves are
        moved to the current leaves' shardings). Raises ValueError when they do not match.
        After `release_memory` it also re-creates the K/V pools."""
        if self.released:
            self.state = self._state_layout  # validated and placed like the weights it had
            try:
                self.update_state(new_state)
            except BaseException:
                self.state = None
                raise
            self._restore_pools()
            return
        old = self.state
        if jax.tree.structure(old) != jax.tree.structure(new_state):
            raise ValueError("update_params: the new state's tree differs from the model's")
        for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new_state)):
            if a.shape != b.shape or a.dtype != b.dtype:
                raise ValueError(f"update_params: leaf {b.shape} {b.dtype} does not match "
                                 f"{a.shape} {a.dtype}")
        self.state = jax.tree.map(
            lambda n, o: jax.device_put(n, o.sharding)
            if isinstance(o, (jax.Array, jax.ShapeDtypeStruct)) else n,
            new_state, old)

    def cancel_all(self) -> None:
        """Finishes every waiting and running sequence now with finish reason "cancelled"."""
        for seq in self._in_flight():
            seq.cancelled = True
        self._reap_cancelled()

    def fail_all(self, error: BaseException) -> None:
        """Ends every waiting and running sequence with on_done(None, error) and frees their
        pages (after a failed step). A callback that raises is logged and skipped."""
        for seq in self._in_flight():
            self._notify(seq.on_done, None, error)
        self.waiting.clear()
        for i, seq in enumerate(self.slots):
            if seq is not None:
                self._free(seq.pages)
                seq.pages = []
                self.slots[i] = None

    def _in_flight(self) -> list[Sequence]:
        return list(self.waiting) + [s for s in self.slots if s is not None]

    # ---- introspection (tests, tools) -----------------------------------------------------

    def session_kv(self, session_id: str) -> SessionKV:
        """Host copies of the K/V an idle session holds for its cached context.
        Raises KeyError for an unknown session, ValueError while a request of it is in flight."""
        session = self.sessions[session_id]
        if session.busy:
            raise ValueError(f"session {session_id!r} has a request in flight")
        k_pool, v_pool = np.asarray(self.k_pool), np.asarray(self.v_pool)
        pages = session.pages

        def context(pool):  # [L, pages, S, K, H] -> [L, cached, K, H]
            return pool[:, pages].reshape(pool.shape[0], -1, *pool.shape[3:])[:, :session.cached]

        return SessionKV(cached=session.cached, num_pages=len(pages), k=context(k_pool),
                         v=context(v_pool))

    def lower_decode(self, num_top: int = 0, rows: int | None = None):
        """The decode program lowered (a `jax.stages.Lowered`, not run) for the current weights
        and pools and an all-idle batch of `rows` rows (a decode bucket; default num_slots, the
        largest): the default program, or with `num_top` > 0 the top-log-prob variant. E.g.
        `.as_text()` is its HLO."""
        return self.runner.lower_decode(self.state, self.k_pool, self.v_pool,
                                        self._slot_batch(rows), num_top)

    # ---- one round -------------------------------------------------------------------------

    def step(self) -> None:
        self._tick += 1
        self._reap_cancelled()
        self._admit()
        if any(s is not None for s in self.slots):
            self._decode_block()

    def _reap_cancelled(self) -> None:
        for seq in [s for s in self.waiting if s.cancelled]:
            self.waiting.remove(seq)
            self._finish(seq, "cancelled")
        for seq in self.slots:
            if seq is not None and seq.cancelled:
                self._finish(seq, "cancelled")

    def _finish(self, seq: Sequence, reason: str) -> None:
        if seq.slot is not None:
            self.slots[seq.slot] = None
            seq.slot = None
        sid = seq.request.session_id
        session = self.sessions.get(sid) if sid is not None else None
        if session is not None and session.busy:
            keep = self._pages_for(seq.cached)  # drop the pages reserved for unused decode steps
            self._free(seq.pages[keep:])
            session.tokens, session.pages, session.cached = seq.tokens, seq.pages[:keep], seq.cached
            session.busy, session.last_used = False, self._tick
        else:
            self._free(seq.pages)
        seq.pages, seq.cached = [], 0
        top = list(seq.out_top) if seq.params.top_logprobs else None
        result = GenerationResult(request_id=seq.request.request_id, token_ids=list(seq.out_tokens),
                                  logprobs=list(seq.out_logprobs), finish_reason=reason,
                                  prompt_len=seq.prompt_len, session_id=sid, top_logprobs=top)
        self.counters[f"finished_{reason}"] += 1
        self._notify(seq.on_done, result, None)

    def _fail(self, seq: Sequence, error: BaseException) -> None:
        """Ends one sequence with on_done(None, error), frees its slot and pages; the others
        go on. A session it continued keeps its history (without this turn) and is re-prefilled
        by its next request."""
        if seq.slot is not None:
            self.slots[seq.slot] = None
            seq.slot = None
        if seq in self.waiting:
            self.waiting.remove(seq)
        self._free(seq.pages)
        seq.pages, seq.cached = [], 0
        sid = seq.request.session_id
        session = self.sessions.get(sid) if sid is not None else None
        if session is not None and session.busy:
            session.tokens, session.pages, session.cached = seq.tokens[:seq.history_len], [], 0
            session.busy, session.last_used = False, self._tick
        self.counters["failed"] += 1
        self._notify(seq.on_done, None, error)

    def _free(self, pages: list[int]) -> None:
        if pages:
            self.allocator.free(pages)

    # ---- memory ---------------------------------------------------------------------------

    def _reclaim(self, need: int, *, protect: Sequence | None = None,
                 protect_key: bytes | None = None) -> bool:
        """Frees cached prefixes, idle sessions and waiting sequences' pages until `need` pages
        are free (never those of `protect` or the prefix `protect_key`). Returns whether they are."""
        a = self.allocator
        for key in sorted(self.prefixes, key=lambda k: self.prefixes[k].last_used):
            if a.num_free >= need:
                return True
            if key == protect_key:
                continue
            self._free(self.prefixes.pop(key).pages)
        idle = sorted((s for s in self.sessions.values() if s.pages), key=lambda s: s.last_used)
        for session in idle:
            if a.num_free >= need:
                return True
            self._free(session.pages)
            session.pages, session.cached = [], 0
            self.counters["session_evictions"] += 1
        for seq in reversed(self.waiting):
            if a.num_free >= need:
                return True
            if seq is protect or not seq.pages:
                continue
            self._free(seq.pages)
            seq.pages, seq.cached, seq._key = [], 0, None
            self.counters["waiting_evictions"] += 1
        return a.num_free >= need

    def _pages_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.config.page_size)

    # ---- admission and prefill ------------------------------------------------------------

    def _admit(self) -> None:
        free_slots = [i for i, s in enumerate(self.slots) if s is None]
        if not free_slots or not self.waiting:
            return
        waiting_keys = collections.Counter(k for s in self.waiting if (k := s.prefix_key()))
        to_prefill: list[Sequence] = []
        leaders: dict[bytes, Sequence] = {}  # prefix being prefilled this round -> its sequence
        followers: list[tuple[Sequence, bytes]] = []
        shares: list[tuple[Sequence, PrefixEntry]] = []
        while free_slots and self.waiting:
            seq = self.waiting[0]
            key = seq.prefix_key()
            entry = self.prefixes.get(key) if key else None
            n = len(seq.tokens) - 1
            target = self._pages_for(n)
            if entry is not None or (key is not None and key in leaders):
                need = target - n // self.config.page_size  # a private copy of the partial page
            else:
                need = target - len(seq.pages)
            if self.allocator.num_free < need and not self._reclaim(need, protect=seq,
                                                                    protect_key=key):
                break
            self.waiting.popleft()
            if key:
                waiting_keys[key] -= 1
            seq.slot = free_slots.pop(0)
            seq.admitted_at = self._tick * 1_000_000 + seq.slot
            self.slots[seq.slot] = seq
            if entry is not None:
                shares.append((seq, entry))
            elif key is not None and key in leaders:
                followers.append((seq, key))
            else:
                seq.pages = seq.pages + self.allocator.alloc(max(0, target - len(seq.pages)))
                to_prefill.append(seq)
                if key is not None and waiting_keys[key] > 0:
                    leaders[key] = seq
        if not any(s is not None for s in self.slots) and self.waiting:
            # cannot happen when EngineConfig validated the pool
            self._fail(self.waiting[0], RequestError(
                f"KV pool exhausted with nothing running ({self.allocator.num_free} pages free)"))
        self._prefill(to_prefill)
        for key, seq in leaders.items():
            n = len(seq.tokens) - 1
            pages = seq.pages[: self._pages_for(n)]
            self.allocator.share(pages)
            self.prefixes[key] = PrefixEntry(pages, n, self._tick)
        copies: list[tuple[int, int]] = []
        for seq, entry in shares + [(s, self.prefixes[k]) for s, k in followers]:
            copies += self._share_prefix(seq, entry)
        self._copy_pages(copies)
        live = collections.Counter(k for s in self.waiting if (k := s.prefix_key()))
        for key in [k for k in self.prefixes if live[k] == 0]:
            self._free(self.prefixes.pop(key).pages)

    def _share_prefix(self, seq: Sequence, entry: PrefixEntry) -> list[tuple[int, int]]:
        """Gives `seq` the entry's full pages (shared) and a private copy of its partial page."""
        full = entry.length // self.config.page_size
        self.allocator.share(entry.pages[:full])
        seq.pages = list(entry.pages[:full])
        copies = []
        if entry.length % self.config.page_size:
            (new,) = self.allocator.alloc(1)
            seq.pages.append(new)
            copies.append((entry.pages[full], new))
        seq.cached = entry.length
        entry.last_used = self._tick
        self.counters["prefix_hits"] += 1
        self.counters["prefix_tokens_shared"] += entry.length
        return copies

    def _copy_pages(self, copies: list[tuple[int, int]]) -> None:
        if not copies:
            return
        n = _bucket(len(copies), tuple(2**i for i in range(20)))
        src = np.zeros(n, np.int32)
        dst = np.zeros(n, np.int32)
        src[: len(copies)], dst[: len(copies)] = zip(*copies)
        self.k_pool, self.v_pool = self.runner.copy_pages(self.k_pool, self.v_pool, src, dst)

    def _table(self, pages: list[int]) -> np.ndarray:
        row = np.zeros(self.config.table_width, np.int32)
        row[: len(pages)] = pages
        return row

    def _prefill(self, seqs: list[Sequence]) -> None:
        """Caches tokens[cached : len-1] of each sequence (pages already allocated)."""
        c = self.config
        work = [s for s in seqs if s.cached < len(s.tokens) - 1]
        max_rows = c.prefill_rows[-1]
        for g in range(0, len(work), max_rows):
            group = work[g:g + max_rows]
            while True:
                rows = [s for s in group if s.cached < len(s.tokens) - 1]
                if not rows:
                    break
                lens = [_next_chunk(len(s.tokens) - 1 - s.cached, c.prefill_chunks) for s in rows]
                if c.prefill_row_invariant:  # only rows whose own bucket is the first row's
                    own = _bucket(lens[0], c.prefill_chunks)
                    pick = [i for i, n in enumerate(lens) if _bucket(n, c.prefill_chunks) == own]
                    rows, lens = [rows[i] for i in pick], [lens[i] for i in pick]
                chunk = _bucket(max(lens), c.prefill_chunks)
                nrows = _bucket(len(rows), c.prefill_rows)
                tokens = np.zeros((nrows, chunk), np.int32)
                positions = np.zeros((nrows, chunk), np.int32)
                segs = np.zeros((nrows, chunk), np.int32)
                table = np.zeros((nrows, c.table_width), np.int32)
                cache_lens = np.zeros(nrows, np.int32)
                for r, (s, n) in enumerate(zip(rows, lens)):
                    tokens[r, :n] = s.tokens[s.cached:s.cached + n]
                    positions[r, :n] = np.arange(s.cached, s.cached + n)
                    segs[r, :n] = 1
                    table[r] = self._table(s.pages)
                    cache_lens[r] = s.cached
                self.k_pool, self.v_pool = self.runner.prefill(
                    self.state, self.k_pool, self.v_pool, tokens, positions, segs, table, cache_lens)
                for s, n in zip(rows, lens):
                    s.cached += n
                self.counters["prefill_tokens"] += sum(lens)

    # ---- decode -----------------------------------------------------------------------------

    def _slot_batch(self, num_rows: int | None = None) -> SlotBatch:
        """An all-idle batch of `num_rows` rows (default num_slots)."""
        c = self.config
        return SlotBatch.build(num_rows or c.num_slots, c.table_width, c.max_stop_tokens)

    def _decode_block(self) -> None:
        c = self.config
        steps = c.decode_steps
        # Pages for the positions this block may write: cached .. cached + steps - 1.
        for seq in sorted((s for s in self.slots if s is not None), key=lambda s: s.admitted_at):
            if seq.slot is None:  # preempted below while serving an older sequence
                continue
            need = self._pages_for(min(seq.cached + steps, c.max_seq_len)) - len(seq.pages)
            while need > 0 and self.allocator.num_free < need and not self._reclaim(need):
                victim = max((s for s in self.slots if s is not None), key=lambda s: s.admitted_at)
                self._preempt(victim)
                if victim is seq:
                    break
            if seq.slot is not None and need > 0:
                seq.pages = seq.pages + self.allocator.alloc(need)
        live = [s for s in self.slots if s is not None]
        if not live:
            return
        # Row r of the block is live[r]: the occupied slots packed into the first rows of the
        # smallest bucket. A row's results depend only on its own inputs (per-request seeds),
        # so packing changes no token; the K/V pages are reached through the page table.
        batch = self._slot_batch(_bucket(len(live), c.decode_buckets))
        row_of = {id(seq): r for r, seq in enumerate(live)}
        for seq in live:  # a row that cannot be built fails its own request only
            try:
                batch.set_row(row_of[id(seq)], SlotRow(
                    pages=seq.pages, cache_len=seq.cached, last_token=seq.tokens[-1],
                    num_generated=len(seq.out_tokens), max_new_tokens=seq.params.max_new_tokens,
                    stop_ids=seq.params.stop_token_ids, temperature=seq.params.temperature,
                    top_k=seq.params.top_k, top_p=seq.params.top_p, seed=seq.seed))
            except Exception as e:  # noqa: BLE001
                batch.clear_row(row_of[id(seq)])
                self._fail(seq, RequestError(f"request {seq.request.request_id} cannot be "
                                             f"decoded: {e}"))
        live = [s for s in live if s.slot is not None]
        if not live:
            return
        # A block right after admitting sequences runs one step, so their first tokens come
        # back after prefill + one step (time to first token), not after a whole block.
        fresh = any(not s.out_tokens for s in live)
        # The top-log-prob variant of the program runs only while some live request asks.
        num_top = self.max_top if any(s.params.top_logprobs for s in live) else 0
        self.k_pool, self.v_pool, toks, logps, nvalid, top_ids, top_lps = self.runner.decode(
            self.state, self.k_pool, self.v_pool, batch, 1 if fresh else steps, num_top)
        toks, logps, nvalid = np.asarray(toks), np.asarray(logps), np.asarray(nvalid)
        if num_top:
            top_ids, top_lps = np.asarray(top_ids), np.asarray(top_lps)
        self.counters["decode_blocks"] += 1
        self.counters["decode_rows"] += batch.active.shape[0]  # rows computed, idle ones too
        for seq in live:
            i = row_of[id(seq)]
            k_top = seq.params.top_logprobs
            new_t, new_l, new_top, reason = [], [], [], None
            for j in range(int(nvalid[i])):
                tok = int(toks[i, j])
                new_t.append(tok)
                new_l.append(float(logps[i, j]))
                if k_top:
                    new_top.append(list(zip(top_ids[i, j, :k_top].tolist(),
                                            top_lps[i, j, :k_top].tolist())))
                    seq.out_top.append(new_top[-1])
                seq.tokens.append(tok)
                seq.cached += 1
                seq.out_tokens.append(tok)
                seq.out_logprobs.append(new_l[-1])
                if tok in seq.params.stop_token_ids:
                    reason = "stop"
                elif len(seq.out_tokens) >= seq.params.max_new_tokens or len(seq.tokens) >= c.max_seq_len:
                    reason = "length"
                if reason:
                    break
            self.counters["decode_tokens"] += len(new_t)
            if seq.on_tokens is not None and new_t:
                try:
                    seq.on_tokens(new_t, new_l, new_top if k_top else None)
                except Exception as e:  # noqa: BLE001 - the caller's callback; fail it alone
                    log.exception("on_tokens callback failed")
                    self._fail(seq, e)
                    continue
            if reason:
                self._finish(seq, reason)

    def _preempt(self, seq: Sequence) -> None:
        """Frees a running sequence's pages and puts it back at the front of the queue."""
        self.slots[seq.slot] = None
        seq.slot = None
        self._free(seq.pages)
        seq.pages, seq.cached, seq._key = [], 0, None
        self.waiting.appendleft(seq)
        self.counters["preemptions"] += 1
