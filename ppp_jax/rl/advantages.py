"""Outcome advantages: one scalar A_i per episode from the group's rewards (host side, float64).

Symbols: episode i belongs to group g(i) (the G episodes sampled for one prompt; in PPP one task
instance × one user preference × one prompt kind). R_i is its scalar reward, n_g the group's size,
μ_g = (1/n_g) Σ_{j∈g} R_j its mean and σ_g = sqrt(Σ_{j∈g} (R_j − μ_g)² / (n_g − 1)) its *unbiased*
(ddof = 1) standard deviation.

  GRPO     A_i = (R_i − μ_g) / (σ_g + ε)                      (ε = 1e-6)
  Dr.GRPO  A_i = R_i − μ_g                                    (no division by σ)
  RLOO     A_i = n/(n−1) · R_i − n/(n−1) · μ_g = R_i − mean_{j∈g, j≠i} R_j

A group of one episode (n_g = 1) is treated as verl treats it: GRPO and Dr.GRPO use μ = 0 and
σ = 1 (so A_i = R_i/(1+ε) and A_i = R_i), and RLOO leaves A_i = R_i.

The PPP paper (§5.2) clips the reward to [0, 1] before normalizing; `AdvantageConfig.clip_reward_01`
switches that on (the default). Advantages are computed after DAPO's group filtering, as verl does.

These run on the host in numpy float64: the rewards arrive as Python floats from the scorers and
there are at most a few thousand per step. The advantage of an episode is then broadcast over its
tokens by `ppp_jax.rl.batch`.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from ppp_jax.config.rl import AdvantageConfig


def group_index(keys: Sequence[Hashable]) -> tuple[np.ndarray, int]:
    """Dense group ids for arbitrary hashable group keys, numbered by first appearance.

    Returns (ids int64 [N], number of groups).
    """
    ids: dict[Hashable, int] = {}
    out = np.empty(len(keys), dtype=np.int64)
    for i, k in enumerate(keys):
        out[i] = ids.setdefault(k, len(ids))
    return out, len(ids)


def _group_stats(rewards: np.ndarray, gid: np.ndarray, num_groups: int):
    """Per-episode (n_g, μ_g, σ_g) with verl's singleton convention μ=0, σ=1."""
    counts = np.bincount(gid, minlength=num_groups).astype(np.float64)
    sums = np.bincount(gid, weights=rewards, minlength=num_groups)
    mean = sums / np.maximum(counts, 1.0)
    sq = np.bincount(gid, weights=(rewards - mean[gid]) ** 2, minlength=num_groups)
    std = np.sqrt(sq / np.maximum(counts - 1.0, 1.0))
    single = counts == 1
    mean = np.where(single, 0.0, mean)
    std = np.where(single, 1.0, std)
    return counts[gid], mean[gid], std[gid]


def grpo_advantages(
    rewards: np.ndarray, gid: np.ndarray, *, eps: float = 1e-6, norm_by_std: bool = True
) -> np.ndarray:
    """GRPO (norm_by_std=True) or Dr.GRPO (False) advantages, float64 [N].

    rewards: float [N]; gid: int [N] dense group ids in [0, num_groups).
    A_i = (R_i − μ_g)/(σ_g + ε), or R_i − μ_g; singleton groups use μ=0, σ=1.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    gid = np.asarray(gid, dtype=np.int64)
    _, mean, std = _group_stats(rewards, gid, int(gid.max(initial=-1)) + 1)
    centered = rewards - mean
    return centered / (std + eps) if norm_by_std else centered


def rloo_advantages(rewards: np.ndarray, gid: np.ndarray) -> np.ndarray:
    """RLOO advantages, float64 [N]: A_i = n/(n−1)·(R_i − μ_g); singleton groups keep A_i = R_i."""
    rewards = np.asarray(rewards, dtype=np.float64)
    gid = np.asarray(gid, dtype=np.int64)
    n, mean, _ = _group_stats(rewards, gid, int(gid.max(initial=-1)) + 1)
    scale = n / np.maximum(n - 1.0, 1.0)
    return np.where(n > 1, scale * (rewards - mean), rewards)


def compute_advantages(
    rewards: Sequence[float] | np.ndarray, group_keys: Sequence[Hashable], cfg: AdvantageConfig
) -> np.ndarray:
    """Advantages for a batch of episodes, float64 [N], per `cfg`.

    rewards: one scalar reward per episode (e.g. `ppp_jax.envs.reward.ppp_reward(record, ...)`).
    group_keys: one hashable group key per episode (episodes sharing a key form a group).
    """
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 1 or len(r) != len(group_keys):
        raise ValueError(f"rewards shape {r.shape} does not match {len(group_keys)} group keys")
    if not np.all(np.isfinite(r)):
        raise ValueError(f"non-finite rewards at episodes {np.flatnonzero(~np.isfinite(r)).tolist()}")
    if cfg.clip_reward_01:
        r = np.clip(r, 0.0, 1.0)
    gid, _ = group_index(group_keys)
    if cfg.estimator == "grpo":
        return grpo_advantages(r, gid, eps=cfg.eps, norm_by_std=True)
    if cfg.estimator == "drgrpo":
        return grpo_advantages(r, gid, eps=cfg.eps, norm_by_std=False)
    if cfg.estimator == "rloo":
        return rloo_advantages(r, gid)
    raise ValueError(f"unknown advantage estimator {cfg.estimator!r}")
