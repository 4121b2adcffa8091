"""Sequence (context) sharding: the `sequence` mesh axis in the rules, activation constraints,
and the 8-fake-device parity check (`_sequence_check.py`, run in a subprocess so this pytest
process stays single-device)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml
from jax.sharding import AbstractMesh, PartitionSpec as P

from ppp_jax.scale.chips import libtpu_available
from ppp_jax.scale.mesh import parse_mesh
from ppp_jax.model import axes as ax
from ppp_jax.model.sharding import (
    FSDP_TP_RULES,
    SAMPLING_RULES,
    ShardingError,
    check_rules,
    constrain,
    logical_to_spec,
    make_mesh,
    no_activation_constraints,
    using_mesh,
)

ROOT = Path(__file__).resolve().parents[2]
MESH_SEQ = AbstractMesh((1, 4, 2, 2), ("data", "fsdp", "sequence", "tensor"))
MESH_NO_SEQ = AbstractMesh((2, 4, 2), ("data", "fsdp", "tensor"))


def test_rules_put_tokens_on_sequence_and_keep_kv_whole():
    # Residual stream [B, T, D]: rows over data x fsdp, tokens over sequence, model dim whole.
    assert logical_to_spec(ax.ACT_BTD, (8, 64, 32), MESH_SEQ, FSDP_TP_RULES) == P(("data", "fsdp"), "sequence")
    # q [B, T, N, H] splits T; k/v [B, S, K, H] keep S whole (gathered for attention).
    assert logical_to_spec(ax.ACT_BTNH, (8, 64, 4, 12), MESH_SEQ, FSDP_TP_RULES) == P(
        ("data", "fsdp"), "sequence", "tensor")
    assert logical_to_spec(ax.ACT_BSKH, (8, 64, 2, 12), MESH_SEQ, FSDP_TP_RULES) == P(
        ("data", "fsdp"), None, "tensor")
    # Weights' embed dim goes over fsdp x sequence, so sequence devices share params too.
    assert logical_to_spec(("layers", "embed", "mlp"), (2, 32, 6), MESH_SEQ, FSDP_TP_RULES) == P(
        None, ("fsdp", "sequence"), "tensor")


def test_rules_without_a_sequence_axis_are_unchanged():
    # A mesh without `sequence` treats it as size 1: the layouts of before.
    check_rules(FSDP_TP_RULES, MESH_NO_SEQ)
    assert logical_to_spec(ax.ACT_BTD, (8, 64, 32), MESH_NO_SEQ, FSDP_TP_RULES) == P(("data", "fsdp"))
    assert logical_to_spec(("layers", "embed", "heads", "head_dim"), (2, 32, 8, 4), MESH_NO_SEQ,
                           FSDP_TP_RULES) == P(None, "fsdp", "tensor")
    assert logical_to_spec(("embed", "mlp"), (32, 6), MESH_SEQ, SAMPLING_RULES) == P(None, "tensor")
    # Only `sequence` is optional: other absent axes stay errors.
    with pytest.raises(ShardingError, match="absent from the mesh"):
        logical_to_spec(("embed",), (32,), MESH_NO_SEQ, (("embed", ("fsdp", "expert")),))


def test_activation_fallbacks_for_shapes_the_axes_do_not_divide():
    # Decode's T = 1 and an odd batch fall back to replicated instead of failing.
    assert logical_to_spec(ax.ACT_BTD, (3, 1, 32), MESH_SEQ, FSDP_TP_RULES) == P()
    # A weight that does not fit fsdp x sequence falls back to fsdp alone (36 = 4 x 9).
    assert logical_to_spec(("embed",), (36,), MESH_SEQ, FSDP_TP_RULES) == P("fsdp")


def test_constrain_is_a_no_op_off_mesh_and_without_rules():
    x = np.ones((2, 4, 8), np.float32)
    assert constrain(x, ax.ACT_BTD) is x  # no using_mesh
    mesh = make_mesh((1, 1, 1))
    with using_mesh(mesh):
        with no_activation_constraints():
            assert constrain(x, ax.ACT_BTD) is x
        y = jax.jit(lambda a: constrain(a, ax.ACT_BTD))(x)
        np.testing.assert_array_equal(np.asarray(y), x)
        with pytest.raises(ShardingError, match="'bogus'"):
            constrain(x, ("bogus", None, None))


def test_parse_mesh_accepts_a_sequence_axis():
    m = parse_mesh("data=1,fsdp=16,sequence=4,tensor=1")
    assert m.axes == ("data", "fsdp", "sequence", "tensor") and m.shape == (1, 16, 4, 1)
    m = parse_mesh("fsdp=-1,sequence=2")
    assert m.axes == ("fsdp", "sequence", "data", "tensor") and m.shape == (-1, 2, 1, 1)
    assert m.resolved_shape(8) == (4, 2, 1, 1)


def test_sequence_sharded_equals_one_device_on_8_fake_devices():
    """Meshes data×fsdp×sequence×tensor = 2×1×2×2 and 1×2×4×1, tiny model in fp32: logits and
    the gradient of a chunked log-prob loss (left-padded, packed and right-padded rows) equal
    the single-device ones; the hidden states really are split along T; the compiled program
    all-gathers k/v to the whole sequence (twice: one k and one v per scanned layer body) and
    the same program traced outside `using_mesh` does not. Splash attention (interpret mode)
    with queries split over sequence = 4 equals XLA attention, forward and q/k/v gradients."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "tests.model._sequence_check"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["devices"] == 8
    meshes = result["meshes"]
    assert set(meshes) == {"data2_seq2_tp2", "fsdp2_seq4"}
    for name, r in meshes.items():  # bounds derived in the script (tests/numerics.py)
        assert r["max_abs_logits"] <= result["logits_atol"], (name, r, result["logits_atol"])
        # fp32 gradients up to ~18 in size, to the gradient bound relative to the largest
        assert r["max_grad"] > 1.0, (name, r)
        assert r["max_abs_grad"] <= result["grad_rel"] * r["max_grad"], (name, r, result["grad_rel"])
        assert r["kv_all_gathers"] == 2 and r["kv_all_gathers_unconstrained"] == 0, (name, r)
    # B=4, T=16, D=32: 2x2 rows x tokens per device on data2_seq2_tp2, 2x4 on fsdp2_seq4.
    assert meshes["data2_seq2_tp2"]["hidden_spec"] == "P('data', 'sequence')"
    assert meshes["data2_seq2_tp2"]["hidden_shard_shape"] == [2, 8, 32]
    assert meshes["data2_seq2_tp2"]["logits_spec"] == "P('data', 'sequence', 'tensor')"
    assert meshes["fsdp2_seq4"]["hidden_shard_shape"] == [2, 4, 32]
    assert result["splash_seq4_max_abs"] <= result["splash_atol"], result
    assert result["splash_grad_max"] > 1.0
    assert result["splash_seq4_grad_max_abs"] <= result["splash_grad_rel"] * result["splash_grad_max"]


