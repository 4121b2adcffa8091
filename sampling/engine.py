"""`Engine`: the public face of the sampling engine (threads, asyncio, weights, sharding).

One background thread owns the `EngineCore` (scheduler, KV pool, compiled programs) and runs
`step()` while there is work. Every other thread talks to it through a mailbox of callables, so
`submit` / `cancel` / `end_session` / `update_params` are safe from anywhere, and hundreds of
asyncio coroutines can `await engine.generate(request)` at once: they all feed the same
continuous batch.

    engine = Engine.from_pretrained("path/to/hf_checkpoint", EngineConfig(num_slots=8))
    result = engine.generate_batch([Request([0, 5, 7], SamplingParams(temperature=0))])[0]
    result = await engine.generate(Request(ids, SamplingParams(temperature=1.0, seed=3)))
    engine.close()
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ppp_jax.sampling.cpu_kernels import resolve_decode_attention
from ppp_jax.sampling.paged_cache import PagedKVCache
from ppp_jax.sampling.params import GenerationResult, Request, TokenCallback, TopLogprobs
from ppp_jax.sampling.runner import ModelRunner
from ppp_jax.sampling.config import EngineConfig
from ppp_jax.sampling.scheduler import EngineCore, SessionKV

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StreamChunk:
    """One streamed piece of a request: new tokens and log-probs; `result` set on the last one.
    `top_logprobs`: one list per new token when the request asked for them, else None."""

    token_ids: list[int]
    logprobs: list[float]
    result: GenerationResult | None = None
    top_logprobs: list[TopLogprobs] | None = None


def _resolver(fut: concurrent.futures.Future):
    """on_done callback that settles `fut` once (result or exception)."""

    def done(result, error):
        if fut.done():
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)

    return done


def _post(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    """`loop.call_soon_threadsafe(fn, *args)` from the engine thread, or nothing once the loop
    is closed: its consumer is gone (e.g. a server that exited with requests in flight), and
    raising here would only log a traceback from the engine thread."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, *args)


def kv_pool_sharding(mesh: Mesh | None, num_kv_heads: int) -> NamedSharding | None:
    """KV heads over the mesh's "tensor" axis when it divides them, else replicated."""
    if mesh is None:
        return None
    tensor = mesh.shape.get("tensor", 1)
    heads = "tensor" if tensor > 1 and num_kv_heads % tensor == 0 else None
    return NamedSharding(mesh, PartitionSpec(None, None, None, heads, None))


