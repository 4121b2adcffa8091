"""What a rollout round produces: the `RolloutBatch` and the counters of retried and dropped
episodes."""

from __future__ import annotations

import dataclasses

import numpy as np

from ppp_jax.envs.records import EpisodeRecord
from ppp_jax.rl.batch import TokenBatch


@dataclasses.dataclass
class RolloutCounters:
    """Episodes retried or dropped, and why; nothing is dropped without a count here."""

    episodes_run: int = 0
    retried: int = 0
    dropped_errors: int = 0
    crashed: int = 0
    dropped_too_long: int = 0
    dropped_no_tokens: int = 0
    task_score_clamped: int = 0
    groups_dropped_empty: int = 0
    groups_dropped_small: int = 0
    dropped_small_group: int = 0
    overlong_masked: int = 0  # kept for the advantages, loss mask 0 (`rl.mask_overlong`)
    # summed over every episode run (kept, re-run or dropped): what the user simulator and the
    # scorer went through, so a flaky LLM user is visible in the metrics
    simulator_questions: int = 0
    simulator_malformed: int = 0  # replies that never parsed (after the format retries)
    simulator_format_retries: int = 0
    simulator_request_retries: int = 0
    simulator_errors: int = 0
    score_errors: int = 0  # e.g. an answer judge that gave no verdict

    def metrics(self) -> dict[str, float]:
        return {f"rollout/{k}": float(v) for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass
class RolloutBatch:
    """What one step's rollouts produced.

    records: kept episodes, grouped order (group 0's samples, group 1's, ...).
    groups: group key of each record.
    scores: per-record score rows (`score_row`).
    rewards: the rewards the advantages saw (after overlong shaping), float64 [N].
    advantages: float64 [N].
    batch: the token batch (numpy fields), or None when no episode was kept.
    metrics: rollout/score/pref metrics of the step.
    """

    records: list[EpisodeRecord]
    groups: list[str]
    scores: list[dict[str, float | None]]
    rewards: np.ndarray
    advantages: np.ndarray
    batch: TokenBatch | None
    metrics: dict[str, float]
    counters: RolloutCounters = dataclasses.field(default_factory=RolloutCounters)
    extra: dict[str, float] = dataclasses.field(default_factory=dict)
    rollout_s: float = 0.0
    simulator_seconds: float = 0.0
    simulator_calls: int = 0
