"""The jitted train step on a tiny policy: it lowers the loss, micro-batching is exact, the
non-finite guard skips, β = 0 takes no reference model, and 8 devices equal 1."""

import dataclasses

import jax
import numpy as np
import optax
import pytest

from ppp_jax.rl.batch import assemble_batch
from ppp_jax.config.rl import LossConfig, OptimConfig, RLConfig
from ppp_jax.rl.train_step import init_train_state, make_train_step, policy_logprobs
from tests.ppp_jax.rl_helpers import random_views, run_multidevice, tiny_split


def _batch(n=8, seed=0):
    views = random_views(n, seed=seed)
    adv = np.random.default_rng(seed + 1).normal(size=n)
    return assemble_batch(views, adv, pad_to_multiple=8)


def _cfg(**loss):
    return RLConfig(loss=LossConfig(**loss), optim=OptimConfig(learning_rate=3e-3, weight_decay=0.0),
                    logprob_chunk_size=8)


STEP_CFG = RLConfig(loss=LossConfig(agg_mode="seq-mean-token-mean"), logprob_chunk_size=8)


@pytest.fixture(scope="module")
def sgd_step():
    """One compiled step shared by the tests below: (params, batch with a fixed π_old, opt, step).

    SGD (lr 1): the update is exactly −∇, which the micro-batch test compares."""
    graphdef, params = tiny_split(0)
    batch = _batch()
    old, _ = jax.jit(lambda p, b: policy_logprobs(graphdef, p, b, temperature=1.0, chunk_size=8))(params, batch)
    batch = batch.with_old_logprobs(old)  # fixed π_old: the surrogate's value moves with θ
    opt = optax.sgd(1.0)
    return graphdef, params, batch, opt, make_train_step(graphdef, STEP_CFG, opt, donate=False)


def test_step_lowers_loss_on_fixed_batch(sgd_step):
    _, params, batch, opt, step = sgd_step
    state = init_train_state(params, opt)
    losses = []
    for _ in range(5):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0] - 0.1, losses
    assert all(b <= a + 1e-6 for a, b in zip(losses, losses[1:])), losses
    # the policy moved until every token's ratio left the trust region: the clipped surrogate
    # then has zero gradient (the PPO clip works end to end)
    assert float(m["clipfrac_high"] + m["clipfrac_low"]) > 0.9
    assert int(state.step) == 5 and int(state.skipped) == 0


def test_non_finite_gradient_is_skipped_and_counted(sgd_step):
    _, params, batch, opt, step = sgd_step
    bad = batch.replace(advantages=np.where(batch.loss_mask > 0, np.nan, 0.0).astype(np.float32))
    state0 = init_train_state(params, opt)
    state1, m = step(state0, bad)
    assert float(m["skipped"]) == 1.0 and int(state1.skipped) == 1 and int(state1.step) == 1
    for a, b in zip(jax.tree.leaves(state0.params), jax.tree.leaves(state1.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    state2, m2 = step(state1, batch)  # a good batch afterwards is applied
    assert float(m2["skipped"]) == 0.0 and int(state2.skipped) == 1
    assert any(not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(state1.params), jax.tree.leaves(state2.params)))


def test_micro_batches_equal_one_big_batch(sgd_step):
    """M = 1 and M = 4 micro-batches give the same update (SGD: the update is −∇ itself)."""
    graphdef, params, batch, opt, step1 = sgd_step
    step4 = make_train_step(graphdef, dataclasses.replace(STEP_CFG, num_micro_batches=4), opt, donate=False)
    (s1, m1), (s4, m4) = (f(init_train_state(params, opt), batch) for f in (step1, step4))
    for a, b, p in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s4.params), jax.tree.leaves(params)):
        np.testing.assert_allclose(np.asarray(a) - np.asarray(p), np.asarray(b) - np.asarray(p),
                                   rtol=1e-5, atol=1e-8)
    for k in ("loss", "grad_norm", "entropy", "logp_abs_diff", "agg_denominator", "loss_tokens"):
        np.testing.assert_allclose(float(m1[k]), float(m4[k]), rtol=1e-5, err_msg=k)
    assert float(m1["grad_norm"]) > 0


def test_reference_policy_only_with_kl():
    graphdef, params = tiny_split(0)
    batch = _batch()
    opt = optax.sgd(0.0)
    step0 = make_train_step(graphdef, _cfg(), opt, donate=False)
    state = init_train_state(params, opt)
    with pytest.raises(ValueError, match="no ref_params"):
        step0(state, batch, params)
    step_kl = make_train_step(graphdef, _cfg(kl_coef=0.1), opt, donate=False)
    with pytest.raises(ValueError, match="needs ref_params"):
        step_kl(state, batch)
    _, m = step_kl(state, batch, params)  # π_ref = π_θ: KL is exactly 0
    assert abs(float(m["kl"])) < 1e-6
    # β = 0: the traced program holds only the policy's forward/backward; the β > 0 one has one
    # more forward pass (more matmuls). Traced only, not compiled.
    n0 = str(jax.make_jaxpr(step0)(state, batch)).count("dot_general")
    n1 = str(jax.make_jaxpr(step_kl)(state, batch, params)).count("dot_general")
    assert n1 > n0


# A must-show of its issue: kept in the default suite (about 1-2 min on 2 cores).
@pytest.mark.timeout(900)
def test_8_devices_equal_1_device():
    res = run_multidevice("tests.ppp_jax._train_step_sharded", timeout=900)
    print(res)
    assert res["num_devices"] == 8 and res["shardings_kept"] and res["sharded_param_leaves"] > 0
    # the gradient update itself (SGD): equal to float32 rounding, relative to its size
    assert res["sgd_update_max_diff"] < 1e-5 * res["sgd_update_max"], res
    # AdamW, 2 updates: metrics (loss, grad norm, clip fractions, ...) agree; params agree to a
    # small fraction of the step (Adam's m/sqrt(v) amplifies the rounding of ~0 gradient entries)
    assert res["grad_norm_rel_diff"] < 1e-5, res
    assert res["max_metric_rel_diff"] < 1e-4, res
    assert res["max_param_diff"] < 0.01 * res["param_change"], res


def test_logprob_fn_matches_unbatched(sgd_step):
    """make_logprob_fn (micro-batched, strided rows) returns rows in the batch's own order."""
    from ppp_jax.rl.train_step import make_logprob_fn

    graphdef, params, batch, _, _ = sgd_step
    fn = make_logprob_fn(graphdef, dataclasses.replace(STEP_CFG, num_micro_batches=4))
    np.testing.assert_allclose(np.asarray(fn(params, batch)), np.asarray(batch.old_logprobs), rtol=1e-5, atol=1e-6)
