"""The engine against references: transformers `generate` (greedy tokens) and the trainer's
teacher-forced log-probs (`ppp_jax.model.logprobs.token_logprobs`)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ppp_jax.model import testing as mt
from ppp_jax.model.logprobs import token_logprobs
from ppp_jax.sampling.params import Request, SamplingParams

from .conftest import logprob_atol

# Prompts of different lengths: 1 token, within one page, across pages, across prefill chunks.
PROMPTS = [[5], [3, 14, 15, 92, 65, 35], list(range(10, 47)), [7, 7, 7, 8, 9, 11, 2, 13, 40, 41, 60, 1]]
NEW = 64


def teacher_forced(model, prompt, generated, temperature=1.0, pad_to=128):
    """Trainer log-probs of `generated` given `prompt`: float32 [len(generated)].

    One jitted forward over the sequence right-padded to `pad_to` (segment id 0 on padding), so
    every call with the same model and temperature reuses one compilation.
    """
    n = len(prompt) + len(generated)
    assert n <= pad_to
    full = np.zeros((1, pad_to), np.int32)
    full[0, :n] = prompt + generated
    segs = (np.arange(pad_to) < n).astype(np.int32)[None]
    logp = _teacher_forced_jit(*nnx.split(model), full, segs, float(temperature))
    return np.asarray(logp)[0, len(prompt) - 1:n - 1]


@functools.partial(jax.jit, static_argnums=(0, 4))
def _teacher_forced_jit(graphdef, state, tokens, segs, temperature):
    model = nnx.merge(graphdef, state)
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    hidden, _ = model.hidden(tokens, positions, segs)
    targets = jnp.roll(tokens, -1, axis=1)
    logp, _ = token_logprobs(model, hidden, targets, temperature=temperature, chunk_size=32)
    return logp


@pytest.fixture(scope="module")
def greedy_results(engine):
    reqs = [Request(p, SamplingParams(temperature=0.0, max_new_tokens=NEW)) for p in PROMPTS]
    return engine.generate_batch(reqs)


def test_greedy_matches_transformers_generate(tiny_ckpt, greedy_results):
    import torch

    hf = mt.load_hf_reference(tiny_ckpt)
    hf.generation_config.eos_token_id = None  # generate exactly NEW tokens, as the engine does
    hf.generation_config.pad_token_id = 1
    for prompt, result in zip(PROMPTS, greedy_results):
        with torch.no_grad():
            out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                              max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)
        expected = out[0, len(prompt):].tolist()
        assert len(expected) == NEW
        assert result.finish_reason == "length"
        assert result.token_ids == expected, f"prompt of {len(prompt)} tokens diverged"


def test_session_turn_greedy_matches_transformers_generate(tiny_ckpt, engine):
    # A later turn prefills only its appended tokens, over the session's cached pages (the
    # prefill layout of `PagedKVCache.attend` across several blocks of cached context); its
    # greedy tokens must be those of `generate` on the whole conversation.
    import torch

    hf = mt.load_hf_reference(tiny_ckpt)
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 1
    rng = np.random.default_rng(7)
    new = 16
    for i, (first, obs) in enumerate(((37, 45), (9, 70))):
        sid = f"parity-turns-{i}"
        conv = rng.integers(2, 97, first).tolist()
        got = engine.generate_batch([Request(conv, SamplingParams(temperature=0.0,
                                                                  max_new_tokens=new),
                                             session_id=sid)])[0]
        appended = rng.integers(2, 97, obs).tolist()
        conv = conv + got.token_ids + appended
        second = engine.generate_batch([Request(appended, SamplingParams(
            temperature=0.0, max_new_tokens=new), session_id=sid)])[0]
        engine.end_session(sid)
        with torch.no_grad():
            out = hf.generate(torch.tensor([conv]), attention_mask=torch.ones(1, len(conv),
                                                                              dtype=torch.long),
                              max_new_tokens=new, min_new_tokens=new, do_sample=False)
        assert second.token_ids == out[0, len(conv):].tolist(), f"session {i} diverged"


def test_greedy_logprobs_equal_teacher_forcing_fp32(tiny_model, greedy_results):
    for prompt, result in zip(PROMPTS, greedy_results):
        ref = teacher_forced(tiny_model, prompt, result.token_ids)  # greedy: T = 1
        got = np.asarray(result.logprobs, np.float32)
        assert got.shape == ref.shape == (NEW,)
        # paged engine vs dense trainer forward: two float32 evaluations (conftest.logprob_atol)
        tol = logprob_atol(tiny_model, [prompt + result.token_ids])
        np.testing.assert_allclose(got, ref, atol=tol, rtol=0)


def test_sampled_logprobs_at_temperature_equal_teacher_forcing(engine, tiny_model):
    reqs = [Request(p, SamplingParams(temperature=0.7, top_p=0.9, top_k=20, seed=11 + i,
                                      max_new_tokens=40)) for i, p in enumerate(PROMPTS)]
    for prompt, result in zip(PROMPTS, engine.generate_batch(reqs)):
        ref = teacher_forced(tiny_model, prompt, result.token_ids, temperature=0.7)
        tol = logprob_atol(tiny_model, [prompt + result.token_ids], temperature=0.7)
        np.testing.assert_allclose(np.asarray(result.logprobs), ref, atol=tol, rtol=0)


# bf16 bound: the engine's paged attention runs its softmax online in float32 over key blocks,
# while the dense path rounds the normalized probabilities to bf16 (HF eager cast points), and the
# two paths see activations rounded to bf16 at different points. Measured max |diff| on this model
# is ~0.03 nats; the bound below leaves room for other seeds. (A wrong cache entry or position
# costs whole nats.)
BF16_LOGPROB_BOUND = 0.1


def test_bf16_logprobs_within_stated_bound(tiny_ckpt):
    from ppp_jax.model import api
    from ppp_jax.sampling.engine import Engine

    from .conftest import SMALL_ENGINE

    model = api.load_pretrained(tiny_ckpt, param_dtype="bfloat16", dtype="bfloat16")
    with Engine(model, SMALL_ENGINE) as eng:
        reqs = [Request(p, SamplingParams(temperature=0.0, max_new_tokens=32)) for p in PROMPTS]
        results = eng.generate_batch(reqs)
    worst = 0.0
    for prompt, result in zip(PROMPTS, results):
        ref = teacher_forced(model, prompt, result.token_ids)
        worst = max(worst, float(np.max(np.abs(np.asarray(result.logprobs) - ref))))
    print(f"bf16 worst |engine - teacher forcing| = {worst:.4g}")
    assert worst < BF16_LOGPROB_BOUND, worst


@pytest.mark.parametrize("family", [
    # Qwen3: per-head q/k RMSNorm before RoPE, in the paged prefill and decode programs too
    dict(family="qwen3", qk_norm=True, num_heads=4, num_kv_heads=2, attention_bias=False,
         attention_out_bias=False, rope_theta=1e6),
    # Llama 3.x: scaled RoPE (llama3) past the original context of 16 positions
    dict(family="llama", attention_bias=False, attention_out_bias=False, rope_type="llama3",
         rope_factor=8.0, rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
         rope_original_max_position=16, rope_theta=5e5),
], ids=["qwen3", "llama3_rope"])
def test_other_family_greedy_matches_transformers_generate(family, tmp_path):
    """The engine on a checkpoint of another family (loaded by `load_pretrained` from the
    family's own transformers files) decodes what transformers' `generate` decodes."""
    import torch

    from ppp_jax.model import api
    from ppp_jax.sampling.engine import Engine

    from .conftest import SMALL_ENGINE, TINY

    path = mt.write_tiny_hf_checkpoint(tmp_path / "ckpt", seed=2, **{**TINY, **family})
    hf = mt.load_hf_reference(path)
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 1
    engine = Engine(api.load_pretrained(path), SMALL_ENGINE)
    try:
        prompts = PROMPTS[1:3]
        results = engine.generate_batch(
            [Request(p, SamplingParams(temperature=0.0, max_new_tokens=24)) for p in prompts])
    finally:
        engine.close()
    for prompt, result in zip(prompts, results):
        with torch.no_grad():
            out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                              max_new_tokens=24, min_new_tokens=24, do_sample=False)
        assert result.token_ids == out[0, len(prompt):].tolist(), f"prompt of {len(prompt)} tokens"