class Engine:
    """Continuous-batching, paged-KV sampling engine for a `SeedOssForCausalLM`.

    Args:
      model: the NNX model (its weights may already be sharded on `mesh`). It is split once into
        graphdef and state; the state is a jit argument from then on.
      config: static engine sizes.
      mesh: optional device mesh; the KV pool's kv-head axis goes over "tensor".
    """

    def __init__(self, model: nnx.Module, config: EngineConfig = EngineConfig(), *,
                 mesh: Mesh | None = None):
        self.config = config
        self.model_config = model.config
        self.mesh = mesh
        graphdef, state = nnx.split(model)
        mc = model.config
        kv_dtype = jnp.dtype(config.kv_dtype or mc.dtype)
        # The pool lives on the weights' mesh even when none is given (loaded weights sit on a
        # 1x1x1 mesh): a pool of another sharding type than the programs' outputs made the first
        # real prefill after `warmup` trace and compile a second time (~2 s on the bench model).
        pool_mesh = mesh
        leaf_sharding = getattr(jax.tree.leaves(state)[0], "sharding", None)
        if pool_mesh is None and isinstance(leaf_sharding, NamedSharding):
            pool_mesh = leaf_sharding.mesh
        k_pool, v_pool = PagedKVCache.init_pool(
            mc.num_layers, config.num_pages, config.page_size, mc.num_kv_heads, mc.head_dim,
            kv_dtype, kv_pool_sharding(pool_mesh, mc.num_kv_heads))
        # The engine's devices: the mesh's, else the weights' (the pool goes where they are).
        devices = (pool_mesh.devices.flat if pool_mesh is not None
                   else getattr(leaf_sharding, "device_set", None) or jax.devices()[:1])
        devices = list(devices)
        self.decode_attention = resolve_decode_attention(
            config.decode_attention, platform=devices[0].platform, num_devices=len(devices))
        self.runner = ModelRunner(graphdef, block_pages=config.block_pages,
                                  decode_steps=config.decode_steps, max_seq_len=config.max_seq_len,
                                  prefill_row_invariant=config.prefill_row_invariant,
                                  decode_attention=self.decode_attention)
        self._core = EngineCore(self.runner, state, k_pool, v_pool, config,
                                vocab_size=mc.vocab_size)
        self._mailbox: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="ppp-engine", daemon=True)
        self._thread.start()

    @classmethod
    def from_pretrained(cls, path: str | Path, config: EngineConfig = EngineConfig(), *,
                        mesh: Mesh | None = None, dtype: str | None = None, **overrides) -> Engine:
        """Loads a checkpoint directory (Hugging Face or ppp_jax orbax) with
        `ppp_jax.model.api.load_pretrained` and starts an engine on it.

        dtype: compute dtype (default: the checkpoint's). overrides: ModelConfig fields.
        """
        from ppp_jax.model.api import load_pretrained

        model = load_pretrained(path, mesh=mesh, dtype=dtype, **overrides)
        return cls(model, config, mesh=mesh)

    # ---- the engine thread ----------------------------------------------------------------

    def _loop(self) -> None:
        core = self._core
        while not self._closed:
            try:
                block = not core.has_work()
                while True:
                    try:
                        fn = self._mailbox.get(block=block, timeout=0.5 if block else None)
                    except queue.Empty:
                        break
                    try:
                        fn()
                    except Exception:  # noqa: BLE001 - one caller's call; the rest go on
                        log.exception("engine call failed")
                    block = False
                if core.has_work():
                    core.step()
            except BaseException as e:  # noqa: BLE001 - keep serving
                # Per-request faults (bad values, callbacks) are failed one by one inside the
                # step; what reaches here is the device program itself failing, which no single
                # request can be blamed for, so everything in flight fails with it.
                log.exception("engine step failed")
                core.fail_all(e)

    def _call(self, fn: Callable[[], Any]) -> Any:
        """Runs fn() on the engine thread and returns its result (blocking)."""
        if threading.current_thread() is self._thread:
            return fn()
        fut: concurrent.futures.Future = concurrent.futures.Future()

        def run():
            try:
                fut.set_result(fn())
            except BaseException as e:  # noqa: BLE001
                fut.set_exception(e)

        self._mailbox.put(run)
        return fut.result()

    # ---- requests ------------------------------------------------------------------------

    def submit(self, request: Request, on_tokens: TokenCallback | None = None,
               ) -> concurrent.futures.Future[GenerationResult]:
        """Queues `request`; the future resolves to its `GenerationResult` (or a RequestError).

        on_tokens(new_ids, new_logprobs, new_top_logprobs) is called on the engine thread after
        each decode block that sampled tokens for it; new_top_logprobs is one list of
        (id, log-prob) per id when `params.top_logprobs` > 0, else None (`TokenCallback`).
        """
        if self._closed:
            raise RuntimeError("engine is closed")
        fut: concurrent.futures.Future[GenerationResult] = concurrent.futures.Future()
        done = _resolver(fut)
        self._mailbox.put(lambda: self._core.add_request(request, done, on_tokens))
        return fut

    def submit_many(self, requests: list[Request],
                    on_tokens: list[TokenCallback | None] | None = None,
                    ) -> list[concurrent.futures.Future[GenerationResult]]:
        """Queues several requests at once (they are admitted together, as one batch, so
        requests with the same prompt share its prefill and KV pages).

        on_tokens: optional per-request token callbacks (see `submit`).
        """
        if self._closed:
            raise RuntimeError("engine is closed")
        on_tokens = on_tokens or [None] * len(requests)
        if len(on_tokens) != len(requests):
            raise ValueError("on_tokens needs one callback (or None) per request")
        futures, adds = [], []
        for request, cb in zip(requests, on_tokens):
            fut: concurrent.futures.Future[GenerationResult] = concurrent.futures.Future()
            futures.append(fut)
            adds.append((request, _resolver(fut), cb))

        def add_all():
            for request, done, cb in adds:
                self._core.add_request(request, done, cb)

        self._mailbox.put(add_all)
        return futures

    def generate_batch(self, requests: list[Request]) -> list[GenerationResult]:
        """Runs all requests through the continuous batch; results in request order."""
        return [f.result() for f in self.submit_many(requests)]

    def warmup(self, top_logprobs: bool = False) -> None:
        """Compiles every prefill bucket and the decode program now (a server calls this before
        accepting traffic, so no request waits for a compilation). top_logprobs: also the decode
        variant used while some request asks for top log-probs."""
        self._call(lambda: self._core.warmup(top_logprobs))

    async def generate(self, request: Request) -> GenerationResult:
        """Awaitable generation. Cancelling the awaiting task cancels the request."""
        fut = self.submit(request)
        try:
            return await asyncio.wrap_future(fut)
        except asyncio.CancelledError:
            self.cancel(request.request_id)
            raise

    async def stream(self, request: Request) -> AsyncIterator[StreamChunk]:
        """Yields a StreamChunk per decode block, the last one carrying the final result."""
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue = asyncio.Queue()

        def on_tokens(ids, logps, tops):
            _post(loop, chunks.put_nowait, StreamChunk(list(ids), list(logps), top_logprobs=tops))

        fut = self.submit(request, on_tokens)
        fut.add_done_callback(lambda f: _post(loop, chunks.put_nowait, f))
        try:
            while True:
                item = await chunks.get()
                if isinstance(item, StreamChunk):
                    yield item
                    continue
                result = item.result()  # raises the request's error, if any
                yield StreamChunk([], [], result, [] if result.top_logprobs is not None else None)
                return
        finally:
            if not fut.done():
                self.cancel(request.request_id)

    async def stream_many(self, requests: list[Request]) -> AsyncIterator[tuple[int, StreamChunk]]:
        """Streams several requests submitted together (e.g. the n samples of one prompt, which
        then share the prompt's pages). Yields (request index, StreamChunk); each request's last
        chunk carries its result. Leaving early cancels the requests still running."""
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue = asyncio.Queue()

        def callback(i):
            def on_tokens(ids, logps, tops):
                _post(loop, chunks.put_nowait, (i, StreamChunk(list(ids), list(logps),
                                                               top_logprobs=tops)))
            return on_tokens

        futures = self.submit_many(requests, [callback(i) for i in range(len(requests))])
        for i, fut in enumerate(futures):
            fut.add_done_callback(
                lambda f, i=i: _post(loop, chunks.put_nowait, (i, f)))
        pending = len(requests)
        try:
            while pending:
                i, item = await chunks.get()
                if isinstance(item, StreamChunk):
                    yield i, item
                    continue
                pending -= 1
                result = item.result()  # raises the request's error, if any
                yield i, StreamChunk([], [], result,
                                     [] if result.top_logprobs is not None else None)
        finally:
            for request, fut in zip(requests, futures):
                if not fut.done():
                    self.cancel(request.request_id)

    def cancel(self, request_id: str) -> None:
        """Cancels a request (its result gets finish_reason "cancelled" at the next step)."""
        self._mailbox.put(lambda: self._core.cancel(request_id))

    def end_session(self, session_id: str) -> None:
        """Frees a session's KV pages. Returns at once (safe inside a coroutine); the engine
        applies it before its next step, in order with later calls."""
        self._mailbox.put(lambda: self._core.end_session(session_id))

    # ---- weights ---------------------------------------------------------------------------

    def update_params(self, new_state: nnx.State | nnx.Module) -> None:
        """Swaps in new weights between engine steps, without recompiling.

        `new_state` (an nnx.State from `nnx.state(model)`, or a model) must have the same tree,
        shapes and dtypes as the current one; leaves are moved to the current shardings.
        Requests in flight continue with the new weights from the next decode block on.
        The old weights are dropped as soon as the swap happens.
        """
        if isinstance(new_state, nnx.Module):
            new_state = nnx.state(new_state)

        self._call(lambda: self._core.update_state(new_state))

    def release_memory(self) -> None:
        """Frees the K/V pools and drops the engine's reference to its weights (see
        `EngineCore.release_memory`): for a training update on the same devices. Cached sessions
        are forgotten. The engine must be idle; requests submitted before the next
        `update_params` fail. `update_params` re-creates the pools and installs the weights."""
        self._call(self._core.release_memory)

    @property
    def memory_released(self) -> bool:
        """Whether the pools and weights are released (until the next `update_params`)."""
        return self._core.released

    def weights(self) -> nnx.State:
        """The weights the engine samples with now: the model state (`nnx.split`'s, as
        `update_params` takes it), each leaf placed where the engine holds it. Read-only: swap
        weights with `update_params`."""
        return self._core.state

    # ---- introspection --------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """KV pages used/free/total, active slots, waiting requests, sessions, counters."""
        return self._call(self._core.stats)

    @property
    def compilations(self) -> dict[str, int]:
        """How many times each program was traced (prefill counts one per shape bucket)."""
        return dict(self.runner.traces)

    def kv_pool_layout(self) -> jax.ShapeDtypeStruct:
        """Shape [L, P, S, K, H], dtype and sharding of each of the K and V page pools (the two
        are laid out alike) as the engine holds them now; not their contents."""
        def layout():
            k = self._core.k_pool
            return jax.ShapeDtypeStruct(k.shape, k.dtype, sharding=k.sharding)

        return self._call(layout)

    def session_kv(self, session_id: str) -> SessionKV:
        """Host copies of the K/V the pool holds for an idle session's cached context
        (`SessionKV`: cached tokens, pages held, k and v [L, cached, K, H])."""
        return self._call(lambda: self._core.session_kv(session_id))

    def lower_decode(self, num_top: int = 0, rows: int | None = None) -> jax.stages.Lowered:
        """The decode program lowered for the current weights and pools (not run, nothing
        compiled): the default program, or the top-log-prob variant for `num_top` > 0; for a
        block of `rows` rows (one of `config.decode_buckets`; default num_slots).
        `.as_text()` is its HLO."""
        return self._call(lambda: self._core.lower_decode(num_top, rows))

    @property
    def closed(self) -> bool:
        """Whether `close` has stopped the engine (it takes no requests then)."""
        return self._closed

    def close(self) -> None:
        """Stops the engine thread; requests still in flight are cancelled."""
        if self._closed:
            return

        def stop():
            self._core.cancel_all()
            self._closed = True

        self._mailbox.put(stop)
        self._thread.join(timeout=60)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
