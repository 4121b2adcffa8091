"""`ppp_jax.scale.compile_engine`: the AOT-compiled engine programs are the paged engine's own.

Two checks run in subprocesses (this module is also their entry point,
`python -m tests.ppp_jax.test_aot_engine {cpu|tpu} ...`), so the device count and the libtpu state
of the pytest process do not matter:

- cpu: on 8 fake CPU devices (engine mesh data=2 x tensor=4, so 2 replicas of 4 devices), the
  AOT-lowered prefill and decode are compiled and swapped into a live `Engine` on the replica
  mesh in place of its own jitted programs; it must produce the same tokens and log-probs as an
  untouched `Engine` with the same weights, and never trace its own programs. An input the AOT
  path gets wrong (shape, dtype, sharding, pytree) makes the compiled call itself fail.
- tpu: the same programs compiled for v5p:2x2x2 take the page pools, the page table and the
  SlotBatch, and return `decode_steps` tokens per slot.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ppp_jax.scale.chips import AotError, libtpu_available, quiet_libtpu_env, tpu_devices
from ppp_jax.config.compile import CompileConfig, EngineSpec
from ppp_jax.scale import compile_engine as aot_engine

ROOT = Path(__file__).resolve().parents[2]
HAVE_LIBTPU, WHY_NO_LIBTPU = libtpu_available()
needs_libtpu = pytest.mark.skipif(not HAVE_LIBTPU, reason=WHY_NO_LIBTPU or "libtpu present")

# K=4 kv heads over tensor=4; N=8, F=48, V=96 divide too. Distinct small engine sizes.
CPU_MODEL = {"preset": "tiny", "param_dtype": "float32",
             "sizes": {"vocab_size": 96, "hidden_size": 32, "intermediate_size": 48,
                       "num_layers": 2, "num_heads": 8, "num_kv_heads": 4, "head_dim": 8}}
CPU_ENGINE = {"num_slots": 4, "decode_rows": [4], "prefill_rows": [2], "prefill_chunks": [16],
              "max_seq_len": 64,
              "num_pages": 65, "kv_dtype": "float32",
              "dtype": "float32", "page_size": 4, "decode_steps": 4, "block_pages": 4,
              "mesh": {"axes": ["data", "fsdp", "tensor"], "shape": [2, 1, 4]}}
# Per replica: 4 slots (one decode bucket, the AOT program's), 2 prefill rows of 16 tokens,
# 1 + 4 * 64/4 = 65 pages, W = 16.
# Prompts longer than the 16-token chunk are prefilled in several calls; 6 requests > 4 slots.
PROMPTS = [[5], [3, 14, 15, 92, 65, 35, 8, 9, 79], list(range(10, 31)), list(range(40, 73)),
           [7, 7, 8, 9, 11], [60, 2, 13, 40, 41, 1, 17, 20, 21, 22, 23, 30]]
MAX_NEW = 9  # one fresh step, then two blocks of decode_steps = 4

# Tiny shapes the TPU compiler accepts (head_dim 128; kv heads over tensor = 2).
TPU_MODEL = {"preset": "tiny",
             "sizes": {"head_dim": 128, "num_heads": 4, "num_kv_heads": 2, "vocab_size": 128}}
TPU_ENGINE = {"num_slots": 2, "prefill_rows": [1], "prefill_chunks": [128], "max_seq_len": 512,
              "num_pages": 17, "kv_dtype": "bfloat16",
              "page_size": 64, "decode_steps": 5, "block_pages": 2,
              "mesh": {"axes": ["data", "fsdp", "tensor"], "shape": [-1, 1, 2]}}


def _compile_config(model: dict, engine: dict, topology: str = "v5p:2x2x2") -> CompileConfig:
    from ppp_jax.config import loader as cfg

    return cfg.from_dict(CompileConfig, {"model": model, "engine": engine,
                                             "compile": {"topology": topology,
                                                         "steps": ["prefill", "decode"]}})


def _shapes(tree) -> list[list[int]]:
    import jax

    return [list(x.shape) for x in jax.tree.leaves(tree)]


def _describe(plan, compiled: dict) -> dict:
    """Shapes and pool shardings of the compiled programs, for the parent's checks."""
    out = {"num_pages": plan.config.num_pages, "table_width": plan.config.table_width,
           "slots": plan.config.num_slots, "replicas": plan.replicas,
           "replica_mesh": {str(k): int(v) for k, v in plan.mesh.shape.items()}}
    for name, exe in compiled.items():
        (args, _kwargs) = exe.args_info
        out[name] = {"state_leaves": len(_shapes(args[0])), "k_pool": list(args[1].shape),
                     "v_pool": list(args[2].shape), "rest": _shapes(args[3:]),
                     "donated": [bool(args[1].donated), bool(args[2].donated)],
                     "pool_spec": repr(exe.input_shardings[0][1].spec),
                     "outputs": _shapes(exe.out_info)}
    return out


