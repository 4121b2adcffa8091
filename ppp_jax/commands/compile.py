"""`ppp compile CONFIG [KEY=VALUE ...] --topology v5p:4x4x4`: ahead-of-time compile of the PPP
train step, the π_old pass and the engine's prefill/decode for a named TPU slice, from any
machine (shapes only, no weights).

For a run config (one with the trainer's sections) what is compiled is what `ppp train` runs:
rows per update, micro-batches, PPO mini-batches and T come from the trainer's own fields
(`ppp_jax.scale.iteration`), and the whole PPP iteration is checked phase by phase — rollout
(prefill, decode) with the trainer's state resident, the π_old pass, the updates with the rollout
batch and, unless released, the engine's weights and pools resident. A compile section whose
batch / seq_len disagree with the trainer makes the run a per-program study (said so; the
iteration is not checked).

Prints per-chip argument / output / temporary memory against the chip's HBM, FLOPs per step and
compile times. A line is printed as each step starts compiling and every minute while it
compiles (a 36B step takes minutes), so cluster logs show it is alive. Exit status: 0 every step
(and, for a run config, the whole iteration) fits; 1 some step or phase does not fit (the
message says how much it needs and what the chip has); 2 the config, mesh or topology is
invalid or libtpu is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from typing import Iterator

from ppp_jax.commands._common import add_override_arguments

# Seconds between "still compiling" lines.
HEARTBEAT_S = 60.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML run config (sections model, sharding, compile, engine, rl)")
    add_override_arguments(parser)
    parser.add_argument("--topology", help="TPU slice, e.g. v5p:4x4x4, v5p:4x4x8, v6e:16x16")
    parser.add_argument("--mesh", help="train mesh, e.g. data=1,fsdp=64,tensor=1 (-1 = the rest)")
    parser.add_argument("--engine-mesh", help="engine mesh, e.g. data=16,tensor=4")
    parser.add_argument("--remat", choices=("none", "full", "save_dots"))
    parser.add_argument("--attention", choices=("xla", "cudnn", "splash"))
    parser.add_argument("--seq-len", type=int, help="tokens per training sequence (T)")
    parser.add_argument("--batch", type=int, help="sequences per optimizer update (B)")
    parser.add_argument("--steps", help="comma-separated subset of train,prefill,decode")
    parser.add_argument("--json", metavar="PATH", help="also write the reports as JSON here")
    parser.add_argument("--dry-run", action="store_true",
                        help="trace every step and lay it out on the slice without compiling: "
                             "a shape and sharding check in seconds (no memory figures)")
    parser.add_argument("--estimate", action="store_true",
                        help="print the cost model of one PPP step and of the run "
                             "(ppp_jax/scale/estimate.py: rollout, pi_old, updates, sync; stated "
                             "assumptions) for this config and topology instead of compiling")
    parser.add_argument("--episodes", type=int,
                        help="episodes per PPP step for --estimate (default: the config's "
                             "data.batch_size x rl.advantage.group_size)")


def _overrides(args: argparse.Namespace) -> list[str]:
    out = list(args.overrides)
    flags = {"topology": "compile.topology", "remat": "model.remat",
             "attention": "model.attention_impl", "seq_len": "compile.seq_len",
             "batch": "compile.batch"}
    for attr, key in flags.items():
        value = getattr(args, attr)
        if value is not None:
            out.append(f"{key}={value}")
    if args.steps:
        out.append(f"compile.steps=[{args.steps}]")
    return out


def _write_json(args: argparse.Namespace, reports: list, phases: list = ()) -> None:
    if args.json:
        out = {"config": args.config, "reports": [r.to_dict() for r in reports]}
        if phases:
            out["iteration"] = [dict(name=p.name, program=p.program,
                                     program_bytes=p.program_bytes, resident=p.resident,
                                     total_bytes=p.total_bytes, hbm_bytes=p.hbm_bytes,
                                     fits=p.fits) for p in phases]
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


@contextlib.contextmanager
def heartbeat(what: str, every_s: float = HEARTBEAT_S, verb: str = "compiling") -> Iterator[None]:
    """Prints "compiling WHAT ..." now and "still compiling WHAT (N s)" every `every_s` seconds
    until the block ends, so a log shows progress through a compile that takes minutes."""
    start = time.perf_counter()
    done = threading.Event()
    print(f"ppp compile: {verb} {what} ...", flush=True)

    def beat() -> None:
        while not done.wait(every_s):
            print(f"ppp compile: still {verb} {what} ({time.perf_counter() - start:.0f} s)",
                  flush=True)

    thread = threading.Thread(target=beat, name="compile-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _estimate(args: argparse.Namespace, cc) -> str:
    """`--estimate`: the PPP step cost model for the config's model, engine and slice."""
    from ppp_jax.config.run import load_run_config
    from ppp_jax.scale.chips import chip_of, topology_chips
    from ppp_jax.scale.estimate import Deployment, StepAssumptions, estimate_step, estimate_table

    run_cfg = load_run_config(args.config, args.overrides)
    episodes = args.episodes or run_cfg.data.batch_size * run_cfg.rl.advantage.group_size
    steps = run_cfg.trainer.num_steps
    mesh = dict(zip(cc.engine.mesh.axes, cc.engine.mesh.shape))
    replica_chips = max(1, mesh.get("tensor", 1)) * max(1, mesh.get("fsdp", 1))
    dep = Deployment(chip_of(cc.compile.topology), topology_chips(cc.compile.topology),
                     replica_chips, cc.engine.num_slots)
    assumptions = StepAssumptions()
    est = estimate_step(cc.model.build(), dep, episodes=episodes,
                        ppo_mini_batches=cc.rl.ppo_mini_batches, ppo_epochs=cc.rl.ppo_epochs,
                        a=assumptions)
    return estimate_table(est, steps, assumptions)


