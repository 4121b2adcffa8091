"""`ppp train CONFIG [key=value ...]`: PPP RL on a run config, resuming from its checkpoints.

Writes `<run_dir>/<name>/`: metrics.jsonl, tb/ (TensorBoard), checkpoints/ (orbax: params,
optimizer, RNG, data position) and, at the end, policy/ (a model checkpoint that `ppp eval` reads
and `ppp convert orbax2hf` turns into a Hugging Face directory). For the embedded stdlib domain
with no tokenizer yet, the demo's build stage trains one first.
"""

from __future__ import annotations

import argparse
import sys
import time

from ppp_jax.commands._common import add_config_arguments, load


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    cfg = load(args, "ppp train")
    if cfg is None:
        return 2
    from ppp_jax.scale import distributed

    # multi-host from the config's `distributed` section, its unset fields from PPP_*/JAX_*
    # environment variables; a no-op for one process
    distributed.initialize(cfg.distributed)
    from ppp_jax.sampling.chat import load_tokenizer
    from ppp_jax.train.builders import build_parts
    from ppp_jax.train.trainer import PPPTrainer

    tokenizer = None
    if not cfg.policy.path and cfg.domain.name == "stdlib_loc":
        from ppp_jax.demo import build_stage, tokenizer_path

        if not tokenizer_path(cfg).exists():
            build_stage(cfg)  # trains <run>/tokenizer.json
        tokenizer = load_tokenizer(tokenizer_path(cfg))
    try:
        parts = build_parts(cfg, tokenizer=tokenizer)
    except (FileNotFoundError, ValueError) as e:
        print(f"ppp train: {e}", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    trainer = PPPTrainer(cfg, parts)
    try:
        final = trainer.train(progress=not args.no_progress)
        if final.step < cfg.trainer.num_steps:
            print(f"ppp train: stopped at step {final.step} of {cfg.trainer.num_steps}; run the "
                  "same command again to resume", file=sys.stderr)
            return 3
        out = trainer.save_policy(final.train.params, cfg.output_dir / "policy")
    finally:
        trainer.engine.close()
    last = trainer.last_rollout.metrics if trainer.last_rollout is not None else {}
    print(f"ppp train: {final.step} steps in {cfg.output_dir} ({time.perf_counter() - t0:.0f}s); "
          f"last step reward {last.get('score/reward', float('nan')):.3f}, "
          f"ask ratio {last.get('rollout/ask_ratio', float('nan')):.2f}; policy -> {out}")
    return 0
