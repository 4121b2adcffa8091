"""The user-simulator protocol and the types and helpers both backends share.

A user simulator answers one agent question at a time. It is given a `SimulatorContext` (the
precise prompt the user knows, hidden task facts revealed only on request, the user's preference,
how many questions it already answered, and the earlier question/answer pairs) and returns a
`SimulatorReply`: the text shown to the agent, the effort the question cost the user, the
per-question compliance verdict, and whether it was answered at all.

Effort levels (paper section 4.3):
  low     answerable from the precise prompt alone;
  medium  the user cannot or will not answer ("I don't know"), i.e. an unnecessary question;
  high    needs information beyond the precise prompt (the hidden facts: gold file/function for
          SWE, gold document text for search).

Question cap: a user answers at most `max_questions` questions per episode (default 4, as in the
released code). A question beyond the cap gets `CAP_REPLY`, `answered=False`, `followed=None`,
no raw level, and effort **medium**: the user refuses to answer, which is the paper's definition of
a medium-effort question. (The released code gives it no cost tag at all; the `released` reward
variant reproduces that, see envs.reward.)

Failures (never silently scored):
  * the backend cannot be reached after its own retries -> `answer` raises
    `SimulatorUnavailable`; the episode runner counts it in `record.stats["simulator_errors"]`,
    shows the agent an error observation and records no `Question`; the rollout orchestrator
    re-runs or drops episodes with simulator errors;
  * the reply never parses (after the backend's format retries) -> `SimulatorReply.malformed` is
    True; the runner stores it as `Question(malformed=True)` and counts it in
    `record.stats["simulator_malformed"]`; scoring and reward leave such a question out of effort
    and per-question compliance (see envs.scoring).

Raw levels: the LLM simulator tags answers on the released code's scales, kept in
`SimulatorReply.level`: SWE `[Cost 1..5]` (1 prompt only -> low, 2 hint -> high, 3 refusal ->
medium, 4 file path -> high, 5 function name -> high) and search `[Level 1..3]`-style
`[Cost 1..3]` (1 low, 2 medium, 3 high).
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Protocol, runtime_checkable

from ppp_jax.envs.records import Effort, Question

TaskFamily = Literal["swe", "search"]

CAP_REPLY = "I've already answered all the questions I'm going to. Please carry on by yourself."
IDK_REPLY = "I don't know."
# The released code's canned refusal, sent once its simulator chat holds 10 messages (after 4
# answers); quoted from envs/userville.py so `profile: released` shows the agent the same text.
RELEASED_CAP_REPLY = "I have already answered 10 questions. I cannot answer more. Do it yourself."
AmateurHidden = Literal["all", "swe"]
DEFAULT_MAX_QUESTIONS = 4

# Raw level -> effort, per task family (the released code's scales).
LEVEL_EFFORT: dict[TaskFamily, dict[int, Effort]] = {
    "swe": {1: "low", 2: "high", 3: "medium", 4: "high", 5: "high"},
    "search": {1: "low", 2: "medium", 3: "high"},
}
# Effort -> the raw level to assume when only the effort is known (used by the `released`
# reward variant for records without a level): high maps to the file-path level for SWE.
DEFAULT_LEVEL: dict[TaskFamily, dict[str, int]] = {
    "swe": {"low": 1, "medium": 3, "high": 4},
    "search": {"low": 1, "medium": 2, "high": 3},
}
EFFORT_RANK: dict[str, int] = {"low": 0, "medium": 1, "high": 2}


class SimulatorUnavailable(RuntimeError):
    """The simulator's backend could not answer (endpoint down, retries exhausted).

    Raised by `UserSimulator.answer`; an infrastructure failure, not the agent's fault."""


