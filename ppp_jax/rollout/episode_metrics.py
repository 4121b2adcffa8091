"""Metrics of a set of episodes: ask ratio, questions by effort, lengths, finish reasons, scores
(`rollout/*`, `score/*`, `pref/<id>/*`), pure functions of EpisodeRecords."""

from __future__ import annotations

import collections
import math
from typing import Mapping, Sequence

import numpy as np

from ppp_jax.envs.records import EpisodeRecord

EFFORTS = ("low", "medium", "high")


# Per-episode score keys the aggregator understands (values may be None where undefined, e.g.
# personalization without any question). `score_records` makes such rows from UserVille's
# scorers (`ppp_jax.envs.scoring`, `ppp_jax.envs.reward`).
SCORE_KEYS = (
    "reward",  # the PPP reward R (clipped or not, as the reward function returns it)
    "reward_unclipped",  # R before clipping to [0, 1]
    "r_prod",  # R_Prod, the task-score term
    "r_proact",  # R_Proact, the effort term
    "r_pers",  # R_Pers, the preference term
    "productivity",  # task score in [0, 1]
    "proactivity",  # 1 if the session effort was low, else 0
    "personalization",  # 1 if the preference was followed; None where undefined
    "session_effort_low",  # 1 if the session effort was low (likewise medium, high)
    "session_effort_medium",
    "session_effort_high",
)


def _mean(xs: Sequence[float]) -> float:
    return float(np.mean(xs)) if len(xs) else math.nan


def episode_metrics(
    records: Sequence[EpisodeRecord],
    scores: Sequence[Mapping[str, float | None]] | None = None,
    *,
    lengths: Sequence[tuple[int, int] | None] | None = None,
) -> dict[str, float]:
    """Aggregates a step's episodes into flat metrics.

    Args:
      records: the episodes of one step (all groups).
      scores: optional per-episode score mappings, aligned with `records` (keys from
        `SCORE_KEYS`; None values are undefined and excluded from the means). When absent,
        `score/productivity` falls back to each record's `task_score`.
      lengths: optional (policy tokens, total tokens) per record, None for a record without a
        token view, used instead of the records' token views (records sent between processes
        travel without them); default: read from `record.tokens`.

    Returns:
      A flat dict of floats; means over no values are NaN (and `*/n` counts say how many).
    """
    if scores is not None and len(scores) != len(records):
        raise ValueError(f"{len(scores)} score rows for {len(records)} episode records")
    n = len(records)
    out: dict[str, float] = {"rollout/episodes": float(n)}
    if n == 0:
        return out
    num_q = [r.num_questions for r in records]
    out["rollout/ask_ratio"] = _mean([q > 0 for q in num_q])
    out["rollout/questions_per_episode"] = _mean(num_q)
    for effort in EFFORTS:
        out[f"rollout/questions_{effort}_effort_per_episode"] = _mean(
            [sum(q.effort == effort for q in r.questions) for r in records]
        )
    out["rollout/unanswered_questions_per_episode"] = _mean(
        [sum(not q.answered for q in r.questions) for r in records]
    )
    out["rollout/turns_per_episode"] = _mean([r.num_turns for r in records])
    out["rollout/tool_calls_per_episode"] = _mean([len(r.tool_calls) for r in records])
    out["rollout/tool_errors_per_episode"] = _mean(
        [sum(c.error is not None for c in r.tool_calls) for r in records]
    )
    reasons = collections.Counter(r.finish_reason for r in records)
    for reason, count in sorted(reasons.items()):
        out[f"rollout/finish_{reason}"] = count / n

    # Lengths in tokens, from the token view of engine-backed episodes.
    if lengths is None:
        lengths = [(sum(r.tokens.loss_mask), len(r.tokens.token_ids)) if r.tokens is not None
                   else None for r in records]
    elif len(lengths) != n:
        raise ValueError(f"{len(lengths)} token lengths for {n} episode records")
    with_tokens = [x for x in lengths if x is not None]
    if with_tokens:
        resp = [a for a, _ in with_tokens]
        total = [b for _, b in with_tokens]
        out["rollout/response_tokens_mean"] = _mean(resp)
        out["rollout/response_tokens_max"] = float(max(resp))
        out["rollout/response_tokens_min"] = float(min(resp))
        out["rollout/response_tokens_sum"] = float(sum(resp))
        out["rollout/sequence_tokens_mean"] = _mean(total)
        out["rollout/sequence_tokens_max"] = float(max(total))

    # Numeric counters the episode runner left in `stats` (malformed calls, retries, ...): sums.
    counters: dict[str, float] = collections.defaultdict(float)
    for r in records:
        for k, v in r.stats.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                counters[k] += float(v)
    for k, v in sorted(counters.items()):
        out[f"rollout/stats_{k}"] = v

    # The domain's score details (SWE-Full: resolved, the FAIL_TO_PASS share): means over the
    # episodes that have them.
    details: dict[str, list[float]] = collections.defaultdict(list)
    for r in records:
        for k, v in (r.stats.get("score_details") or {}).items():
            if isinstance(v, (int, float)):
                details[k].append(float(v))
    for k, vals in sorted(details.items()):
        out[f"rollout/score_{k}_mean"] = _mean(vals)

    # Task score by prompt kind (the paper's precise-vs-vague comparison).
    for kind in ("vague", "precise"):
        ts = [r.task_score for r in records if r.prompt_kind == kind and r.task_score is not None]
        if ts:
            out[f"rollout/task_score_{kind}"] = _mean(ts)

    # Scores and reward components.
    rows: list[Mapping[str, float | None]]
    if scores is None:
        rows = [{"productivity": r.task_score} for r in records]
    else:
        rows = scores
    for key in SCORE_KEYS:
        vals = [float(s[key]) for s in rows if s.get(key) is not None]
        if vals:
            out[f"score/{key}"] = _mean(vals)
            out[f"score/{key}_n"] = float(len(vals))
    if scores is not None and any("reward" in s for s in scores):
        rewards = [float(s["reward"]) for s in scores if s.get("reward") is not None]
        if rewards:
            out["score/reward_std"] = float(np.std(rewards))
            out["score/reward_min"] = float(min(rewards))
            out["score/reward_max"] = float(max(rewards))

    # Per-preference compliance: share of judged questions that followed the preference, and
    # share of judged trajectories (rule-based preferences) that did.
    by_pref: dict[str, list[int]] = collections.defaultdict(list)
    for i, r in enumerate(records):
        by_pref[r.preference_id].append(i)
    for pref, idx in sorted(by_pref.items()):
        judged = [q.followed for i in idx for q in records[i].questions if q.followed is not None]
        out[f"pref/{pref}/episodes"] = float(len(idx))
        if judged:
            out[f"pref/{pref}/question_compliance"] = _mean(judged)
        traj = [records[i].trajectory_followed for i in idx if records[i].trajectory_followed is not None]
        if traj:
            out[f"pref/{pref}/trajectory_compliance"] = _mean(traj)
        if scores is not None:
            pers = [scores[i]["personalization"] for i in idx if scores[i].get("personalization") is not None]
            if pers:
                out[f"pref/{pref}/personalization"] = _mean([float(p) for p in pers])
    return out
