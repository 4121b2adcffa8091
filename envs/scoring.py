"""Evaluation metrics of UserVille episodes: productivity, proactivity, personalization.

All functions are pure functions of `EpisodeRecord`s (paper section 6.3, reference section 3.5):

* productivity = the task score (F1 / judged exact match) in [0, 1];
* proactivity = 1 iff the session effort is low. Session effort = the maximum effort over the
  episode's scored questions; with no question at all it is **high** if the prompt was vague and
  the answer was wrong (task score < `correct_threshold`), else low;
* proactivity has two rules (`proactivity_rule`): `"paper"` (default) as above; `"released"`
  (the released code's `ask_ok`): 1 iff the released cost reward (`released_cost_reward`,
  including its +0.05 bonus and its -0.1 for a vague episode that asked nothing and got the
  task wrong) is >= 0, so one level-1 answer's bonus can offset a level-2 (hint) answer's -0.1 in
  SWE-vague, and in search any level-1 answer offsets one level-2 answer's -0.05;
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
from ppp_jax.envs.simulator import DEFAULT_LEVEL, TaskFamily, max_effort

CORRECT_THRESHOLD = 1.0  # a task score below this is a wrong answer (released: s < 1)
PersonalizationRule = Literal["paper", "released"]
PERSONALIZATION_RULES = ("paper", "released")
ProactivityRule = Literal["paper", "released"]
SEARCH_DOMAIN_MARKERS = ("search", "browsecomp")

# The released code's cost-reward constants (its `UserReward.calculate_cost_reward`).
RELEASED_SWE_VAGUE_PER_LEVEL = 0.1
RELEASED_SWE_PRECISE_PER_LEVEL = 0.2
RELEASED_SEARCH_L2_COST = 0.05
RELEASED_SEARCH_L3_COST = 0.9
RELEASED_SEARCH_PRECISE_PER_LEVEL = 0.1
RELEASED_LOW_BONUS = 0.05
RELEASED_NO_ASK_WRONG = 0.1


@dataclasses.dataclass(frozen=True)
class MetricsConfig:
    """Which definition each evaluation metric follows (the run config's `metrics` section).

    proactivity: "paper" (session effort low) or "released" (released cost reward >= 0).
    personalization: "paper" (defined only with >= 1 question) or "released" (also defined, as a
      failure, for an episode with a non-zero preference penalty and no question).
    """

    proactivity: ProactivityRule = "paper"
    personalization: PersonalizationRule = "paper"


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


def task_family(domain: str, markers: tuple[str, ...] = SEARCH_DOMAIN_MARKERS) -> TaskFamily:
    """"search" if the domain name contains a marker, else "swe" (the fallback of
    `record_family` for records that carry no family)."""
    d = domain.lower()
    return "search" if any(m in d for m in markers) else "swe"


def record_family(record: EpisodeRecord, markers: tuple[str, ...] = SEARCH_DOMAIN_MARKERS
                  ) -> TaskFamily:
    """The episode's task family: the one its domain declared (`record.task_family`, set by the
    episode runner from `domain.task_family`), else from the domain name by `markers`."""
    if record.task_family is not None:
        if record.task_family not in DEFAULT_LEVEL:
            raise ValueError(f"record {record.task_id!r}: unknown task family "
                             f"{record.task_family!r} (expected one of {sorted(DEFAULT_LEVEL)})")
        return record.task_family  # type: ignore[return-value]
    return task_family(record.domain, markers)


def released_levels(record: EpisodeRecord, family: TaskFamily) -> list[int | None]:
    """Each scored question's raw level as the released code would have counted it (None =
    untagged: past the cap). Malformed replies are left out (not counted in q either)."""
    out: list[int | None] = []
    for q in scored_questions(record):
        if not q.answered:
            out.append(None)
        elif q.level is not None:
            out.append(q.level)
        else:
            out.append(DEFAULT_LEVEL[family][q.effort])
    return out


def released_cost_reward(record: EpisodeRecord, family: TaskFamily, s: float,
                         correct_threshold: float = CORRECT_THRESHOLD) -> float:
    """The released code's proactivity ("cost") reward of one episode, a float <= 0.05.

    With q questions, L_k answers at raw level k (`released_levels`), Lsum = sum k * L_k and task
    score s (envs.reward's module docstring has the table):
      SWE vague:      -0.1 * (Lsum - q), +0.05 if L_1 > 0 and Lsum == q
      SWE precise:    -0.2 * Lsum
      search vague:   -(0.05 * L_2 + 0.9 * L_3), +0.05 if L_1 > 0
      search precise: -(0.05 * L_2 + 0.9 * L_3) - 0.1 * Lsum
      vague, no question asked and s < correct_threshold: a further -0.1.
    """
    levels = released_levels(record, family)
    q = len(levels)
    counts = {k: sum(1 for lv in levels if lv == k) for k in range(1, 6)}
    lsum = sum(lv for lv in levels if lv is not None)
    vague = record.prompt_kind == "vague"
    if family == "swe":
        if vague:
            r = -RELEASED_SWE_VAGUE_PER_LEVEL * (lsum - q)
            if counts[1] > 0 and lsum - q == 0:
                r += RELEASED_LOW_BONUS
        else:
            r = -RELEASED_SWE_PRECISE_PER_LEVEL * lsum
    else:
        r = -(RELEASED_SEARCH_L2_COST * counts[2] + RELEASED_SEARCH_L3_COST * counts[3])
        if vague:
            if counts[1] > 0:
                r += RELEASED_LOW_BONUS
        else:
            r -= RELEASED_SEARCH_PRECISE_PER_LEVEL * lsum
    if vague and not record.questions and s < correct_threshold:  # malformed replies count
        r -= RELEASED_NO_ASK_WRONG
    return r


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


def _check_rule(rule: str, name: str = "personalization_rule") -> None:
    if rule not in PERSONALIZATION_RULES:
        raise ValueError(f"{name} must be 'paper' or 'released', got {rule!r}")


def episode_scores(record: EpisodeRecord, correct_threshold: float = CORRECT_THRESHOLD, *,
                   personalization_rule: PersonalizationRule = "paper",
                   proactivity_rule: ProactivityRule = "paper") -> EpisodeScores:
    """Productivity, proactivity and personalization of one episode (see the module docstring
    for `personalization_rule` and `proactivity_rule`)."""
    _check_rule(personalization_rule)
    _check_rule(proactivity_rule, "proactivity_rule")
    prod = _task_score(record)
    eff = session_effort(record, correct_threshold)
    if proactivity_rule == "paper":
        proactive = eff == "low"
    else:
        proactive = released_cost_reward(record, record_family(record), prod,
                                         correct_threshold) >= 0.0
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
        proactivity=1.0 if proactive else 0.0,
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
              personalization_rule: PersonalizationRule = "paper",
              proactivity_rule: ProactivityRule = "paper") -> ScoreSummary:
    """The three scores and the ask statistics over a list of episodes."""
    scores = [episode_scores(r, correct_threshold, personalization_rule=personalization_rule,
                             proactivity_rule=proactivity_rule)
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