@dataclasses.dataclass(frozen=True)
class SimulatorContext:
    """What the simulated user knows when answering one question.

    Attributes:
      precise_prompt: the full task description (the agent may only have seen a vague version).
      hidden_info: facts the user reveals only when asked for them, one per line (e.g. gold
        `path.py:func` lines for SWE, gold document snippets for search). May be empty.
      preference_id: the user's preference (see envs.preferences).
      questions_answered: how many questions this user already answered in the episode.
      history: earlier (question, reply) pairs of this episode, oldest first. The runner passes
        each `SimulatorReply.raw` (kept as `Question.raw`) so an LLM simulator sees its own tagged
        format; for a malformed reply it passes the shown text instead (see `history_reply`).
        The embedded simulator ignores history.
      task_family: which effort scale to use ("swe" 5 levels, "search" 3 levels).
      hint: optional extra hint (SWE "Hint Information"; a high-effort item).
    """

    precise_prompt: str
    hidden_info: str
    preference_id: str
    questions_answered: int = 0
    history: tuple[tuple[str, str], ...] = ()
    task_family: TaskFamily = "swe"
    hint: str = ""


@dataclasses.dataclass(frozen=True)
class SimulatorReply:
    """One answer of the simulated user.

    Attributes:
      text: the reply shown to the agent (judge tags stripped unless configured otherwise).
      effort: low / medium / high (see the module docstring).
      followed: per-question compliance verdict; None if the preference has no per-question judge,
        the question was not answered, or the judge's verdict could not be read.
      answered: False when the question cap was reached.
      raw: the backend's raw output (the LLM's full reply with tags; the embedded reply text).
      level: the raw released-code level, if the backend produced one.
      malformed: True if the LLM's reply could not be parsed even after retries; effort is then
        the configured fallback and `followed` is None. Counted by the simulator, never silent.
      rule_followed: the rule judge's verdict when a backend runs both judges (for agreement).
      format_retries: re-requests this answer needed because a reply did not parse.
      request_retries: HTTP retries (429/5xx/timeouts/...) the backend's client needed.
    """

    text: str
    effort: Effort
    followed: bool | None
    answered: bool
    raw: str
    level: int | None = None
    malformed: bool = False
    rule_followed: bool | None = None
    format_retries: int = 0
    request_retries: int = 0


@runtime_checkable
class UserSimulator(Protocol):
    """Anything that can answer an agent's question in an episode."""

    async def answer(self, ctx: SimulatorContext, question: str) -> SimulatorReply:
        """Answers `question` given `ctx`. An unparseable model reply is returned with
        `malformed=True`; an unreachable backend raises `SimulatorUnavailable`."""
        ...


def cap_reply(ctx: SimulatorContext, text: str = CAP_REPLY) -> SimulatorReply:
    """The canned reply `text` for a question beyond the cap (effort medium, not answered, no
    tags: as in the released code, whose refusal is `RELEASED_CAP_REPLY`)."""
    return SimulatorReply(
        text=text, effort="medium", followed=None, answered=False, raw=text
    )


def check_question(question: object) -> str:
    """Validates the agent's question: must be a string (may be empty; empty gets IDK)."""
    if not isinstance(question, str):
        raise TypeError(f"question must be str, got {type(question).__name__}")
    return question


def max_effort(efforts) -> Effort | None:
    """The highest effort in `efforts` (low < medium < high), None if empty."""
    best = None
    for e in efforts:
        if e not in EFFORT_RANK:
            raise ValueError(f"unknown effort level {e!r}; expected low, medium or high")
        if best is None or EFFORT_RANK[e] > EFFORT_RANK[best]:
            best = e
    return best


def to_question(question: str, reply: SimulatorReply, turn: int = 0) -> Question:
    """The `records.Question` an episode runner stores for one ask call and its reply."""
    return Question(
        text=question,
        answer=reply.text,
        effort=reply.effort,
        followed=reply.followed,
        turn=turn,
        answered=reply.answered,
        level=reply.level,
        malformed=reply.malformed,
        raw=reply.raw,
    )


def history_reply(q: Question) -> str:
    """The reply to show the simulator for an earlier question: its own raw output (tags
    included) when that parsed, else the text the agent saw (a malformed raw reply is not fed
    back, so the model is not primed with a broken format)."""
    return q.raw if (q.raw and not q.malformed) else q.answer
