"""Multi-process (multi-host) JAX: `jax.distributed.initialize` driven by a config or the
environment.

One process runs per host (per GPU node, per TPU VM). Every process runs the same program; the
global mesh spans all processes' devices, `jax.jit` programs are SPMD over it, and each process
feeds and reads only its own (addressable) shards. On CPU (tests, here) the cross-process
collectives go over gloo (`jax_cpu_collectives_implementation`), so a 2-process × 4-device run on
loopback computes exactly what one process with 8 devices computes.

Precedence for each field: an explicit `DistributedConfig` value, then the environment
(`PPP_COORDINATOR_ADDRESS`, `PPP_NUM_PROCESSES`, `PPP_PROCESS_ID`, `PPP_LOCAL_DEVICE_COUNT`,
falling back to JAX's own `JAX_COORDINATOR_ADDRESS` / `JAX_NUM_PROCESSES` / `JAX_PROCESS_ID`),
then single-process defaults. On Cloud TPU and SLURM, leave all three unset with
`auto_detect=True` and JAX finds them itself.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Literal

ENV_PREFIXES = ("PPP_", "JAX_")


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """How this process joins a multi-process JAX job (the `distributed` section of a run config)."""

    coordinator_address: str | None = None  # "host:port" of process 0's coordinator service
    num_processes: int | None = None  # total processes; None/1 = single-process
    process_id: int | None = None  # this process, 0 .. num_processes-1
    local_device_count: int | None = None  # CPU only: devices this process exposes (tests)
    cpu_collectives: Literal["gloo", "mpi", "none"] = "gloo"  # CPU cross-process collectives
    auto_detect: bool = False  # let JAX detect the cluster (Cloud TPU, SLURM, ...)
    initialization_timeout_s: int = 300

    def __post_init__(self):
        if self.num_processes is not None and self.num_processes < 1:
            raise ValueError(f"distributed.num_processes must be >= 1, got {self.num_processes}")
        if self.process_id is not None and self.num_processes is not None and not (
                0 <= self.process_id < self.num_processes):
            raise ValueError(f"distributed.process_id={self.process_id} must be in "
                             f"[0, num_processes={self.num_processes})")

    @property
    def multi_process(self) -> bool:
        return self.auto_detect or (self.num_processes or 1) > 1


def _env(name: str) -> str | None:
    for prefix in ENV_PREFIXES:
        value = os.environ.get(prefix + name)
        if value:
            return value
    return None


def _env_int(name: str) -> int | None:
    value = _env(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable *_{name}={value!r} is not an int") from None


def resolve(cfg: DistributedConfig | None = None) -> DistributedConfig:
    """`cfg` with every unset field filled from the environment (see the module docstring)."""
    cfg = cfg or DistributedConfig()
    return dataclasses.replace(
        cfg,
        coordinator_address=cfg.coordinator_address or _env("COORDINATOR_ADDRESS"),
        num_processes=cfg.num_processes if cfg.num_processes is not None else _env_int("NUM_PROCESSES"),
        process_id=cfg.process_id if cfg.process_id is not None else _env_int("PROCESS_ID"),
        local_device_count=(cfg.local_device_count if cfg.local_device_count is not None
                            else _env_int("LOCAL_DEVICE_COUNT")),
    )


def initialize(cfg: DistributedConfig | None = None) -> DistributedConfig:
    """Joins the multi-process job described by `cfg` (+ environment); a no-op for one process.

    Must run before anything touches a JAX backend (jax.devices(), the first jit). Returns the
    resolved config. Raises ValueError naming the missing field when a multi-process job is
    asked for without a coordinator address or process id.
    """
    import jax

    cfg = resolve(cfg)
    if cfg.local_device_count is not None:
        jax.config.update("jax_num_cpu_devices", cfg.local_device_count)
    if not cfg.multi_process:
        return cfg
    if cfg.cpu_collectives != "none":
        jax.config.update("jax_cpu_collectives_implementation", cfg.cpu_collectives)
    if cfg.auto_detect:
        jax.distributed.initialize(initialization_timeout=cfg.initialization_timeout_s)
        return cfg
    missing = [n for n in ("coordinator_address", "process_id") if getattr(cfg, n) is None]
    if missing:
        raise ValueError(f"a {cfg.num_processes}-process job needs {missing} (config "
                         f"`distributed.*` or env PPP_COORDINATOR_ADDRESS / PPP_PROCESS_ID)")
    jax.distributed.initialize(
        coordinator_address=cfg.coordinator_address,
        num_processes=cfg.num_processes,
        process_id=cfg.process_id,
        cluster_detection_method="deactivate",
        initialization_timeout=cfg.initialization_timeout_s,
    )
    return cfg


def shutdown() -> None:
    """Leaves the job (safe to call when not initialized)."""
    import jax

    if jax.process_count() > 1:
        jax.distributed.shutdown()


def process_slice(n: int, index: int | None = None, count: int | None = None) -> slice:
    """This process's contiguous share of `n` host-side work items (episodes to roll out, records
    to score): process i of P gets items [i·n/P, (i+1)·n/P), sizes differing by at most one.
    `index`/`count` default to `jax.process_index()` / `jax.process_count()`."""
    if index is None or count is None:
        import jax

        index = jax.process_index() if index is None else index
        count = jax.process_count() if count is None else count
    if not 0 <= index < count:
        raise ValueError(f"process index {index} is not in [0, {count})")
    return slice(index * n // count, (index + 1) * n // count)


def host_array(global_shape, sharding, host_value):
    """A global `jax.Array` of `global_shape` placed with `sharding`, built from a host numpy
    array that every process holds in full (each process uploads only its addressable shards).
    For inputs that are small or generated identically on every host (batches in tests)."""
    import jax

    return jax.make_array_from_callback(tuple(global_shape), sharding, lambda idx: host_value[idx])
