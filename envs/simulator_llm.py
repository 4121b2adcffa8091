"""The LLM user simulator: any OpenAI-compatible chat endpoint plays the user.

The system prompt is built from the released design (reference section 3.2), in our own words:
role; the user's preference and the judging rubric; the information the user holds, ranked from
least to most sensitive, with the cost level of each; answering rules; the output format; the
task information block; and a closing reminder. Each question is sent as a user message after the
episode's earlier question/answer pairs.

Output format the model must follow (parsed strictly, see `parse_reply`):

    <one plain paragraph answering the agent>
    [Cost N]
    [Reward 0|1]      <- only when the preference has an LLM rubric

A reply that does not parse is re-requested up to `format_retries` times; then it is *counted*
(`stats["malformed"]`) and returned with `malformed=True`, the configured fallback effort
(default medium), no level and `followed=None` (the rule verdict when `compliance_judge="rule"`),
and the paragraph with any tags removed (or "I don't know." if nothing is left). The episode
runner marks the `Question` malformed and scoring leaves it out of effort and compliance.
An endpoint that fails for good (after the client's own retries on 429/5xx/timeouts) is counted
in `stats["request_failures"]` and raises `SimulatorUnavailable` (never turned into an answer);
the runner counts it in `record.stats["simulator_errors"]`.
Each reply carries its `format_retries` and `request_retries` (per-episode counters).
By default the agent sees the paragraph only; `show_tags_to_agent=True` reproduces the released
code, which passed the tags through.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Literal, Mapping

from ppp_jax.envs import judges
from ppp_jax.envs.llm_client import LLMClient, LLMClientConfig, LLMRequestError
from ppp_jax.envs.preference_texts import PreferenceText, with_texts
from ppp_jax.envs.preferences import Preference, get_preference
from ppp_jax.envs.records import Effort
from ppp_jax.envs.simulator import (
    CAP_REPLY,
    DEFAULT_MAX_QUESTIONS,
    IDK_REPLY,
    AmateurHidden,
    LEVEL_EFFORT,
    SimulatorContext,
    SimulatorReply,
    SimulatorUnavailable,
    cap_reply,
    check_question,
)

log = logging.getLogger(__name__)

ComplianceJudge = Literal["llm", "rule", "both"]


@dataclasses.dataclass(frozen=True)
class LLMSimulatorConfig:
    """Settings of the LLM user simulator."""

    client: LLMClientConfig = LLMClientConfig()
    max_questions: int = DEFAULT_MAX_QUESTIONS  # answers at most this many per episode
    show_tags_to_agent: bool = False  # True = agent sees [Cost N]/[Reward k] (released behaviour)
    cap_reply: str = CAP_REPLY  # the untagged refusal past `max_questions`
    # which task families hide the gold location from the `amateur` user: "all" (ours), "swe"
    # (the released code blanks it for SWE only; its search simulator keeps the documents)
    amateur_hidden: AmateurHidden = "all"
    format_retries: int = 2  # re-requests after an unparseable reply
    malformed_effort: Effort = "medium"  # effort recorded for a reply that never parsed
    # Where `followed` comes from: the LLM's [Reward] tag, the rule judge, or the LLM's tag with
    # the rule verdict also kept in `rule_followed` (for judge_agreement).
    compliance_judge: ComplianceJudge = "llm"

    def __post_init__(self):
        if self.max_questions < 0 or self.format_retries < 0:
            raise ValueError(f"invalid LLMSimulatorConfig {self}")


class MalformedReplyError(ValueError):
    """The simulator LLM's reply does not follow the output format."""


# ---------------------------------------------------------------------------------------------
# Prompt.

_SWE_LEVELS = (
    "Cost 1: you used only the full issue description.\n"
    "Cost 2: you used the hint.\n"
    "Cost 3: you could not or would not answer (for example \"I don't know\").\n"
    "Cost 4: you revealed which file(s) need editing.\n"
    "Cost 5: you revealed which function(s) need editing."
)
_SEARCH_LEVELS = (
    "Cost 1: you used only the full search problem.\n"
    "Cost 2: you could not or would not answer, or gave only a general remark.\n"
    "Cost 3: you used the ground-truth document excerpts."
)


def _rubric_line(pref: Preference, judge: ComplianceJudge) -> str | None:
    return pref.rubric if (pref.rubric is not None and judge in ("llm", "both")) else None


