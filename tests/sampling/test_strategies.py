"""Sampling statistics: empirical frequencies match the intended distribution (chi-square).

Critical values are the 99.9% quantiles of chi-square with `df` degrees of freedom, so an honest
sampler fails each check with probability 1e-3 for a random seed; the seeds here are fixed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppp_jax.sampling.params import Request, SamplingParams
from ppp_jax.sampling.strategies import request_keys, sample_tokens, truncation_mask
from tests import numerics as nm

CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32, 8: 26.12,
            9: 27.88, 10: 29.59, 11: 31.26, 12: 32.91, 13: 34.53, 14: 36.12, 15: 37.70}

LOGITS = np.array([2.0, 1.5, 1.0, 0.6, 0.3, 0.0, -0.5, -1.0, -2.0], np.float32)  # V = 9
N = 20000


def chi2_critical(df: int) -> float:
    """99.9% quantile of chi-square(df): the table, else Wilson-Hilferty (z_0.999 = 3.0902)."""
    if df in CHI2_999:
        return CHI2_999[df]
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + 3.0902 * a ** 0.5) ** 3


def _intended(temperature, top_k, top_p):
    p = np.exp(LOGITS / temperature)
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    keep = np.zeros_like(p, bool)
    mass = 0.0
    for rank, tok in enumerate(order):
        if (top_k and rank >= top_k) or (rank > 0 and mass >= top_p):
            break
        keep[tok] = True
        mass += p[tok]
    q = np.where(keep, p, 0.0)
    return q / q.sum()


def _draw(temperature, top_k, top_p, seed=0):
    b = N
    logits = jnp.broadcast_to(jnp.asarray(LOGITS), (b, LOGITS.size))
    keys = request_keys(jnp.full((b,), seed, jnp.uint32), jnp.arange(b, dtype=jnp.int32))
    full = lambda v, dt: jnp.full((b,), v, dt)  # noqa: E731
    toks, logp = jax.jit(sample_tokens)(logits, full(temperature, jnp.float32),
                                        full(top_k, jnp.int32), full(top_p, jnp.float32), keys)
    return np.asarray(toks), np.asarray(logp)


@pytest.mark.parametrize("temperature,top_k,top_p", [
    (1.0, 0, 1.0), (0.5, 0, 1.0), (2.0, 0, 1.0), (1.0, 3, 1.0), (1.0, 0, 0.8), (0.7, 5, 0.9)])
def test_empirical_frequencies_match(temperature, top_k, top_p):
    toks, logp = _draw(temperature, top_k, top_p)
    q = _intended(temperature, top_k, top_p)
    counts = np.bincount(toks, minlength=LOGITS.size)
    assert counts[q == 0].sum() == 0, "sampled a token outside the top-k/top-p support"
    support = q > 0
    expected = N * q[support]
    chi2 = float(np.sum((counts[support] - expected) ** 2 / expected))
    df = int(support.sum()) - 1
    if df > 0:
        assert chi2 < CHI2_999[df], (chi2, counts, expected)
    # The reported log-prob is the untruncated policy's at temperature T.
    policy = LOGITS / temperature - np.log(np.sum(np.exp(LOGITS / temperature)))
    np.testing.assert_allclose(logp, policy[toks], atol=1e-5)


def test_greedy_and_masks():
    toks, logp = _draw(0.0, 0, 1.0)
    assert (toks == 0).all()
    # one float32 log-softmax over V = 9 against float64 (tests/numerics.py): ~2e-6
    lse = np.log(np.exp(LOGITS.astype(np.float64)).sum())
    tol = nm.f32_logprob_atol(0, LOGITS.size, 0.0, max(np.abs(LOGITS).max(), lse), evaluations=1)
    np.testing.assert_allclose(logp, LOGITS[0] - np.log(np.exp(LOGITS).sum()), atol=tol)
    logp_all = jax.nn.log_softmax(jnp.asarray(LOGITS)[None])
    keep = np.asarray(truncation_mask(logp_all, jnp.array([2]), jnp.array([1.0])))[0]
    assert keep.tolist() == [True, True] + [False] * 7
    # top_p smaller than the top token's mass still keeps that token.
    keep = np.asarray(truncation_mask(logp_all, jnp.array([0]), jnp.array([0.01])))[0]
    assert keep.sum() == 1 and keep[0]


def test_keys_depend_only_on_seed_and_step():
    a = np.asarray(request_keys(jnp.array([1, 2, 1], jnp.uint32), jnp.array([0, 0, 0])))
    assert (a[0] == a[2]).all() and not (a[0] == a[1]).all()


def test_engine_first_token_distribution(engine, tiny_model):
    """End to end: the first sampled token over many seeds follows softmax(logits / T)."""
    prompt = [17, 18, 19, 20, 21]
    temperature = 1.5
    n = 300
    reqs = [Request(prompt, SamplingParams(temperature=temperature, max_new_tokens=1, seed=s))
            for s in range(n)]
    toks = np.array([r.token_ids[0] for r in engine.generate_batch(reqs)])
    logits = tiny_model(jnp.asarray([prompt]), jnp.arange(len(prompt))[None])[0, -1]
    p = np.asarray(jax.nn.softmax(logits.astype(jnp.float32) / temperature), np.float64)
    # Bins with expected count >= 5; the rest pooled into one bin.
    big = n * p >= 5
    counts = np.bincount(toks, minlength=p.size)
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(n * p[big], n * p[~big].sum())
    keep = exp > 0
    chi2 = float(np.sum((obs[keep] - exp[keep]) ** 2 / exp[keep]))
    df = int(keep.sum()) - 1
    assert df >= 1, df
    assert chi2 < chi2_critical(df), (chi2, df, obs, exp)
