"""`ppp sft CONFIG [key=value ...]`: the supervised warm start on scripted episodes.

Builds the tasks, runs the scripted "untrained instruct model" through the real episode runner
and simulator, trains the tokenizer if there is none, and fine-tunes the policy through the RL
train step (loss on assistant tokens only). Writes `<run>/sft/` (metrics, checkpoints; resumable)
and `<run>/sft_policy/` (the warm-started model checkpoint and its tokenizer), which `ppp train` on
the same config starts from.
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
    from ppp_jax.commands._policy import SFT_POLICY
    from ppp_jax.demo import Interrupted, StaleRunError, build_stage, sft_stage, tokenizer_path
    from ppp_jax.sampling.chat import copy_tokenizer
    from ppp_jax.train.builders import build_model

    try:
        built = build_stage(cfg)
    except StaleRunError as e:
        print(f"ppp sft: {e}", file=sys.stderr)
        return 2
    model = build_model(cfg, built.tokenizer)
    try:
        sft_stage(cfg, built, model, progress=not args.no_progress)
    except Interrupted as e:
        print(f"ppp sft: {e}", file=sys.stderr)
        return 3
    out = cfg.output_dir / SFT_POLICY
    # The warm-started policy carries its tokenizer, so `ppp train` (and `ppp convert`) on it
    # need nothing else.
    copy_tokenizer(tokenizer_path(cfg), out)
    print(f"ppp sft: warm-started policy -> {out}; `ppp train` on the same config starts from it")
    return 0
