"""JAX's persistent compilation cache, set up once per command from its `compile_cache` section.

Every command that compiles (`ppp serve`, `train`, `eval`, `sft`, `demo`) calls
`use_compile_cache` right after its config is loaded, before anything is traced, and logs
`CompileStats.summary()` once it is up (serve) or done (the others):

    compile cache /root/.cache/ppp_jax/xla: 24 programs, 24 loaded from the cache, 0 compiled
        (XLA 0.6 s)

What JAX 0.10 does with the settings (jax/_src/compilation_cache.py, lru_cache.py, compiler.py):
  - `jax_compilation_cache_dir` turns the cache on; an entry is written after a program compiles
    and read before the next compile of the same key (HLO, compile options, devices, versions).
    The CPU backend serializes its executables, so CPU programs are cached like TPU/GPU ones.
  - `jax_persistent_cache_min_compile_time_secs` (default 1 s) and
    `jax_persistent_cache_min_entry_size_bytes` leave out fast or small programs; nearly every
    CPU program of a small model is both, so we set 0 s and -1 (no size floor).
  - Sharing: with no size limit (`jax_compilation_cache_max_size` = -1, JAX's default) an entry is
    written with a plain `write_bytes` and read with no lock, so a process can read another's
    half-written file (JAX then warns and compiles), and two writers of one key can interleave.
    With a limit, every read and write takes a `filelock.FileLock` on `<dir>/.lockfile`, so an
    entry is never seen half-written; hence `max_size_gb` must be > 0. A reader that waits more
    than 10 s for the lock (a huge entry being written) compiles instead (a warning, not a
    failure). Only process 0 of a multi-host job writes.
  - `JAX_ENABLE_COMPILATION_CACHE=false` (JAX's own switch) turns the cache off whatever the
    config says; the test suite sets it, so no test loads a program an earlier run compiled.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from pathlib import Path

import jax

from ppp_jax.config.compile_cache import CompileCacheConfig

log = logging.getLogger(__name__)

# jax.monitoring events (jax/_src/compiler.py, dispatch.py)
_HIT = "/jax/compilation_cache/cache_hits"
_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"  # a compile or a cache load


@dataclasses.dataclass
class CompileStats:
    """What this process handed to XLA since `use_compile_cache` (one instance per process).

    Attributes:
      dir: the cache directory in use ("" = off).
      programs: programs XLA compiled or loaded from the persistent cache.
      hits: of them, loaded from the cache.
      xla_s: wall time of those compiles and loads (tracing and lowering, which the cache does
        not save, are not in it).
    """

    dir: str = ""
    programs: int = 0
    hits: int = 0
    xla_s: float = 0.0
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    @property
    def compiled(self) -> int:
        """Programs compiled by XLA (not found in the cache, or the cache is off)."""
        return self.programs - self.hits

    def summary(self) -> str:
        where = f"compile cache {self.dir}" if self.dir else "compile cache off"
        return (f"{where}: {self.programs} programs, {self.hits} loaded from the cache, "
                f"{self.compiled} compiled (XLA {self.xla_s:.1f} s)")

    def _on_event(self, event: str, **_) -> None:
        if event == _HIT:
            with self._lock:
                self.hits += 1

    def _on_duration(self, event: str, duration: float, **_) -> None:
        if event == _BACKEND_COMPILE:
            with self._lock:
                self.programs += 1
                self.xla_s += duration


_STATS: CompileStats | None = None


def use_compile_cache(cfg: CompileCacheConfig) -> CompileStats:
    """Points JAX's persistent compilation cache at `cfg.dir` (created; "" turns it off) and
    starts counting this process's compiles. Call before the first compile; a later call with
    another directory switches to it (JAX's cache is reset) and keeps the counts.

    Returns the process's `CompileStats` (live: it keeps counting)."""
    global _STATS
    from jax.experimental.compilation_cache import compilation_cache as cc

    if _STATS is None:
        _STATS = CompileStats()
        jax.monitoring.register_event_listener(_STATS._on_event)
        jax.monitoring.register_event_duration_secs_listener(_STATS._on_duration)
    path = str(Path(os.path.expandvars(cfg.dir)).expanduser().absolute()) if cfg.dir else ""
    if path and not jax.config.jax_enable_compilation_cache:
        log.info("compile cache off: JAX_ENABLE_COMPILATION_CACHE is false")
        path = ""
    if jax.config.jax_compilation_cache_dir and path != jax.config.jax_compilation_cache_dir:
        cc.reset_cache()  # JAX opens its cache once per process, at the first compile
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", cfg.min_compile_time_s)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
        jax.config.update("jax_compilation_cache_max_size", int(cfg.max_size_gb * 2**30))
    jax.config.update("jax_compilation_cache_dir", path or None)
    _STATS.dir = path
    return _STATS


def current_stats() -> CompileStats | None:
    """The process's `CompileStats`, or None before `use_compile_cache` was called."""
    return _STATS
