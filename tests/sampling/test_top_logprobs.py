"""Top log-probs of each sampled position (`SamplingParams.top_logprobs`) against the trainer's
teacher-forced logits, and their cost: none for requests that do not ask."""

from __future__ import annotations

import asyncio
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ppp_jax.sampling.params import MAX_TOP_LOGPROBS, Request, SamplingParams

from .conftest import logprob_atol
from .test_engine_parity import PROMPTS

PAD_TO = 128


@functools.partial(jax.jit, static_argnums=(0,))
def _teacher_forced_logits(graphdef, state, tokens, segs):
    model = nnx.merge(graphdef, state)
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    hidden, _ = model.hidden(tokens, positions, segs)
    return model.logits(hidden).astype(jnp.float32)  # [1, T, V]


def reference_logp(model, prompt, generated, temperature):
    """log_softmax(logits / T) of the trainer's forward at each sampled position: f32 [n, V]."""
    n = len(prompt) + len(generated)
    full = np.zeros((1, PAD_TO), np.int32)
    full[0, :n] = prompt + generated
    segs = (np.arange(PAD_TO) < n).astype(np.int32)[None]
    logits = _teacher_forced_logits(*nnx.split(model), full, segs)[0, len(prompt) - 1:n - 1]
    t = temperature if temperature > 0 else 1.0  # greedy: reported at T = 1
    return np.asarray(jax.nn.log_softmax(logits / t, axis=-1))


def check_against_reference(model, prompt, result, k, temperature):
    ref = reference_logp(model, prompt, result.token_ids, temperature)
    # paged engine vs dense trainer forward: two float32 evaluations (conftest.logprob_atol)
    tol = logprob_atol(model, [prompt + result.token_ids], temperature)
    assert result.top_logprobs is not None and len(result.top_logprobs) == len(result.token_ids)
    for pos, (tok, lp, tops) in enumerate(zip(result.token_ids, result.logprobs,
                                              result.top_logprobs)):
        assert len(tops) == k
        ids = [i for i, _ in tops]
        vals = np.array([v for _, v in tops], np.float32)
        assert len(set(ids)) == k and np.all(np.diff(vals) <= 0), "not distinct, most likely first"
        # The k values are the reference's k largest, and each id has its value there (ids are
        # compared through their values so a near-tie swapped by rounding does not fail).
        np.testing.assert_allclose(vals, np.sort(ref[pos])[::-1][:k], atol=tol, rtol=0)
        np.testing.assert_allclose(vals, ref[pos, ids], atol=tol, rtol=0)
        np.testing.assert_allclose(lp, ref[pos, tok], atol=tol, rtol=0)
        # the sampled token's two reported log-probs: one log-softmax row of one program (the
        # slack 1e-6 is not needed)
        if tok in ids:
            assert vals[ids.index(tok)] == pytest.approx(lp, abs=1e-6)


def test_top_logprobs_equal_teacher_forced_topk(engine, tiny_model):
    reqs = [Request(PROMPTS[0], SamplingParams(temperature=0.0, max_new_tokens=24,
                                               top_logprobs=MAX_TOP_LOGPROBS)),
            Request(PROMPTS[1], SamplingParams(temperature=0.7, top_p=0.9, seed=5,
                                               max_new_tokens=24, top_logprobs=5)),
            Request(PROMPTS[2], SamplingParams(temperature=1.3, seed=6, max_new_tokens=24,
                                               top_logprobs=1)),
            Request(PROMPTS[3], SamplingParams(temperature=0.7, seed=7, max_new_tokens=24))]
    results = engine.generate_batch(reqs)
    for req, res, k in zip(reqs[:3], results, (MAX_TOP_LOGPROBS, 5, 1)):
        check_against_reference(tiny_model, req.prompt_ids, res, k, req.params.temperature)
    assert results[3].top_logprobs is None  # did not ask
    assert engine.compilations.get(f"decode_top{MAX_TOP_LOGPROBS}", 0) == 1


def test_requests_not_asking_are_unchanged_and_default_program_has_no_topk(engine, tiny_model):
    """A request's tokens and log-probs are the same whether or not its neighbour in the batch
    asks for top log-probs, and the default program is the one compiled without them. (The
    variant program runs then: another program, so the log-probs are equal to the derived
    float32 bound, not bit for bit, though they are bit-identical on the machines measured.)"""
    params = SamplingParams(temperature=0.9, seed=21, max_new_tokens=20)
    plain, asking = (engine.generate_batch([
        Request(PROMPTS[2], params),
        Request(PROMPTS[1], SamplingParams(temperature=0.0, max_new_tokens=20, top_logprobs=k))])
        for k in (0, 3))
    for i, (prompt, t) in enumerate(((PROMPTS[2], 0.9), (PROMPTS[1], 1.0))):
        assert asking[i].token_ids == plain[i].token_ids
        tol = logprob_atol(tiny_model, [prompt + plain[i].token_ids], t)
        np.testing.assert_allclose(asking[i].logprobs, plain[i].logprobs, atol=tol, rtol=0)
    assert asking[0].top_logprobs is None and len(asking[1].top_logprobs) == 20

    hlo = engine.lower_decode().as_text()
    assert "top_k" not in hlo and "TopK" not in hlo


def test_streamed_top_logprobs_equal_the_result(engine):
    req = Request(PROMPTS[3], SamplingParams(temperature=0.8, seed=3, max_new_tokens=19,
                                             top_logprobs=4))

    async def collect():
        tops, last = [], None
        async for chunk in engine.stream(req):
            tops += chunk.top_logprobs
            last = chunk
        return tops, last.result

    tops, result = asyncio.run(collect())
    assert tops == result.top_logprobs and len(tops) == len(result.token_ids) == 19


def test_top_logprobs_bad_values_are_refused(engine):
    with pytest.raises(ValueError, match="top_logprobs"):
        SamplingParams(top_logprobs=MAX_TOP_LOGPROBS + 1)
    with pytest.raises(ValueError, match="top_logprobs"):
        SamplingParams(top_logprobs=-1)
