"""PPO mini-batches and epochs (`ppp_jax.rl.ppo`) against an independent reference of verl's
update: per update, the loss, the gradient and the clip fractions a hand computation gives from
the same parameters, rows and π_old; π_old fixed across the updates; ratio 1 on the first one."""

import dataclasses
import functools

import jax
import numpy as np
import optax
import pytest

from ppp_jax.config.rl import LossConfig, OptimConfig, RLConfig
from ppp_jax.rl.batch import assemble_batch
from ppp_jax.rl.ppo import combine_update_metrics, make_row_selector, mini_batch_rows, ppo_update
from ppp_jax.rl.train_step import init_train_state, make_logprob_fn, make_train_step, policy_logprobs
from tests.ppp_jax.rl_helpers import random_views, tiny_split

LOSS = LossConfig(clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0)  # token-mean
CFG = RLConfig(loss=LOSS, optim=OptimConfig(learning_rate=1.0), logprob_chunk_size=8,
               ppo_mini_batches=4, ppo_epochs=2)
LR = 3.0  # SGD: large enough that later mini-batches leave the trust region


def _batch(n=16, seed=0):
    views = random_views(n, seed=seed)
    adv = np.random.default_rng(seed + 1).normal(size=n)
    return assemble_batch(views, adv, pad_to_multiple=8)


# ------------------------------------------------------------------------------------------------
# Row schedule and metrics
# ------------------------------------------------------------------------------------------------


def test_mini_batch_rows_partition_every_epoch():
    rows = mini_batch_rows(12, 3, 2, seed=5, shuffle=True)
    assert rows.shape == (2, 3, 4) and rows.dtype == np.int32
    for epoch in rows:
        assert sorted(epoch.ravel().tolist()) == list(range(12))  # every row exactly once
    assert not np.array_equal(rows[0], rows[1])  # a fresh permutation per epoch
    np.testing.assert_array_equal(rows, mini_batch_rows(12, 3, 2, seed=5, shuffle=True))
    assert not np.array_equal(rows, mini_batch_rows(12, 3, 2, seed=6, shuffle=True))
    # without shuffling, or with one mini-batch, contiguous blocks in order
    np.testing.assert_array_equal(mini_batch_rows(12, 3, 1, seed=5, shuffle=False)[0],
                                  np.arange(12).reshape(3, 4))
    np.testing.assert_array_equal(mini_batch_rows(12, 1, 2, seed=5, shuffle=True),
                                  np.tile(np.arange(12), (2, 1, 1)))
    with pytest.raises(ValueError, match="ppo_mini_batches 5"):
        mini_batch_rows(12, 5, 1, seed=0, shuffle=True)


def test_combine_update_metrics():
    per = [{"loss": 1.0, "ratio": 1.0, "learning_rate": 0.5, "num_skipped": 0.0, "skipped": 0.0},
           {"loss": 3.0, "ratio": 1.2, "learning_rate": 0.4, "num_skipped": 1.0, "skipped": 1.0}]
    out = combine_update_metrics(per)
    assert out["loss"] == 2.0 and out["ratio"] == pytest.approx(1.1)
    assert out["learning_rate"] == 0.4 and out["num_skipped"] == 1.0 and out["skipped"] == 1.0
    assert out["ppo_updates"] == 2.0 and out["ratio_last"] == 1.2
    single = combine_update_metrics(per[:1])
    assert single["ppo_updates"] == 1.0 and "ratio_last" not in single


def test_one_mini_batch_one_epoch_is_the_plain_step():
    """K = E = 1: exactly one step call on the batch as given; no π_old pass, no row gather."""
    calls = []

    def step(state, batch):
        calls.append(batch)
        return state + 1, {"loss": 0.0}

    def never(*_):
        raise AssertionError("must not be called with one update per step")

    batch = _batch(4)
    state, per = ppo_update(step, 0, batch, mini_batch_rows(4, 1, 1, seed=0, shuffle=True),
                            select_rows=never, old_logprob_fn=never)
    assert state == 1 and len(per) == 1 and calls == [batch]