def _data_parallel(cc) -> int:
    """data x fsdp of the training mesh, its -1 resolved over the compile topology's chips."""
    import math

    from ppp_jax.scale.chips import topology_chips

    sizes = dict(zip(cc.sharding.mesh.axes,
                     cc.sharding.mesh.resolved_shape(topology_chips(cc.compile.topology))))
    return math.prod(sizes.get(a, 1) for a in ("data", "fsdp"))


def _trainer_shape(args: argparse.Namespace, cc):
    """(TrainerShape or None, [mismatches]): what `ppp train` runs with this file, when it has
    the trainer's sections, and what of its compile section disagrees with that."""
    from ppp_jax.config.loader import file_sections
    from ppp_jax.config.run import load_run_config
    from ppp_jax.scale.iteration import trainer_mismatch, trainer_shape

    if not {"data", "rollout"} & file_sections(args.config):
        return None, []
    from ppp_jax.config.loader import ConfigError

    run_cfg = load_run_config(args.config, _overrides(args))
    try:
        shape = trainer_shape(run_cfg, _data_parallel(cc))
    except ConfigError as e:
        if cc.compile.batch and cc.compile.seq_len:  # the compile section gives the shapes
            return None, [str(e)]
        raise
    return shape, trainer_mismatch(cc, shape)


