"""What the side-by-side benchmarks (bench/single_turn.py, bench/multiturn.py) share: the machine
and load they report, and the random checkpoint every system reads."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path


def pin_one_core() -> None:
    """`--single-thread`: this process on one core, XLA single-threaded (torch callers also set
    one thread). Must run before jax or torch start their thread pools."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen="
                               "false intra_op_parallelism_threads=1").strip()


def load_averages() -> list[str]:
    """The 1, 5 and 15 minute load averages ("?" where /proc/loadavg cannot be read)."""
    try:
        return Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        return ["?"] * 3


def cpu_model() -> str:
    """The CPU's model name (lscpu), else what `platform` knows."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(l.split(":", 1)[1].strip() for l in out.splitlines()
                    if l.startswith("Model name"))
    except Exception:  # noqa: BLE001
        return platform.processor() or platform.machine()


def ensure_checkpoint(workdir: Path, config: dict) -> None:
    """Writes the random model `config` (ModelConfig fields) as a Hugging Face checkpoint into
    `workdir` unless one is there; in a child process, so the driver never imports jax or torch."""
    if (workdir / "config.json").exists():
        return
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    subprocess.run([sys.executable, "-c",
                    "import sys, json; from ppp_jax.model import testing as mt; "
                    "mt.write_tiny_hf_checkpoint(sys.argv[1], seed=0, **json.loads(sys.argv[2]))",
                    str(workdir), json.dumps(config)], check=True, env=env)