def test_several_updates_need_pi_old():
    with pytest.raises(ValueError, match="π_old"):
        ppo_update(lambda s, b: (s, {}), 0, _batch(4), mini_batch_rows(4, 2, 1, seed=0, shuffle=False),
                   select_rows=lambda b, r: b)


# ------------------------------------------------------------------------------------------------
# Against the reference
# ------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def _model_fns(graphdef):
    """Jitted (params, batch) -> ℓ float32 [b, T], and its pullback (params, batch, ∂L/∂ℓ) -> ∂L/∂θ."""

    def logp(params, batch):
        return policy_logprobs(graphdef, params, batch, temperature=1.0, chunk_size=8)[0]

    def pullback(params, batch, cotangent):
        return jax.vjp(lambda p: logp(p, batch), params)[1](cotangent)[0]

    return jax.jit(logp), jax.jit(pullback)


def _reference_update(graphdef, params, mini, old_logp, cfg: LossConfig):
    """verl's vanilla PPO (compute_policy_loss + agg_loss token-mean) on one mini-batch, in float64
    numpy from the model's log-probs, and its gradient: the hand-derived ∂L/∂ℓ_t pulled back
    through the model (a VJP of the float32 log-prob function).

    Returns (loss, grads, clipfrac_high, clipfrac_low, dual_clipfrac, mean ratio)."""
    logp_fn, pullback = _model_fns(graphdef)
    logp = np.asarray(logp_fn(params, mini), np.float64)
    m = np.asarray(mini.loss_mask, np.float64)
    adv = np.asarray(mini.advantages, np.float64) * m
    old = np.where(m > 0, np.asarray(old_logp, np.float64), logp)
    ratio = np.exp(np.clip(logp - old, -cfg.log_ratio_clamp, cfg.log_ratio_clamp))
    l1 = -adv * ratio
    l2 = -adv * np.clip(ratio, 1 - cfg.clip_ratio_low, 1 + cfg.clip_ratio_high)
    l_clip = np.maximum(l1, l2)
    l3 = -adv * cfg.clip_ratio_c
    loss_t = np.where(adv < 0, np.minimum(l_clip, l3), l_clip)
    n = m.sum()
    loss = float((loss_t * m).sum() / n)
    # ∂loss_t/∂ℓ_t: −A·r where the unclipped branch is active, 0 where a clip bound is.
    clipped = l2 > l1
    dual = (adv < 0) & (l_clip > l3)
    dloss = np.where(clipped | dual, 0.0, -adv * ratio) * m / n
    grads = pullback(params, mini, np.asarray(dloss, np.float32))
    frac = lambda x: float((x * m).sum() / n)  # noqa: E731
    return (loss, grads, frac(clipped & (adv > 0)), frac(clipped & (adv < 0)), frac(dual),
            frac(ratio))


@pytest.fixture(scope="module")
def ppo_run():
    """K = 4 mini-batches × E = 2 epochs on a 16-row batch with SGD, every update recorded."""
    graphdef, params = tiny_split(0)
    batch = _batch(16)
    opt = optax.sgd(LR)
    step = make_train_step(graphdef, CFG, opt, donate=False)
    record = []

    def recording_step(state, mini):
        new, metrics = step(state, mini)
        record.append((state, mini, new, jax.device_get(metrics)))
        return new, metrics

    old_fn = make_logprob_fn(graphdef, CFG, num_micro=CFG.num_micro_batches * CFG.ppo_mini_batches)
    rows = mini_batch_rows(16, CFG.ppo_mini_batches, CFG.ppo_epochs, seed=7, shuffle=True)
    state0 = init_train_state(params, opt)
    final, per = ppo_update(recording_step, state0, batch, rows, select_rows=make_row_selector(None),
                            old_logprob_fn=old_fn)
    return graphdef, params, batch, rows, record, final, per