def _child_tpu() -> None:
    quiet_libtpu_env()
    cc = _compile_config(TPU_MODEL, TPU_ENGINE)
    devices = tpu_devices(cc.compile.topology)
    compiled = {}
    for name in aot_engine.STEPS:
        plan, _, lowered = aot_engine.lower_engine_step(cc, devices, name)
        compiled[name] = lowered.compile()
    print(json.dumps(_describe(plan, compiled)))


def _child_cpu() -> None:
    import jax
    import numpy as np

    from ppp_jax.model import sharding as shd
    from ppp_jax.model.testing import make_model
    from ppp_jax.sampling.engine import Engine
    from ppp_jax.sampling.params import Request, SamplingParams

    cc = _compile_config(CPU_MODEL, CPU_ENGINE)
    compiled = {}
    for name in aot_engine.STEPS:
        plan, _, lowered = aot_engine.lower_engine_step(cc, jax.devices(), name)
        compiled[name] = lowered.compile()

    model = shd.shard_model(make_model(plan.model_config, seed=4), plan.mesh, shd.SAMPLING_RULES)

    def requests():
        out = []
        for i, p in enumerate(PROMPTS):
            sampled = i % 2 == 1  # greedy and seeded-sampled rows in one batch
            out.append(Request(p, SamplingParams(
                temperature=1.0 if sampled else 0.0, top_p=0.9 if i == 3 else 1.0,
                seed=100 + i if sampled else None, max_new_tokens=MAX_NEW)))
        return out

    with Engine(model, plan.config, mesh=plan.mesh) as engine:
        pool_sharding = engine.kv_pool_layout().sharding  # as the engine places it, before any step
        same_pool_sharding = [pool_sharding.is_equivalent_to(compiled[n].input_shardings[0][i], 5)
                              for n in aot_engine.STEPS for i in (1, 2)]
        reference = engine.generate_batch(requests())

    calls: collections.Counter[str] = collections.Counter()
    valid_per_block: list[int] = []

    def aot_prefill(*args):
        calls["prefill"] += 1
        return compiled["prefill"](*args)

    def aot_decode(*args):
        calls["decode"] += 1
        out = compiled["decode"](*args)
        valid_per_block.append(int(np.max(np.asarray(out[4]))))
        return out

    with Engine(model, plan.config, mesh=plan.mesh) as engine:
        engine.runner.use_programs(prefill=aot_prefill, decode=aot_decode)  # called per step
        via_aot = engine.generate_batch(requests())
        traces = engine.compilations

    diff = max(abs(a - b) for r, s in zip(reference, via_aot)
               for a, b in zip(r.logprobs, s.logprobs))
    print(json.dumps({
        "devices": jax.device_count(), **_describe(plan, compiled),
        "same_pool_sharding": same_pool_sharding,
        "reference": [r.token_ids for r in reference], "aot": [r.token_ids for r in via_aot],
        "reasons": [r.finish_reason for r in via_aot], "max_logprob_diff": diff,
        "calls": dict(calls), "valid_per_block": valid_per_block,
        "engine_traces": {k: v for k, v in traces.items() if k in aot_engine.STEPS}}))


