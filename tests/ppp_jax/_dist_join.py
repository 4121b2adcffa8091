"""What the multi-process helper scripts (`_dist_*.py`) share: their process arguments and how a
process joins the job (8 CPU devices in all, split evenly over the processes, gloo collectives)."""

from __future__ import annotations

import argparse
import os


def process_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds --num-processes, --process-id and --coordinator (HOST:PORT of process 0)."""
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--coordinator", default=None)
    return parser


def join(args: argparse.Namespace) -> None:
    """Joins the job described by `args` (a no-op for one process); before anything uses jax."""
    os.environ["JAX_PLATFORMS"] = "cpu"
    from ppp_jax.config.distributed import DistributedConfig
    from ppp_jax.scale.distributed import initialize

    initialize(DistributedConfig(
        coordinator_address=args.coordinator, num_processes=args.num_processes,
        process_id=args.process_id, local_device_count=8 // args.num_processes,
        initialization_timeout_s=120))
