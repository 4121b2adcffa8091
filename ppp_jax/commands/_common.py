"""Argument and config plumbing shared by `ppp train`, `ppp eval`, `ppp sft` and `ppp demo`."""

from __future__ import annotations

import argparse
import logging
import sys


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML run config (e.g. configs/tiny_cpu.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. trainer.num_steps=3 rl.optim.learning_rate=1e-5")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--verbose", action="store_true", help="log at INFO level")


def load(args: argparse.Namespace, prog: str):
    """The run config, or None after printing the config error."""
    from ppp_jax.config.loader import ConfigError
    from ppp_jax.config.paths import check_input_paths
    from ppp_jax.config.run import load_run_config

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_run_config(args.config, args.overrides)
        # every path the command reads must be there before anything is built
        check_input_paths(cfg, prog.split()[-1], checkpoint_arg=getattr(args, "checkpoint", ""))
        return cfg
    except (ConfigError, ValueError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return None
