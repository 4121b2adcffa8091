"""Per-episode scores and the step's rollout metrics; token-free episode summaries that processes
exchange so every process logs the same global metrics."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from ppp_jax.envs import scoring
from ppp_jax.envs.records import EpisodeRecord
from ppp_jax.envs.reward import RewardConfig, reward_breakdown
from ppp_jax.rollout.episode_metrics import episode_metrics
from ppp_jax.rollout.results import RolloutBatch


def score_row(record: EpisodeRecord, reward_cfg: RewardConfig,
              metrics: scoring.MetricsConfig = scoring.MetricsConfig()) -> dict[str, float | None]:
    """Per-episode scores (by the `metrics` rules) and the reward with its components (keys of
    `episode_metrics.SCORE_KEYS`)."""
    s = scoring.episode_scores(record, reward_cfg.correct_threshold,
                               personalization_rule=metrics.personalization,
                               proactivity_rule=metrics.proactivity)
    r = reward_breakdown(record, reward_cfg)
    return {"reward": r.total, "r_prod": r.productivity, "r_proact": r.proactivity,
            "r_pers": r.personalization, "productivity": s.productivity,
            "proactivity": s.proactivity, "personalization": s.personalization}


def kind_metrics(records: Sequence[EpisodeRecord]) -> dict[str, float]:
    """Ask ratio and low-effort share per prompt kind (the paper's Figure 6 / 7 quantities)."""
    out: dict[str, float] = {}
    for kind in ("vague", "precise"):
        rs = [r for r in records if r.prompt_kind == kind]
        if not rs:
            continue
        qs = [q for r in rs for q in r.questions]
        out[f"rollout/ask_ratio_{kind}"] = float(np.mean([r.num_questions > 0 for r in rs]))
        if qs:
            out[f"rollout/low_effort_share_{kind}"] = float(np.mean([q.effort == "low" for q in qs]))
    qs = [q for r in records for q in r.questions]
    if qs:
        out["rollout/low_effort_share"] = float(np.mean([q.effort == "low" for q in qs]))
    return out


def rollout_metrics(records: Sequence[EpisodeRecord], scores: Sequence[Mapping[str, Any]],
                    rewards: np.ndarray, advantages: np.ndarray, groups: Sequence[str], *,
                    counters: Mapping[str, float], extra: Mapping[str, float], rollout_s: float,
                    simulator_seconds: float, simulator_calls: int,
                    lengths: Sequence[tuple[int, int] | None] | None = None) -> dict[str, float]:
    """A step's rollout metrics from its kept episodes (grouped order) and counters.

    `lengths` (response, total tokens per record) stands in for the records' token views when
    those were stripped (`summarize`); see `ppp_jax.rollout.episode_metrics.episode_metrics`.
    """
    m = episode_metrics(records, scores, lengths=lengths)
    m.update(kind_metrics(records))
    m.update(counters)
    m.update(extra)
    m["time/rollout"] = rollout_s
    m["time/simulator_calls"] = simulator_seconds
    m["rollout/simulator_calls"] = float(simulator_calls)
    m["rollout/advantage_abs_mean"] = float(np.mean(np.abs(advantages))) if len(advantages) else 0.0
    m["rollout/zero_spread_groups"] = float(_zero_spread(rewards, groups))
    return m


@dataclasses.dataclass
class RolloutSummary:
    """One process's rollout, small enough to send to every other process: the kept records
    without messages, token views and tool observations (`lengths` keeps the token counts), and
    everything else `rollout_metrics` reads."""

    records: list[EpisodeRecord]
    lengths: list[tuple[int, int] | None]
    scores: list[dict[str, float | None]]
    rewards: np.ndarray
    advantages: np.ndarray
    groups: list[str]
    counters: dict[str, float]
    extra: dict[str, float]
    rollout_s: float
    simulator_seconds: float
    simulator_calls: int
    batch_tokens: float  # non-padding positions of this process's token batch


def _slim(record: EpisodeRecord) -> EpisodeRecord:
    calls = tuple(dataclasses.replace(c, observation="") for c in record.tool_calls)
    return dataclasses.replace(record, messages=(), tokens=None, tool_calls=calls)


def summarize(ro: RolloutBatch) -> RolloutSummary:
    """The `RolloutSummary` of one process's `RolloutBatch`."""
    lengths = [(sum(r.tokens.loss_mask), len(r.tokens.token_ids)) if r.tokens is not None else None
               for r in ro.records]
    tokens = float(np.sum(ro.batch.segment_ids > 0)) if ro.batch is not None else 0.0
    return RolloutSummary([_slim(r) for r in ro.records], lengths, list(ro.scores), ro.rewards,
                          ro.advantages, list(ro.groups), ro.counters.metrics(), dict(ro.extra),
                          ro.rollout_s, ro.simulator_seconds, ro.simulator_calls, tokens)


def merge_summaries(parts: Sequence[RolloutSummary]) -> dict[str, float]:
    """The step's metrics over every process's episodes, in process order (the data pipeline
    gives process i the i-th block of the global batch, so this is the single-process order and
    the means are those one process would log). Counters and simulator calls/time add up; the
    rollout time is the slowest process's. `rollout/process_episodes_run_{min,max}` show how
    evenly the episodes were spread."""
    if not parts:
        raise ValueError("merge_summaries needs at least one process's summary")
    counters: dict[str, float] = {}
    for p in parts:
        for k, v in p.counters.items():
            counters[k] = counters.get(k, 0.0) + v
    extra: dict[str, float] = {}
    for p in parts:
        for k, v in p.extra.items():
            extra[k] = extra.get(k, 0.0) + v
    m = rollout_metrics(
        [r for p in parts for r in p.records], [s for p in parts for s in p.scores],
        np.concatenate([p.rewards for p in parts]), np.concatenate([p.advantages for p in parts]),
        [g for p in parts for g in p.groups], counters=counters, extra=extra,
        rollout_s=max(p.rollout_s for p in parts),
        simulator_seconds=sum(p.simulator_seconds for p in parts),
        simulator_calls=sum(p.simulator_calls for p in parts),
        lengths=[x for p in parts for x in p.lengths])
    runs = [p.counters.get("rollout/episodes_run", 0.0) for p in parts]
    m["rollout/process_episodes_run_min"] = float(min(runs))
    m["rollout/process_episodes_run_max"] = float(max(runs))
    return m


def _zero_spread(rewards: np.ndarray, groups: Sequence[str]) -> int:
    by: dict[str, list[float]] = {}
    for r, g in zip(rewards, groups):
        by.setdefault(g, []).append(float(r))
    return sum(1 for v in by.values() if len(v) > 1 and max(v) - min(v) <= 0.0)
