"""The Llama, Qwen2, Qwen3 (dense) and Mistral families beside Seed-OSS: checkpoints written by transformers' own
classes load through our Hugging Face loader (`load_hf`, the path every command uses) and give
transformers' logits; RoPE scaling (linear, llama3) at positions beyond the original context;
export writes the family's own format back; what is not implemented is refused by name."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ppp_jax.model import testing as mt
from ppp_jax.model.config import ModelConfig, ModelConfigError
from ppp_jax.model.hf_io import load_hf, save_hf
from tests.model.test_parity import compare, fp32_bound, hf_forward, jax_forward, padded_batch

# Odd sizes (tiny defaults V=67, D=24, H=10 != D/N): GQA 1 and GQA 4, tied and untied.
FAMILIES = {
    "llama_gqa4_tied": dict(family="llama", attention_bias=False, attention_out_bias=False,
                            tie_word_embeddings=True),
    "llama_bias_gqa1": dict(family="llama", num_heads=3, num_kv_heads=3, attention_bias=True,
                            attention_out_bias=True, mlp_bias=True),
    "qwen2_gqa2": dict(family="qwen2", num_heads=4, num_kv_heads=2, attention_bias=True,
                       attention_out_bias=False, rope_theta=1e6),
    "mistral_gqa4": dict(family="mistral", attention_bias=False, attention_out_bias=False),
    # Qwen3 dense: per-head q/k RMSNorm before RoPE (random norm weights), untied, GQA 2.
    "qwen3_qknorm": dict(family="qwen3", qk_norm=True, num_heads=4, num_kv_heads=2,
                         attention_bias=False, attention_out_bias=False, rope_theta=1e6),
    "qwen3_bias_gqa1": dict(family="qwen3", qk_norm=True, num_heads=2, num_kv_heads=2,
                            attention_bias=True, attention_out_bias=True, tie_word_embeddings=True),
    "llama3_rope": dict(family="llama", attention_bias=False, attention_out_bias=False,
                        rope_type="llama3", rope_factor=8.0, rope_low_freq_factor=1.0,
                        rope_high_freq_factor=4.0, rope_original_max_position=16,
                        rope_theta=5e5),
    "linear_rope": dict(family="llama", attention_bias=False, attention_out_bias=False,
                        rope_type="linear", rope_factor=4.0),
    # Qwen2.5/Qwen3 long context: yarn, factor 4 over an original context of 16 positions
    # (attention factor 0.1 ln 4 + 1, as transformers derives it when the file gives none)
    "yarn_rope": dict(family="qwen2", num_heads=4, num_kv_heads=2, attention_bias=True,
                      attention_out_bias=False, rope_type="yarn", rope_factor=4.0,
                      rope_original_max_position=16, rope_attention_factor=0.1 * math.log(4) + 1,
                      head_dim=16, rope_theta=1e4),
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_loads_through_load_hf_and_matches_transformers(name, hf_checkpoint):
    path = hf_checkpoint(name, **FAMILIES[name])
    written = json.loads((path / "config.json").read_text())
    assert written["model_type"] == FAMILIES[name]["family"]
    model, config = load_hf(path)
    assert config.family == FAMILIES[name]["family"]
    for key in ("attention_bias", "attention_out_bias", "rope_type"):
        if key in FAMILIES[name]:
            assert getattr(config, key) == FAMILIES[name][key], key
    ref = mt.load_hf_reference(path, "float32")
    compare(name, model, ref, None)


def test_scaled_rope_beyond_the_original_context(hf_checkpoint):
    """llama3, linear and yarn scaling at positions 0..95, past rope_original_max_position (16): the
    scaled frequencies are what make these logits differ from plain RoPE's."""
    for name in ("llama3_rope", "linear_rope", "yarn_rope"):
        path = hf_checkpoint(name, **FAMILIES[name])
        model, config = load_hf(path)
        ref = mt.load_hf_reference(path, "float32")
        rng = np.random.RandomState(7)
        tokens = rng.randint(3, config.vocab_size, size=(1, 96)).astype(np.int32)
        positions = np.arange(96, dtype=np.int32)[None]
        mask = np.ones_like(tokens)
        theirs, _ = hf_forward(ref, tokens, positions, mask)
        ours, _ = jax_forward(model, tokens, positions, mask)
        tol = fp32_bound(config, 96, float(np.abs(theirs).max()))
        assert float(np.abs(ours - theirs).max()) <= tol, name
        plain, _ = jax_forward(_with_plain_rope(model), tokens, positions, mask)
        assert float(np.abs(plain - theirs).max()) > 100 * tol, f"{name}: scaling had no effect"


def _with_plain_rope(model):
    """The same weights under plain RoPE."""
    return _rebuild(model, model.config.replace(rope_type="default"))


def _rebuild(model, config):
    from flax import nnx

    from ppp_jax.model.transformer import SeedOssForCausalLM

    other = SeedOssForCausalLM(config, rngs=nnx.Rngs(0))
    nnx.update(other, nnx.state(model, nnx.Param))
    return other


@pytest.mark.parametrize("name", ["llama_bias_gqa1", "qwen2_gqa2", "llama3_rope", "qwen3_qknorm"])
def test_export_writes_the_family_format_back(name, hf_checkpoint, tmp_path):
    path = hf_checkpoint(name, **FAMILIES[name])
    model, config = load_hf(path)
    out = save_hf(model, config, tmp_path / "export")
    written = json.loads((out / "config.json").read_text())
    assert written["model_type"] == config.family
    assert written["architectures"] == [mt_arch(config.family)]
    again = mt.load_hf_reference(out, "float32")  # transformers reads it as its own family
    assert type(again).__name__ == mt_arch(config.family)
    tokens, positions, mask = padded_batch(config.vocab_size)
    first, _ = hf_forward(mt.load_hf_reference(path, "float32"), tokens, positions, mask)
    second, _ = hf_forward(again, tokens, positions, mask)
    np.testing.assert_array_equal(first, second)  # same weights, same class: same program