def _run_child(mode: str, env: dict) -> dict:
    proc = subprocess.run([sys.executable, "-m", "tests.ppp_jax.test_aot_engine", mode], cwd=ROOT,
                          env=dict(os.environ, **env), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- subprocess checks -----------------------------------------------------------------------


def test_aot_programs_drive_a_live_engine_on_8_cpu_devices():
    r = _run_child("cpu", {"JAX_PLATFORMS": "cpu",
                           "XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert r["devices"] == 8
    # One replica = the 4 tensor devices of one data row; the slice holds 2.
    assert r["replicas"] == 2 and r["replica_mesh"] == {"data": 1, "fsdp": 1, "tensor": 4}
    assert r["slots"] == 4 and r["num_pages"] == 1 + 4 * 64 // 4 and r["table_width"] == 16
    # The compiled programs take the paged pools [L, P, S, K, H] (donated, kv heads over tensor),
    # the page table and the SlotBatch, the same placement as the live engine's pool.
    for name in ("prefill", "decode"):
        p = r[name]
        assert p["k_pool"] == p["v_pool"] == [2, r["num_pages"], 4, 4, 8]
        assert p["donated"] == [True, True]
        assert p["pool_spec"] == "P(None, None, None, 'tensor', None)"
    assert r["same_pool_sharding"] == [True] * 4
    # prefill: tokens, positions, segment_ids [Bp=2, C=16], page_table [2, W], cache_lens [2].
    assert r["prefill"]["rest"] == [[2, 16]] * 3 + [[2, 16], [2]]
    # decode: SlotBatch (page_table [B, W] first), num_steps []; outputs pools, tokens [B, k],
    # logprobs [B, k], num_valid [B] with k = decode_steps = 4.
    assert r["decode"]["rest"][0] == [4, 16] and r["decode"]["rest"][-1] == []
    assert r["decode"]["outputs"][2:] == [[4, 4], [4, 4], [4]]
    # The engine ran on the AOT executables only, and they reproduce it exactly.
    assert r["engine_traces"].get("prefill", 0) == 0 and r["engine_traces"].get("decode", 0) == 0
    assert r["calls"]["prefill"] >= 4 and r["calls"]["decode"] >= 3
    assert r["aot"] == r["reference"]
    assert r["max_logprob_diff"] <= 1e-6
    assert all(len(t) == MAX_NEW for t in r["aot"]) and r["reasons"] == ["length"] * len(PROMPTS)
    assert len({tok for toks in r["aot"] for tok in toks}) > 5  # not a degenerate model
    # A full block runs decode_steps steps.
    assert max(r["valid_per_block"]) == 4


@needs_libtpu
def test_tpu_programs_take_the_pools_and_run_decode_steps():
    r = _run_child("tpu", {"JAX_PLATFORMS": "cpu"})
    # v5p:2x2x2 = 8 chips, engine mesh data=4 x tensor=2: 4 replicas of 2 chips, 2 slots each.
    assert r["replicas"] == 4 and r["replica_mesh"] == {"data": 1, "fsdp": 1, "tensor": 2}
    pages = 1 + 2 * 512 // 64
    assert r["num_pages"] == pages and r["table_width"] == 8
    for name in ("prefill", "decode"):
        assert r[name]["k_pool"] == r[name]["v_pool"] == [2, pages, 64, 2, 128]
        assert r[name]["pool_spec"] == "P(None, None, None, 'tensor', None)"
    assert r["prefill"]["rest"] == [[1, 128]] * 3 + [[1, 8], [1]]
    assert r["decode"]["rest"][0] == [2, 8]
    assert r["decode"]["outputs"][2:] == [[2, 5], [2, 5], [2]]


# ---- in-process ------------------------------------------------------------------------------


def test_one_engine_section_gives_the_replica_config():
    """The `engine` section is one replica's EngineConfig plus dtype and mesh: the trainer's
    engines and `ppp compile` read the same numbers (the 36B Func-Loc config: 8 slots of 40,960
    tokens, every one able to reach the full context)."""
    from ppp_jax.config.compile import load_compile_config
    from ppp_jax.sampling.config import EngineConfig

    spec = load_compile_config(str(ROOT / "configs" / "seed_oss_36b_funcloc.yaml")).engine
    c = spec.replica_config()
    assert type(c) is EngineConfig
    assert c.num_slots == 8 and c.prefill_rows == (1,) and c.prefill_chunks == (512, 2048)
    assert c.num_pages == 1 + 8 * 640 and c.table_width == 640 and c.kv_dtype == "bfloat16"
    assert spec.dtype == "bfloat16" and spec.mesh.shape == (-1, 1, 4)
    with pytest.raises(ValueError, match="must hold one sequence"):
        EngineSpec(num_pages=100, max_seq_len=40960, page_size=64)


def test_unknown_engine_step_is_an_error():
    with pytest.raises(AotError, match="unknown engine step 'train'"):
        aot_engine.lower_engine_step(CompileConfig(), [], "train")


if __name__ == "__main__":
    {"cpu": _child_cpu, "tpu": _child_tpu}[sys.argv[1]]()
