"""The `compile_cache` section: JAX's persistent compilation cache, shared by every command.

    compile_cache:
      dir: ~/.cache/ppp_jax/xla    # "" turns the cache off
      min_compile_time_s: 0.0      # cache every program, the CPU's sub-second ones too
      max_size_gb: 8.0             # least recently used entries are dropped beyond this

`ppp serve`, `ppp train`, `ppp eval`, `ppp sft` and `ppp demo` apply it before their first
compile (`ppp_jax.commands._compile_cache.use_compile_cache`), so a second start loads its
programs from disk instead of compiling them. Read by the run config (`RunConfig.compile_cache`)
and the serve config (`ServeConfig.compile_cache`).
"""

from __future__ import annotations

import dataclasses

from ppp_jax.config.rules import GT_ZERO, NON_NEGATIVE, register_rules


@dataclasses.dataclass(frozen=True)
class CompileCacheConfig:
    """Where compiled XLA programs are kept between runs.

    Attributes:
      dir: the cache directory (`~` is expanded; created when missing); "" = no persistent
        cache, every start compiles from scratch. Several processes may share it at once: JAX's
        LRU cache reads and writes each entry under a lock file in the directory (which
        `max_size_gb` turns on). An entry is keyed by the program's HLO, the compile options,
        the devices and the jax/XLA versions, so a different model, shape, mesh or version
        never loads another's program. The directory is trusted: anyone who can write to it
        can make our processes run code of theirs (JAX's documentation says so), so do not
        point it at a directory others write to.
      min_compile_time_s: programs that compiled faster than this are not written (JAX's
        default, 1 s, would leave out most CPU programs of a small model).
      max_size_gb: the cache's size limit in GiB (least recently used entries are evicted past
        it); must be > 0, since only a bounded cache takes the lock that makes sharing safe.
    """

    dir: str = "~/.cache/ppp_jax/xla"
    min_compile_time_s: float = 0.0
    max_size_gb: float = 8.0


register_rules(CompileCacheConfig, {"min_compile_time_s": NON_NEGATIVE, "max_size_gb": GT_ZERO})
