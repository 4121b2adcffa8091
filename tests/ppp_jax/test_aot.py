"""`ppp compile` / `ppp_jax.scale`: AOT compiles for TPU topologies from this CPU machine.

The compile tests run `ppp compile` in a subprocess (JAX_PLATFORMS=cpu, libtpu for the TPU
compiler only), so that the libtpu state of this pytest process does not matter. They need
libtpu (`pip install -e ".[test]"` installs it) and are skipped with the reason when it is absent.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ppp_jax.scale.chips import AotError, DoesNotFit, chip_of, libtpu_available, topology_chips
from ppp_jax.config.run import load_run_config
from ppp_jax.scale.iteration import (
    TrainerShape,
    iteration_phases,
    iteration_table,
    trainer_mismatch,
    trainer_shape,
    with_trainer_shape,
)
from ppp_jax.scale.step_report import StepReport, check_fits, oom_bytes
from ppp_jax.config.compile import load_compile_config
from ppp_jax.scale.mesh import parse_mesh
from ppp_jax.config.loader import ConfigError

ROOT = Path(__file__).resolve().parents[2]
HAVE_LIBTPU, WHY_NO_LIBTPU = libtpu_available()
needs_libtpu = pytest.mark.skipif(not HAVE_LIBTPU, reason=WHY_NO_LIBTPU or "libtpu present")

# Tiny Seed-OSS shapes the Pallas TPU kernels accept (head_dim 128; vocab divisible by tensor=2).
TINY = {
    "model": {"preset": "tiny", "attention_impl": "splash",
              "sizes": {"head_dim": 128, "num_heads": 4, "num_kv_heads": 2, "vocab_size": 128}},
    "sharding": {"mesh": {"axes": ["data", "fsdp", "tensor"], "shape": [1, -1, 1]}},
    "compile": {"topology": "v5p:2x2x2", "steps": ["train", "prefill", "decode"], "batch": 8,
                "seq_len": 512},
    "engine": {"num_slots": 2, "prefill_rows": [1], "prefill_chunks": [128], "max_seq_len": 512,
               "num_pages": 17, "kv_dtype": "bfloat16", "page_size": 64, "decode_steps": 16,
               "block_pages": 16,
               "mesh": {"axes": ["data", "fsdp", "tensor"], "shape": [-1, 1, 2]}},
    "rl": {"logprob_chunk_size": 128},
}


def _ppp_compile(tmp_path: Path, config: dict, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(config))
    out = tmp_path / "report.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "ppp_jax.cli", "compile", str(cfg), "--json",
                           str(out), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    report = json.loads(out.read_text()) if out.exists() else {}
    return proc, report


@needs_libtpu
def test_tiny_train_prefill_decode_compile_for_v5p(tmp_path):
    proc, report = _ppp_compile(tmp_path, TINY)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "every step fits" in proc.stdout
    steps = {r["step"]: r for r in report["reports"]}
    assert set(steps) == {"train", "prefill", "decode"}
    train = steps["train"]
    assert train["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    # The paged engine is compiled as one replica on its tensor=2 chips; the slice holds 4.
    for name in ("prefill", "decode"):
        assert steps[name]["mesh"] == {"data": 1, "fsdp": 1, "tensor": 2}
        assert "the slice holds 4 replicas" in steps[name]["note"]
    assert "layout       one paged-engine replica on 2 chips" in proc.stdout
    for r in steps.values():
        assert r["argument_bytes"] > 0 and r["output_bytes"] > 0 and r["temp_bytes"] >= 0
        assert r["peak_bytes"] == r["argument_bytes"] + r["output_bytes"] - r["alias_bytes"] + r["temp_bytes"]
        assert r["hbm_bytes"] == 95.74 * 2**30 and r["fits"]
        assert r["flops"] > 0 and r["model_flops"] > 0 and r["compile_s"] > 0
    # Donated params and optimizer state come back in place.
    assert train["alias_bytes"] > 0
    assert train["tokens"] == 8 * 512


# TINY as a run config: the trainer's sections decide what is compiled. 4 prompts x 4 episodes =
# 16 rows of 512 tokens (a multiple of 1 micro-batch x 2 mini-batches x fsdp 8), 2 PPO updates of
# 8 rows each, π_old recomputed first.
TINY_RUN = {**json.loads(json.dumps(TINY)),
            "data": {"batch_size": 4},
            "rollout": {"row_len": 512, "rows_multiple": 1, "engine_layout": "sampling",
                        "release_engine_memory": True}}
TINY_RUN["compile"] = {"topology": "v5p:2x2x2", "steps": ["train", "prefill", "decode"]}
TINY_RUN["rl"] = {"logprob_chunk_size": 128, "ppo_mini_batches": 2,
                  "advantage": {"group_size": 4}}


@needs_libtpu
def test_run_config_compiles_what_train_runs_and_checks_the_iteration(tmp_path):
    proc, report = _ppp_compile(tmp_path, TINY_RUN)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "train batch 8 x 512 tokens" in out  # derived: 16 rows / 2 mini-batches
    assert "16 episodes -> 16 rows x 512 tokens; 2 update(s)" in out
    assert "pi_old recomputed over the batch first" in out
    assert "every step fits, and the whole iteration fits" in out
    steps = {r["step"]: r for r in report["reports"]}
    assert list(steps) == ["logprob", "train", "prefill", "decode"]  # the π_old pass added
    assert steps["logprob"]["tokens"] == 16 * 512 and steps["train"]["tokens"] == 8 * 512
    # The trainer does not donate its state: the new state is not aliased to the old.
    assert steps["train"]["alias_bytes"] == 0
    assert "state not donated" in steps["train"]["note"]
    train_res, engine_res = steps["train"]["resident_bytes"], steps["decode"]["resident_bytes"]
    # Exact shard sizes: the f32 params split over 8 chips (a few small tensors replicated) and
    # AdamW's two moments of the same shape; the engine's pools and bf16 weights over tensor=2.
    from ppp_jax.config.compile import load_compile_config as load
    cfg_path = tmp_path / "run.yaml"
    n = load(cfg_path).model.build().param_count()
    assert n * 4 / 8 <= train_res["params"] < n * 4 / 2
    assert train_res["optimizer"] >= 2 * train_res["params"]
    assert n * 2 / 2 <= engine_res["weights"] <= n * 2
    assert engine_res["kv_pools"] > 0
    phases = {p["name"]: p for p in report["iteration"]}
    assert list(phases) == ["rollout prefill", "rollout decode", "pi_old pass", "update (x2)"]
    for p in phases.values():
        assert p["total_bytes"] == p["program_bytes"] + sum(p["resident"].values())
        assert p["fits"]
    assert phases["rollout decode"]["program_bytes"] == steps["decode"]["peak_bytes"]
    assert set(phases["rollout decode"]["resident"]) == {"trainer params (f32 masters)",
                                                         "optimizer state"}
    # Released: no engine memory beside the update; the whole batch stays (K = 2).
    assert phases["update (x2)"]["resident"] == {"rollout batch [R, T]": 8 * 4 * 2 * 512}
    assert "engine weights" not in phases["pi_old pass"]["resident"]

    # Kept: the engine's weights and pools sit beside the π_old pass and the update.
    kept = json.loads(json.dumps(TINY_RUN))
    kept["rollout"]["release_engine_memory"] = False
    proc, report = _ppp_compile(tmp_path, kept, "--steps", "train,prefill,decode")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    update = {p["name"]: p for p in report["iteration"]}["update (x2)"]
    assert update["resident"]["engine weights"] == engine_res["weights"]
    assert update["resident"]["engine K/V pools"] == engine_res["kv_pools"]


@needs_libtpu
def test_compile_section_that_disagrees_with_the_trainer_is_a_study(tmp_path):
    study = json.loads(json.dumps(TINY_RUN))
    study["compile"].update(batch=16, steps=["train"])
    proc, report = _ppp_compile(tmp_path, study)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ("a per-program study, not what `ppp train` runs with this file: compile.batch=16, "
            "but `ppp train` runs 8") in proc.stdout
    assert "whole iteration" not in proc.stdout.splitlines()[-1]
    assert "iteration" not in report and [r["step"] for r in report["reports"]] == ["train"]
    # A compile-only config must give the shapes itself.
    bare = json.loads(json.dumps(TINY))
    del bare["compile"]["batch"]
    proc, _ = _ppp_compile(tmp_path, bare)
    assert proc.returncode == 2
    assert "compile.batch is not set, and this config has no trainer sections" in proc.stderr


@needs_libtpu
def test_too_big_exits_nonzero_with_the_reason(tmp_path):
    # The paged engine's decode with 8 slots per replica of sequences of 4.7M tokens: the page
    # pools alone (1 + 8 x 73,728 pages of 64 tokens, 2 layers, 1 of 2 kv heads per chip, bf16)
    # are 36 GiB per chip on v5e:2x2 (2 replicas x tensor=2); v5e has 15.75 GiB usable.
    # The TPU compiler itself refuses (RESOURCE_EXHAUSTED); `ppp compile` reports it as a
    # does-not-fit with the compiler's figure. (The memory_analysis path of the verdict is
    # covered by test_check_fits_message_and_estimates.)
    big = json.loads(json.dumps(TINY))
    big["compile"].update(topology="v5e:2x2", steps=["decode"])
    big["engine"].update(num_slots=8, max_seq_len=4_718_592, num_pages=1 + 8 * 73_728)
    proc, report = _ppp_compile(tmp_path, big)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "does not fit: decode needs at least" in proc.stderr
    assert "v5e has 15.75 GiB usable HBM per chip" in proc.stderr
    (decode,) = report["reports"]
    assert not decode["fits"] and "Ran out of memory" in decode["compiler_error"]
    assert decode["peak_bytes"] > 16 * 2**30


@needs_libtpu
def test_bad_mesh_is_a_clear_error(tmp_path):
    proc, _ = _ppp_compile(tmp_path, TINY, "--mesh", "data=3,fsdp=1,tensor=1", "--steps", "train")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "uses 3 devices but the slice has 8" in proc.stderr


# ---- no libtpu needed below ------------------------------------------------------------------


def test_chip_table_and_topology_parsing():
    assert chip_of("v5p:4x4x4").hbm_gib == 95 and chip_of("v5p:4x4x4").limit_gib == 95.74
    assert chip_of("v6e:16x16").peak_bf16_flops == 918e12
    assert topology_chips("v5p:4x4x8") == 128
    assert topology_chips("v6e:16x16") == 256
    with pytest.raises(AotError, match="unknown TPU generation"):
        chip_of("v9x:2x2")
    with pytest.raises(AotError, match="must look like"):
        topology_chips("v5p")


def test_oom_message_parsing():
    msg = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
           "temporaries (1.25T) exceeds available HBM (95.74G).")
    assert oom_bytes(msg) == int(1.25 * 2**40)
    assert oom_bytes(msg.replace("1.25T", "40.71G")) == int(40.71 * 2**30)
    assert oom_bytes("something else") == 0


def test_parse_mesh():
    m = parse_mesh("fsdp=16,tensor=4")
    assert dict(zip(m.axes, m.shape)) == {"fsdp": 16, "tensor": 4, "data": 1}
    assert parse_mesh("data=-1,fsdp=1,tensor=8").shape == (-1, 1, 8)
    with pytest.raises(AotError, match="axis=size"):
        parse_mesh("fsdp")


def _report(peak_gib: float, topology="v5p:4x4x4") -> StepReport:
    b = int(peak_gib * 2**30)
    return StepReport(step="train", topology=topology, mesh={"data": 1, "fsdp": 64, "tensor": 1},
                          argument_bytes=b, output_bytes=0, alias_bytes=0, temp_bytes=0,
                          peak_bytes=b, compiler_peak_bytes=0, generated_code_bytes=0, flops=1.0,
                          model_flops=4.59e14, tokens=1, lower_s=0.0, compile_s=0.0,
                          hbm_bytes=95 * 2**30)


def test_check_fits_message_and_estimates():
    check_fits([_report(60)])
    assert _report(94).tight and not _report(60).tight
    with pytest.raises(DoesNotFit, match=r"does not fit: train needs 120.00 GiB per chip, "
                                             r"v5p has 95.74 GiB usable HBM per chip"):
        check_fits([_report(120)])
    # 4.59e14 FLOPs at 50% of 459 TFLOP/s: 2 s.
    assert _report(1).step_seconds(459e12, 0.5) == pytest.approx(2.0)


def test_funcloc_config_loads():
    cc = load_compile_config(ROOT / "configs" / "seed_oss_36b_funcloc.yaml")
    assert cc.model.build().param_count() == 36_151_104_512
    # batch and T are the trainer's: 64 prompts x 8 episodes = 512 rows of 40960 tokens in one
    # update of 8 micro-batches (one row per chip of the 64-chip FSDP mesh each)
    assert cc.compile.topology == "v5p:4x4x4" and (cc.compile.batch, cc.compile.seq_len) == (0, 0)
    run = load_run_config(ROOT / "configs" / "seed_oss_36b_funcloc.yaml")
    shape = trainer_shape(run, data_parallel=64)
    assert (shape.episodes, shape.rows, shape.rows_per_update, shape.seq_len) == (512, 512, 512,
                                                                                 40960)
    assert shape.micro_batches == 8 and shape.release and not shape.pi_old_pass
    assert with_trainer_shape(cc, shape).compile.batch == 512
    assert trainer_mismatch(cc, shape) == []
    assert cc.sharding.mesh.shape == (1, -1, 1)
    over = load_compile_config(ROOT / "configs" / "seed_oss_36b_funcloc.yaml",
                                   ["compile.batch=128", "model.remat=save_dots"])
    assert over.compile.batch == 128 and over.model.remat == "save_dots"
    with pytest.raises(ConfigError, match="unknown key"):
        load_compile_config(ROOT / "configs" / "seed_oss_36b_funcloc.yaml", ["compile.nope=1"])


def _shape(**kw) -> TrainerShape:
    base = dict(episodes=512, rows=512, seq_len=40960, micro_batches=8, mini_batches=1, epochs=1,
                pi_old_pass=False, release=True, engine_layout="sampling", pack=False)
    return TrainerShape(**{**base, **kw})


def _program(step: str, peak_gib: float, **resident_gib) -> StepReport:
    return dataclasses.replace(_report(peak_gib), step=step, resident_bytes={
        k: int(v * 2**30) for k, v in resident_gib.items()})


def test_iteration_fits_only_when_every_phase_fits_with_what_is_resident():
    # Each program fits on its own (70, 60, 60 GiB of 95); the engine's 40 GiB of weights and
    # pools beside the 70 GiB update do not, unless released.
    reports = [_program("train", 70, params=2.25, optimizer=4.5),
               _program("prefill", 60, weights=18, kv_pools=22),
               _program("decode", 60, weights=18, kv_pools=22)]
    check_fits(reports)
    released = iteration_phases(_shape(), reports, data_parallel=64)
    assert [p.name for p in released] == ["rollout prefill", "rollout decode", "update (x1)"]
    assert all(p.fits for p in released)
    decode = released[1]
    assert decode.total_bytes == int(60 * 2**30) + int(6.75 * 2**30)
    assert released[2].resident == {}  # one update on the whole batch: nothing beside it
    kept = iteration_phases(_shape(release=False), reports, data_parallel=64)
    assert [p.fits for p in kept] == [True, True, False]
    assert kept[2].total_bytes == int(70 * 2**30) + int(18 * 2**30) + int(22 * 2**30)
    table = iteration_table(_shape(release=False), kept)
    assert "update (x1)" in table and "<- DOES NOT FIT" in table
    assert "peak of the iteration 110.00 GiB per chip in 'update (x1)'" in table
    assert "FITS" in iteration_table(_shape(), released).splitlines()[-1]
    # K = 4 with π_old recomputed: the pass is a phase, the whole batch sits beside each update.
    pi = _shape(mini_batches=4, pi_old_pass=True)
    phases = iteration_phases(pi, reports + [_program("logprob", 30)], data_parallel=64)
    assert [p.name for p in phases][-2:] == ["pi_old pass", "update (x4)"]
    assert phases[-1].resident == {"rollout batch [R, T]": 8 * 4 * 8 * 40960}
    with pytest.raises(ValueError, match="missing \\['logprob'\\]"):
        iteration_phases(pi, reports, data_parallel=64)


def test_trainer_shape_rounds_rows_as_the_trainer_does():
    run = load_run_config(ROOT / "configs" / "seed_oss_36b_funcloc.yaml",
                          ["data.batch_size=5", "rl.ppo_mini_batches=4", "rollout.rows_multiple=1"])
    shape = trainer_shape(run, data_parallel=8)
    # 40 episodes up to a multiple of 8 micro x 4 mini x 8 = 256
    assert (shape.episodes, shape.rows, shape.rows_per_update) == (40, 256, 64)
    assert shape.pi_old_pass
    with pytest.raises(ConfigError, match="rollout.row_len is null"):
        trainer_shape(load_run_config(ROOT / "configs" / "seed_oss_36b_funcloc.yaml",
                                      ["rollout.row_len=null"]), data_parallel=8)
