"""`ppp sft CONFIG [key=value ...]`: the supervised warm start on scripted episodes.

Builds the tasks, runs the scripted "untrained instruct model" through the real episode runner
and simulator, trains the tokenizer if there is none, and fine-tunes the policy through the RL
train step (loss on assistant tokens only). Writes `<run>/sft/` (metrics, checkpoints; resumable)
and `<run>/sft_policy/` (the warm-started model checkpoint and its tokenizer), which `ppp train` on
the same config starts from.

Exit codes: 0 done; 1 cannot start (run folder with metrics but no checkpoint, no intact
checkpoint); 2 config error or stale run folder; 3 stopped by SIGTERM/Ctrl+C after saving (run
again to resume); 130 stopped by a second signal, without saving.
"""

from __future__ import annotations

import argparse
import sys

from ppp_jax.commands._common import add_config_arguments, load, log_compile_stats


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--restart", action="store_true",
                        help="start the warm start over: first move <run>/sft/ and <run>/sft_policy/ "
                             "into <run>/previous-<time>/ (nothing deleted)")


def run(args: argparse.Namespace) -> int:
    cfg = load(args, "ppp sft")
    if cfg is None:
        return 2
    from ppp_jax.commands._policy import SFT_POLICY
    from ppp_jax.config.loader import ConfigError
    from ppp_jax.demo import Interrupted, StaleRunError, build_stage, sft_stage, tokenizer_path
    from ppp_jax.envs.domains.rows import DataError
    from ppp_jax.sampling.chat import copy_tokenizer
    from ppp_jax.train.builders import build_model
    from ppp_jax.train.checkpointing import CheckpointError
    from ppp_jax.train.loop import RunFolderError, set_aside_run

    try:
        built = build_stage(cfg)
    except StaleRunError as e:
        print(f"ppp sft: {e}", file=sys.stderr)
        return 2
    except (ConfigError, DataError) as e:  # a missing data file, a bad data row: one line
        print(f"ppp sft: {e}", file=sys.stderr)
        return 1
    if args.restart:
        set_aside_run(cfg.output_dir, ("sft", "sft_policy"))
    model = build_model(cfg, built.tokenizer)
    try:
        sft_stage(cfg, built, model, progress=not args.no_progress)
    except Interrupted as e:
        print(f"ppp sft: {e}", file=sys.stderr)
        return 3
    except (RunFolderError, CheckpointError) as e:
        print(f"ppp sft: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ppp sft: stopped at once by a second signal, without saving; run the same command "
              "again to resume from the last checkpoint", file=sys.stderr)
        return 130
    log_compile_stats()
    out = cfg.output_dir / SFT_POLICY
    # The warm-started policy carries its tokenizer, so `ppp train` (and `ppp convert`) on it
    # need nothing else.
    copy_tokenizer(tokenizer_path(cfg), out)
    print(f"ppp sft: warm-started policy -> {out}; `ppp train` on the same config starts from it")
    return 0
