"""`ppp compile` / `ppp_jax.scale`: AOT compiles for TPU topologies from this CPU machine.

The compile tests run `ppp compile` in a subprocess (JAX_PLATFORMS=cpu, libtpu for the TPU
compiler only), so that the libtpu state of this pytest process does not matter. They need
libtpu (`pip install -e ".[test]"` installs it) and are skipped with the reason when it is absent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ppp_jax.scale.chips import AotError, DoesNotFit, chip_of, libtpu_available, topology_chips
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
    assert cc.compile.topology == "v5p:4x4x4" and cc.compile.seq_len == 40960
    assert cc.sharding.mesh.shape == (1, -1, 1)
    over = load_compile_config(ROOT / "configs" / "seed_oss_36b_funcloc.yaml",
                                   ["compile.batch=128", "model.remat=save_dots"])
    assert over.compile.batch == 128 and over.model.remat == "save_dots"
    with pytest.raises(ConfigError, match="unknown key"):
        load_compile_config(ROOT / "configs" / "seed_oss_36b_funcloc.yaml", ["compile.nope=1"])