def mt_arch(family: str) -> str:
    from ppp_jax.model.config import FAMILIES as ARCHITECTURES

    return ARCHITECTURES[family]


BASE = {"vocab_size": 67, "hidden_size": 24, "intermediate_size": 40, "num_hidden_layers": 2,
        "num_attention_heads": 4, "rope_theta": 1e4}


@pytest.mark.parametrize("extra, message", [
    ({"model_type": "gemma", "architectures": ["GemmaForCausalLM"]}, "unsupported model_type 'gemma'"),
    ({"model_type": "llama", "architectures": ["Qwen2ForCausalLM"]}, "for model_type 'llama'"),
    ({"model_type": "mistral", "sliding_window": 4096}, "sliding_window=4096"),
    ({"model_type": "qwen2", "use_sliding_window": True}, "use_sliding_window=true"),
    ({"model_type": "qwen3", "use_sliding_window": True}, "use_sliding_window=true"),
    ({"model_type": "llama", "rope_scaling": {"rope_type": "longrope", "factor": 4.0}},
     r"unsupported RoPE type 'longrope' \(rope_scaling.rope_type\)"),
    ({"model_type": "llama", "rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4,
                                                 "factor": 2.0}},
     r"unsupported RoPE type 'dynamic' \(rope_parameters.rope_type\)"),
    ({"model_type": "llama", "rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
     r"llama3 RoPE needs \['low_freq_factor'"),
])
def test_what_is_not_implemented_is_refused_by_name(extra, message):
    with pytest.raises(ModelConfigError, match=message):
        ModelConfig.from_hf_dict({**BASE, **extra})


def test_family_bias_rules_follow_transformers():
    qwen = ModelConfig.from_hf_dict({**BASE, "model_type": "qwen2", "attention_bias": False})
    assert (qwen.attention_bias, qwen.attention_out_bias, qwen.mlp_bias) == (True, False, False)
    llama = ModelConfig.from_hf_dict({**BASE, "model_type": "llama", "attention_bias": True})
    assert (llama.attention_bias, llama.attention_out_bias) == (True, True)
    mistral = ModelConfig.from_hf_dict({**BASE, "model_type": "mistral", "sliding_window": None})
    assert not (mistral.attention_bias or mistral.attention_out_bias or mistral.mlp_bias)
    with pytest.raises(ModelConfigError, match="cannot express"):
        qwen.replace(attention_out_bias=True).to_hf_dict()
    qwen3 = ModelConfig.from_hf_dict({**BASE, "model_type": "qwen3", "head_dim": 8})
    assert qwen3.qk_norm and not qwen3.attention_bias and qwen3.head_dim == 8
    with pytest.raises(ModelConfigError, match="qk_norm=True"):
        qwen3.replace(family="llama").to_hf_dict()
    # q_norm and k_norm are 2 x H parameters per layer, as transformers counts them
    import transformers

    hf = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**qwen3.to_hf_dict()))
    assert qwen3.param_count() == sum(p.numel() for p in hf.parameters())


def test_yarn_parameters_are_derived_as_transformers_derives_them():
    d = {**BASE, "model_type": "qwen2", "max_position_embeddings": 131072,
         "rope_scaling": {"rope_type": "yarn", "factor": 4.0,
                          "original_max_position_embeddings": 32768}}
    c = ModelConfig.from_hf_dict(d)
    assert (c.rope_type, c.rope_factor, c.rope_original_max_position) == ("yarn", 4.0, 32768)
    assert c.rope_attention_factor == pytest.approx(0.1 * math.log(4.0) + 1.0, rel=1e-12)
    assert (c.rope_beta_fast, c.rope_beta_slow, c.rope_truncate) == (32.0, 1.0, True)
    deepseek_style = dict(d, rope_scaling={**d["rope_scaling"], "mscale": 1.0,
                                           "mscale_all_dim": 0.5})
    m = ModelConfig.from_hf_dict(deepseek_style).rope_attention_factor
    assert m == pytest.approx((0.1 * math.log(4) + 1) / (0.05 * math.log(4) + 1), rel=1e-12)


@pytest.mark.parametrize("name", ["qwen3_qknorm", "llama3_rope", "mistral_gqa4"])
def test_family_bf16_parity_with_transformers_bf16(name, hf_checkpoint):
    """bf16 weights and compute vs transformers' eager bf16, within the bf16 bound the Seed-OSS
    parity test states (tests/model/test_parity.py: 4 ulps at |logit| ~ 4), and no further from
    the float32 truth than transformers' own bf16 (x2 margin)."""
    from tests.model.test_parity import BF16_BOUND, ours

    path = hf_checkpoint(name, dtype="bfloat16", **FAMILIES[name])
    model, ref = ours(path, "bfloat16")
    compare(f"{name}-bf16", model, ref, BF16_BOUND)
    truth, _ = hf_forward(mt.load_hf_reference(path, "float32"), *padded_batch(model.config.vocab_size))
    tokens, positions, mask = padded_batch(model.config.vocab_size)
    hf16, _ = hf_forward(ref, tokens, positions, mask)
    our16, _ = jax_forward(model, tokens, positions, mask)
    real = mask.astype(bool)
    hf_err = float(np.abs(hf16[real] - truth[real]).max())
    our_err = float(np.abs(our16[real] - truth[real]).max())
    assert our_err <= 2 * hf_err + 1e-3, (our_err, hf_err)
