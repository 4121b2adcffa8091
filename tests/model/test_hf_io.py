"""HF safetensors in and out: parity with transformers, bit-exact round trips, sharded indexes,
clear errors for bad checkpoints, atomic writes."""

import json
import shutil

import numpy as np
import pytest
import torch
from flax import nnx

from ppp_jax.model import api
from ppp_jax.model._fsutil import atomic_directory
from ppp_jax.model.config import ModelConfigError
from ppp_jax.model.hf_io import load_hf, save_hf, tensor_maps
from ppp_jax.model.safetensors_io import INDEX_FILE, CheckpointFiles, CheckpointFormatError, read_tensor
from ppp_jax.model.testing import load_hf_reference, write_tiny_hf_checkpoint
from tests import numerics as nm

# GQA 2, H=10 != D/N=6, o_proj bias on: every mapping branch of the attention is exercised.
CFG = dict(num_kv_heads=2, attention_out_bias=True)
TOKENS = np.array([[5, 9, 2, 60, 33, 1, 7], [40, 3, 3, 8, 66, 12, 0]], np.int32)


def _tensors(directory):
    files = CheckpointFiles(directory)
    return {name: read_tensor(files[name]) for name in files.names()}


def _assert_bitwise_equal(a_dir, b_dir):
    a, b = _tensors(a_dir), _tensors(b_dir)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert a[name].tobytes() == b[name].tobytes(), name


def _torch_logits(directory, dtype="float32"):
    with torch.no_grad():
        model = load_hf_reference(directory, dtype)
        return model(torch.tensor(TOKENS, dtype=torch.long)).logits.float().numpy()


@pytest.fixture(scope="module")
def fp32_ckpt(tmp_path_factory):
    return write_tiny_hf_checkpoint(tmp_path_factory.mktemp("hf") / "fp32", seed=1, **CFG)


def test_load_matches_transformers_and_export_round_trips_fp32(fp32_ckpt, tmp_path):
    ref = _torch_logits(fp32_ckpt)
    model = api.load_pretrained(fp32_ckpt)
    assert model.config.param_dtype == "float32" and model.config.attention_out_bias
    ours = np.asarray(api.logits(model, TOKENS))
    # torch and XLA: two float32 evaluations of the forward (tests/numerics.py)
    tol = nm.f32_forward_atol(nm.transformer_path_length(model.config, TOKENS.shape[1]),
                              np.abs(ref).max())
    assert np.abs(ours - ref).max() <= tol

    out = api.save_pretrained(model, tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    _assert_bitwise_equal(fp32_ckpt, out)
    # transformers loads our export (our config.json, our safetensors writer) to the same logits
    # (bit-identical weights, the same torch program: exact in practice; the bound allows more)
    assert np.abs(_torch_logits(out) - ref).max() <= 1e-5


def test_bf16_round_trip_bit_exact(tmp_path):
    src = write_tiny_hf_checkpoint(tmp_path / "bf16", seed=2, dtype="bfloat16", **CFG)
    model, config = load_hf(src)
    assert config.param_dtype == "bfloat16" and config.dtype == "bfloat16"
    assert {v.get_value().dtype.name for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param))} == {"bfloat16"}
    # export from a nested pure dict of the params (what an orbax restore without a target gives)
    out = save_hf(nnx.to_pure_dict(nnx.state(model, nnx.Param)), config, tmp_path / "export")
    _assert_bitwise_equal(src, out)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_sharded_index_checkpoints_in_and_out(fp32_ckpt, tmp_path):
    # transformers' own sharded layout
    with torch.no_grad():
        load_hf_reference(fp32_ckpt).save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / INDEX_FILE).exists()
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 2
    model = api.load_pretrained(tmp_path / "sharded")
    # bit-identical: the same weights (bit for bit), the same jitted program and shapes
    np.testing.assert_array_equal(np.asarray(api.logits(model, TOKENS)),
                                  np.asarray(api.logits(api.load_pretrained(fp32_ckpt), TOKENS)))
    # ours, sharded the same way; transformers reads it
    out = save_hf(model, model.config, tmp_path / "ours", max_shard_size="20KB")
    index = json.loads((out / INDEX_FILE).read_text())
    files = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert sorted(set(index["weight_map"].values())) == files and len(files) > 2
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in _tensors(out).values())
    _assert_bitwise_equal(fp32_ckpt, out)
    # bit-identical weights, the same torch program: exact in practice (1e-5 is slack)
    assert np.abs(_torch_logits(out) - _torch_logits(fp32_ckpt)).max() <= 1e-5


