"""Ahead-of-time compilation for named TPU topologies, from any machine (shapes only, no weights).

With `libtpu` importable, `jax.experimental.topologies.get_topology_desc("v5p:4x4x4")` returns
the devices of a TPU slice that does not exist here; `jit(f).lower(*abstract).compile()` then
runs the real TPU compiler for them, and the executable reports per-chip memory
(`memory_analysis()`) and per-chip FLOPs (`cost_analysis()`). Nothing is allocated: the model
is built with `nnx.eval_shape`, every argument is a `jax.ShapeDtypeStruct` carrying its
`NamedSharding`. (MaxText's `train_compile.py` does the same for its trainer.)

What is compiled (`CompileSpec.steps`):

- "train":   one optimizer update of `ppp_jax.rl.train_step` (micro-batch scan, forward, chunked
             log-probs, clipped policy-gradient objective, backward, AdamW) on a [B, T] batch.
- "logprob": the π_old pass (`ppp_jax.rl.train_step.make_logprob_fn`) over the whole rollout
             batch, when the trainer runs it (several PPO updates per step, π_old recomputed).
- "prefill": the paged engine's chunked prefill (`sampling.runner.ModelRunner`) of T_p-token
             chunks into the K/V page pools, one engine replica (`ppp_jax.scale.compile_engine`).
- "decode":  the paged engine's decode block (`decode_steps` steps with sampling) over its slots.

Units: sizes in bytes, printed in GiB (2**30). Chip HBM and peak FLOP/s are the published
per-chip figures in `CHIPS`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ppp_jax.config.compile import CompileConfig
from ppp_jax.model import sharding as shd
from ppp_jax.model import splash
from ppp_jax.model.config import ModelConfig
from ppp_jax.scale.chips import AotError, hbm_per_device
from ppp_jax.scale.flops import forward_model_flops, train_model_flops
from ppp_jax.scale.iteration import per_chip_bytes
from ppp_jax.scale.mesh import make_mesh_for, with_shardings
from ppp_jax.scale.step_report import StepReport, compile_lowered, report_of


def abstract_token_batch(batch: int, seq_len: int, mesh) -> Any:
    """The `TokenBatch` of one update as ShapeDtypeStructs, rows over (data, fsdp)."""
    from ppp_jax.rl.batch import TokenBatch
    from ppp_jax.rl.train_step import batch_sharding

    sh = batch_sharding(mesh)
    i32 = lambda: jax.ShapeDtypeStruct((batch, seq_len), jnp.int32, sharding=sh)  # noqa: E731
    f32 = lambda: jax.ShapeDtypeStruct((batch, seq_len), jnp.float32, sharding=sh)  # noqa: E731
    return TokenBatch(tokens=i32(), positions=i32(), segment_ids=i32(), targets=i32(),
                      loss_mask=f32(), advantages=f32(), sampler_logprobs=f32(),
                      old_logprobs=f32())


@dataclasses.dataclass(frozen=True)
class _TrainSetup:
    """The abstract pieces both train-side programs are lowered with."""

    mcfg: ModelConfig
    mesh: Any
    graphdef: Any
    params: Any  # ShapeDtypeStructs with their shardings
    state: Any  # TrainState of ShapeDtypeStructs with their shardings
    state_shardings: Any
    optimizer: Any


def _train_setup(cc: CompileConfig, devices: Sequence[jax.Device], batch: int,
                 num_micro: int) -> _TrainSetup:
    from ppp_jax.rl import train_step as ts
    from ppp_jax.rl.optim import make_optimizer

    mcfg = cc.model.build()
    mesh = make_mesh_for(devices, cc.sharding.mesh)
    rows = math.prod(mesh.shape[a] for a in ts.BATCH_AXES) * num_micro
    if batch % rows:
        raise AotError(f"a batch of {batch} rows must be a multiple of data x fsdp x "
                       f"micro-batches = {rows} (mesh {dict(mesh.shape)})")
    abstract = shd.abstract_model(lambda: seed_oss_model(mcfg))
    graphdef, params_abs, rest = nnx.split(abstract, nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise AotError("the model holds non-Param state; the train step updates only nnx.Param")
    try:
        param_sh = shd.state_shardings(params_abs, mesh, cc.sharding.rules)
    except shd.ShardingError as e:
        raise AotError(f"sharding rules do not fit the model on mesh {dict(mesh.shape)}: {e}") from None
    optimizer = make_optimizer(cc.rl.optim)
    state_abs = jax.eval_shape(lambda p: ts.init_train_state(p, optimizer), params_abs)
    state_sh = ts.train_state_shardings(state_abs, param_sh, optimizer, mesh)
    state = with_shardings(state_abs, state_sh)
    return _TrainSetup(mcfg, mesh, graphdef, state.params, state, state_sh, optimizer)


def _lower_and_compile(setup: _TrainSetup, cc: CompileConfig, jitted, args: tuple,
                       lower_only: bool) -> tuple[Any, float, float]:
    """(executable or placeholder report, lower seconds, compile seconds) of `jitted(*args)`,
    traced under the setup's mesh and rules for the TPU target."""
    with shd.using_mesh(setup.mesh, cc.sharding.rules), splash.tpu_target():
        t0 = time.perf_counter()
        lowered = jitted.lower(*args)
        t1 = time.perf_counter()
        compiled = compile_lowered(lowered, lower_only)
        t2 = time.perf_counter()
    return compiled, t1 - t0, t2 - t1


