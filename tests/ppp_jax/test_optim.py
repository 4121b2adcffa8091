"""Optimizer schedule and the RL config section."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ppp_jax.config.loader import ConfigError, from_dict
from ppp_jax.config.rl import LossConfig, OptimConfig, RLConfig
from ppp_jax.rl.optim import learning_rate_schedule, make_optimizer
from tests import numerics as nm


def test_warmup_then_cosine():
    cfg = OptimConfig(learning_rate=1e-3, warmup_steps=4, schedule="cosine", total_steps=14, final_lr_ratio=0.1)
    lr = learning_rate_schedule(cfg)
    np.testing.assert_allclose([float(lr(k)) for k in range(5)], [0, 2.5e-4, 5e-4, 7.5e-4, 1e-3], rtol=1e-6)
    # cosine from 1e-3 to 1e-4 over the remaining 10 steps: halfway = (1e-3 + 1e-4) / 2
    assert float(lr(9)) == pytest.approx(5.5e-4, rel=1e-5)
    assert float(lr(14)) == pytest.approx(1e-4, rel=1e-5)
    assert float(learning_rate_schedule(OptimConfig())(123)) == pytest.approx(1e-6)  # paper: constant


def test_adamw_with_clip_matches_manual_first_step():
    cfg = OptimConfig(learning_rate=0.1, weight_decay=0.01, max_grad_norm=1.0)
    opt = make_optimizer(cfg)
    p = {"w": jnp.array([1.0, -2.0])}
    g = {"w": jnp.array([3.0, 4.0])}  # norm 5 -> clipped to [0.6, 0.8]
    upd, _ = opt.update(g, opt.init(p), p)
    new = optax.apply_updates(p, upd)
    # Adam's first step: m̂/(√v̂+ε) = sign(g); decoupled decay adds λθ
    expected = np.array([1.0, -2.0]) - 0.1 * (np.sign([0.6, 0.8]) + 0.01 * np.array([1.0, -2.0]))
    # float32 Adam: β rounded to float32 makes 1 − β₂ (the moment's and the bias correction's,
    # computed differently) differ by up to u·β₂, i.e. u·β₂/(1 − β₂) relative (6e-5 for 0.999),
    # halved by the square root; likewise u·β₁/(1 − β₁); ~16 plain roundings; then the update
    rel = nm.U32 * (cfg.b2 / (1 - cfg.b2) / 2 + cfg.b1 / (1 - cfg.b1) + 16)
    tol = cfg.learning_rate * rel + 2 * nm.U32 * np.abs(expected).max()
    np.testing.assert_allclose(np.asarray(new["w"]), expected, rtol=0, atol=tol)


def test_rl_config_from_dict_and_validation():
    cfg = from_dict(RLConfig, {"loss": {"clip_ratio_high": 0.28, "kl_coef": 0.0, "agg_mode": "token-mean"},
                               "optim": {"learning_rate": "1e-6"}, "num_micro_batches": 4})
    assert cfg.loss.clip_ratio_high == 0.28 and cfg.optim.learning_rate == 1e-6 and not cfg.loss.use_reference
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(RLConfig, {"loss": {"clip_high": 0.3}})
    with pytest.raises(ConfigError, match="clip_ratio_c"):
        from_dict(RLConfig, {"loss": {"clip_ratio_c": 0.5}})
    with pytest.raises(ValueError):
        LossConfig(agg_mode="token-mean", temperature=0.0)
