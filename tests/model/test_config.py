"""ModelConfig: HF config.json parsing (both RoPE spellings), refusals, export, 36B param count."""

from __future__ import annotations

import json
import math

import jax
import pytest
from flax import nnx

from ppp_jax.model.config import ModelConfig, ModelConfigError, seed_oss_36b, tiny
from ppp_jax.model.transformer import SeedOssForCausalLM

SEED_OSS_36B_PARAMS = 36_151_104_512

# The released config.json's fields, legacy (transformers 4.x) spelling.
LEGACY = {
    "architectures": ["SeedOssForCausalLM"], "model_type": "seed_oss",
    "vocab_size": 155136, "hidden_size": 5120, "intermediate_size": 27648,
    "num_hidden_layers": 64, "num_attention_heads": 80, "num_key_value_heads": 8,
    "head_dim": 128, "hidden_act": "silu", "max_position_embeddings": 524288,
    "rms_norm_eps": 1e-06, "rope_theta": 10000000.0, "rope_scaling": {"rope_type": "default"},
    "attention_bias": True, "attention_out_bias": False, "mlp_bias": False,
    "tie_word_embeddings": False, "attention_dropout": 0.1, "residual_dropout": 0.1,
    "bos_token_id": 0, "pad_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16",
    "initializer_range": 0.02, "pretraining_tp": 1, "use_cache": True,
}


