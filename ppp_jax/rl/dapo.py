"""DAPO's reward-side tricks, host side: dynamic sampling (group filtering) and overlong shaping.

Dynamic sampling (verl `algorithm.filter_groups`). A group whose rewards are all equal has
advantage 0 for every episode under GRPO / Dr.GRPO / RLOO, so it contributes no gradient but still
dilutes the token-mean denominator. DAPO drops such groups and keeps generating until the batch
holds the wanted number of groups:
  keep(g) ⇔ n_g = 1  or  max_{i∈g} R_i − min_{i∈g} R_i > min_spread   (min_spread = 0: any spread)
verl tests std > 0; max − min > 0 is the same condition without float round-off in the mean
(a group of eight identical 0.3 rewards has a float std of ~1e-17, not 0). Filter on the rewards the
advantages will see (after the [0, 1] clip when that is on). Generation rounds are capped by
`max_gen_batches` (0 = no cap); hitting the cap raises `DynamicSamplingError`. Advantages are
computed after filtering (by the caller, with `ppp_jax.rl.advantages.compute_advantages`).

Overlong reward shaping (verl reward manager "dapo"), counted in TOKENS (tunix counts characters,
which is a bug). With L_max the maximum response length, L_buf the buffer, κ the factor and L the
response length in tokens:
  E = L_max − L_buf                      (the expected length: no penalty up to here)
  penalty(L) = min(−(L − E) / L_buf · κ, 0)    (0 for L ≤ E, falling linearly to −κ at L = L_max)
and the shaped reward is R + penalty(L). For a multi-turn episode L is the number of tokens the
policy generated (the loss-mask count of its token view), the analogue of verl's valid response
length; tool/user/template tokens are not the policy's length.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import numpy as np

from ppp_jax.config.rl import DapoConfig

G = TypeVar("G")


class DynamicSamplingError(RuntimeError):
    """Dynamic sampling could not fill the batch within `max_gen_batches` generation rounds."""


# ----------------------------------------------------------------------------------------------
# Group filtering
# ----------------------------------------------------------------------------------------------


def keep_group(rewards: Sequence[float], min_spread: float = 0.0) -> bool:
    """True iff the group carries a learning signal: one episode, or max − min > min_spread."""
    r = np.asarray(rewards, dtype=np.float64)
    if r.size == 0:
        raise ValueError("empty group")
    if r.size == 1:
        return True
    return bool(r.max() - r.min() > min_spread)


def filter_groups(
    groups: Sequence[G], rewards_of: Callable[[G], Sequence[float]], min_spread: float = 0.0
) -> tuple[list[G], list[G]]:
    """Splits `groups` into (kept, dropped) by `keep_group` on `rewards_of(group)`; order kept."""
    kept, dropped = [], []
    for g in groups:
        (kept if keep_group(rewards_of(g), min_spread) else dropped).append(g)
    return kept, dropped


@dataclasses.dataclass(frozen=True)
class DynamicSamplingResult(Generic[G]):
    """What `dynamic_sample` returns.

    groups:          exactly `target_groups` kept groups, in generation order.
    num_gen_batches: generation rounds run (calls of `sample_more`).
    num_generated:   groups generated over all rounds.
    num_dropped:     groups dropped for zero spread.
    num_surplus:     kept groups beyond the target, discarded (verl truncates the same way).
    """

    groups: list[G]
    num_gen_batches: int
    num_generated: int
    num_dropped: int
    num_surplus: int

    @property
    def metrics(self) -> dict[str, float]:
        return {
            "dapo/num_gen_batches": float(self.num_gen_batches),
            "dapo/num_generated_groups": float(self.num_generated),
            "dapo/dropped_frac": self.num_dropped / max(self.num_generated, 1),
        }


def dynamic_sample(
    sample_more: Callable[[int], Sequence[G]],
    rewards_of: Callable[[G], Sequence[float]],
    target_groups: int,
    *,
    max_gen_batches: int = 10,
    min_spread: float = 0.0,
) -> DynamicSamplingResult[G]:
    """Generates rounds of groups until `target_groups` groups with nonzero spread are kept.

    sample_more(round_index) -> the groups of one generation round (each scored already);
    rewards_of(group) -> its episodes' rewards (as the advantages will see them).
    max_gen_batches: maximum rounds (0 = unlimited). Raises DynamicSamplingError naming the counts
    when the cap is hit before the batch is full, and ValueError if a round returns no groups.
    """
    if target_groups < 1:
        raise ValueError(f"target_groups must be >= 1, got {target_groups}")
    kept: list[G] = []
    generated = dropped = rounds = 0
    while len(kept) < target_groups:
        if max_gen_batches and rounds >= max_gen_batches:
            raise DynamicSamplingError(
                f"dynamic sampling kept {len(kept)}/{target_groups} groups after {rounds} generation "
                f"rounds ({generated} groups generated, {dropped} dropped for zero reward spread); "
                f"raise dapo.max_gen_batches (0 = unlimited), enlarge the generation batch, or turn "
                f"dapo.dynamic_sampling off"
            )
        batch = list(sample_more(rounds))
        rounds += 1
        if not batch:
            raise ValueError(f"sample_more({rounds - 1}) returned no groups")
        k, d = filter_groups(batch, rewards_of, min_spread)
        kept.extend(k)
        generated += len(batch)
        dropped += len(d)
    surplus = len(kept) - target_groups
    return DynamicSamplingResult(kept[:target_groups], rounds, generated, dropped, surplus)


# ----------------------------------------------------------------------------------------------
# Overlong shaping
# ----------------------------------------------------------------------------------------------


def overlong_penalty(
    response_tokens: int | np.ndarray, *, max_response_len: int, buffer_len: int, factor: float = 1.0
) -> float | np.ndarray:
    """DAPO's soft overlong penalty (≤ 0) for a response of `response_tokens` TOKENS.

    penalty = min(−(L − (L_max − L_buf)) / L_buf · κ, 0). Works elementwise on arrays.
    """
    if not 0 < buffer_len <= max_response_len:
        raise ValueError(f"need 0 < buffer_len ({buffer_len}) <= max_response_len ({max_response_len})")
    length = np.asarray(response_tokens, dtype=np.float64)
    expected = max_response_len - buffer_len
    pen = np.minimum(-(length - expected) / buffer_len * factor, 0.0)
    return float(pen) if pen.ndim == 0 else pen


def shape_rewards(
    rewards: Sequence[float] | np.ndarray, response_tokens: Sequence[int] | np.ndarray, cfg: DapoConfig
) -> np.ndarray:
    """R_i + penalty(L_i) per `cfg` (unchanged when cfg.overlong_buffer_len is None), float64 [N]."""
    r = np.asarray(rewards, dtype=np.float64)
    if cfg.overlong_buffer_len is None:
        return r.copy()
    lengths = np.asarray(response_tokens)
    if lengths.shape != r.shape:
        raise ValueError(f"rewards {r.shape} and response_tokens {lengths.shape} differ in shape")
    return r + overlong_penalty(
        lengths,
        max_response_len=cfg.max_response_len,
        buffer_len=cfg.overlong_buffer_len,
        factor=cfg.overlong_penalty_factor,
    )


def policy_token_count(loss_mask: Sequence[int]) -> int:
    """L of an episode: the number of tokens the policy generated (Σ loss_mask of its TokenView)."""
    return int(np.sum(np.asarray(loss_mask, dtype=np.int64)))