def run(args: argparse.Namespace) -> int:
    # Compiling for TPU needs only the host CPU backend plus libtpu's compiler; set this before
    # any JAX backend starts (see ppp_jax.scale.chips.quiet_libtpu_env for the libtpu lock).
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from ppp_jax.config.compile import load_compile_config
    from ppp_jax.config.loader import ConfigError, replace
    from ppp_jax.model.sharding import ShardingError
    from ppp_jax.scale.chips import (
        AotError,
        DoesNotFit,
        chip_of,
        quiet_libtpu_env,
        topology_chips,
        tpu_devices,
    )
    from ppp_jax.scale.compile import compile_steps
    from ppp_jax.scale.iteration import iteration_phases, iteration_table, with_trainer_shape
    from ppp_jax.scale.mesh import parse_mesh
    from ppp_jax.scale.step_report import StepReport, check_fits

    quiet_libtpu_env()
    try:
        cc = load_compile_config(args.config, _overrides(args))
        if args.mesh:
            cc = replace(cc, sharding=replace(cc.sharding, mesh=parse_mesh(args.mesh)))
        if args.engine_mesh:
            cc = replace(cc, engine=replace(cc.engine, mesh=parse_mesh(args.engine_mesh)))
        chip = chip_of(cc.compile.topology)
        shape, mismatch = _trainer_shape(args, cc)
        cc = with_trainer_shape(cc, shape)
        # The iteration is checked when the programs are the trainer's own: a run config whose
        # compile section agrees with its trainer (or leaves batch / seq_len to it).
        iteration = shape if shape is not None and not mismatch else None
        if iteration is not None and iteration.pi_old_pass and "logprob" not in cc.compile.steps:
            cc = replace(cc, compile=replace(cc.compile, steps=("logprob", *cc.compile.steps)))
        print(f"ppp compile: {cc.model.preset} ({cc.model.param_dtype} params, {cc.model.dtype} "
              f"compute, remat={cc.model.remat}, attention={cc.model.attention_impl}) for "
              f"{cc.compile.topology} ({topology_chips(cc.compile.topology)} chips, "
              f"{chip.limit_gib:g} GiB usable HBM each); steps {list(cc.compile.steps)}; "
              f"train batch {cc.compile.batch} x {cc.compile.seq_len} tokens", flush=True)
        if iteration is not None:
            print(f"ppp compile: what `ppp train` runs: {iteration.describe()}", flush=True)
        elif mismatch:
            print(f"ppp compile: a per-program study, not what `ppp train` runs with this file: "
                  f"{'; '.join(mismatch)}. The whole iteration is not checked; leave "
                  f"compile.batch / compile.seq_len out to compile the trainer's shapes.",
                  flush=True)
        if args.estimate:
            print(_estimate(args, cc))
            return 0
        devices = tpu_devices(cc.compile.topology)
    except (ConfigError, ShardingError, AotError, ValueError) as e:
        print(f"ppp compile: error: {e}", file=sys.stderr)
        return 2
    reports: list[StepReport] = []
    for name in cc.compile.steps:
        # One step at a time, printed and saved as soon as it is compiled (a 36B step takes
        # minutes; a later step's failure must not lose an earlier step's figures).
        try:
            with heartbeat(f"step {name!r}", verb="lowering" if args.dry_run else "compiling"):
                report = compile_steps(replace(cc, compile=replace(cc.compile, steps=(name,))),
                                       devices, donate=iteration is None,
                                       lower_only=args.dry_run)[0]
        except (ConfigError, ShardingError, AotError, ValueError) as e:
            print(f"ppp compile: error in step {name!r}: {e}", file=sys.stderr)
            _write_json(args, reports)
            return 2
        reports.append(report)
        print(report.summary(), flush=True)
        if args.dry_run:
            continue
        if report.step == "train" and report.fits:
            for mfu in (0.3, 0.4, 0.5):
                print(f"  est. step    {report.step_seconds(chip.peak_bf16_flops, mfu):.1f} s at "
                      f"{mfu:.0%} MFU ({chip.peak_bf16_flops / 1e12:g} TFLOP/s bf16 per chip)")
        _write_json(args, reports)
    if args.dry_run:
        print(f"ppp compile: dry run: every step traces and lays out on {cc.compile.topology} "
              f"(nothing compiled; run without --dry-run for memory figures)")
        return 0
    try:
        check_fits(reports, remat=cc.model.remat)
    except DoesNotFit as e:
        print(f"ppp compile: {e}", file=sys.stderr)
        return 1
    if iteration is None:
        print("ppp compile: every step fits")
        return 0
    compiled = {r.step for r in reports}
    missing = [s for s in ("train", "prefill", "decode") if s not in compiled]
    if missing:
        print(f"ppp compile: every step fits; the whole iteration is not checked (compile.steps "
              f"leaves out {missing})")
        return 0
    phases = iteration_phases(iteration, reports, _data_parallel(cc))
    print(iteration_table(iteration, phases), flush=True)
    _write_json(args, reports, phases)
    bad = [p for p in phases if not p.fits]
    if bad:
        print("ppp compile: the iteration does not fit: "
              + "; ".join(f"{p.name} needs {p.total_bytes / 2**30:.2f} GiB per chip" for p in bad)
              + f", of {bad[0].hbm_bytes / 2**30:.2f}; try rollout.release_engine_memory: true, "
                f"more rl.num_micro_batches, fewer engine slots or pages, or more chips",
              file=sys.stderr)
        return 1
    print("ppp compile: every step fits, and the whole iteration fits")
    return 0
