"""`ppp train CONFIG [key=value ...]`: PPP RL on a run config, resuming from its checkpoints.

Writes `<run_dir>/<name>/`: metrics.jsonl, tb/ (TensorBoard), checkpoints/ (orbax: params,
optimizer, RNG, data position) and, at the end, policy/ (a model checkpoint that `ppp eval` reads
and `ppp convert orbax2hf` turns into a Hugging Face directory), with the tokenizer beside it.
The starting weights are `policy.path`, else `<run>/sft_policy` (what `ppp sft` on the same config
writes), else random (the first line says which). For the embedded stdlib domain with no tokenizer
yet, the demo's build stage trains one first.
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
    from ppp_jax.commands._policy import starting_policy, tokenizer_candidates
    from ppp_jax.sampling.chat import copy_tokenizer, find_tokenizer, has_tokenizer, load_tokenizer
    from ppp_jax.train.builders import build_parts
    from ppp_jax.train.trainer import PPPTrainer

    base_cfg = cfg
    cfg, start_line = starting_policy(cfg)
    print(f"ppp train: {start_line}", flush=True)
    candidates = tokenizer_candidates(cfg, cfg.policy.path)
    if (not base_cfg.policy.path and cfg.domain.name == "stdlib_loc"
            and not any(p and has_tokenizer(p) for p, _ in candidates)):
        from ppp_jax.demo import build_stage

        build_stage(base_cfg)  # trains <run>/tokenizer.json
    tokenizer_source = find_tokenizer(candidates)
    parts = build_parts(cfg, tokenizer=load_tokenizer(tokenizer_source))
    t0 = time.perf_counter()
    trainer = PPPTrainer(cfg, parts)
    try:
        final = trainer.train(progress=not args.no_progress)
        if final.step < cfg.trainer.num_steps:
            print(f"ppp train: stopped at step {final.step} of {cfg.trainer.num_steps}; run the "
                  "same command again to resume", file=sys.stderr)
            return 3
        out = trainer.save_policy(final.train.params, cfg.output_dir / "policy")
        copy_tokenizer(tokenizer_source, out)  # the policy carries its tokenizer to eval/convert
    finally:
        trainer.engine.close()
    last = trainer.last_rollout.metrics if trainer.last_rollout is not None else {}
    print(f"ppp train: {final.step} steps in {cfg.output_dir} ({time.perf_counter() - t0:.0f}s); "
          f"last step reward {last.get('score/reward', float('nan')):.3f}, "
          f"ask ratio {last.get('rollout/ask_ratio', float('nan')):.2f}; policy -> {out}")
    return 0
