"""`ppp train CONFIG [key=value ...]`: PPP RL on a run config, resuming from its checkpoints.

Writes `<run_dir>/<name>/`: metrics.jsonl, tb/ (TensorBoard), checkpoints/ (orbax: params,
optimizer, RNG, data position) and, at the end, policy/ (a model checkpoint that `ppp eval` reads
and `ppp convert orbax2hf` turns into a Hugging Face directory), with the tokenizer beside it.
The starting weights are `policy.path`, else `<run>/sft_policy` (what `ppp sft` on the same config
writes), else random (the first line says which). For the embedded stdlib domain with no tokenizer
yet, the demo's build stage trains one first.

Resumes from the newest intact checkpoint (damaged newer ones are named and moved aside). Refuses
a run folder with history but no checkpoint, or with no intact checkpoint; `--restart` moves the
earlier run's files into `<run>/previous-<time>/` and starts over. SIGTERM or Ctrl+C stop after
the current step with a checkpoint (a second one stops at once, without saving).
Exit codes: 0 done; 1 cannot start (run folder, checkpoints, data); 2 config error; 3 stopped by
a signal after saving (run the same command to resume); 130 stopped by a second signal.
"""

from __future__ import annotations

import argparse
import sys
import time

from ppp_jax.commands._common import add_config_arguments, load, log_compile_stats


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--restart", action="store_true",
                        help="start over at step 0: first move the earlier run's metrics.jsonl, tb/, "
                             "policy/ and checkpoints/ into <run>/previous-<time>/ (nothing deleted)")


def run(args: argparse.Namespace) -> int:
    cfg = load(args, "ppp train")
    if cfg is None:
        return 2
    from ppp_jax.scale import distributed

    # multi-host from the config's `distributed` section, its unset fields from PPP_*/JAX_*
    # environment variables; a no-op for one process
    distributed.initialize(cfg.distributed)
    from ppp_jax.train.checkpointing import CheckpointError
    from ppp_jax.train.loop import RunFolderError
    from ppp_jax.train.trainer import preflight

    try:  # a run that would be refused is refused before the model and engine are built
        preflight(cfg.output_dir, restart=args.restart)
    except (RunFolderError, CheckpointError) as e:
        print(f"ppp train: {e}", file=sys.stderr)
        return 1
    from ppp_jax.commands._policy import starting_policy, tokenizer_candidates
    from ppp_jax.sampling.chat import copy_tokenizer, find_tokenizer, has_tokenizer, load_tokenizer
    from ppp_jax.config.loader import ConfigError
    from ppp_jax.envs.domains.rows import DataError
    from ppp_jax.train.builders import build_parts
    from ppp_jax.train.trainer import PPPTrainer

    from ppp_jax.config.loader import to_dict
    from ppp_jax.config.profiles import profile_summary

    # the resolved config (with its profile) is also recorded in every checkpoint's metadata
    print(f"ppp train: {profile_summary(cfg.profile, to_dict(cfg))}", flush=True)
    base_cfg = cfg
    cfg, start_line = starting_policy(cfg)
    print(f"ppp train: {start_line}", flush=True)
    candidates = tokenizer_candidates(cfg, cfg.policy.path)
    if (not base_cfg.policy.path and cfg.domain.name == "stdlib_loc"
            and not any(p and has_tokenizer(p) for p, _ in candidates)):
        from ppp_jax.demo import build_stage

        build_stage(base_cfg)  # trains <run>/tokenizer.json
    tokenizer_source = find_tokenizer(candidates)
    try:
        parts = build_parts(cfg, tokenizer=load_tokenizer(tokenizer_source))
    except (ConfigError, DataError) as e:  # a missing data file, a bad data row: one line
        print(f"ppp train: {e}", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    trainer = PPPTrainer(cfg, parts)
    try:
        final = trainer.train(progress=not args.no_progress)
        if final.step < cfg.trainer.num_steps:
            print(f"ppp train: stopped at step {final.step} of {cfg.trainer.num_steps} (checkpoint "
                  "saved); run the same command again to resume", file=sys.stderr)
            return 3
        out = trainer.save_policy(final.train.params, cfg.output_dir / "policy")
        copy_tokenizer(tokenizer_source, out)  # the policy carries its tokenizer to eval/convert
    except (RunFolderError, CheckpointError) as e:
        print(f"ppp train: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ppp train: stopped at once by a second signal, without saving; run the same "
              "command again to resume from the last checkpoint", file=sys.stderr)
        return 130
    finally:
        trainer.engine.close()
        log_compile_stats()
    last = trainer.last_rollout.metrics if trainer.last_rollout is not None else {}
    ran = final.step - trainer.start_step  # this invocation's steps, not the resumed ones
    steps = f"{ran} step{'' if ran == 1 else 's'}"
    if trainer.start_step:
        steps += f" (resumed after step {trainer.start_step}, now at {final.step})"
    print(f"ppp train: {steps} in {cfg.output_dir} ({time.perf_counter() - t0:.0f}s); "
          f"last step reward {last.get('score/reward', float('nan')):.3f}, "
          f"ask ratio {last.get('rollout/ask_ratio', float('nan')):.2f}; policy -> {out}")
    return 0