def test_tied_embeddings_and_mlp_bias(tmp_path):
    src = write_tiny_hf_checkpoint(tmp_path / "tied", seed=4, tie_word_embeddings=True, mlp_bias=True,
                                   attention_bias=False, num_kv_heads=4)
    assert "lm_head.weight" not in _tensors(src)
    model = api.load_pretrained(src)
    assert model.lm_head is None
    ref = _torch_logits(src)  # torch vs XLA: two float32 evaluations of the forward
    tol = nm.f32_forward_atol(nm.transformer_path_length(model.config, TOKENS.shape[1]),
                              np.abs(ref).max())
    assert np.abs(np.asarray(api.logits(model, TOKENS)) - ref).max() <= tol
    out = api.save_pretrained(model, tmp_path / "export")
    _assert_bitwise_equal(src, out)


def test_our_reader_agrees_with_safetensors_library(fp32_ckpt):
    from safetensors.numpy import load_file

    ref = load_file(fp32_ckpt / "model.safetensors")
    ours = _tensors(fp32_ckpt)
    assert sorted(ours) == sorted(ref)
    for name in ref:
        np.testing.assert_array_equal(ours[name], ref[name], err_msg=name)


# ---- bad checkpoints ---------------------------------------------------------------------------


def _rewrite(directory, change):
    """Loads model.safetensors, applies change(dict) in place, writes it back."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(directory / "model.safetensors")
    change(tensors)
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})


Q0 = "model.layers.0.self_attn.q_proj.weight"


def _drop(t):
    del t["model.layers.1.mlp.up_proj.weight"]


def _extra(t):
    t["model.layers.0.self_attn.rope_scale"] = np.zeros(3, np.float32)
    t["model.layers.1.self_attn.rotary_emb.inv_freq"] = np.zeros(5, np.float32)  # ignored


def _reshape(t):
    t[Q0] = np.zeros((40, 25), np.float32)


def _retype(t):
    t[Q0] = np.zeros((40, 24), np.int64)


@pytest.mark.parametrize(
    "change, pattern",
    [
        (_drop, r"1 missing tensor\(s\): model\.layers\.1\.mlp\.up_proj\.weight"),
        (_extra, r"1 unexpected tensor\(s\): model\.layers\.0\.self_attn\.rope_scale$"),
        (_reshape, r"tensor model\.layers\.0\.self_attn\.q_proj\.weight: checkpoint shape \[40, 25\] != expected \[40, 24\]"),
        (_retype, r"tensor model\.layers\.0\.self_attn\.q_proj\.weight: dtype I64 \(shape \[40, 24\]\) is not a float"),
    ],
    ids=["missing", "unexpected", "shape", "dtype"],
)
def test_bad_tensors_are_named(fp32_ckpt, tmp_path, change, pattern):
    bad = tmp_path / "bad"
    shutil.copytree(fp32_ckpt, bad)
    _rewrite(bad, change)
    with pytest.raises(CheckpointFormatError, match=pattern):
        load_hf(bad)


def test_wrong_architecture_is_refused_by_name(fp32_ckpt, tmp_path):
    bad = tmp_path / "gemma"
    shutil.copytree(fp32_ckpt, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg.update(model_type="gemma", architectures=["GemmaForCausalLM"])
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelConfigError, match="'gemma'"):
        api.load_pretrained(bad)


def test_malformed_index_and_missing_files(fp32_ckpt, tmp_path):
    d = tmp_path / "idx"
    d.mkdir()
    shutil.copy(fp32_ckpt / "config.json", d)
    with pytest.raises(CheckpointFormatError, match="no model.safetensors and no model.safetensors.index.json"):
        load_hf(d)
    (d / INDEX_FILE).write_text('{"weight_map": {"model.norm.weight": ')
    with pytest.raises(CheckpointFormatError, match=r"model\.safetensors\.index\.json: not valid JSON"):
        load_hf(d)
    (d / INDEX_FILE).write_text('{"metadata": {}}')
    with pytest.raises(CheckpointFormatError, match="expected an object with a 'weight_map'"):
        load_hf(d)
    (d / INDEX_FILE).write_text(json.dumps({"weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(CheckpointFormatError, match="names file 'model-00001-of-00002.safetensors', which is not in"):
        load_hf(d)
    (d / "model-00001-of-00002.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    with pytest.raises(CheckpointFormatError, match="header is not valid JSON"):
        load_hf(d)


def test_name_map_covers_every_parameter_of_36b():
    """The map yields 771 tensors for Seed-OSS-36B (64 x 12 + 3), as the real index has."""
    from ppp_jax.model.config import seed_oss_36b

    maps = tensor_maps(seed_oss_36b())
    assert len(maps) == 771
    assert sum(int(np.prod(m.hf_shape)) for m in maps) == seed_oss_36b().param_count() == 36_151_104_512


def test_atomic_directory(tmp_path):
    dst = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_directory(dst) as tmp:
            (tmp / "half.safetensors").write_bytes(b"x")
            raise RuntimeError("crash mid-write")
    assert not dst.exists() and list(tmp_path.iterdir()) == []
    with atomic_directory(dst) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(FileExistsError, match="overwrite"):
        with atomic_directory(dst):
            pass
    with atomic_directory(dst, overwrite=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in dst.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_public_api_logits_and_next_token_logprobs(fp32_ckpt):
    """The README snippet's calls: log-probs of each next token equal log_softmax(logits)."""
    model = api.load_pretrained(fp32_ckpt, mesh={"data": 1, "fsdp": -1, "tensor": 1})
    logits = np.asarray(api.logits(model, TOKENS), np.float64)
    logp = np.asarray(api.next_token_logprobs(model, TOKENS, chunk_size=4))  # T-1 = 6: chunked + padded
    assert logp.shape == (2, 6) and logp.dtype == np.float32
    z = logits[:, :-1]
    ref = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(-1, keepdims=True)
    naive = np.take_along_axis(ref, TOKENS[:, 1:, None], axis=-1)[..., 0]
    # another program than api.logits: two float32 evaluations of forward and log-softmax
    cfg, zs = model.config, np.abs(z).max()
    path = nm.transformer_path_length(cfg, TOKENS.shape[1])
    tol_lp = nm.f32_logprob_atol(path, cfg.vocab_size, zs, 2 * zs + np.log(cfg.vocab_size))
    np.testing.assert_allclose(logp, naive, atol=tol_lp)
    # explicit positions / segment ids (a right-padded row) are accepted and change nothing valid
    seg = np.ones_like(TOKENS)
    seg[1, 5:] = 0
    pos = np.tile(np.arange(TOKENS.shape[1]), (2, 1))
    padded = np.asarray(api.logits(model, TOKENS, pos, seg))
    np.testing.assert_allclose(padded[seg > 0], logits[seg > 0],
                               atol=nm.f32_forward_atol(path, np.abs(logits).max()))


