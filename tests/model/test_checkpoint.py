"""Orbax checkpoints of the params: save/restore equality, dtype cast on restore, mismatch errors,
atomic and non-clobbering writes. (Restoring onto a different mesh runs on 8 fake devices in
test_sharding.py.)"""

import json

import numpy as np
import pytest
from flax import nnx

from ppp_jax.model.checkpoint import (
    CONFIG_FILE,
    PARAMS_DIR,
    CheckpointError,
    load_checkpoint,
    read_config,
    save_checkpoint,
)
from ppp_jax.model.hf_io import load_hf
from ppp_jax.model.sharding import path_name
from ppp_jax.model.testing import write_tiny_hf_checkpoint


def _params(model):
    return {path_name(p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.fixture(scope="module")
def model_and_config(tmp_path_factory):
    src = write_tiny_hf_checkpoint(tmp_path_factory.mktemp("hf") / "m", seed=7, num_kv_heads=2)
    return load_hf(src)


def test_save_restore_bit_exact(model_and_config, tmp_path):
    model, config = model_and_config
    path = save_checkpoint(model, config, tmp_path / "ckpt")
    assert sorted(p.name for p in path.iterdir()) == sorted([CONFIG_FILE, PARAMS_DIR])
    assert read_config(path) == config
    restored, rconfig = load_checkpoint(path)
    assert rconfig == config
    a, b = _params(model), _params(restored)
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), k
    # restoring with another parameter dtype casts
    bf16, bconfig = load_checkpoint(path, param_dtype="bfloat16")
    assert bconfig.param_dtype == "bfloat16"
    q = _params(bf16)["layers.attn.q_proj.kernel"]
    assert q.dtype.name == "bfloat16"
    np.testing.assert_array_equal(q, a["layers.attn.q_proj.kernel"].astype(q.dtype))


def test_mismatched_checkpoint_names_parameter_and_shapes(model_and_config, tmp_path):
    model, config = model_and_config
    path = save_checkpoint(model, config, tmp_path / "ckpt")
    stored = json.loads((path / CONFIG_FILE).read_text())
    stored["intermediate_size"] = 48  # the model built from this config no longer fits the arrays
    (path / CONFIG_FILE).write_text(json.dumps(stored))
    with pytest.raises(CheckpointError, match=r"layers\.mlp\.gate_proj\.kernel: stored shape \[2, 24, 40\] != model shape \[2, 24, 48\]"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no model_config.json"):
        load_checkpoint(tmp_path)


def test_existing_destination_is_not_clobbered(model_and_config, tmp_path):
    model, config = model_and_config
    dst = tmp_path / "ckpt"
    dst.mkdir()
    (dst / "keep").write_text("precious")
    with pytest.raises(FileExistsError, match="overwrite"):
        save_checkpoint(model, config, dst)
    assert (dst / "keep").read_text() == "precious"
    save_checkpoint(model, config, dst, overwrite=True)
    assert not (dst / "keep").exists() and read_config(dst) == config
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary leftovers


def test_a_damaged_stored_config_is_refused_by_name(tmp_path):
    """model_config.json with an unknown key or a wrong type names what is wrong."""
    from ppp_jax.model.config import ModelConfigError, tiny

    (tmp_path / "model_config.json").write_text('{"vocab_size": 64, "hidden_sise": 32}')
    with pytest.raises(ModelConfigError, match="hidden_sise.*valid keys"):
        read_config(tmp_path)
    good = tiny().to_dict()
    (tmp_path / "model_config.json").write_text(json.dumps({**good, "num_layers": "2"}))
    with pytest.raises(ModelConfigError, match="num_layers"):
        read_config(tmp_path)
    (tmp_path / "model_config.json").write_text(json.dumps(good))
    assert read_config(tmp_path) == tiny()