def new_spelling() -> dict:
    d = {k: v for k, v in LEGACY.items() if k not in ("rope_theta", "rope_scaling", "torch_dtype")}
    d["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000000.0}
    d["dtype"] = "bfloat16"
    return d


def test_both_rope_spellings_parse_to_the_36b_preset_with_file_dropout():
    legacy = ModelConfig.from_hf_dict(LEGACY)
    new = ModelConfig.from_hf_dict(new_spelling())
    assert legacy == new
    # dropout comes from the file; everything else equals the preset
    assert legacy.attention_dropout == 0.1 and legacy.residual_dropout == 0.1
    assert legacy.replace(attention_dropout=0.0, residual_dropout=0.0) == seed_oss_36b()
    assert legacy.head_dim == 128 != legacy.hidden_size // legacy.num_heads
    assert legacy.rope_theta == 1e7


def test_flags_are_honoured():
    d = dict(LEGACY, attention_bias=False, attention_out_bias=True, mlp_bias=True,
             tie_word_embeddings=True, head_dim=None, num_key_value_heads=None)
    c = ModelConfig.from_hf_dict(d)
    assert (c.attention_bias, c.attention_out_bias, c.mlp_bias, c.tie_word_embeddings) == (
        False, True, True, True)
    assert c.head_dim == 5120 // 80 and c.num_kv_heads == 80


@pytest.mark.parametrize("field,value,needle", [
    ("model_type", "llama", "'llama'"),
    ("architectures", ["Qwen2ForCausalLM"], "Qwen2ForCausalLM"),
    ("hidden_act", "gelu", "'gelu'"),
])
def test_wrong_architecture_is_refused_by_name(field, value, needle):
    with pytest.raises(ModelConfigError, match=needle):
        ModelConfig.from_hf_dict(dict(LEGACY, **{field: value}))


@pytest.mark.parametrize("rope", [
    {"rope_scaling": {"rope_type": "longrope", "factor": 4.0}},
    {"rope_scaling": {"type": "dynamic", "factor": 2.0}},
])
def test_unimplemented_scaled_rope_is_refused_legacy(rope):
    with pytest.raises(ModelConfigError, match="unsupported RoPE type"):
        ModelConfig.from_hf_dict(dict(LEGACY, **rope))


def test_scaled_rope_new_spelling_needs_its_parameters():
    d = new_spelling()
    d["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}
    with pytest.raises(ModelConfigError, match="llama3 RoPE needs"):
        ModelConfig.from_hf_dict(d)
    d["rope_parameters"].update(low_freq_factor=1.0, high_freq_factor=4.0,
                                original_max_position_embeddings=8192)
    c = ModelConfig.from_hf_dict(d)
    assert (c.rope_type, c.rope_factor, c.rope_original_max_position) == ("llama3", 8.0, 8192)
    legacy = ModelConfig.from_hf_dict(dict(LEGACY, rope_scaling={"type": "linear", "factor": 2.0}))
    assert (legacy.rope_type, legacy.rope_factor) == ("linear", 2.0)


def test_missing_theta_is_refused_not_defaulted():
    d = {k: v for k, v in LEGACY.items() if k not in ("rope_theta", "rope_scaling")}
    with pytest.raises(ModelConfigError, match="rope_theta"):
        ModelConfig.from_hf_dict(d)


def test_missing_size_key_is_named():
    d = {k: v for k, v in LEGACY.items() if k != "intermediate_size"}
    with pytest.raises(ModelConfigError, match="intermediate_size"):
        ModelConfig.from_hf_dict(d)


@pytest.mark.parametrize("changes,needle", [
    (dict(num_heads=6, num_kv_heads=4), "divisible"),
    (dict(dtype="bf16"), "dtype='bf16'"),
    (dict(param_dtype="float64"), "param_dtype"),
    (dict(remat="some"), "remat"),
    (dict(attention_impl="flash"), "attention_impl"),
    (dict(head_dim=7), "even"),
    (dict(hidden_size=0), "hidden_size"),
    (dict(residual_dropout=1.0), "residual_dropout"),
])
def test_validation_names_the_field(changes, needle):
    with pytest.raises(ModelConfigError, match=needle):
        tiny(**changes)


def test_to_hf_dict_round_trips_through_transformers(tmp_path):
    from transformers import SeedOssConfig

    ours = tiny(num_kv_heads=2, attention_out_bias=True, mlp_bias=True, rope_theta=1e7,
                attention_dropout=0.1)
    SeedOssConfig(**ours.to_hf_dict()).save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["model_type"] == "seed_oss"
    assert written["architectures"] == ["SeedOssForCausalLM"]
    assert ModelConfig.from_hf_json(tmp_path) == ours
    assert ModelConfig.from_hf_json(tmp_path / "config.json", dtype="bfloat16").dtype == "bfloat16"


def test_from_hf_json_missing_file_is_clear(tmp_path):
    with pytest.raises(ModelConfigError, match="no Hugging Face config"):
        ModelConfig.from_hf_json(tmp_path)


def test_36b_param_count_abstract_init_allocates_nothing():
    """eval_shape builds the full 36B model as shapes only; counts equal the formula and HF."""
    cfg = seed_oss_36b(param_dtype="bfloat16", dtype="bfloat16")
    model = nnx.eval_shape(lambda: SeedOssForCausalLM(cfg, rngs=nnx.Rngs(0)))
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    counted = sum(math.prod(x.shape) for x in leaves)
    assert counted == SEED_OSS_36B_PARAMS == cfg.param_count()
    assert len(leaves) == 12 + 3  # 12 stacked layer tensors + embed, final norm, lm_head


@pytest.mark.parametrize("overrides", [
    dict(),
    dict(attention_bias=False, tie_word_embeddings=True),
    dict(attention_out_bias=True, mlp_bias=True, num_kv_heads=2, num_layers=3),
])
def test_param_count_matches_tree_and_hf(overrides):
    import torch
    from transformers import SeedOssConfig, SeedOssForCausalLM as HF

    cfg = tiny(**overrides)
    model = nnx.eval_shape(lambda: SeedOssForCausalLM(cfg, rngs=nnx.Rngs(0)))
    counted = sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    with torch.device("meta"):
        hf = HF(SeedOssConfig(**cfg.to_hf_dict()))
    hf_count = sum(p.numel() for p in hf.parameters())  # tied weights are counted once
    assert counted == cfg.param_count() == hf_count
