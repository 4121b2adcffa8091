"""`ppp demo CONFIG [key=value ...]`: the `make run` pipeline (see `ppp_jax.demo`).

Builds tasks, tokenizer and a tiny policy, warm-starts it by SFT, evaluates it, trains it with
PPP RL, evaluates again and writes `runs/<name>/report.md`, `summary.json` and PNG plots.
Rerunning resumes: finished stages are reused, interrupted training continues from its last
checkpoint.
"""

from __future__ import annotations

import argparse
import sys

from ppp_jax.commands._common import add_config_arguments, load, log_compile_stats


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    cfg = load(args, "ppp demo")
    if cfg is None:
        return 2
    from ppp_jax.config.loader import ConfigError
    from ppp_jax.demo import Interrupted, StaleRunError, run_demo
    from ppp_jax.envs.domains.rows import DataError

    try:
        summary = run_demo(cfg, progress=not args.no_progress)
    except StaleRunError as e:
        print(f"ppp demo: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"ppp demo: {e}", file=sys.stderr)
        return 3
    except (ConfigError, DataError) as e:  # a missing data file, a bad data row: one line
        print(f"ppp demo: {e}", file=sys.stderr)
        return 1
    log_compile_stats()
    b, a = summary["before"], summary["after"]
    for kind in ("vague", "precise"):
        if kind in b and kind in a:
            print(f"{kind:8s} ask ratio {b[kind]['ask_ratio']:.2f} -> {a[kind]['ask_ratio']:.2f}, "
                  f"proactivity {b[kind]['proactivity']:.2f} -> {a[kind]['proactivity']:.2f}, "
                  f"productivity {b[kind]['productivity']:.2f} -> {a[kind]['productivity']:.2f}")
    print(f"report: {cfg.output_dir / 'report.md'}")
    return 0
