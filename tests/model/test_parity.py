"""Parity with transformers' SeedOssForCausalLM (torch, eager attention) on tiny random checkpoints
written by transformers itself; per-layer hidden states so that a failure names the layer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from ppp_jax.model import testing as mt
from ppp_jax.model.config import ModelConfig, tiny
from tests import numerics as nm

# Tiny defaults (config.tiny): V=67, D=24, F=40, L=2, N=4, K=1, H=10 (H != D/N = 6).
CONFIGS = {
    # GQA ratio 1, no q/k/v bias, tied embeddings.
    "gqa1_nobias_tied": dict(num_heads=3, num_kv_heads=3, attention_bias=False,
                             tie_word_embeddings=True),
    # GQA ratio 4 (N=4, K=1), the tiny default, q/k/v bias.
    "gqa4": dict(),
    # GQA ratio 8, o_proj bias and MLP biases, H=6 != D/N=3.
    "gqa8_outbias_mlpbias": dict(num_heads=8, num_kv_heads=1, head_dim=6,
                                 attention_out_bias=True, mlp_bias=True),
    # GQA ratio 2, three layers, theta 1e7 as in Seed-OSS-36B.
    "gqa2_3layers": dict(num_heads=6, num_kv_heads=3, head_dim=8, num_layers=3, rope_theta=1e7),
}

# fp32 bound: None = derived per config and layer from float32 error (tests/numerics.py): torch
# and XLA are two float32 evaluations of the same forward, in their own orders and with their own
# exp/rsqrt; at the largest magnitude of the compared values.
FP32_BOUND = None
# bf16 bound, stated: max |Δlogits| against HF eager bf16 on logits of magnitude up to ~4. A bf16
# ulp at 2-4 is 2**-6 = 0.0156; XLA on CPU may keep some bf16 intermediates in float32
# (excess precision), which changes roundings inside the layers, so allow 4 ulps at |logit| ~ 4.
BF16_BOUND = 0.0625

T = 11
PAD = 1


def padded_batch(vocab: int, seed: int = 0):
    """3 rows of length T: full, left-padded by 3, right-padded by 4.

    Returns tokens, positions, mask (1 = real token) as int32 numpy [3, T].
    """
    rng = np.random.RandomState(seed)
    tokens = rng.randint(3, vocab, size=(3, T)).astype(np.int32)
    mask = np.ones((3, T), np.int32)
    mask[1, :3] = 0
    mask[2, T - 4:] = 0
    tokens[mask == 0] = PAD
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    return tokens, positions, mask


def hf_forward(ref, tokens, positions, mask):
    """HF logits [B, T, V] and the per-layer residual outputs [L, B, T, D] (float32 numpy)."""
    captured = []

    def hook(_module, _inputs, output):
        out = output[0] if isinstance(output, tuple) else output
        captured.append(out.detach().float().numpy())

    handles = [layer.register_forward_hook(hook) for layer in ref.model.layers]
    try:
        with torch.no_grad():
            out = ref(input_ids=torch.tensor(tokens, dtype=torch.long),
                      attention_mask=torch.tensor(mask, dtype=torch.long),
                      position_ids=torch.tensor(positions, dtype=torch.long))
    finally:
        for h in handles:
            h.remove()
    return out.logits.float().numpy(), np.stack(captured)


def ours(path, dtype: str):
    cfg = ModelConfig.from_hf_json(path, param_dtype=dtype, dtype=dtype)
    ref = mt.load_hf_reference(path, dtype)
    model = mt.make_model(cfg)
    mt.copy_torch_weights(model, ref)
    return model, ref


@jax.jit
def _forward(graphdef, state, tokens, positions, segment_ids):
    model = nnx.merge(graphdef, state)
    hidden, _, per_layer = model.hidden(tokens, positions, segment_ids, collect_layers=True)
    return model.logits(hidden), per_layer


def jax_forward(model, tokens, positions, mask):
    graphdef, state = nnx.split(model)
    logits, per_layer = _forward(graphdef, state, jnp.asarray(tokens), jnp.asarray(positions),
                                 jnp.asarray(mask))
    return np.asarray(logits, np.float32), np.asarray(per_layer, np.float32)


def fp32_bound(cfg, seq_len, scale, layers=None):
    """Two float32 evaluations of the forward up to `layers` (None: the logits)."""
    path = nm.transformer_path_length(cfg, seq_len, layers=layers, logits=layers is None)
    return nm.f32_forward_atol(path, scale)


def compare(name, model, ref, bound):
    """Returns max |Δlogits| over real tokens; asserts per layer, then logits, under `bound`
    (times max(1, the layer's magnitude)), or under the derived fp32 bounds when None."""
    tokens, positions, mask = padded_batch(model.config.vocab_size)
    hf_logits, hf_layers = hf_forward(ref, tokens, positions, mask)
    our_logits, our_layers = jax_forward(model, tokens, positions, mask)
    real = mask.astype(bool)
    assert np.isfinite(our_logits).all(), "NaN/inf in logits (padding rows included)"
    for layer in range(model.config.num_layers):
        scale = max(1.0, float(np.abs(hf_layers[layer][real]).max()))
        tol = bound * scale if bound is not None else fp32_bound(model.config, T, scale, layer + 1)
        delta = float(np.abs(our_layers[layer][real] - hf_layers[layer][real]).max())
        assert delta <= tol, (
            f"{name}: layer {layer} residual output differs by {delta:.3g} (bound {tol:.3g})")
    delta = float(np.abs(our_logits[real] - hf_logits[real]).max())
    tol = bound if bound is not None else fp32_bound(model.config, T, np.abs(hf_logits[real]).max())
    print(f"\n[parity] {name}: max|dlogits| = {delta:.3g} (max|logit| "
          f"{np.abs(hf_logits[real]).max():.3g}, bound {tol:.3g})")
    assert delta <= tol, f"{name}: max |Δlogits| = {delta:.3g} > {tol:.3g}"
    return delta


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fp32_parity_with_hf_eager(name, hf_checkpoint):
    path = hf_checkpoint(name, **CONFIGS[name])
    model, ref = ours(path, "float32")
    compare(name, model, ref, FP32_BOUND)


def test_parity_fails_loudly_on_a_wrong_weight(hf_checkpoint):
    """The comparison is not vacuous: a perturbed layer-1 q bias is caught and named."""
    path = hf_checkpoint("gqa4", **CONFIGS["gqa4"])
    model, ref = ours(path, "float32")
    bias = model.layers.attn.q_proj.bias
    bias[...] = bias[...].at[1].add(0.05)
    with pytest.raises(AssertionError, match="layer 1 residual"):
        compare("gqa4-perturbed", model, ref, FP32_BOUND)


def test_bf16_parity_with_hf_eager_bf16(hf_checkpoint):
    """bf16 params and compute vs HF eager loaded with from_pretrained(dtype=bfloat16).

    Also checks we are no further from the fp32 truth than HF's own bf16 is (x2 margin).
    """
    overrides = CONFIGS["gqa8_outbias_mlpbias"]
    path16 = hf_checkpoint("gqa8_outbias_mlpbias", dtype="bfloat16", **overrides)
    model, ref = ours(path16, "bfloat16")
    delta = compare("gqa8_outbias_mlpbias-bf16", model, ref, BF16_BOUND)

    # fp32 truth on the same (bf16-representable) weights.
    ref32 = mt.load_hf_reference(path16, "float32")
    tokens, positions, mask = padded_batch(model.config.vocab_size)
    truth, _ = hf_forward(ref32, tokens, positions, mask)
    hf16, _ = hf_forward(ref, tokens, positions, mask)
    our16, _ = jax_forward(model, tokens, positions, mask)
    real = mask.astype(bool)
    hf_err = float(np.abs(hf16[real] - truth[real]).max())
    our_err = float(np.abs(our16[real] - truth[real]).max())
    print(f"[parity] bf16: ours-vs-HF {delta:.3g}; vs fp32 truth: ours {our_err:.3g}, HF {hf_err:.3g}")
    assert our_err <= 2 * hf_err + 1e-3, (our_err, hf_err)


def test_packed_row_equals_separate_rows():
    """Two sequences packed in one row (segment ids 1, 2, then padding 0) give the same logits
    as each sequence run alone."""
    cfg = tiny(num_kv_heads=2, attention_out_bias=True)
    model = mt.make_model(cfg, seed=3)
    rng = np.random.RandomState(1)
    a = rng.randint(3, cfg.vocab_size, size=5)
    b = rng.randint(3, cfg.vocab_size, size=4)
    packed = np.concatenate([a, b, [PAD, PAD]])[None].astype(np.int32)  # [1, 11]
    seg = np.array([[1] * 5 + [2] * 4 + [0, 0]], np.int32)
    pos = np.array([[0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 0]], np.int32)
    out = mt.jit_logits(model, packed, pos, seg)
    out_a = mt.jit_logits(model, a[None], np.arange(5)[None])
    out_b = mt.jit_logits(model, b[None], np.arange(4)[None])
    assert np.isfinite(out).all()
    # other shapes and programs: two float32 evaluations of the forward over <= 5 keys
    tol = fp32_bound(cfg, 5, max(np.abs(out_a).max(), np.abs(out_b).max()))
    np.testing.assert_allclose(out[0, :5], out_a[0], atol=tol)
    np.testing.assert_allclose(out[0, 5:9], out_b[0], atol=tol)
    # and packing without segment ids would differ (the test can fail)
    unsegmented = mt.jit_logits(model, packed, pos)
    assert np.abs(unsegmented[0, 5:9] - out_b[0]).max() > 100 * tol


@pytest.mark.slow
def test_fp32_parity_medium_config_long_sequence(hf_checkpoint):
    """A wider model (D=128, N=8, K=2, H=32, F=352, L=4, V=509) over 96 tokens, theta 1e7."""
    overrides = dict(vocab_size=509, hidden_size=128, intermediate_size=352, num_layers=4,
                     num_heads=8, num_kv_heads=2, head_dim=32, rope_theta=1e7)
    path = hf_checkpoint("medium", **overrides)
    model, ref = ours(path, "float32")
    rng = np.random.RandomState(5)
    tokens = rng.randint(3, 509, size=(2, 96)).astype(np.int32)
    mask = np.ones_like(tokens)
    mask[1, :17] = 0
    tokens[mask == 0] = PAD
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    hf_logits, _ = hf_forward(ref, tokens, positions, mask)
    our_logits, _ = jax_forward(model, tokens, positions, mask)
    real = mask.astype(bool)
    delta = float(np.abs(our_logits[real] - hf_logits[real]).max())
    tol = fp32_bound(model.config, 96, np.abs(hf_logits[real]).max())
    print(f"\n[parity] medium T=96: max|dlogits| = {delta:.3g} (bound {tol:.3g})")
    assert delta <= tol
