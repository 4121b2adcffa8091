"""`ppp compile`'s dispatch: every step named in the config compiled for the target topology."""

from __future__ import annotations

from collections.abc import Sequence

import jax

from ppp_jax.config.compile import CompileConfig
from ppp_jax.scale.chips import tpu_devices
from ppp_jax.scale.compile_engine import compile_engine_step
from ppp_jax.scale.compile_train import compile_logprob, compile_train
from ppp_jax.scale.step_report import StepReport


def compile_steps(cc: CompileConfig, devices: Sequence[jax.Device] | None = None, *,
                  donate: bool = True, lower_only: bool = False) -> list[StepReport]:
    """Compiles every step named in `cc.compile.steps` for the configured topology.

    donate: whether the train step donates its state (`ppp train` does not; the iteration check
    passes False). The "logprob" step (π_old) runs over the whole rollout batch: compile.batch x
    rl.ppo_mini_batches rows in num_micro_batches x ppo_mini_batches micro-batches, as the
    trainer builds it. lower_only: every step traced and laid out on the slice, nothing compiled
    (`ppp compile --dry-run`: a shape and sharding check in seconds)."""
    devices = tpu_devices(cc.compile.topology) if devices is None else devices
    reports = []
    for name in cc.compile.steps:
        if name == "train":
            reports.append(compile_train(cc, devices, donate=donate, lower_only=lower_only))
        elif name == "logprob":
            k = cc.rl.ppo_mini_batches
            reports.append(compile_logprob(cc, devices, rows=cc.compile.batch * k,
                                           num_micro=cc.rl.num_micro_batches * k,
                                           lower_only=lower_only))
        else:
            reports.append(compile_engine_step(cc, devices, name, lower_only=lower_only))
    return reports