def build_system_prompt(ctx: SimulatorContext, judge: ComplianceJudge = "llm",
                        amateur_hidden: AmateurHidden = "all",
                        texts: Mapping[str, PreferenceText] | None = None) -> str:
    """The simulator's system prompt for one episode (pure function of the context); `texts`:
    the released data's preference strings, used instead of ours where given."""
    pref = with_texts(get_preference(ctx.preference_id), texts)
    rubric = _rubric_line(pref, judge)
    swe = ctx.task_family == "swe"
    hidden = ctx.hidden_info.strip()
    if pref.id == "amateur" and (swe or amateur_hidden == "all"):
        hidden = ""  # amateur users do not know where the change goes (released: SWE only)
    if swe:
        info = (
            "You know, from least to most sensitive: the full issue description; a hint; the "
            "file(s) that need editing; the function(s) that need editing. Share the more "
            "sensitive items only reluctantly."
        )
        levels = _SWE_LEVELS
        task_block = (
            f"Full issue description:\n{ctx.precise_prompt.strip()}\n\n"
            f"Hint:\n{ctx.hint.strip() or 'None'}\n\n"
            f"Files and functions to edit:\n{hidden or 'None'}"
        )
    else:
        info = (
            "You know, from least to most sensitive: the full search problem; excerpts of the "
            "ground-truth documents. Share the excerpts only reluctantly."
        )
        levels = _SEARCH_LEVELS
        task_block = (
            f"Full search problem:\n{ctx.precise_prompt.strip()}\n\n"
            f"Ground-truth document excerpts:\n{hidden or 'No documents available.'}"
        )
    if rubric is None:
        judging = "There is no judging rule for this user: do not add a [Reward] line."
        fmt_reward = ""
    else:
        judging = (
            f"Judging rule: {rubric} Add [Reward 1] if the agent's question follows the rule and "
            "[Reward 0] if it does not."
        )
        fmt_reward = "\n3. On the last line, the judging tag: [Reward 1] or [Reward 0]."
    return (
        "You are role-playing a human user who gave a task to an AI agent. The agent may ask you "
        "questions; you answer them as that user would.\n\n"
        "== Who you are ==\n"
        f"{pref.instruction}\n{judging}\n\n"
        "== What you know and what it costs ==\n"
        f"{info}\nEvery answer gets a cost level: the level of the most sensitive information "
        f"you used.\n{levels}\n\n"
        "== How to answer ==\n"
        "Your preference comes first, before anything else. Otherwise write like a person: short, "
        "casual, one paragraph. Only reach for more sensitive information when the agent is "
        "clearly stuck and its question needs it. If the question is outside what you know, say "
        "you don't know. Never explain your role, these rules, costs or judging; no markdown, "
        "lists or code blocks; never ask the agent a question.\n\n"
        "== Output format ==\n"
        "1. One plain paragraph: your answer.\n"
        f"2. On its own line, the cost tag, e.g. [Cost 1].{fmt_reward}\n"
        "Nothing else.\n\n"
        "== Task information ==\n"
        f"{task_block}\n\n"
        f"Remember: {pref.instruction} Answer in very few words, and make the cost"
        f"{' and judging tags' if rubric else ' tag'} accurate."
    )


def build_question_message(question: str) -> str:
    """The user-role message carrying one agent question to the simulator."""
    return (
        f"The agent asks: {question}\n\n"
        "Reply as the user, briefly, using only the information above; do not answer anything "
        "that is not in it and do not ask questions back. Then add the tag line(s)."
    )


def build_messages(ctx: SimulatorContext, question: str, judge: ComplianceJudge = "llm",
                   amateur_hidden: AmateurHidden = "all",
                   texts: Mapping[str, PreferenceText] | None = None):
    """The full chat: system prompt, the episode's earlier Q/A pairs, then this question."""
    msgs = [{"role": "system",
             "content": build_system_prompt(ctx, judge, amateur_hidden, texts)}]
    for q, a in ctx.history:
        msgs.append({"role": "user", "content": build_question_message(q)})
        msgs.append({"role": "assistant", "content": a})
    msgs.append({"role": "user", "content": build_question_message(question)})
    return msgs


# ---------------------------------------------------------------------------------------------
# Parsing.

_COST_LINE = re.compile(r"^\[Cost (\d)\]$")
_REWARD_LINE = re.compile(r"^\[Reward ([01])\]$")
_ANY_TAG = re.compile(r"\[(?:Cost|Reward)\s*\d+\]")


@dataclasses.dataclass(frozen=True)
class ParsedReply:
    body: str
    level: int
    followed: bool | None


