"""Advantages vs independent float64 re-implementations of verl's loops (core_algos.py)."""

from collections import defaultdict

import numpy as np
import pytest

from ppp_jax.rl.advantages import compute_advantages, group_index, grpo_advantages, rloo_advantages
from ppp_jax.config.loader import from_dict
from ppp_jax.config.rl import AdvantageConfig


# ---- references: verl's per-episode dict loops, transcribed to numpy float64 ----------------
def ref_grpo(scores, index, eps=1e-6, norm=True):
    groups = defaultdict(list)
    for s, i in zip(scores, index):
        groups[i].append(s)
    mean, std = {}, {}
    for i, vals in groups.items():
        if len(vals) == 1:
            mean[i], std[i] = 0.0, 1.0
        else:
            mean[i] = float(np.mean(vals))
            std[i] = float(np.std(vals, ddof=1))  # torch.std is unbiased
    out = []
    for s, i in zip(scores, index):
        out.append((s - mean[i]) / (std[i] + eps) if norm else s - mean[i])
    return np.array(out)


def ref_rloo(scores, index):
    groups = defaultdict(list)
    for s, i in zip(scores, index):
        groups[i].append(s)
    out = []
    for s, i in zip(scores, index):
        n = len(groups[i])
        if n > 1:
            out.append(s * n / (n - 1) - np.mean(groups[i]) * n / (n - 1))
        else:
            out.append(s)
    return np.array(out)


def _random_batch(rng, n_groups=9):
    sizes = rng.integers(1, 9, size=n_groups)  # includes singleton groups
    keys = [f"task{g}" for g, s in enumerate(sizes) for _ in range(s)]
    order = rng.permutation(len(keys))  # groups interleaved, as from an async orchestrator
    keys = [keys[i] for i in order]
    rewards = rng.normal(0.5, 0.6, size=len(keys))
    return keys, rewards


@pytest.mark.parametrize("seed", range(5))
def test_grpo_drgrpo_rloo_match_reference(seed):
    rng = np.random.default_rng(seed)
    keys, rewards = _random_batch(rng)
    gid, _ = group_index(keys)
    np.testing.assert_allclose(grpo_advantages(rewards, gid), ref_grpo(rewards, keys), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        grpo_advantages(rewards, gid, norm_by_std=False), ref_grpo(rewards, keys, norm=False), atol=1e-12
    )
    np.testing.assert_allclose(rloo_advantages(rewards, gid), ref_rloo(rewards, keys), atol=1e-12)


def test_rloo_is_leave_one_out():
    r = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    # mean of the others for index 0: (2+3+4+5+6)/5 = 4 -> 1 - 4 = -3
    a = rloo_advantages(r, np.zeros(6, dtype=np.int64))
    np.testing.assert_allclose(a, [r[i] - np.delete(r, i).mean() for i in range(6)])
    assert a[0] == pytest.approx(-3.0)


def test_clip_switch_and_config():
    keys = ["a"] * 4
    rewards = [-0.5, 0.5, 1.5, 1.0]
    clipped = compute_advantages(rewards, keys, AdvantageConfig())
    np.testing.assert_allclose(clipped, ref_grpo(np.clip(rewards, 0, 1), keys))
    raw = compute_advantages(rewards, keys, AdvantageConfig(clip_reward_01=False))
    np.testing.assert_allclose(raw, ref_grpo(np.array(rewards), keys))
    cfg = from_dict(AdvantageConfig, {"estimator": "rloo", "clip_reward_01": False})
    np.testing.assert_allclose(compute_advantages(rewards, keys, cfg), ref_rloo(rewards, keys))


def test_zero_spread_group_gives_exact_zero_and_singleton_convention():
    a = compute_advantages([0.3] * 8 + [0.7], ["g"] * 8 + ["s"], AdvantageConfig())
    assert np.all(a[:8] == 0.0)
    assert a[8] == pytest.approx(0.7 / (1 + 1e-6))  # singleton: mu=0, sigma=1


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="non-finite"):
        compute_advantages([np.nan, 1.0], ["a", "a"], AdvantageConfig())
    with pytest.raises(ValueError, match="does not match"):
        compute_advantages([1.0], ["a", "a"], AdvantageConfig())
