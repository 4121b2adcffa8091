"""AOT compiles of the paged sampling engine's own programs (prefill, decode) for a TPU topology.

What is compiled is exactly what `ppp_jax.sampling.Engine` runs: a `sampling.runner.ModelRunner`
is built the way the engine builds it, and its jitted `prefill_program` (chunked prefill writing K/V
into the page pools) and `decode_program` (the multi-step decode block with sampling, over a
`SlotBatch`) are lowered with abstract inputs:

  state            the bf16 weights, `nnx.split` of the model, sharded by `SAMPLING_RULES`
  k_pool, v_pool   [L, P, S, K, H] page pools, placed by `sampling.engine.kv_pool_sharding`
                   (kv heads over `tensor`), donated as in the engine
  prefill          tokens / positions / segment_ids int32 [Bp, C], page_table int32 [Bp, W],
                   cache_lens int32 [Bp]
  decode           SlotBatch (page_table [B, W], per-slot lengths, sampling parameters, seeds)
                   and the traced number of steps

Host-built inputs (everything but weights and pools) are numpy arrays in the engine, so jit
leaves their placement to the compiler; here they are ShapeDtypeStructs without a sharding, which
lowers the same way. P, W, B, Bp, C and the steps per block come from an `EngineConfig` derived
from `EngineSpec` (`engine_config`), whose own checks (pool holds one full sequence, ...) run.

Replicas. The engine is one program over one mesh and never shards its slots: on a mesh with
`data` (or `fsdp`) > 1 it would run the same slots redundantly on every data row. So a slice
runs `data x fsdp` independent engine replicas (`EngineSpec.mesh`), each on the `tensor` chips of
one row of the mesh with the section's `num_slots` slots, and that is what is compiled: one
replica, on the sub-mesh {data: 1, fsdp: 1, tensor: t} made of the first row of the slice's
engine mesh (so its chips are neighbours on the torus). Every replica is identical, so the
per-chip memory of the report is that of every chip of the slice; the report's `note` says how
many replicas the slice holds. The HBM limit is per chip of the slice.

FLOPs: the compiler counts each loop body once (the layer scan, the decode block's while loop and
the attention's page-block loop, whose trip counts are dynamic), so its figure is far below the
work done; the analytic figure is for a full block of `decode_steps` steps attending to
`max_seq_len` cached tokens (decode) or one chunk attending to itself (prefill), all layers.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from ppp_jax.config.compile import CompileConfig
from ppp_jax.model import sharding as shd
from ppp_jax.model.config import ModelConfig
from ppp_jax.scale.chips import AotError, hbm_per_device, topology_chips
from ppp_jax.scale.compile_train import seed_oss_model
from ppp_jax.scale.flops import forward_model_flops
from ppp_jax.scale.iteration import per_chip_bytes
from ppp_jax.scale.mesh import make_mesh_for, with_shardings
from ppp_jax.scale.step_report import StepReport, compile_lowered, report_of

STEPS = ("prefill", "decode")


@dataclasses.dataclass(frozen=True)
class EnginePlan:
    """One engine replica on the slice: its mesh, sizes and model.

    full_mesh: the slice's engine mesh (`EngineSpec.mesh` over every device).
    mesh: one replica's sub-mesh, {data: 1, fsdp: 1, tensor: t} (other axes 1).
    replicas: how many replicas the slice holds (devices / t).
    config: the replica's `sampling.EngineConfig` (slots, pool, page table, buckets).
    model_config: the engine's model (weights and compute in `EngineSpec.dtype`).
    """

    full_mesh: Mesh
    mesh: Mesh
    replicas: int
    config: Any  # sampling.config.EngineConfig (imported lazily)
    model_config: ModelConfig

    @property
    def prefill_rows(self) -> int:
        return self.config.prefill_rows[-1]

    @property
    def prefill_chunk(self) -> int:
        return self.config.prefill_chunks[-1]


def sampling_model_config(model_config: ModelConfig, dtype: str = "") -> ModelConfig:
    """`model_config` as an engine replica holds it: weights and compute in `dtype` ("" = the
    model's own), no remat (forward only), XLA attention kernel (the paged cache does its own
    attention). Shared by `ppp compile` and the trainer's `engine_layout: sampling`."""
    return model_config.replace(param_dtype=dtype or model_config.param_dtype,
                                dtype=dtype or model_config.dtype, remat="none",
                                attention_impl="xla")


