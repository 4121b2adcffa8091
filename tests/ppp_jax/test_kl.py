"""KL estimators vs float64 numpy versions of verl's kl_penalty."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppp_jax.rl.kl import kl_estimate


def ref_kl(logp, ref, kind):
    d = logp - ref
    if kind == "k1":
        return d
    if kind == "abs":
        return np.abs(d)
    if kind == "k2":
        return 0.5 * d**2
    if kind == "k3":
        x = np.clip(ref - logp, -20.0, 20.0)
        return np.clip(np.exp(x) - x - 1.0, -10.0, 10.0)
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["k1", "abs", "k2", "k3"])
def test_estimators_match_reference(kind):
    rng = np.random.default_rng(0)
    logp = rng.normal(-2, 1, size=(7, 11))
    ref = logp + rng.normal(0, 0.5, size=(7, 11))
    ref[0, :2] = logp[0, :2] + np.array([30.0, 5.0])  # exercises the clamps of k3
    got = np.asarray(kl_estimate(jnp.asarray(logp, jnp.float32), jnp.asarray(ref, jnp.float32), kind))
    np.testing.assert_allclose(got, ref_kl(logp, ref, kind), rtol=2e-5, atol=2e-6)


def test_k3_is_nonnegative_and_zero_at_equality():
    x = jnp.linspace(-5.0, 0.0, 50)
    assert float(jnp.min(kl_estimate(x, x + 0.3, "k3"))) >= 0.0
    assert float(jnp.max(jnp.abs(kl_estimate(x, x, "k3")))) == 0.0


def test_straight_through_value_and_gradient():
    rng = np.random.default_rng(1)
    logp = jnp.asarray(rng.normal(-2, 1, size=(4, 5)), jnp.float32)
    ref = logp + jnp.asarray(rng.normal(0, 0.3, size=(4, 5)), jnp.float32)
    st = kl_estimate(logp, ref, "k3", straight_through=True)
    np.testing.assert_allclose(np.asarray(st), np.asarray(kl_estimate(logp, ref, "k3")), rtol=1e-6, atol=1e-7)
    g_st = jax.grad(lambda lp: kl_estimate(lp, ref, "k3", straight_through=True).sum())(logp)
    g_k2 = jax.grad(lambda lp: kl_estimate(lp, ref, "k2").sum())(logp)
    np.testing.assert_allclose(np.asarray(g_st), np.asarray(g_k2), rtol=1e-6)


def test_unknown_estimator():
    with pytest.raises(ValueError, match="unknown KL"):
        kl_estimate(jnp.zeros(2), jnp.zeros(2), "k4")
