"""Evaluation metrics of UserVille episodes: productivity, proactivity, personalization.

All functions are pure functions of `EpisodeRecord`s (paper section 6.3, reference section 3.5):

* productivity = the task score (F1 / judged exact match) in [0, 1];
* proactivity = 1 iff the session effort is low. Session effort = the maximum effort over the
  episode's scored questions; with no question at all it is **high** if the prompt was vague and
  the answer was wrong (task score < `correct_threshold`), else low;
* personalization = 1 iff the preference was followed. Two rules (`personalization_rule`):
  `"paper"` (default; paper section 6.3): defined only for episodes with at least one question;
  `"released"` (the released code): also defined for episodes whose preference penalty is non-zero
  without a question (`answer_more` with no question counts as a failure). Either way it is
  undefined (excluded from the average) for preferences with no judge (`no_preference`,
  `professional`).

Malformed simulator replies (`Question.malformed`: the simulator's reply never parsed, so its
effort and verdict are fallbacks, not judgements) are left out of effort and per-question
compliance: they count neither in the session effort nor in the effort counts, nor as followed,
violated or unjudged. They still count as questions the agent asked (ask ratio, `num_asks` of
the penalties, trajectory rules), since asking was the agent's action. An episode whose only
questions are malformed has session effort low (it asked; no evidence of cost) and, for
per-question preferences, undefined personalization. Such episodes
are flagged by `record.stats["simulator_malformed"]` (and `EpisodeScores.num_malformed`) so the
orchestrator can re-run them.

Compliance of one episode (`compliance`):
* per-question preferences: the answered questions' `followed` verdicts (LLM tag or text rule);
  `followed=None` on an answered question is counted as `unjudged` (not a violation, as in the
  released code, but reported); unanswered (capped) questions are not judged;
* trajectory preferences: `record.trajectory_followed` if the episode runner set it, else
  `judges.judge_trajectory` over `record.tool_calls` (or over the questions' turns when the record
  has no tool calls); `first_try` uses per-question verdicts when the simulator gave any (LLM
  judge), else the trajectory rule, one violation per question asked before any work.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Literal

from ppp_jax.envs import judges
from ppp_jax.envs.preferences import get_preference, penalty
from ppp_jax.envs.records import EpisodeRecord, ToolCall
from ppp_jax.envs.simulator import max_effort

CORRECT_THRESHOLD = 1.0  # a task score below this is a wrong answer (released: s < 1)
PersonalizationRule = Literal["paper", "released"]
PERSONALIZATION_RULES = ("paper", "released")


def scored_questions(record: EpisodeRecord):
    """The questions whose effort and verdict are real judgements (not malformed replies)."""
    return tuple(q for q in record.questions if not q.malformed)


@dataclasses.dataclass(frozen=True)
class Compliance:
    """The preference verdict of one episode.

    followed: True/False, None for preferences with no judge; penalty: the Table-5 penalty
    (<= 0), None for no judge; num_not_followed: violations counted by the penalty;
    num_unjudged: answered questions without a per-question verdict; source: "question",
    "trajectory" or "none".
    """

    followed: bool | None
    penalty: float | None
    num_not_followed: int
    num_unjudged: int
    source: str


def _calls(record: EpisodeRecord) -> tuple[ToolCall, ...]:
    if record.tool_calls:
        return record.tool_calls
    return tuple(ToolCall("ask_user", {"query": q.text}, q.turn) for q in record.questions)


def compliance(record: EpisodeRecord) -> Compliance:
    """The preference verdict and penalty of one episode (see the module docstring)."""
    pref = get_preference(record.preference_id)
    n_asks = len(record.questions)
    if not pref.has_judge:
        return Compliance(None, None, 0, 0, "none")
    answered = [q for q in scored_questions(record) if q.answered]
    per_q = [q.followed for q in answered]
    use_questions = pref.rule_judge == "text" or (
        pref.id == "first_try" and any(v is not None for v in per_q)
    )
    if use_questions:
        bad = sum(1 for v in per_q if v is False)
        unjudged = sum(1 for v in per_q if v is None)
        pen = penalty(pref.id, num_asks=n_asks, num_not_followed=bad)
        return Compliance(bad == 0, pen, bad, unjudged, "question")
    calls = _calls(record)
    followed = record.trajectory_followed
    if followed is None:
        followed = judges.judge_trajectory(pref.id, calls)
    if pref.id == "first_try":
        bad = judges.first_try_violations(calls)
        if followed is False and bad == 0:
            bad = 1  # the runner's verdict wins; count it as one violation
        if followed is True:
            bad = 0
        pen = penalty(pref.id, num_asks=n_asks, num_not_followed=bad)
        return Compliance(followed, pen, bad, 0, "trajectory")
    pen = penalty(pref.id, num_asks=n_asks, trajectory_followed=followed)
    return Compliance(followed, pen, 0 if followed else 1, 0, "trajectory")


def _task_score(record: EpisodeRecord) -> float:
    s = record.task_score
    if s is None:
        raise ValueError(f"episode {record.task_id!r} has no task_score; score the task first")
    if not (0.0 <= s <= 1.0) or math.isnan(s):
        raise ValueError(f"episode {record.task_id!r} task_score {s} is outside [0, 1]")
    return float(s)


def session_effort(record: EpisodeRecord, correct_threshold: float = CORRECT_THRESHOLD) -> str:
    """Max effort over the scored questions; with no question, high iff vague prompt and a wrong
    answer; low when every question was malformed (see the module docstring)."""
    eff = max_effort(q.effort for q in scored_questions(record))
    if eff is not None:
        return eff
    if record.questions:
        return "low"
    wrong = _task_score(record) < correct_threshold
    return "high" if (record.prompt_kind == "vague" and wrong) else "low"


@dataclasses.dataclass(frozen=True)
class EpisodeScores:
    """The metrics of one episode (personalization None = excluded from the average)."""

    productivity: float
    proactivity: float
    personalization: float | None
    asked: bool
    num_questions: int
    num_unanswered: int
    session_effort: str
    effort_counts: dict[str, int]
    compliance: Compliance
    num_malformed: int = 0  # questions with a malformed simulator reply (excluded from scoring)


def _check_rule(rule: str) -> None:
    if rule not in PERSONALIZATION_RULES:
        raise ValueError(f"personalization_rule must be 'paper' or 'released', got {rule!r}")


def episode_scores(record: EpisodeRecord, correct_threshold: float = CORRECT_THRESHOLD, *,
                   personalization_rule: PersonalizationRule = "paper") -> EpisodeScores:
    """Productivity, proactivity and personalization of one episode (see the module docstring
    for `personalization_rule`)."""
    _check_rule(personalization_rule)
    prod = _task_score(record)
    eff = session_effort(record, correct_threshold)
    comp = compliance(record)
    n_q = len(record.questions)
    if comp.followed is None:
        pers = None
    elif comp.source == "question" and n_q > 0 and not scored_questions(record):
        pers = None  # every reply was malformed: no per-question verdict to score
    elif n_q == 0:
        released_fail = personalization_rule == "released" and (comp.penalty or 0.0) != 0.0
        pers = 0.0 if released_fail else None
    else:
        pers = 1.0 if comp.followed else 0.0
    counts = {"low": 0, "medium": 0, "high": 0}
    for q in scored_questions(record):
        counts[q.effort] += 1
    return EpisodeScores(
        productivity=prod,
        proactivity=1.0 if eff == "low" else 0.0,
        personalization=pers,
        asked=n_q > 0,
        num_questions=n_q,
        num_unanswered=sum(1 for q in record.questions if not q.answered),
        session_effort=eff,
        effort_counts=counts,
        compliance=comp,
        num_malformed=n_q - len(scored_questions(record)),
    )


@dataclasses.dataclass(frozen=True)
class ScoreSummary:
    """Averages over episodes (fractions in [0, 1]; nan where nothing is defined)."""

    n: int
    productivity: float
    proactivity: float
    personalization: float
    n_personalization: int  # episodes where personalization is defined
    ask_ratio: float  # fraction of episodes with >= 1 question
    questions_per_episode: float
    effort_counts: dict[str, int]  # questions per effort level, summed
    num_unjudged: int  # answered questions with no verdict (malformed judge tags etc.)
    num_unanswered: int
    num_malformed: int = 0  # questions with malformed simulator replies (excluded from scoring)


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def aggregate(records: Sequence[EpisodeRecord], correct_threshold: float = CORRECT_THRESHOLD, *,
              personalization_rule: PersonalizationRule = "paper") -> ScoreSummary:
    """The three scores and the ask statistics over a list of episodes."""
    scores = [episode_scores(r, correct_threshold, personalization_rule=personalization_rule)
              for r in records]
    pers = [s.personalization for s in scores if s.personalization is not None]
    counts = {"low": 0, "medium": 0, "high": 0}
    for s in scores:
        for k, v in s.effort_counts.items():
            counts[k] += v
    return ScoreSummary(
        n=len(scores),
        productivity=_mean([s.productivity for s in scores]),
        proactivity=_mean([s.proactivity for s in scores]),
        personalization=_mean(pers),
        n_personalization=len(pers),
        ask_ratio=_mean([1.0 if s.asked else 0.0 for s in scores]),
        questions_per_episode=_mean([float(s.num_questions) for s in scores]),
        effort_counts=counts,
        num_unjudged=sum(s.compliance.num_unjudged for s in scores),
        num_unanswered=sum(s.num_unanswered for s in scores),
        num_malformed=sum(s.num_malformed for s in scores),
    )