def test_pi_old_is_the_sampling_weights_log_probs_for_every_update(ppo_run):
    graphdef, params, batch, rows, record, _, _ = ppo_run
    whole = np.asarray(policy_logprobs(graphdef, params, batch, temperature=1.0, chunk_size=8)[0])
    m = np.asarray(batch.loss_mask) > 0
    for (_, mini, _, _), idx in zip(record, rows.reshape(-1, rows.shape[-1])):
        np.testing.assert_array_equal(np.asarray(mini.tokens), np.asarray(batch.tokens)[idx])
        # π_old of the rows: the whole-batch (unbatched) log-probs at the sampling weights. Two
        # float32 programs over the same rows: within 2 ulps of a log-prob of a few nats.
        got = np.asarray(mini.old_logprobs)[m[idx]]
        np.testing.assert_allclose(got, whole[idx][m[idx]], rtol=0, atol=4e-6)


def test_each_update_matches_the_verl_reference(ppo_run):
    graphdef, _, _, _, record, final, per = ppo_run
    assert len(record) == 8 and int(final.step) == 8
    clipped_updates = 0
    for i, (before, mini, after, metrics) in enumerate(record):
        loss, grads, cf_high, cf_low, dual, ratio = _reference_update(
            graphdef, before.params, mini, mini.old_logprobs, LOSS)
        # loss of the mini-batch (token-mean over its own tokens); the reference is float64 from
        # the same float32 log-probs, so the difference is the float32 sum over <= 300 tokens
        assert float(metrics["pg_loss"]) == pytest.approx(loss, abs=1e-6), i
        assert float(metrics["clipfrac_high"]) == pytest.approx(cf_high, abs=1e-6), i
        assert float(metrics["clipfrac_low"]) == pytest.approx(cf_low, abs=1e-6), i
        assert float(metrics["dual_clipfrac"]) == pytest.approx(dual, abs=1e-6), i
        assert float(metrics["ratio"]) == pytest.approx(ratio, abs=1e-6), i
        # SGD: params_after = params_before − lr·g, so g = (before − after) / lr
        for g_ref, p0, p1 in zip(jax.tree.leaves(grads), jax.tree.leaves(before.params),
                                 jax.tree.leaves(after.params)):
            g = (np.asarray(p0, np.float64) - np.asarray(p1, np.float64)) / LR
            np.testing.assert_allclose(g, np.asarray(g_ref, np.float64), rtol=0, atol=1e-6)
        if i == 0:
            # the first update runs at the weights π_old was computed with
            assert float(metrics["ratio"]) == pytest.approx(1.0, abs=1e-6)
            assert float(metrics["clipfrac_high"] + metrics["clipfrac_low"]) == 0.0
        clipped_updates += float(metrics["clipfrac_high"] + metrics["clipfrac_low"]) > 0
    # later updates are off-policy: the ratio leaves 1 and the clip acts
    assert abs(float(record[-1][3]["ratio"]) - 1.0) > 1e-3
    assert clipped_updates >= 3
    assert per[-1]["ratio"] == record[-1][3]["ratio"]


def test_sampler_log_probs_as_pi_old():
    """rl.old_logprobs: sampler — π_old is the batch's sampler log-probs, no trainer pass."""
    graphdef, params = tiny_split(0)
    batch = _batch(8)
    batch = batch.with_old_logprobs(batch.sampler_logprobs)
    opt = optax.sgd(0.1)
    step = make_train_step(graphdef, dataclasses.replace(CFG, ppo_mini_batches=2, ppo_epochs=1),
                           opt, donate=False)
    seen = []

    def recording_step(state, mini):
        seen.append(mini)
        return step(state, mini)

    ppo_update(recording_step, init_train_state(params, opt), batch,
               mini_batch_rows(8, 2, 1, seed=0, shuffle=False), select_rows=make_row_selector(None))
    for k, mini in enumerate(seen):
        np.testing.assert_array_equal(np.asarray(mini.old_logprobs),
                                      np.asarray(batch.sampler_logprobs)[4 * k:4 * k + 4])
