"""Policy loss and aggregation vs independent float64 numpy versions of verl's formulas;
gradient regions of the clipped surrogate; exact micro-batch accumulation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppp_jax.config.rl import LossConfig
from ppp_jax.rl.losses import (
    AGG_MODES,
    agg_denominator,
    aggregate,
    finalize_metrics,
    objective_sums,
    ppo_clip_loss,
    truncated_is_weights,
)
from tests import numerics as nm

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
    # one float32 sum of ~600 terms (each: the input's rounding, a_t = m/n, a_t·L_t) vs float64
    terms = _terms64(logp, old, adv, mask, mode)
    tol = nm.f32_mean_atol(terms, float(d), 3)
    np.testing.assert_allclose(float(s / d), ref_agg(ref_loss, mask, mode), rtol=0, atol=tol)
    seg = (np.arange(mask.shape[1])[None] >= 0).astype(np.int32) * np.ones_like(mask, np.int32)
    s2, d2 = aggregate(jnp.asarray(ref_loss, jnp.float32), jnp.asarray(mask), jnp.asarray(seg), mode)
    # segment ids: another program summing the same float32 terms (two evaluations)
    np.testing.assert_allclose(float(s2 / d2), float(s / d), rtol=0,
                               atol=nm.f32_mean_atol(terms, float(d), 3, evaluations=2))
    if mode == "seq-mean-token-sum-norm":
        s3, d3 = aggregate(jnp.asarray(ref_loss, jnp.float32), jnp.asarray(mask), None, mode, 100)
        np.testing.assert_allclose(float(s3 / d3), ref_agg(ref_loss, mask, mode, 100), rtol=0,
                                   atol=nm.f32_mean_atol(terms, float(d3), 3))


# Roundings one float32 per-token term a_t·L_t carries before it is summed: the log-ratio (1),
# exp (TRANSCENDENTAL), −A·r (1), a_t = m/n (1), a_t·L_t (1).
TERM_ROUNDINGS = 4 + nm.TRANSCENDENTAL
# Roundings of one per-token gradient a_t·(−A·r)/D (no reduction): the log-ratio (1), exp
# (TRANSCENDENTAL), the products with A, the cotangent and a_t (3), a_t = m/n (1), / D (1).
GRAD_ROUNDINGS = 6 + nm.TRANSCENDENTAL


def _terms64(logp, old, adv, mask, mode):
    """float64 reference of the per-token terms a_t·L_t that the aggregation sums."""
    loss, _, _ = ref_pg(logp, old, adv)
    m = mask.astype(np.float64)
    a = m / np.maximum(m.sum(-1, keepdims=True), 1.0) if mode == "seq-mean-token-mean" else m
    return a * loss


def _input_roundings(logp, old, mask):
    """Extra roundings per term when float32 meets the float64 reference: rounding ℓ and ℓ_old to
    float32 moves the log-ratio by up to u·(|ℓ| + |ℓ_old| + |ℓ − ℓ_old|), which exp turns into
    that relative error of the term (0 where the log-ratio is clamped); A's rounding adds one."""
    lr = logp - old
    k = np.where(np.abs(lr) < 20.0, np.abs(logp) + np.abs(old) + np.abs(lr), 0.0)
    return int(np.ceil(k[mask > 0].max())) + 1


def _micro_batch_sums(mode, logp, old, adv, mask, n_micro):
    """The float32 Σ a_t·o_t of each of `n_micro` equal micro-batches (jitted objective_sums),
    their denominators (floats), and the per-token gradients of those sums, concatenated."""
    cfg = LossConfig(agg_mode=mode)
    args = [jnp.asarray(x, jnp.float32) for x in (logp, old, adv, mask)]

    def total(lp, o, a, m):
        obj, _, _ = objective_sums(lp, None, loss_mask=m, advantages=a, segment_ids=None,
                                   old_logp=o, sampler_logp=None, ref_logp=None, cfg=cfg)
        return obj

    total_jit, grad_jit = jax.jit(total), jax.jit(jax.grad(total))
    size = logp.shape[0] // n_micro
    chunks = [[x[i * size:(i + 1) * size] for x in args] for i in range(n_micro)]
    parts = [total_jit(*c) for c in chunks]
    d_parts = [float(agg_denominator(c[3], None, mode)) for c in chunks]
    return parts, d_parts, jnp.concatenate([grad_jit(*c) for c in chunks])


