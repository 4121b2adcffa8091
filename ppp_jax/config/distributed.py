"""The distributed section: multi-host coordinator, process count and id; unset fields come
from PPP_*/JAX_* environment variables (`ppp_jax.scale.distributed.resolve`)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Literal

from ppp_jax.config.rules import NON_NEGATIVE, POSITIVE, register_rules

if TYPE_CHECKING:
    pass


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


register_rules(DistributedConfig, {"num_processes": POSITIVE, "process_id": NON_NEGATIVE,
                                   "local_device_count": POSITIVE,
                                   "initialization_timeout_s": POSITIVE})
