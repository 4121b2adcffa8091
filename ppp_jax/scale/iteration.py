"""One PPP iteration of `ppp train`, as `ppp compile` checks it: the shapes the trainer runs (read
from its own config fields) and the per-chip memory of each phase, with what stays resident.

A PPP step of the trainer (`ppp_jax.train.trainer.Trainer._step`) runs, in order:

  rollout  the engine replicas' prefill and decode programs. Their arguments are the engine's
           weight copies and K/V page pools; besides them the trainer's state stays resident
           (float32 master params and the optimizer state).
  pi_old   the log-prob pass at the sampling weights over the whole rollout batch [R, T] — only
           when rl.ppo_mini_batches x rl.ppo_epochs > 1 and rl.old_logprobs is "recompute".
           Its arguments are the params and the batch; besides them: the optimizer state, and
           the engine's weights and pools unless `rollout.release_engine_memory` freed them.
  update   K x E calls of the train step on R/K rows each. Its arguments are the state and one
           mini-batch; the trainer does not donate the state (the engine may hold the same
           buffers), so the new state is a separate output, which the compile reproduces.
           Besides it: the whole rollout batch [R, T] and π_old [R, T] (K > 1), and the engine
           unless released.

A phase fits when its program's peak (arguments + outputs - aliased + temporaries, per chip)
plus what is resident beside it is within the chip's usable HBM; the iteration fits when every
phase does. Resident sizes are exact per-chip shard sizes of the abstract arrays (their
shardings applied), not estimates.

Rows: the trainer rounds the step's episodes (data.batch_size x group size; one row each without
packing — with `rollout.pack` the rows are at most that) up to a multiple of
rl.num_micro_batches x ppo_mini_batches x data x fsdp and of `rollout.rows_multiple`, exactly
as `Trainer.__init__` does; each update takes R / ppo_mini_batches of them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from ppp_jax.config.loader import ConfigError, replace
from ppp_jax.scale.chips import GiB, TIGHT_FRACTION
from ppp_jax.scale.step_report import StepReport

# TokenBatch fields (int32/float32, 4 bytes each): tokens, positions, segment_ids, targets,
# loss_mask, advantages, sampler_logprobs, old_logprobs.
BATCH_FIELDS = 8


@dataclasses.dataclass(frozen=True)
class TrainerShape:
    """What one PPP step of `ppp train` runs with a given config (see the module docstring)."""

    episodes: int  # data.batch_size x rl.advantage.group_size
    rows: int  # R, rows of the rollout batch (episodes rounded up to the trainer's multiple)
    seq_len: int  # T, rollout.row_len
    micro_batches: int  # rl.num_micro_batches, inside each update
    mini_batches: int  # K, rl.ppo_mini_batches
    epochs: int  # E, rl.ppo_epochs
    pi_old_pass: bool  # the log-prob pass runs (K x E > 1 and old_logprobs: recompute)
    release: bool  # rollout.release_engine_memory
    engine_layout: str  # rollout.engine_layout
    pack: bool  # rollout.pack: rows is an upper bound

    @property
    def rows_per_update(self) -> int:
        return self.rows // self.mini_batches

    def describe(self) -> str:
        pi_old = ("pi_old recomputed over the batch first" if self.pi_old_pass
                  else "pi_old = the sampler's log-probs" if self.mini_batches * self.epochs > 1
                  else "on-policy, no pi_old pass")
        return (f"{self.episodes} episodes -> {'at most ' if self.pack else ''}{self.rows} rows x "
                f"{self.seq_len} tokens; {self.mini_batches * self.epochs} update(s) "
                f"({self.mini_batches} mini-batch(es) x {self.epochs} epoch(s)) of "
                f"{self.rows_per_update} rows in {self.micro_batches} micro-batch(es); {pi_old}; "
                f"engine memory {'released' if self.release else 'kept'} during the update")


def trainer_shape(run: Any, data_parallel: int) -> TrainerShape:
    """The `TrainerShape` of a `RunConfig` on a training mesh with `data_parallel` = data x fsdp
    devices. Raises ConfigError when the trainer's fields leave the shape open."""
    rl, rollout = run.rl, run.rollout
    if rollout.row_len is None:
        raise ConfigError("rollout.row_len is null (T = the longest episode of each step): "
                          "`ppp compile` needs a fixed T to compile what `ppp train` runs; set "
                          "rollout.row_len", ["rollout.row_len"])
    episodes = run.data.batch_size * rl.advantage.group_size
    multiple = math.lcm(rl.num_micro_batches * rl.ppo_mini_batches * data_parallel,
                        rollout.rows_multiple)
    rows = -(-episodes // multiple) * multiple
    return TrainerShape(
        episodes=episodes, rows=rows, seq_len=rollout.row_len,
        micro_batches=rl.num_micro_batches, mini_batches=rl.ppo_mini_batches,
        epochs=rl.ppo_epochs, pi_old_pass=rl.updates_per_step > 1
        and rl.old_logprobs == "recompute", release=rollout.release_engine_memory,
        engine_layout=rollout.engine_layout, pack=rollout.pack)


def trainer_mismatch(cc: Any, shape: TrainerShape) -> list[str]:
    """What the compile section of `cc` (a CompileConfig) sets that disagrees with what the
    trainer runs ([] when it agrees or leaves the fields at 0, i.e. derived)."""
    derived = {"batch": (shape.rows_per_update, f"rows per update: {shape.rows} rollout rows / "
                                                f"rl.ppo_mini_batches {shape.mini_batches}"),
               "seq_len": (shape.seq_len, "rollout.row_len")}
    out = []
    for key, (value, why) in derived.items():
        given = getattr(cc.compile, key)
        if given and given != value:
            out.append(f"compile.{key}={given}, but `ppp train` runs {value} ({why})")
    return out


def with_trainer_shape(cc: Any, shape: TrainerShape | None) -> Any:
    """`cc` with compile.batch / compile.seq_len that are 0 set to what the trainer runs. Raises
    ConfigError when one is 0 and there is no trainer section to derive it from."""
    changes = {}
    for key in ("batch", "seq_len"):
        if getattr(cc.compile, key):
            continue
        if shape is None:
            raise ConfigError(
                f"compile.{key} is not set, and this config has no trainer sections (data, "
                f"rollout) to derive it from: give compile.batch and compile.seq_len",
                [f"compile.{key}"])
        changes[key] = shape.rows_per_update if key == "batch" else shape.seq_len
    return replace(cc, compile=replace(cc.compile, **changes)) if changes else cc


def per_chip_bytes(tree: Any) -> int:
    """Bytes one device holds of a pytree of sharded ShapeDtypeStructs (or arrays): each leaf's
    shard shape (its sharding applied; unsharded leaves whole) times its itemsize."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        sharding = getattr(leaf, "sharding", None)
        shape = sharding.shard_shape(leaf.shape) if sharding is not None else leaf.shape
        total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
    return total


def rollout_batch_bytes(rows: int, seq_len: int, data_parallel: int) -> int:
    """Per-chip bytes of the rollout batch [R, T] (`TokenBatch`, rows over data x fsdp)."""
    return BATCH_FIELDS * 4 * -(-rows // data_parallel) * seq_len


@dataclasses.dataclass(frozen=True)
class Phase:
    """One phase of the iteration on one chip: a compiled program and what is resident beside it."""

    name: str
    program: str  # the StepReport's step
    program_bytes: int  # its peak: arguments + outputs - aliased + temporaries
    resident: dict[str, int]  # what else is in HBM during it, by name
    hbm_bytes: float

    @property
    def total_bytes(self) -> int:
        return self.program_bytes + sum(self.resident.values())

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.hbm_bytes


def iteration_phases(shape: TrainerShape, reports: Sequence[StepReport],
                     data_parallel: int) -> list[Phase]:
    """The iteration's phases from the compiled programs' reports (steps train, prefill, decode
    and, when the pass runs, logprob; each carrying its `resident_bytes` breakdown)."""
    by_step = {r.step: r for r in reports}
    needed = ["train", "prefill", "decode"] + (["logprob"] if shape.pi_old_pass else [])
    missing = [s for s in needed if s not in by_step]
    if missing:
        raise ValueError(f"the iteration needs the compiled steps {needed}; missing {missing}")
    train = by_step["train"].resident_bytes
    engine = by_step["decode"].resident_bytes
    state = {"trainer params (f32 masters)": train["params"],
             "optimizer state": train["optimizer"]}
    kept_engine = {} if shape.release else {
        "engine weights": engine["weights"], "engine K/V pools": engine["kv_pools"]}
    batch = rollout_batch_bytes(shape.rows, shape.seq_len, data_parallel)
    phases = []
    for name in ("prefill", "decode"):
        r = by_step[name]
        phases.append(Phase(f"rollout {name}", name, r.peak_bytes, dict(state), r.hbm_bytes))
    if shape.pi_old_pass:
        r = by_step["logprob"]
        phases.append(Phase("pi_old pass", "logprob", r.peak_bytes,
                            {"optimizer state": train["optimizer"], **kept_engine},
                            r.hbm_bytes))
    r = by_step["train"]
    beside = dict(kept_engine)
    if shape.mini_batches > 1:  # the mini-batch is a copy; the whole batch stays for the next
        beside["rollout batch [R, T]"] = batch
    phases.append(Phase(f"update (x{shape.mini_batches * shape.epochs})", "train",
                        r.peak_bytes, beside, r.hbm_bytes))
    return phases


def iteration_table(shape: TrainerShape, phases: Sequence[Phase]) -> str:
    """The per-phase table `ppp compile` prints, with the iteration's peak and verdict."""
    g = lambda b: f"{b / GiB:7.2f}"  # noqa: E731
    lines = [f"[iteration] {shape.describe()}",
             f"  {'phase':<16} {'program':>8} {'resident':>8} {'total':>8} GiB   resident beside "
             f"the program"]
    for p in phases:
        beside = ", ".join(f"{k} {v / GiB:.2f}" for k, v in p.resident.items()) or "-"
        mark = "" if p.fits else "   <- DOES NOT FIT"
        lines.append(f"  {p.name:<16} {g(p.program_bytes)}  {g(sum(p.resident.values()))}  "
                     f"{g(p.total_bytes)}       {beside}{mark}")
    peak = max(phases, key=lambda p: p.total_bytes)
    verdict = "FITS" if all(p.fits for p in phases) else "DOES NOT FIT"
    if verdict == "FITS" and peak.total_bytes > TIGHT_FRACTION * peak.hbm_bytes:
        verdict += f" (tight: > {TIGHT_FRACTION:.0%} of HBM)"
    lines.append(f"  peak of the iteration {peak.total_bytes / GiB:.2f} GiB per chip in "
                 f"{peak.name!r}, of {peak.hbm_bytes / GiB:.2f} GiB HBM "
                 f"({peak.total_bytes / peak.hbm_bytes:.0%}) -> {verdict}")
    return "\n".join(lines)
