"""`ppp sft CONFIG [key=value ...]`: the supervised warm start on scripted episodes.

Builds the tasks, runs the scripted "untrained instruct model" through the real episode runner
and simulator, trains the tokenizer if there is none, and fine-tunes the policy through the RL
train step (loss on assistant tokens only). Writes `<run>/sft/` (metrics, checkpoints; resumable)
and `<run>/sft_policy/` (the warm-started model checkpoint).
"""

from __future__ import annotations

import argparse
import sys

from ppp_jax.commands._common import add_config_arguments, load


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    cfg = load(args, "ppp sft")
    if cfg is None:
        return 2
    from ppp_jax.config.loader import ConfigError
    from ppp_jax.demo import StaleRunError, build_stage, sft_stage
    from ppp_jax.envs.domains.rows import DataError
    from ppp_jax.train.builders import build_model

    try:
        built = build_stage(cfg)
    except StaleRunError as e:
        print(f"ppp sft: {e}", file=sys.stderr)
        return 2
    except (ConfigError, DataError) as e:  # a missing data file, a bad data row: one line
        print(f"ppp sft: {e}", file=sys.stderr)
        return 1
    model = build_model(cfg, built.tokenizer)
    sft_stage(cfg, built, model, progress=not args.no_progress)
    print(f"ppp sft: warm-started policy -> {cfg.output_dir / 'sft_policy'}")
    return 0