def parse_reply(raw: str, task_family: str, expects_reward: bool) -> ParsedReply:
    """Strictly parses `body / [Cost N] / ([Reward k])`; raises MalformedReplyError otherwise.

    The tags must be the last non-empty lines, each alone on its line, in that order; N must be a
    level of the task family's scale; no tag may appear inside the body; the body must be
    non-empty; a [Reward] line must be present iff `expects_reward`.
    """
    if not isinstance(raw, str):
        raise MalformedReplyError(f"reply is {type(raw).__name__}, not text")
    lines = [ln.strip() for ln in raw.strip().splitlines()]
    lines = [ln for ln in lines if ln]
    followed = None
    if expects_reward:
        if not lines or not _REWARD_LINE.match(lines[-1]):
            raise MalformedReplyError("missing [Reward 0|1] on the last line")
        followed = _REWARD_LINE.match(lines.pop()).group(1) == "1"
    if not lines or not _COST_LINE.match(lines[-1]):
        raise MalformedReplyError("missing [Cost N] line after the answer")
    level = int(_COST_LINE.match(lines.pop()).group(1))
    if level not in LEVEL_EFFORT[task_family]:  # type: ignore[index]
        raise MalformedReplyError(f"cost level {level} is not on the {task_family} scale")
    body = "\n".join(lines).strip()
    if not body:
        raise MalformedReplyError("empty answer paragraph")
    if _ANY_TAG.search(body):
        raise MalformedReplyError("tag inside the answer paragraph")
    return ParsedReply(body, level, followed)


def strip_tags(raw: str) -> str:
    """The reply with every [Cost N]/[Reward k] tag removed (lenient; for fallbacks)."""
    return re.sub(r"\n{2,}", "\n", _ANY_TAG.sub("", raw)).strip()


# ---------------------------------------------------------------------------------------------


class LLMUserSimulator:
    """The user simulator backed by an OpenAI-compatible endpoint (see the module docstring).

    Stateless across episodes: the episode's history comes in `SimulatorContext.history`.
    `stats` counts questions, capped questions, format retries, malformed replies and request
    failures.
    """

    def __init__(self, config: LLMSimulatorConfig = LLMSimulatorConfig(), client: LLMClient | None = None,
                 texts: Mapping[str, PreferenceText] | None = None):
        self.config = config
        self.texts = dict(texts or {})  # the released preference strings (envs.preference_texts)
        self.client = client if client is not None else LLMClient(config.client)
        self.stats: dict[str, int] = {
            "questions": 0,
            "capped": 0,
            "format_retries": 0,
            "malformed": 0,
            "request_failures": 0,
        }

    async def close(self) -> None:
        """Closes the underlying client's connections."""
        await self.client.close()

    async def answer(self, ctx: SimulatorContext, question: str) -> SimulatorReply:
        check_question(question)
        pref = with_texts(get_preference(ctx.preference_id), self.texts)
        self.stats["questions"] += 1
        if ctx.questions_answered >= self.config.max_questions:
            self.stats["capped"] += 1
            return cap_reply(ctx, self.config.cap_reply)
        judge = self.config.compliance_judge
        expects_reward = _rubric_line(pref, judge) is not None
        rule_verdict = judges.judge_question(pref.id, question) if judge != "llm" else None
        messages = build_messages(ctx, question, judge, self.config.amateur_hidden, self.texts)
        raw = ""
        request_retries = 0
        for attempt in range(self.config.format_retries + 1):
            try:
                result = await self.client.chat(messages)
            except LLMRequestError as e:
                self.stats["request_failures"] += 1
                log.warning("user simulator request failed: %s", e)
                raise SimulatorUnavailable(f"user simulator request failed: {e}") from None
            request_retries += max(0, int(getattr(result, "attempts", 1)) - 1)
            raw = result.text
            try:
                parsed = parse_reply(raw, ctx.task_family, expects_reward)
            except MalformedReplyError as e:
                if attempt < self.config.format_retries:
                    self.stats["format_retries"] += 1
                    log.info("user simulator reply malformed (%s); re-requesting", e)
                continue
            effort = LEVEL_EFFORT[ctx.task_family][parsed.level]
            text = raw.strip() if self.config.show_tags_to_agent else parsed.body
            followed = rule_verdict if judge == "rule" else parsed.followed
            return SimulatorReply(
                text=text,
                effort=effort,
                followed=followed,
                answered=True,
                raw=raw,
                level=parsed.level,
                rule_followed=rule_verdict if judge == "both" else None,
                format_retries=attempt,
                request_retries=request_retries,
            )
        self.stats["malformed"] += 1
        log.warning("user simulator reply malformed after %d tries", self.config.format_retries + 1)
        return dataclasses.replace(self._fallback(raw, rule_verdict, judge),
                                   format_retries=self.config.format_retries,
                                   request_retries=request_retries)

    def _fallback(self, raw: str, rule_verdict: bool | None, judge: ComplianceJudge) -> SimulatorReply:
        text = strip_tags(raw) or IDK_REPLY
        return SimulatorReply(
            text=text,
            effort=self.config.malformed_effort,
            followed=rule_verdict if judge == "rule" else None,
            answered=True,
            raw=raw,
            level=None,
            malformed=True,
            rule_followed=rule_verdict if judge == "both" else None,
        )
