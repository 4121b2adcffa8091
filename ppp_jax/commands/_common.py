"""Argument, logging and config plumbing shared by the `ppp` commands."""

from __future__ import annotations

import argparse
import logging
import sys

# Our loggers (model, sampling and envs install as ppp_jax subpackages, so one name covers all).
LOGGER = "ppp_jax"
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


class UsageError(ValueError):
    """A command-line argument is wrong; the message names it and says what to write instead."""


def add_override_arguments(parser: argparse.ArgumentParser,
                           example: str = "trainer.num_steps=3 rl.optim.learning_rate=1e-5") -> None:
    """The positional `KEY=VALUE` overrides every config-taking command accepts after CONFIG;
    `example`: overrides of keys that command's config has."""
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help=f"config overrides (dotted keys), e.g. {example}; options may come "
                             "before or after")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """CONFIG, overrides, --no-progress and --verbose (train, eval, sft, demo)."""
    parser.add_argument("config", help="YAML run config (e.g. configs/tiny_cpu.yaml)")
    add_override_arguments(parser)
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (when stderr is not a terminal, progress is "
                             "logged every 30 s instead of drawn)")
    parser.add_argument("--verbose", action="store_true",
                        help="log ppp_jax's INFO messages (resume, dropped rows, ...)")


def configure_logging(verbose: bool) -> None:
    """WARNING and above from everything; with `verbose`, INFO from ppp_jax's own loggers too.

    A library imported before the command runs may already have configured the root logger
    (absl does, through orbax) at WARNING, which made `logging.basicConfig(level=INFO)` a silent
    no-op and `--verbose` useless. So the level is set on the `ppp_jax` logger itself, whose
    records then pass through whatever handlers the root has (a handler of our own is added when
    none of them lets INFO through). Other libraries' INFO (orbax logs each checkpoint write in
    dozens of lines) stays hidden, and handlers that are already there (pytest's) are kept.
    """
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT, stream=sys.stderr)
    ours = logging.getLogger(LOGGER)
    ours.setLevel(logging.INFO if verbose else logging.NOTSET)
    passes_info = any(h.level <= logging.INFO for h in root.handlers)
    mine = [h for h in ours.handlers if getattr(h, "_ppp_verbose", False)]
    if verbose and not passes_info and not mine:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler._ppp_verbose = True  # marks the handler this function added
        ours.addHandler(handler)
        ours.propagate = False  # the root's handlers would drop INFO anyway; no duplicates
    elif not verbose:
        for h in mine:
            ours.removeHandler(h)
        ours.propagate = True


def load(args: argparse.Namespace, prog: str):
    """The run config, or None after printing the config error. Sets up the persistent
    compilation cache from its `compile_cache` section."""
    from ppp_jax.config.loader import ConfigError
    from ppp_jax.config.paths import check_input_paths
    from ppp_jax.config.run import load_run_config

    configure_logging(args.verbose)
    try:
        cfg = load_run_config(args.config, args.overrides)
        # every path the command reads must be there before anything is built
        check_input_paths(cfg, prog.split()[-1], checkpoint_arg=getattr(args, "checkpoint", ""))
    except (ConfigError, ValueError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return None
    from ppp_jax.commands._compile_cache import use_compile_cache

    use_compile_cache(cfg.compile_cache)  # before anything is compiled
    return cfg


def log_compile_stats() -> None:
    """Logs (INFO, shown with --verbose) how many programs this process compiled and how many
    it loaded from the persistent compilation cache."""
    from ppp_jax.commands._compile_cache import current_stats

    if (stats := current_stats()) is not None:
        logging.getLogger(LOGGER).info(stats.summary())