def engine_model_config(cc: CompileConfig) -> ModelConfig:
    """The model as the compiled engine holds it (`sampling_model_config` in `engine.dtype`)."""
    return sampling_model_config(cc.model.build(), cc.engine.dtype)


def replica_mesh(full: Mesh) -> Mesh:
    """The sub-mesh of one engine replica: the `tensor` devices of the first row of `full`."""
    index = tuple(slice(None) if a == "tensor" else slice(0, 1) for a in full.axis_names)
    return Mesh(full.devices[index], full.axis_names, axis_types=full.axis_types)


def engine_plan(cc: CompileConfig, devices: Sequence[jax.Device]) -> EnginePlan:
    """Lays the engine out on `devices` (the whole slice) and sizes one replica."""
    full = make_mesh_for(devices, cc.engine.mesh)
    mesh = replica_mesh(full)
    replicas = full.devices.size // mesh.devices.size
    return EnginePlan(full_mesh=full, mesh=mesh, replicas=replicas,
                      config=cc.engine.replica_config(),
                      model_config=engine_model_config(cc))


def make_runner(graphdef: nnx.GraphDef, config):
    """A `ModelRunner` built as `sampling.Engine` builds it from `config`."""
    from ppp_jax.sampling.runner import ModelRunner

    return ModelRunner(graphdef, block_pages=config.block_pages,
                       decode_steps=config.decode_steps, max_seq_len=config.max_seq_len)


def abstract_weights(plan: EnginePlan) -> tuple[nnx.GraphDef, Any]:
    """(graphdef, state) of the engine's model: ShapeDtypeStructs sharded by SAMPLING_RULES on
    the replica mesh (the whole state, as `Engine` splits it)."""
    model = shd.abstract_model(lambda: seed_oss_model(plan.model_config))
    graphdef, state = nnx.split(model)
    try:
        shardings = shd.state_shardings(state, plan.mesh, shd.SAMPLING_RULES)
    except shd.ShardingError as e:
        raise AotError(f"the engine's sampling rules do not fit the model on the replica mesh "
                           f"{dict(plan.mesh.shape)}: {e}") from None
    return graphdef, with_shardings(state, shardings)


def abstract_pools(plan: EnginePlan) -> tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
    """The K and V page pools [L, P, S, K, H] in kv_dtype, sharded as `Engine` places them."""
    from ppp_jax.sampling.engine import kv_pool_sharding
    from ppp_jax.sampling.paged_cache import PagedKVCache

    c, m = plan.config, plan.model_config
    dtype = jnp.dtype(c.kv_dtype or m.dtype)
    k, v = jax.eval_shape(lambda: PagedKVCache.init_pool(
        m.num_layers, c.num_pages, c.page_size, m.num_kv_heads, m.head_dim, dtype))
    sharding = kv_pool_sharding(plan.mesh, m.num_kv_heads)
    return (jax.ShapeDtypeStruct(k.shape, k.dtype, sharding=sharding),
            jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding))


def _host(shape: tuple[int, ...], dtype) -> jax.ShapeDtypeStruct:
    # No sharding: the engine passes these as numpy arrays, whose placement jit leaves open.
    return jax.ShapeDtypeStruct(shape, np.dtype(dtype))


def abstract_prefill_inputs(plan: EnginePlan) -> tuple[jax.ShapeDtypeStruct, ...]:
    """(tokens, positions, segment_ids [Bp, C], page_table [Bp, W], cache_lens [Bp]), int32."""
    rows, chunk, width = plan.prefill_rows, plan.prefill_chunk, plan.config.table_width
    return (_host((rows, chunk), np.int32), _host((rows, chunk), np.int32),
            _host((rows, chunk), np.int32), _host((rows, width), np.int32),
            _host((rows,), np.int32))