def test_loading_streams_one_tensor_at_a_time(tmp_path):
    """Peak host memory (numpy allocations, traced) while loading stays near one HF tensor, far
    below the checkpoint: tensors are memory-mapped and moved one by one, layers are written into
    preallocated device buffers."""
    import tracemalloc

    src = write_tiny_hf_checkpoint(tmp_path / "m", seed=0, vocab_size=64, hidden_size=64, intermediate_size=512,
                                   num_layers=8, num_heads=4, num_kv_heads=2, head_dim=16)
    sizes = [t.nbytes for t in CheckpointFiles(src).tensors.values()]
    assert sum(sizes) > 25 * max(sizes)  # 3.6 MB in 99 tensors, the largest 128 KiB
    load_hf(src)  # compile the placement programs first; their tracing is not what we measure
    tracemalloc.start()
    try:
        load_hf(src)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * max(sizes), (peak, max(sizes), sum(sizes))


def test_save_hf_accepts_host_numpy_params(tmp_path):
    """{param path: numpy array} exports as documented, and loads back bit-exact."""
    from ppp_jax.model import api
    from ppp_jax.model.config import tiny
    from ppp_jax.model.hf_io import params_of, save_hf
    from ppp_jax.model.testing import make_model

    cfg = tiny()
    model = make_model(cfg)
    host = {k: np.asarray(v) for k, v in params_of(model).items()}
    save_hf(host, cfg, tmp_path / "out")
    back = params_of(api.load_pretrained(tmp_path / "out"))
    for k, v in host.items():
        np.testing.assert_array_equal(np.asarray(back[k]), v, err_msg=k)