@pytest.mark.parametrize("mode", AGG_MODES)
def test_micro_batches_are_exact(mode):
    """1x64 == 8x8 == 64x1: add the micro-batch sums, divide once by the global denominator.

    "Exact" up to float32 summation order, with the bound derived from the sum's size (tests/
    numerics.py): ~600 non-zero terms with Σ|a_t·L_t| ≈ 520 (seq-mean-token-sum, D = 64) allow
    two orders to differ by ~6e-4, which still sits 29x-5500x below what a dropped micro-batch or
    a micro-batch divided by its own denominator costs (the next test).
    """
    logp, old, adv, mask = random_batch(11)
    d_global = float(agg_denominator(jnp.asarray(mask, jnp.float32), None, mode))
    results, grads = [], []
    for n_micro in (1, 8, 64):
        parts, d_parts, g = _micro_batch_sums(mode, logp, old, adv, mask, n_micro)
        # D is additive, and exact: integer counts (times an integer L_norm) below 2**24
        assert sum(d_parts) == d_global
        results.append(float(sum(parts) / d_global))
        grads.append(np.asarray(g / d_global))
    terms = _terms64(logp, old, adv, mask, mode)
    ref = ref_agg(ref_pg(logp, old, adv)[0], mask, mode)
    # the terms are what is summed (two float64 evaluations of the same sum)
    assert terms.sum() / d_global == pytest.approx(
        ref, rel=0, abs=nm.f32_mean_atol(terms, d_global, 2, evaluations=2, u=nm.U64))
    # vs float64: one float32 evaluation of the sum, its inputs rounded to float32
    tol_ref = nm.f32_mean_atol(terms, d_global, TERM_ROUNDINGS + _input_roundings(logp, old, mask))
    for r in results:
        assert r == pytest.approx(ref, rel=0, abs=tol_ref)
    # the same float32 terms summed in other orders (per micro-batch, then across): two evaluations
    tol = nm.f32_mean_atol(terms, d_global, TERM_ROUNDINGS, evaluations=2)
    np.testing.assert_allclose(results[1], results[0], rtol=0, atol=tol)
    np.testing.assert_allclose(results[2], results[0], rtol=0, atol=tol)
    # per-token gradients: no reduction, the same elementwise chain compiled for other shapes
    np.testing.assert_allclose(grads[1], grads[0], rtol=nm.f32_chain_rtol(GRAD_ROUNDINGS), atol=0)
    np.testing.assert_allclose(grads[2], grads[0], rtol=nm.f32_chain_rtol(GRAD_ROUNDINGS), atol=0)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_micro_batch_bound_catches_broken_aggregation(mode):
    """The summation-order bound of the test above is not vacuous: aggregation bugs exceed it.

    Dropping any one of 8 micro-batches costs >= 29x the bound (its partial sum can be small by
    chance, so this is the weakest case); dividing each micro-batch by its own denominator, then
    adding or averaging, costs >= 122x (three empty rows make the micro-batch denominators differ
    in every mode).
    """
    logp, old, adv, mask = random_batch(11)
    mask[:3] = 0.0
    d_global = float(agg_denominator(jnp.asarray(mask, jnp.float32), None, mode))
    parts, d_parts, _ = _micro_batch_sums(mode, logp, old, adv, mask, 8)
    right = float(sum(parts) / d_global)
    tol = nm.f32_mean_atol(_terms64(logp, old, adv, mask, mode), d_global, TERM_ROUNDINGS,
                           evaluations=2)
    own = [p / d for p, d in zip(parts, d_parts)]
    broken = {f"dropped micro-batch {k}": float(sum(parts[:k] + parts[k + 1:]) / d_global)
              for k in range(len(parts))}
    broken["own denominators, added"] = float(sum(own))
    broken["own denominators, averaged"] = float(sum(own) / len(own))
    ratios = {k: abs(v - right) / tol for k, v in broken.items()}
    print(f"\n[{mode}] bound {tol:.2e}; error / bound: "
          + ", ".join(f"{k}: {r:.0f}" for k, r in ratios.items()))
    assert min(r for k, r in ratios.items() if k.startswith("dropped")) > 10, ratios
    assert min(r for k, r in ratios.items() if k.startswith("own")) > 100, ratios


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
    assert float(d_p) == float(d_u)  # integer counts: exact
    # the same float32 terms summed over [6, 18] instead of [12, 9] (two evaluations)
    terms = _terms64(np.zeros_like(loss), np.zeros_like(loss), -loss, mask, mode)  # r = 1: L = loss
    tol = nm.f32_mean_atol(terms, float(d_u), 3, evaluations=2)
    assert float(s_p / d_p) == pytest.approx(float(s_u / d_u), rel=0, abs=tol)


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
    # Bounds: one float32 evaluation vs float64 (tests/numerics.py). Per-term absolute errors:
    # rounding the inputs to float32 moves a log-ratio x − y by u·(|x| + |y| + |x − y|), which an
    # exp turns into that relative error; k3 = e^d − d − 1 cancels, so its error is absolute.
    u, a = nm.U32, mask / np.maximum(mask.sum(-1, keepdims=True), 1.0)
    in_pg = np.abs(logp) + np.abs(old) + np.abs(logp - old)
    in_w = np.abs(old) + np.abs(samp) + np.abs(old - samp)
    in_kl = np.abs(ref_lp) + np.abs(logp) + np.abs(dd)
    err_k3 = u * (np.abs(np.exp(dd) - 1) * in_kl + nm.TRANSCENDENTAL * np.exp(dd)
                  + 2 * (np.exp(dd) + np.abs(dd) + 1))
    err_obj = a * (np.abs(w * pg) * u * (in_pg + in_w + 2 * nm.TRANSCENDENTAL + 6)
                   + 0.05 * (err_k3 + 2 * u * np.abs(k3)) + 0.01 * 3 * u * ent)
    sel = mask > 0
    d64 = float(d)
    assert float(obj / d) == pytest.approx(ref_agg(per_tok, mask, cfg.agg_mode), rel=0,
                                           abs=nm.f32_mean_atol(a * per_tok, d64, 2, err_obj[sel]))
    m = finalize_metrics(sums, maxes, d)
    assert float(m["kl"]) == pytest.approx(ref_agg(k3, mask, cfg.agg_mode), rel=0,
                                           abs=nm.f32_mean_atol(a * k3, d64, 2, (a * err_k3)[sel]))
    # (the tolerances below are at or above their derived bounds: entropy 5e-6, tis_weight 4e-6,
    # logp_abs_diff 5e-7, its max 6e-7, Pearson 8e-5 from its five float32 moment sums, ppo_kl
    # 1e-6; the clip fractions are integer counts over an integer: one rounding)
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
