"""Policy loss and aggregation vs independent float64 numpy versions of verl's formulas;
gradient regions of the clipped surrogate; exact micro-batch accumulation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppp_jax.rl.losses import (AGG_MODES, agg_denominator, aggregate, finalize_metrics,
                               objective_sums, ppo_clip_loss, truncated_is_weights)
from ppp_jax.config.rl import LossConfig

EL, EH, C = 0.2, 0.28, 3.0


# ---- float64 references (verl core_algos "vanilla" loss and agg_loss, global-batch form) ------
def ref_pg(logp, old, adv, el=EL, eh=EH, c=C):
    neg_kl = np.clip(logp - old, -20.0, 20.0)
    r = np.exp(neg_kl)
    l1 = -adv * r
    l2 = -adv * np.clip(r, 1 - el, 1 + eh)
    lc = np.maximum(l1, l2)
    if c is None:
        return lc, l2 > l1, np.zeros_like(lc, bool)
    l3 = -adv * c
    return np.where(adv < 0, np.minimum(l3, lc), lc), l2 > l1, (lc > l3) & (adv < 0)


def ref_agg(loss, mask, mode, l_norm=None):
    """One sequence per row; the seq-mean modes average over rows with >= 1 loss token."""
    seq_sum = (loss * mask).sum(-1)
    n = mask.sum(-1)
    keep = n > 0
    if mode == "token-mean":
        return (loss * mask).sum() / mask.sum()
    if mode == "seq-mean-token-sum":
        return seq_sum[keep].mean()
    if mode == "seq-mean-token-mean":
        return (seq_sum[keep] / n[keep]).mean()
    if mode == "seq-mean-token-sum-norm":
        l_norm = loss.shape[-1] if l_norm is None else l_norm
        return (seq_sum[keep] / l_norm).mean()
    raise ValueError(mode)


def random_batch(seed, b=64, t=23):
    rng = np.random.default_rng(seed)
    logp = rng.normal(-2.0, 1.0, size=(b, t))
    old = logp + rng.normal(0.0, 0.35, size=(b, t))  # ratios spread over all clip regions
    old[0, :3] = logp[0, :3] + np.array([-2.0, 2.0, 25.0])  # r = e^2 > c, e^-2, clamp at 20
    adv_seq = rng.normal(0.0, 1.0, size=(b, 1))
    adv = np.broadcast_to(adv_seq, (b, t)).copy()
    mask = np.zeros((b, t))
    for i in range(b):
        start, length = rng.integers(1, 6), rng.integers(0, t - 5)  # some rows fully masked
        mask[i, start : start + length] = 1.0
    return logp, old, adv, mask


def test_pg_loss_matches_reference():
    cfg = LossConfig(clip_ratio_low=EL, clip_ratio_high=EH, clip_ratio_c=C)
    worst = 0.0
    for seed in range(4):
        logp, old, adv, mask = random_batch(seed)
        ref, clipped, dual = ref_pg(logp, old, adv)
        out = ppo_clip_loss(jnp.asarray(logp, jnp.float32), jnp.asarray(old, jnp.float32),
                            jnp.asarray(adv, jnp.float32), cfg)
        np.testing.assert_allclose(np.asarray(out.loss), ref, rtol=2e-5, atol=2e-5)
        worst = max(worst, float(np.max(np.abs(np.asarray(out.loss) - ref))))
        # the clip indicators (verl: pg_clipfrac counts L2 > L1; split by the sign of A)
        near = np.abs(np.exp(np.clip(logp - old, -20, 20)) - np.array([[1 - EL], [1 + EH]])[:, :, None]).min(0) < 1e-4
        agree = ~near
        got_clip = np.asarray(out.clipped_low + out.clipped_high) > 0
        np.testing.assert_array_equal(got_clip[agree], clipped[agree])
        np.testing.assert_array_equal((np.asarray(out.dual_clipped) > 0)[agree], dual[agree])
    print(f"max |pg - ref| = {worst:.2e}")


def test_no_dual_clip():
    cfg = LossConfig(clip_ratio_c=None)
    logp, old, adv, _ = random_batch(7)
    ref, _, _ = ref_pg(logp, old, adv, c=None)
    out = ppo_clip_loss(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv), cfg)
    np.testing.assert_allclose(np.asarray(out.loss), ref, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_aggregation_matches_reference(mode):
    logp, old, adv, mask = random_batch(3)
    ref_loss, _, _ = ref_pg(logp, old, adv)
    s, d = aggregate(jnp.asarray(ref_loss, jnp.float32), jnp.asarray(mask), None, mode)
    np.testing.assert_allclose(float(s / d), ref_agg(ref_loss, mask, mode), rtol=1e-5)
    seg = (np.arange(mask.shape[1])[None] >= 0).astype(np.int32) * np.ones_like(mask, np.int32)
    s2, d2 = aggregate(jnp.asarray(ref_loss, jnp.float32), jnp.asarray(mask), jnp.asarray(seg), mode)
    np.testing.assert_allclose(float(s2 / d2), float(s / d), rtol=1e-6)
    if mode == "seq-mean-token-sum-norm":
        s3, d3 = aggregate(jnp.asarray(ref_loss, jnp.float32), jnp.asarray(mask), None, mode, 100)
        np.testing.assert_allclose(float(s3 / d3), ref_agg(ref_loss, mask, mode, 100), rtol=1e-5)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_micro_batches_are_exact(mode):
    """1x64 == 8x8 == 64x1: add the micro-batch sums, divide once by the global denominator."""
    logp, old, adv, mask = random_batch(11)
    cfg = LossConfig(agg_mode=mode)
    args = [jnp.asarray(x, jnp.float32) for x in (logp, old, adv, mask)]

    def total(lp, o, a, m):
        obj, _, _ = objective_sums(lp, None, loss_mask=m, advantages=a, segment_ids=None,
                                   old_logp=o, sampler_logp=None, ref_logp=None, cfg=cfg)
        return obj

    total_jit, grad_jit = jax.jit(total), jax.jit(jax.grad(total))
    d_global = agg_denominator(args[3], None, mode)
    results, grads = [], []
    for n_micro in (1, 8, 64):
        size = 64 // n_micro
        parts = [total_jit(*[x[i * size:(i + 1) * size] for x in args]) for i in range(n_micro)]
        d_parts = sum(float(agg_denominator(args[3][i * size:(i + 1) * size], None, mode))
                      for i in range(n_micro))
        assert d_parts == pytest.approx(float(d_global), rel=1e-7)  # D is additive
        results.append(float(sum(parts) / d_global))
        g = jnp.concatenate([grad_jit(*[x[i * size:(i + 1) * size] for x in args])
                             for i in range(n_micro)]) / d_global
        grads.append(np.asarray(g))
    ref_loss, _, _ = ref_pg(logp, old, adv)
    ref = ref_agg(ref_loss, mask, mode)
    for r in results:
        assert r == pytest.approx(ref, rel=1e-5, abs=1e-6)
    # equal up to float32 summation order (the per-token terms are O(1), the mean O(1e-2))
    np.testing.assert_allclose(results[1], results[0], atol=1e-7)
    np.testing.assert_allclose(results[2], results[0], atol=1e-7)
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(grads[2], grads[0], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_packed_equals_unpacked(mode):
    """Two episodes per row with segment ids 1, 2 give the loss of one episode per row."""
    rng = np.random.default_rng(5)
    b, t = 6, 9
    loss = rng.normal(size=(2 * b, t))
    mask = (rng.random((2 * b, t)) < 0.6).astype(np.float64)
    mask[3] = 0.0  # an empty episode is not counted in N_seq either way
    s_u, d_u = aggregate(jnp.asarray(loss), jnp.asarray(mask), None, mode, 50)
    packed_loss = np.concatenate([loss[:b], loss[b:]], axis=1)
    packed_mask = np.concatenate([mask[:b], mask[b:]], axis=1)
    seg = np.concatenate([np.ones((b, t)), 2 * np.ones((b, t))], axis=1).astype(np.int32)
    s_p, d_p = aggregate(jnp.asarray(packed_loss), jnp.asarray(packed_mask), jnp.asarray(seg), mode, 50)
    assert float(d_p) == pytest.approx(float(d_u))
    assert float(s_p / d_p) == pytest.approx(float(s_u / d_u), rel=1e-5)


def _token_grads(log_ratio, adv, cfg):
    old = jnp.zeros_like(log_ratio)
    f = lambda lp: jnp.sum(ppo_clip_loss(lp, old, adv, cfg).loss)
    return np.asarray(jax.grad(f)(log_ratio))


def test_gradient_zero_regions():
    """A > 0: dL/dlogp = 0 iff r > 1+eps_high. A < 0: = 0 iff r < 1-eps_low or r > c."""
    cfg = LossConfig(clip_ratio_low=EL, clip_ratio_high=EH, clip_ratio_c=C)
    r = np.concatenate([np.linspace(0.05, 5.0, 4001)])
    r = r[(np.abs(r - (1 - EL)) > 1e-3) & (np.abs(r - (1 + EH)) > 1e-3) & (np.abs(r - C) > 1e-3)]
    lr = jnp.asarray(np.log(r), jnp.float32)
    g_pos = _token_grads(lr, jnp.full_like(lr, 1.3), cfg)
    g_neg = _token_grads(lr, jnp.full_like(lr, -0.7), cfg)
    np.testing.assert_array_equal(g_pos == 0.0, r > 1 + EH)
    np.testing.assert_array_equal(g_neg == 0.0, (r < 1 - EL) | (r > C))
    # where it flows, it is the unclipped gradient -A r
    np.testing.assert_allclose(g_pos[r < 1 + EH], -1.3 * r[r < 1 + EH], rtol=1e-5)
    flow = (r > 1 - EL) & (r < C)
    np.testing.assert_allclose(g_neg[flow], 0.7 * r[flow], rtol=1e-5)
    # without dual-clip the A < 0 gradient flows for every r > 1 - eps_low
    g_nodual = _token_grads(lr, jnp.full_like(lr, -0.7), LossConfig(clip_ratio_c=None))
    np.testing.assert_array_equal(g_nodual == 0.0, r < 1 - EL)


def test_objective_with_kl_entropy_tis_and_metrics():
    logp, old, adv, mask = random_batch(2, b=16, t=13)
    rng = np.random.default_rng(0)
    ref_lp = logp + rng.normal(0, 0.2, size=logp.shape)
    samp = old + rng.normal(0, 0.1, size=logp.shape)
    ent = rng.uniform(0.0, 3.0, size=logp.shape)
    cfg = LossConfig(kl_coef=0.05, kl_estimator="k3", entropy_coef=0.01, tis_cap=1.05,
                     agg_mode="seq-mean-token-mean")
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    obj, sums, maxes = objective_sums(
        f32(logp), f32(ent), loss_mask=f32(mask), advantages=f32(adv), segment_ids=None,
        old_logp=f32(old), sampler_logp=f32(samp), ref_logp=f32(ref_lp), cfg=cfg)
    d = agg_denominator(f32(mask), None, cfg.agg_mode)
    # reference
    pg, clipped, dual = ref_pg(logp, old, adv)
    w = np.minimum(np.exp(old - samp), 1.05)
    dd = np.clip(ref_lp - logp, -20, 20)
    k3 = np.clip(np.exp(dd) - dd - 1, -10, 10)
    per_tok = w * pg + 0.05 * k3 - 0.01 * ent
    assert float(obj / d) == pytest.approx(ref_agg(per_tok, mask, cfg.agg_mode), rel=1e-5)
    m = finalize_metrics(sums, maxes, d)
    sel = mask > 0
    assert float(m["kl"]) == pytest.approx(ref_agg(k3, mask, cfg.agg_mode), rel=1e-5)
    assert float(m["entropy"]) == pytest.approx(ref_agg(ent, mask, cfg.agg_mode), rel=1e-5)
    assert float(m["clipfrac_low"] + m["clipfrac_high"]) == pytest.approx(clipped[sel].mean(), abs=1e-6)
    assert float(m["dual_clipfrac"]) == pytest.approx(dual[sel].mean(), abs=1e-6)
    assert float(m["tis_weight"]) == pytest.approx(w[sel].mean(), rel=1e-5)
    assert float(m["logp_abs_diff"]) == pytest.approx(np.abs(old - samp)[sel].mean(), rel=1e-5)
    assert float(m["logp_abs_diff_max"]) == pytest.approx(np.abs(old - samp)[sel].max(), rel=1e-5)
    assert float(m["logp_pearson"]) == pytest.approx(np.corrcoef(old[sel], samp[sel])[0, 1], abs=1e-4)
    assert float(m["ppo_kl"]) == pytest.approx((old - logp)[sel].mean(), rel=1e-4, abs=1e-6)


def test_tis_weights_are_capped_and_detached():
    old = jnp.array([0.0, -1.0, -3.0])
    samp = jnp.array([0.0, -2.0, -1.0])
    w = truncated_is_weights(old, samp, 2.0)
    np.testing.assert_allclose(np.asarray(w), [1.0, 2.0, np.exp(-2.0)], rtol=1e-6)
    assert float(jax.grad(lambda o: truncated_is_weights(o, samp, 2.0).sum())(old).sum()) == 0.0


def test_reference_logprobs_required_iff_kl():
    x = jnp.zeros((2, 3))
    kw = dict(loss_mask=x + 1, advantages=x, segment_ids=None, old_logp=None, sampler_logp=None)
    with pytest.raises(ValueError, match="reference"):
        objective_sums(x, None, ref_logp=x, cfg=LossConfig(kl_coef=0.0), **kw)
    with pytest.raises(ValueError, match="reference"):
        objective_sums(x, None, ref_logp=None, cfg=LossConfig(kl_coef=0.1), **kw)


def test_garbage_at_masked_positions_does_not_leak():
    """NaN/inf in old/sampler/ref log-probs or advantages where the mask is 0 change nothing."""
    logp, old, adv, mask = random_batch(4, b=8, t=9)
    samp, ref_lp = old - 0.1, logp + 0.2
    cfg = LossConfig(kl_coef=0.1, tis_cap=2.0)
    f32 = lambda x: jnp.asarray(x, jnp.float32)

    def run(old_, adv_, samp_, ref_):
        def f(lp):
            return objective_sums(lp, None, loss_mask=f32(mask), advantages=f32(adv_), segment_ids=None,
                                  old_logp=f32(old_), sampler_logp=f32(samp_), ref_logp=f32(ref_), cfg=cfg)[0]
        return jax.value_and_grad(f)(f32(logp))

    clean = run(old, adv, samp, ref_lp)
    off = mask == 0
    dirty = run(np.where(off, np.nan, old), np.where(off, np.inf, adv), np.where(off, np.nan, samp),
                np.where(off, -np.inf, ref_lp))
    assert np.isfinite(float(dirty[0]))
    assert float(dirty[0]) == pytest.approx(float(clean[0]), rel=1e-6)
    np.testing.assert_allclose(np.asarray(dirty[1]), np.asarray(clean[1]), rtol=1e-6)
