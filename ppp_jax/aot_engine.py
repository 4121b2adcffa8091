"""AOT compiles of the rollout engine's steps (prefill, decode) for a TPU topology.

Stand-in: the steps compiled here are a prefill and a one-token decode of
`SeedOssForCausalLM.hidden` against a `DenseKVCache` (contiguous [L, B, S, K, H] buffers), not the
paged `ppp_jax.sampling` engine's own programs. The shapes and the memory that matter at scale —
bf16 weights sharded over tensor, the KV cache of B_e sequences of S slots, the attention over
the cache — are the same; the paged pool adds page tables and a gather.

Layout on the slice (`EngineSpec.mesh`, rules `SAMPLING_RULES`): weights are not FSDP-sharded
(each decode step would otherwise all-gather every weight), heads / MLP / vocab are split over
`tensor`, and the `data` (and `fsdp`) devices hold independent engine replicas, each with its
own share of the batch. The cache is [L, B, S, K, H] with B over (data, fsdp) and K over tensor.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from ppp_jax import aot
from ppp_jax.model import sharding as shd

BATCH = ("data", "fsdp")


def _cache_abstract(mcfg, batch: int, cache_len: int, mesh, dtype: str):
    from ppp_jax.model.kv_cache import DenseKVCache

    cache = jax.eval_shape(lambda: DenseKVCache.create(mcfg, batch, cache_len, dtype))
    heads = "tensor" if mcfg.num_kv_heads % mesh.shape["tensor"] == 0 else None
    kv = NamedSharding(mesh, PartitionSpec(None, BATCH, None, heads))
    rows = NamedSharding(mesh, PartitionSpec(BATCH))
    shardings = cache.replace(k=kv, v=kv, lengths=rows, segment_ids=rows)
    return aot.with_shardings(cache, shardings), shardings


def compile_engine_step(cc: aot.CompileConfig, devices: Sequence[jax.Device],
                        name: str) -> aot.StepReport:
    """AOT-compiles the engine's "prefill" (B_e × T_p prompt tokens into an empty cache of S
    slots, logits of the last token) or "decode" (one token per sequence against a cache of S
    slots, greedy next token) for `devices`."""
    if name not in ("prefill", "decode"):
        raise aot.AotError(f"unknown engine step {name!r}; choose prefill or decode")
    eng = cc.engine
    # The engine keeps bf16 weights and uses XLA attention over the cache (splash is cache-free).
    mcfg = cc.model.build().replace(param_dtype=eng.dtype, dtype=eng.dtype, remat="none",
                                    attention_impl="xla")
    mesh = aot.make_mesh_for(devices, eng.mesh)
    rules = shd.SAMPLING_RULES
    replicas = mesh.shape["data"] * mesh.shape["fsdp"]
    batch = eng.prefill_batch if name == "prefill" else eng.batch
    if batch % replicas:
        raise aot.AotError(f"engine batch {batch} ({name}) must be a multiple of data x fsdp = "
                           f"{replicas} (engine mesh {dict(mesh.shape)})")
    t = eng.prefill_len if name == "prefill" else 1
    abstract = shd.abstract_model(lambda: aot._model(mcfg))
    graphdef, params_abs = nnx.split(abstract)
    try:
        param_sh = shd.state_shardings(params_abs, mesh, rules)
    except shd.ShardingError as e:
        raise aot.AotError(f"engine sharding does not fit the model on {dict(mesh.shape)}: {e}") from None
    params = aot.with_shardings(params_abs, param_sh)
    cache, cache_sh = _cache_abstract(mcfg, batch, eng.cache_len, mesh, eng.dtype)
    rows = NamedSharding(mesh, PartitionSpec(BATCH))
    tok = jax.ShapeDtypeStruct((batch, t), jnp.int32, sharding=rows)

    def step(params, cache, tokens, positions, segment_ids):
        model = nnx.merge(graphdef, params)
        hidden, cache = model.hidden(tokens, positions, segment_ids, cache=cache)
        logits = model.logits(hidden[:, -1:, :])  # [B, 1, V]
        return cache, jnp.argmax(logits[:, 0, :].astype(jnp.float32), axis=-1).astype(jnp.int32)

    jitted = jax.jit(step, out_shardings=(cache_sh, rows), donate_argnums=(1,))
    with shd.using_mesh(mesh, rules):
        t0 = time.perf_counter()
        lowered = jitted.lower(params, cache, tok, tok, tok)
        t1 = time.perf_counter()
        compiled = aot.compile_lowered(lowered)
        t2 = time.perf_counter()
    context = t / 2 if name == "prefill" else eng.cache_len
    flops = aot.forward_model_flops(mcfg, batch, t, context, len(devices))
    if isinstance(compiled, aot.StepReport):
        return dataclasses.replace(compiled, step=name, topology=cc.compile.topology,
                                   mesh={str(k): int(v) for k, v in mesh.shape.items()},
                                   hbm_bytes=aot.hbm_per_device(cc.compile.topology, len(devices)),
                                   model_flops=flops, tokens=batch * t, lower_s=t1 - t0,
                                   compile_s=t2 - t1)
    return aot.report_of(compiled, step=name, topology=cc.compile.topology, mesh=mesh,
                         model_flops=flops, tokens=batch * t, lower_s=t1 - t0, compile_s=t2 - t1)
