"""TPU chips: published per-chip figures, and the devices of a named topology for AOT compiles
(from any machine, with `libtpu` importable)."""

from __future__ import annotations

import dataclasses
import math
import os

import jax

GiB = 2**30


class AotError(RuntimeError):
    """AOT compilation cannot run (no libtpu, unknown topology, bad mesh) — the message says why."""


class DoesNotFit(AotError):
    """The compiled step needs more memory per chip than the chip has."""


@dataclasses.dataclass(frozen=True)
class ChipSpec:
    """Published per-chip figures of one TPU generation."""

    name: str  # our short name, as in topology strings ("v5p")
    hbm_gib: float  # HBM capacity per chip, as published
    peak_bf16_flops: float  # peak dense bf16 FLOP/s per chip
    hbm_bytes_per_s: float  # HBM bandwidth per chip
    source: str
    usable_gib: float | None = None  # what the TPU compiler says a program may use (see below)

    @property
    def limit_gib(self) -> float:
        """The HBM a step is checked against: the compiler's usable figure when known."""
        return self.usable_gib if self.usable_gib is not None else self.hbm_gib


# Sources (Cloud TPU system-architecture pages, read 2026-11):
#   v4  https://cloud.google.com/tpu/docs/v4   "32 GiB HBM2, 1200 GBps", "275 teraflops (bf16)"
#   v5e https://cloud.google.com/tpu/docs/v5e  "HBM2 16 GB, 819 GBps", "197 TFLOPs (bf16)"
#   v5p https://cloud.google.com/tpu/docs/v5p  "HBM2e 95 GB, 2765 GBps", "459 TFLOPs (bf16)"
#   v6e https://cloud.google.com/tpu/docs/v6e  "32 GB" HBM, "1638 GBps", "918 TFLOPs (bf16)"
# The pages write "GB". `usable_gib` is the "available HBM" the TPU compiler of libtpu 0.0.42.1
# states when it refuses a program (RESOURCE_EXHAUSTED: "... exceeds available HBM (95.74G)"),
# in XLA's 1024-based units: v5p 95.74, v6e 31.25, v5e 15.75 GiB (seen in bench/results and
# tests/ppp_jax/test_aot.py); not observed for v4, so v4 is checked against its published 32 GiB.
CHIPS: dict[str, ChipSpec] = {
    "v4": ChipSpec("v4", 32.0, 275e12, 1200e9, "https://cloud.google.com/tpu/docs/v4"),
    "v5e": ChipSpec("v5e", 16.0, 197e12, 819e9, "https://cloud.google.com/tpu/docs/v5e", 15.75),
    "v5p": ChipSpec("v5p", 95.0, 459e12, 2765e9, "https://cloud.google.com/tpu/docs/v5p", 95.74),
    "v6e": ChipSpec("v6e", 32.0, 918e12, 1638e9, "https://cloud.google.com/tpu/docs/v6e", 31.25),
}


# A step using more than this fraction of HBM is reported as fitting but "tight".
TIGHT_FRACTION = 0.95


def chip_of(topology: str) -> ChipSpec:
    """"v5p:4x4x4" -> CHIPS["v5p"]."""
    gen = topology.split(":", 1)[0].strip().lower()
    if gen not in CHIPS:
        raise AotError(f"unknown TPU generation {gen!r} in topology {topology!r}; known: "
                       f"{sorted(CHIPS)} (e.g. 'v5p:4x4x4', 'v6e:16x16')")
    return CHIPS[gen]


def topology_chips(topology: str) -> int:
    """Number of chips of a topology string: "v5p:4x4x8" -> 128."""
    try:
        dims = topology.split(":", 1)[1]
        return math.prod(int(d) for d in dims.lower().split("x"))
    except (IndexError, ValueError):
        raise AotError(f"topology {topology!r} must look like 'v5p:4x4x4' or 'v6e:16x16'") from None


def libtpu_available() -> tuple[bool, str]:
    """(True, "") if libtpu can be imported, else (False, why) — for skips and error messages."""
    try:
        import libtpu  # noqa: F401
    except ImportError as e:
        return False, f"libtpu is not installed ({e}); `pip install 'ppp-jax[test]'` or " \
                      f"`pip install libtpu==0.0.42.1` (the version jax[tpu]==0.10.2 pins)"
    return True, ""


def quiet_libtpu_env() -> None:
    """Environment for loading libtpu on a machine that is not a TPU VM. Effective only before
    libtpu is first loaded in this process (the `ppp compile` command calls it before importing
    jax).

    - ALLOW_MULTIPLE_LIBTPU_LOAD=1: libtpu otherwise takes an exclusive lock on
      /tmp/libtpu_lockfile, and any other JAX process on the machine that probed the TPU backend
      (every process, once libtpu is installed, unless JAX_PLATFORMS=cpu) makes AOT fail with
      "Internal error when accessing libtpu multi-process lockfile". Compiling never touches a
      chip, so sharing is safe.
    - TPU_SKIP_MDS_QUERY=1: skip the GCE metadata-server probe.
    """
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")


def tpu_devices(topology: str) -> list[jax.Device]:
    """The devices of a named TPU slice, usable as compile targets on this (CPU) machine.

    One device per chip on v5p/v5e/v6e (megacore on v5p); the list is in the order
    `jax.make_mesh` expects.
    """
    ok, why = libtpu_available()
    if not ok:
        raise AotError(f"AOT compilation for TPU needs libtpu: {why}")
    chip_of(topology)
    topology_chips(topology)
    quiet_libtpu_env()
    from jax.experimental import topologies

    try:
        desc = topologies.get_topology_desc(platform="tpu", topology_name=topology)
    except Exception as e:  # XlaRuntimeError, ValueError, ... depending on the failure
        raise AotError(f"cannot describe TPU topology {topology!r}: {e}") from e
    return list(desc.devices)


def hbm_per_device(topology: str, devices: int) -> float:
    """Usable HBM bytes per device of a slice (a device is a chip on v5e/v5p/v6e)."""
    return chip_of(topology).limit_gib * GiB * topology_chips(topology) / max(devices, 1)