def abstract_slot_batch(plan: EnginePlan):
    """The decode block's `SlotBatch`: `SlotBatch.build`'s shapes and dtypes (the engine's own
    builder), every leaf a ShapeDtypeStruct."""
    from ppp_jax.sampling.runner import SlotBatch

    c = plan.config
    batch = SlotBatch.build(c.num_slots, c.table_width, c.max_stop_tokens)
    return jax.tree.map(lambda x: _host(x.shape, x.dtype), batch)


def lower_engine_step(cc: CompileConfig, devices: Sequence[jax.Device], name: str):
    """Lowers the engine's `name` program ("prefill" or "decode") for one replica on `devices`.

    Returns (plan, runner, lowered): `lowered.compile()` is the executable the engine would run,
    callable with the engine's own arguments (`runner.prefill_program` / `runner.decode_program`
    signatures, so `runner.use_programs` can hand it to a live engine's runner).
    """
    if name not in STEPS:
        raise AotError(f"unknown engine step {name!r}; choose prefill or decode")
    plan = engine_plan(cc, devices)
    graphdef, state = abstract_weights(plan)
    k_pool, v_pool = abstract_pools(plan)
    runner = make_runner(graphdef, plan.config)
    if name == "prefill":
        lowered = runner.prefill_program.lower(state, k_pool, v_pool,
                                               *abstract_prefill_inputs(plan))
    else:
        lowered = runner.lower_decode(state, k_pool, v_pool, abstract_slot_batch(plan))
    return plan, runner, lowered


def describe_plan(plan: EnginePlan) -> str:
    """One line: which replica is compiled and how many the slice holds."""
    c = plan.config
    t = plan.mesh.shape["tensor"]
    return (f"one paged-engine replica on {t} chip{'s' if t > 1 else ''} (tensor={t}); the slice "
            f"holds {plan.replicas} replicas (engine mesh {dict(plan.full_mesh.shape)}), each with "
            f"{c.num_slots} slots, a pool of {c.num_pages} pages x {c.page_size} tokens, page "
            f"tables of {c.table_width} pages, {c.decode_steps} decode steps per block, prefill "
            f"{c.prefill_rows[-1]} x {c.prefill_chunks[-1]} tokens")


def compile_engine_step(cc: CompileConfig, devices: Sequence[jax.Device],
                        name: str, *, lower_only: bool = False) -> StepReport:
    """AOT-compiles the engine's "prefill" (one chunk of Bp rows x C tokens into the page pools)
    or "decode" (a block of `decode_steps` steps over the replica's slots, with sampling) for one
    engine replica of the slice `devices`; the report is per chip."""
    t0 = time.perf_counter()
    plan, _, lowered = lower_engine_step(cc, devices, name)
    t1 = time.perf_counter()
    compiled = compile_lowered(lowered, lower_only)
    t2 = time.perf_counter()
    c, m = plan.config, plan.model_config
    t = plan.mesh.devices.size
    if name == "prefill":
        rows, new, context = plan.prefill_rows, plan.prefill_chunk, plan.prefill_chunk / 2
    else:
        rows, new, context = c.num_slots, c.decode_steps, c.max_seq_len
    flops = forward_model_flops(m, rows, new, context, t)
    topology = cc.compile.topology
    fields = dict(step=name, topology=topology, model_flops=flops,
                  tokens=rows * new * plan.replicas, lower_s=t1 - t0, compile_s=t2 - t1)
    if isinstance(compiled, StepReport):
        report = dataclasses.replace(compiled, mesh={str(k): int(v) for k, v in
                                                     plan.mesh.shape.items()}, **fields)
    else:
        report = report_of(compiled, mesh=plan.mesh, **fields)
    # report_of divides the slice's HBM by the devices of the mesh it is given; the replica's
    # chips are chips of the slice, each with one chip's HBM.
    chip_hbm = hbm_per_device(topology, topology_chips(topology))
    resident = {"weights": per_chip_bytes(abstract_weights(plan)[1]),
                "kv_pools": per_chip_bytes(abstract_pools(plan))}
    return dataclasses.replace(report, hbm_bytes=chip_hbm, note=describe_plan(plan),
                               resident_bytes=resident)