HAVE_LIBTPU, WHY_NO_LIBTPU = libtpu_available()


@pytest.mark.skipif(not HAVE_LIBTPU, reason=WHY_NO_LIBTPU or "libtpu present")
def test_ppp_compile_with_a_sequence_mesh_override(tmp_path):
    """`ppp compile ... --mesh data=1,fsdp=2,sequence=4,tensor=1`: the tiny train step with splash
    attention compiles for an 8-chip v5p slice with the tokens split 4 ways."""
    cfg = {"model": {"preset": "tiny", "attention_impl": "splash",
                     "sizes": {"head_dim": 128, "num_heads": 4, "num_kv_heads": 2, "vocab_size": 128}},
           "compile": {"topology": "v5p:2x2x2", "steps": ["train"], "batch": 4, "seq_len": 1024},
           "rl": {"logprob_chunk_size": 128}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "ppp_jax.cli", "compile", str(tmp_path / "run.yaml"), "--mesh",
         "data=1,fsdp=2,sequence=4,tensor=1", "--json", str(out)],
        cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
        timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    (train,) = json.loads(out.read_text())["reports"]
    assert train["mesh"] == {"data": 1, "fsdp": 2, "sequence": 4, "tensor": 1}
    assert train["fits"] and train["temp_bytes"] > 0
