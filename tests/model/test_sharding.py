"""Meshes and logical-axis rules; the 8-fake-device parity check runs in a subprocess
(`_sharded_check.py`) so this pytest process stays single-device."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, PartitionSpec as P

from ppp_jax.config.loader import ConfigError, load_config
from ppp_jax.model.config import seed_oss_36b
from ppp_jax.model.sharding import (
    FSDP_TP_RULES,
    SAMPLING_RULES,
    MeshConfig,
    ShardingConfig,
    ShardingError,
    abstract_model,
    describe,
    logical_to_spec,
    make_mesh,
    path_name,
    state_partition_specs,
    using_mesh,
)
from ppp_jax.model.transformer import SeedOssForCausalLM
from tests import numerics as nm

MESH_2x4x2 = AbstractMesh((2, 4, 2), ("data", "fsdp", "tensor"))


def _specs(config, mesh, rules=FSDP_TP_RULES):
    abstract = abstract_model(lambda: SeedOssForCausalLM(config, rngs=nnx.Rngs(0)))
    specs = state_partition_specs(nnx.state(abstract, nnx.Param), mesh, rules)
    return {path_name(p): v.get_value() for p, v in nnx.to_flat_state(specs)}


def test_mesh_config_resolves_minus_one_and_validates():
    assert MeshConfig(shape=(2, -1, 2)).resolved_shape(8) == (2, 2, 2)
    assert MeshConfig(shape=(1, 1, 1)).resolved_shape(8) == (1, 1, 1)
    with pytest.raises(ShardingError, match="not divisible"):
        MeshConfig(shape=(3, -1, 1)).resolved_shape(8)
    with pytest.raises(ShardingError, match="needs 16 devices"):
        MeshConfig(shape=(2, 4, 2)).resolved_shape(8)
    with pytest.raises(ShardingError, match="at most one"):
        MeshConfig(shape=(-1, -1, 1))
    with pytest.raises(ShardingError, match=r"lack \['tensor'\]"):
        MeshConfig(axes=("data", "fsdp"), shape=(1, 1))
    mesh = make_mesh({"fsdp": -1})  # one CPU device here
    assert dict(mesh.shape) == {"fsdp": 1, "data": 1, "tensor": 1}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def test_rules_resolve_maxtext_style():
    rules = FSDP_TP_RULES
    # q kernel [L, D, N, H]: layers unsharded, embed on fsdp, heads on tensor.
    assert logical_to_spec(("layers", "embed", "heads", "head_dim"), (2, 32, 8, 4), MESH_2x4x2, rules) == P(
        None, "fsdp", "tensor")
    # Both orders of (vocab, embed) resolve; the batch of activations takes two mesh axes.
    assert logical_to_spec(("vocab", "embed"), (64, 32), MESH_2x4x2, rules) == P("tensor", "fsdp")
    assert logical_to_spec(("embed", "vocab"), (32, 64), MESH_2x4x2, rules) == P("fsdp", "tensor")
    assert logical_to_spec(("activation_batch", "activation_length"), (8, 5), MESH_2x4x2, rules) == P(
        ("data", "fsdp"))
    # A name whose first rule's axis is taken falls through to its next rule (here: replicated).
    rules2 = (("heads", "tensor"), ("mlp", "tensor"), ("mlp", None))
    assert logical_to_spec(("heads", "mlp"), (8, 6), MESH_2x4x2, rules2) == P("tensor")  # trailing None trimmed
    # ... and when its first rule's mesh axis does not divide the dimension (8 kv heads, tensor 16).
    mesh16 = AbstractMesh((1, 4, 16), ("data", "fsdp", "tensor"))
    rules3 = (("kv_heads", "tensor"), ("kv_heads", None), ("embed", "fsdp"))
    assert logical_to_spec(("embed", "kv_heads"), (32, 8), mesh16, rules3) == P("fsdp")
    # Sampling rules drop FSDP from the weights.
    assert logical_to_spec(("embed", "mlp"), (32, 6), MESH_2x4x2, SAMPLING_RULES) == P(None, "tensor")


def test_rules_errors_name_tensor_dim_and_axis():
    with pytest.raises(ShardingError) as e:
        logical_to_spec(("layers", "embed", "kv_heads", "head_dim"), (2, 32, 3, 4), MESH_2x4x2, FSDP_TP_RULES,
                        name="layers.attn.k_proj.kernel")
    msg = str(e.value)
    assert "layers.attn.k_proj.kernel" in msg and "dim 2" in msg and "'kv_heads'" in msg
    assert "size 3" in msg and "'tensor' of size 2" in msg
    with pytest.raises(ShardingError, match=r"logical axis 'embd'.*does not mention"):
        logical_to_spec(("embd",), (32,), MESH_2x4x2, FSDP_TP_RULES, name="x")
    with pytest.raises(ShardingError, match="absent from the mesh"):
        logical_to_spec(("embed",), (32,), MESH_2x4x2, (("embed", "fsdp_transpose"),), name="x")


def test_seed_oss_36b_specs_and_a_mesh_that_does_not_fit():
    """Real 36B shapes through eval_shape (no memory): every weight gets the FSDP x TP spec it
    should; tensor=16 does not divide the 8 kv heads and says so."""
    specs = _specs(seed_oss_36b(), AbstractMesh((1, 16, 8), ("data", "fsdp", "tensor")))
    assert specs["embed.embedding"] == P("tensor", "fsdp")
    assert specs["lm_head.kernel"] == P("fsdp", "tensor")
    assert specs["layers.attn.q_proj.kernel"] == P(None, "fsdp", "tensor")
    assert specs["layers.attn.k_proj.bias"] == P(None, "tensor")
    assert specs["layers.attn.o_proj.kernel"] == P(None, "tensor", None, "fsdp")
    assert specs["layers.mlp.down_proj.kernel"] == P(None, "tensor", "fsdp")
    assert specs["final_norm.scale"] == P("fsdp")
    with pytest.raises(ShardingError, match=r"layers\.attn\.k_proj\.bias: dim 1 \('kv_heads', size 8\)"):
        _specs(seed_oss_36b(), AbstractMesh((1, 4, 16), ("data", "fsdp", "tensor")))


def test_sharding_config_from_yaml(tmp_path):
    (tmp_path / "s.yaml").write_text(
        "mesh: {shape: [1, -1, 4]}\n"
        "rules:\n"
        "  - [activation_batch, [data, fsdp]]\n"
        "  - [embed, fsdp]\n"
        "  - [kv_heads, null]\n"
    )
    cfg = load_config(tmp_path / "s.yaml", ShardingConfig, ["mesh.shape=[2,-1,2]"])
    assert cfg.mesh == MeshConfig(shape=(2, -1, 2))
    assert cfg.rules == (("activation_batch", ("data", "fsdp")), ("embed", "fsdp"), ("kv_heads", None))
    with pytest.raises(ConfigError, match="valid keys"):
        load_config(tmp_path / "s.yaml", ShardingConfig, ["mesh.sizes=[1,1,1]"])


def test_using_mesh_sets_flax_rules_and_describe_dumps_specs():
    from flax.core import spmd

    mesh = make_mesh((1, 1, 1))
    with using_mesh(mesh, SAMPLING_RULES):
        rules = dict(spmd.get_logical_axis_rules())
        assert rules["embed"] is None and rules["heads"] == "tensor"
        assert rules["activation_batch"] == ("data", "fsdp")
    assert spmd.get_logical_axis_rules() == ()
    x = jax.device_put(np.zeros((4, 6), np.float32), jax.sharding.NamedSharding(mesh, P("fsdp")))
    assert describe(nnx.State({"w": nnx.Param(x)})) == {"w": "(4, 6) float32 P('fsdp',)"}


def _run_8_devices(tmp_path, part: str) -> dict:
    """Writes the tiny checkpoint and runs `_sharded_check` on 8 fake CPU devices."""
    from ppp_jax.model.testing import write_tiny_hf_checkpoint

    from tests.model._sharded_check import TINY_SHARDABLE

    if part == "parity":
        write_tiny_hf_checkpoint(tmp_path / "hf", seed=3, **TINY_SHARDABLE)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-m", "tests.model._sharded_check", str(tmp_path / "hf"), str(tmp_path / "work"), part],
        cwd=root, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["devices"] == 8
    return result


def test_sharded_equals_unsharded_on_8_fake_devices(tmp_path):
    """Meshes (data, fsdp, tensor) = 8x1x1, 1x8x1, 1x4x2, 2x2x2, weights streamed from an HF
    checkpoint straight onto each mesh: logits and next-token log-probs equal the single-device
    ones (fp32, to the derived float32 bound; a padded and a packed row included), and so do
    the chunked next-token log-probs on 2x2x2; orbax save on 1x8x1 restores onto 2x2x2
    bit-exactly; `shard_model` reshards a live model (1x8x1 -> 1x4x2)."""
    result = _run_8_devices(tmp_path, "parity")
    assert set(result["meshes"]) == {"8x1x1", "1x8x1", "1x4x2", "2x2x2"}
    for name, r in result["meshes"].items():  # bounds derived in the script (tests/numerics.py)
        assert r["max_abs_logits"] <= result["logits_atol"], (name, r, result["logits_atol"])
    assert result["meshes"]["2x2x2"]["max_abs_logprobs"] <= result["logprobs_atol"]
    # The weights really were split: on 1x4x2 a q kernel shard holds 1/8 of the tensor.
    assert result["meshes"]["1x4x2"]["q_kernel_spec"] == "P(None, 'fsdp', 'tensor')"
    assert result["meshes"]["1x4x2"]["q_kernel_shard_fraction"] == pytest.approx(1 / 8)
    assert result["meshes"]["2x2x2"]["q_kernel_shard_fraction"] == pytest.approx(1 / 4)
    assert result["meshes"]["8x1x1"]["q_kernel_shard_fraction"] == 1.0
    assert result["orbax_restore_max_abs"] == 0.0
    assert result["orbax_restored_spec"] == "P(None, 'fsdp', 'tensor')"
    assert result["reshard_spec"] == "P(None, 'fsdp', 'tensor')"
    assert result["reshard_max_abs_logits"] <= result["logits_atol"]


@pytest.mark.slow
def test_create_sharded_equals_single_device_init(tmp_path):
    """Random init jitted straight into 2x2x2 shardings equals the 1-device init (threefry is
    partitionable). Slow: two random-init compiles."""
    result = _run_8_devices(tmp_path, "init")
    assert result["create_sharded_max_abs"] == 0.0
    assert result["create_sharded_spec"] == "P(None, 'fsdp', 'tensor')"


def test_custom_rules_without_activation_names_still_train():
    """A rules table written for the parameters only (as in docs/model_io.md) gets the default
    activation rules under `using_mesh` instead of failing on the first constrained activation."""
    import jax
    import numpy as np
    from flax import nnx

    from ppp_jax.model import sharding as shd
    from ppp_jax.model.config import tiny
    from ppp_jax.model.transformer import SeedOssForCausalLM

    rules = shd.normalize_rules([["embed", "fsdp"], ["heads", "tensor"], ["kv_heads", "tensor"],
                                 ["mlp", "tensor"], ["vocab", "tensor"], ["head_dim", None],
                                 ["layers", None]])
    mesh = shd.make_mesh((1, 1, 1))
    model = SeedOssForCausalLM(tiny(), rngs=nnx.Rngs(0))
    shd.shard_model(model, mesh, rules)
    graphdef, params = nnx.split(model)
    tokens = np.arange(16, dtype=np.int32).reshape(2, 8) % 7
    positions = np.tile(np.arange(8, dtype=np.int32), (2, 1))
    segments = np.ones_like(tokens)
    fwd = lambda p, t: nnx.merge(graphdef, p)(t, positions, segments)  # noqa: E731
    expected = jax.jit(fwd)(params, tokens)
    with shd.using_mesh(mesh, rules):
        got = jax.jit(fwd)(params, tokens)
    # with sharding annotations the program may compile differently: two float32 evaluations
    tol = nm.f32_forward_atol(nm.transformer_path_length(model.config, 8),
                              np.abs(np.asarray(expected)).max())
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=0, atol=tol)
    merged = shd.with_default_activation_rules(rules)
    assert next(axes for name, axes in merged if name == "activation_batch") == ("data", "fsdp")