def _report(compiled, *, step: str, cc: CompileConfig, devices, mesh, flops: float,
            tokens: int, lower_s: float, compile_s: float, **extra) -> StepReport:
    topology = cc.compile.topology
    if isinstance(compiled, StepReport):
        report = dataclasses.replace(compiled, step=step, topology=topology,
                                     mesh={str(k): int(v) for k, v in mesh.shape.items()},
                                     hbm_bytes=hbm_per_device(topology, len(devices)),
                                     model_flops=flops, tokens=tokens, lower_s=lower_s,
                                     compile_s=compile_s)
    else:
        report = report_of(compiled, step=step, topology=topology, mesh=mesh, model_flops=flops,
                           tokens=tokens, lower_s=lower_s, compile_s=compile_s)
    return dataclasses.replace(report, **extra)


def compile_train(cc: CompileConfig, devices: Sequence[jax.Device], *,
                  donate: bool = True, lower_only: bool = False) -> StepReport:
    """AOT-compiles one optimizer update of `ppp_jax.rl.train_step` (the real PPP step: micro-batch
    scan, chunked log-probs, clipped objective, AdamW) on [compile.batch, compile.seq_len] for
    `devices` (lower_only: traced, not compiled). donate: whether the state is donated (`ppp train` does not donate it, so its new
    state is a separate output; the iteration check compiles it that way)."""
    from ppp_jax.rl import train_step as ts

    spec, rl = cc.compile, cc.rl
    setup = _train_setup(cc, devices, spec.batch, rl.num_micro_batches)
    batch = abstract_token_batch(spec.batch, spec.seq_len, setup.mesh)
    jitted = ts.make_train_step(setup.graphdef, rl, setup.optimizer, mesh=setup.mesh)
    # Re-jit the step's Python function with the state's shardings pinned on the way out too, so
    # the compiler cannot pick another layout for the new params (and aliasing is exact).
    fn = getattr(jitted, "__wrapped__", None)
    if fn is not None:
        jitted = jax.jit(fn, out_shardings=(setup.state_shardings, None),
                         donate_argnums=(0,) if donate else ())
    compiled, lower_s, compile_s = _lower_and_compile(setup, cc, jitted, (setup.state, batch),
                                                      lower_only)
    resident = {"params": per_chip_bytes(setup.state.params),
                "optimizer": per_chip_bytes(setup.state.opt_state)}
    return _report(compiled, step="train", cc=cc, devices=devices, mesh=setup.mesh,
                   flops=train_model_flops(setup.mcfg, spec.batch, spec.seq_len, len(devices)),
                   tokens=spec.batch * spec.seq_len, lower_s=lower_s, compile_s=compile_s,
                   resident_bytes=resident,
                   note="" if donate else "state not donated (as `ppp train` runs the step)")


def compile_logprob(cc: CompileConfig, devices: Sequence[jax.Device], *, rows: int,
                    num_micro: int, lower_only: bool = False) -> StepReport:
    """AOT-compiles the π_old pass (`ppp_jax.rl.train_step.make_logprob_fn`, as the trainer builds
    it: `num_micro` micro-batches, rows over data x fsdp) over a rollout batch of `rows` x
    compile.seq_len tokens."""
    from ppp_jax.rl import train_step as ts

    spec = cc.compile
    setup = _train_setup(cc, devices, rows, num_micro)
    batch = abstract_token_batch(rows, spec.seq_len, setup.mesh)
    jitted = ts.make_logprob_fn(setup.graphdef, cc.rl, num_micro=num_micro, mesh=setup.mesh)
    compiled, lower_s, compile_s = _lower_and_compile(setup, cc, jitted, (setup.params, batch),
                                                      lower_only)
    flops = forward_model_flops(setup.mcfg, rows, spec.seq_len, spec.seq_len / 2, len(devices))
    return _report(compiled, step="logprob", cc=cc, devices=devices, mesh=setup.mesh,
                   flops=flops, tokens=rows * spec.seq_len, lower_s=lower_s, compile_s=compile_s)


def seed_oss_model(cfg: ModelConfig):
    from ppp_jax.model.transformer import SeedOssForCausalLM

    return SeedOssForCausalLM(cfg, rngs=nnx.Rngs(0))
