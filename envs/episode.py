"""The agent loop: one episode of a policy on a task, with tools and a simulated user.

    record = await run_episode(domain, task, policy, simulator,
                               preference_id="concise_question", prompt_kind="vague")
    records = await run_episodes(domain, specs, policy, simulator, concurrency=32)

An episode starts from [system prompt, first user message (precise or vague prompt)] and the
domain's tool schemas plus `ask_user`, then repeats agent turns until the agent calls `finish`,
the turn limit, or the token budget. Per turn:

  * token budget (before the turn is sent): if the session can count the prompt it is about to
    send (`session.prompt_tokens`, engine policies), the episode ends with finish_reason
    "token_limit" when context + new prompt + `min_turn_tokens` would exceed
    the budget: `EpisodeConfig.max_context_tokens`, or the session's own `max_context_tokens`
    (the engine's max_seq_len) when smaller. The pending prompt is *not* sent, the episode is
    kept and scored like any unfinished one (task score 0 without a finish answer), and its
    token view ends with the last sampled turn. Otherwise the turn's `max_new_tokens` is capped
    to what is left after the prompt;

  * the policy returns raw text (tool calls parsed in the session's `chat_format`) or API tool
    calls;
  * every call in the turn runs in order, up to and including `finish` (later calls are dropped
    and counted). A malformed call, an unknown tool or a bad argument becomes an error
    observation the agent can recover from; each is counted in `record.stats`;
  * `ask_user(question)` goes to the user simulator (with the precise prompt, the task's hidden
    information and the earlier questions with the simulator's own raw replies) and is recorded
    as a `Question` with its effort, per-question verdict, `raw` reply and `malformed` flag.
    Simulator failures are never silently scored: an unreachable simulator
    (`SimulatorUnavailable`, a timeout, any exception) becomes an error observation, no
    `Question`, and `stats["simulator_errors"]` (the rollout orchestrator re-runs or drops such
    episodes); a reply that never parsed is kept with `malformed=True` and counted in
    `stats["simulator_malformed"]` (scoring excludes it from effort and compliance). Per-episode
    simulator counters are summed into stats: `simulator_questions`, `simulator_capped`,
    `simulator_format_retries`, `simulator_request_retries`;
  * other tools go to `domain.run_tool` under a timeout; blocking work runs in threads, so a slow
    tool or simulator call never blocks other episodes; exceptions become observations;
  * `finish(answer, ...)`: an empty answer is refused with a re-submission message (counted in
    `empty_finish`), unless the domain sets `finish_needs_answer = False` (its answer is made by
    `check_finish`, e.g. SWE-Full's diff). Then the domain's `check_finish(task, args, state) -> str | None` (sync or
    async; `state` is the episode's per-episode dict that `run_tool` also sees; domains without a
    rule return None) is asked before the episode ends: a string is
    returned to the agent as the observation and the finish is refused (error "finish_rejected",
    counted in `finish_rejected`; the episode continues); None accepts it. The hook may also set
    `state[ANSWER_OVERRIDE]` to replace the answer that is recorded and scored (e.g. "" to blank
    it: BrowseComp-Plus zeroes answers given without any search); counted in
    `finish_overridden`. A hook that raises accepts the finish unchanged and is counted in
    `finish_check_errors`;
  * tool outputs are truncated by the reference's rules (`domain_base.truncate_observation`) and
    returned in the `tool` role (or as `user` messages: `EpisodeConfig.interface`, which also
    names the ask tool, shows the tools as system-prompt text, and picks which of a turn's
    calls run; see `envs.interface`; with the tools as text an API policy's reply is parsed
    as text too);
  * a turn without any call gets a nudge (as a tool-role message for engine policies, a user
    message for API ones).

At the end: the task score (`domain.score` on the finish answer; 0 if the agent never finished),
the trajectory-rule verdict of the preference (`envs.judges.judge_trajectory`), and the token
view when the policy has one. The PPP reward is a pure function of the record
(`envs.reward.ppp_reward`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
from typing import Any, Mapping, Sequence

from ppp_jax.envs import judges
from ppp_jax.envs.domains.base import (FINISH, PromptKind, Task, TaskDomain,
                                       truncate_observation)
from ppp_jax.envs.interface import (AgentInterface, ask_schema, calls_to_run, openhands_tool_text,
                                    with_finish_message)
from ppp_jax.envs.policy import Policy, PolicyTurn
from ppp_jax.envs.records import EpisodeRecord, Question, ToolCall
from ppp_jax.envs.simulator import SimulatorContext, UserSimulator, history_reply, to_question
from ppp_jax.sampling.chat_format import (BAD_ARGUMENT, MISSING_PARAMETER, UNKNOWN_PARAMETER,
                                          UNKNOWN_TOOL, ParsedCall)

log = logging.getLogger(__name__)

NO_CALL_NUDGE = (
    "No tool call was found in your last message. Continue working on the task with the tools. "
    "If you need information from the user, use the ask_user tool. When you have the answer, "
    "call finish with it; to give up, call finish with your best answer.")
EMPTY_FINISH_MESSAGE = "ERROR: the answer is empty. Call finish again with your answer."
ANSWER_OVERRIDE = "answer_override"
"""Key of the per-episode `state` a domain's `check_finish` may set to replace the finish answer
that is recorded and scored (see the module docstring)."""


@dataclasses.dataclass(frozen=True)
class EpisodeConfig:
    """Limits of one episode.

    Attributes:
      max_turns: agent turns before the episode stops with finish_reason "turn_limit"
        (released code: 100 in training, 200 in evaluation).
      max_context_tokens: conversation token budget (prompt + all turns; paper: 32K for
        Func-Loc). Before each turn the episode stops with "token_limit" (and is kept and scored)
        when the context plus the turn's pending prompt (if the session can count it) leaves
        fewer than `min_turn_tokens`; an engine session's own max_seq_len caps it too.
      turn_max_new_tokens: cap on one turn's generation.
      min_turn_tokens: a turn needs at least this many tokens of budget left (released: 10).
      tool_timeout_s: wall-clock limit of one tool call (released: 120 s).
      simulator_timeout_s: wall-clock limit of one simulator answer.
      truncate: apply the observation truncation rules to tool outputs.
      interface: the agent's tool names, tool rendering, observation role and calls run per
        turn (`envs.interface.AgentInterface`; the `released` profile switches it).
    """

    max_turns: int = 30
    max_context_tokens: int = 32_768
    turn_max_new_tokens: int = 2048
    min_turn_tokens: int = 10
    tool_timeout_s: float = 120.0
    simulator_timeout_s: float = 300.0
    truncate: bool = True
    interface: AgentInterface = AgentInterface()


@dataclasses.dataclass(frozen=True)
class EpisodeSpec:
    """One episode to run: a task, the user's preference and the prompt kind."""

    task: Task
    preference_id: str
    prompt_kind: PromptKind = "vague"
    episode_id: str | None = None


@dataclasses.dataclass
class EpisodeStats:
    """What happened in one episode, counted; `to_dict()` is `EpisodeRecord.stats`.

    Counters (ints) are always present in the record; the `*_error` messages and
    `token_limit_pending_prompt` only when they happened; the policy session's own counters are
    added as `policy_<name>`.
    """

    tool_calls: int = 0
    malformed_calls: int = 0  # unparseable call blocks and calls with a malformed structure
    unknown_tool: int = 0
    bad_argument: int = 0  # wrong type, missing or unknown parameter
    no_call_turns: int = 0
    calls_in_thinking: int = 0  # calls written inside a think block (ignored)
    dropped_after_finish: int = 0
    dropped_extra_calls: int = 0  # calls not run under interface.calls_per_turn "first"/"released"
    tool_errors: int = 0
    tool_timeouts: int = 0
    simulator_errors: int = 0  # the user could not be reached (the orchestrator re-runs these)
    empty_finish: int = 0
    policy_errors: int = 0
    length_cut_turns: int = 0
    simulator_questions: int = 0
    simulator_malformed: int = 0  # replies that never parsed (set from the questions at the end)
    simulator_capped: int = 0
    simulator_format_retries: int = 0
    simulator_request_retries: int = 0
    finish_rejected: int = 0
    finish_overridden: int = 0
    finish_check_errors: int = 0
    context_tokens: int = 0
    policy_error: str | None = None
    token_limit_pending_prompt: int | None = None
    simulator_error: str | None = None
    finish_check_error: str | None = None
    score_error: str | None = None
    score_details: dict[str, Any] | None = None  # the domain's explanation of the score
    trajectory_error: str | None = None
    policy: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "policy"}
        out = {k: v for k, v in out.items() if v is not None}
        out.update({f"policy_{k}": v for k, v in self.policy.items()})
        return out


def _error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:500]


async def run_episode(domain: TaskDomain, task: Task, policy: Policy, simulator: UserSimulator,
                      *, preference_id: str, prompt_kind: PromptKind = "vague",
                      config: EpisodeConfig = EpisodeConfig(),
                      episode_id: str | None = None) -> EpisodeRecord:
    """Runs one episode to an `EpisodeRecord`; never raises for agent, tool or simulator errors."""
    episode_id = episode_id or f"{task.task_id}|{preference_id}|{prompt_kind}"
    run = _EpisodeRun(domain, task, simulator, preference_id, prompt_kind, config, episode_id)
    run.start(policy)
    try:
        while run.turns < config.max_turns and not await run.turn():
            pass
    finally:
        try:
            await run.session.close()
        except Exception:  # noqa: BLE001
            pass
        await run.close_domain_state()
    return await run.record()


class _EpisodeRun:
    """The state of one running episode and its steps: a turn, its calls, the final record."""

    def __init__(self, domain: TaskDomain, task: Task, simulator: UserSimulator,
                 preference_id: str, prompt_kind: PromptKind, config: EpisodeConfig,
                 episode_id: str):
        self.domain, self.task, self.simulator = domain, task, simulator
        self.preference_id, self.prompt_kind, self.config = preference_id, prompt_kind, config
        self.episode_id = episode_id
        face = config.interface
        self.tools = list(domain.tool_schemas(task)) + [ask_schema(face)]
        if face.finish_message:
            self.tools = with_finish_message(self.tools)
        system = domain.system_prompt(task)
        # the tools the chat template renders: none when they are text in the system prompt
        self.template_tools = self.tools if face.tools_in == "template" else []
        if face.tools_in == "system_text":
            system = f"{system}\n\n{openhands_tool_text(self.tools)}"
        self.obs_role = face.observation_role
        self.messages: list[dict[str, Any]] = [
            {"role": "system", "content": system},
            {"role": "user", "content": domain.first_message(task, prompt_kind)},
        ]
        self.stats = EpisodeStats()
        self.tool_calls: list[ToolCall] = []
        self.questions: list[Question] = []
        self.state: dict[str, Any] = {}  # the domain's per-episode state (`run_tool`, `check_finish`)
        self.answer: str | None = None
        self.finish_reason = "turn_limit"
        self.context_tokens = 0
        self.turns = 0
        self.call_ids = (f"call_{i}" for i in range(10**9))
        self.session: Any = None
        self.max_context = config.max_context_tokens

    def start(self, policy: Policy) -> None:
        """Opens the policy's session; its own context limit (the engine's max_seq_len) caps the
        episode's token budget."""
        self.session = policy.start(self.episode_id)
        session_limit = self.session.max_context_tokens
        if isinstance(session_limit, int) and session_limit > 0:
            self.max_context = min(self.max_context, session_limit)

    def _policy_failed(self, e: Exception) -> bool:
        log.warning("policy error in %s: %s: %s", self.episode_id, type(e).__name__, e)
        self.stats.policy_errors += 1
        self.stats.policy_error = _error_text(e)
        self.finish_reason = "error"
        return True

    async def turn(self) -> bool:
        """One agent turn and its tool calls; True when the episode is over."""
        budget = self.max_context - self.context_tokens
        try:
            pending = int(self.session.prompt_tokens(self.messages, self.template_tools))
        except Exception as e:  # noqa: BLE001 -- e.g. a message the template cannot render
            return self._policy_failed(e)
        if budget - pending < self.config.min_turn_tokens:
            self.finish_reason = "token_limit"
            self.stats.token_limit_pending_prompt = pending
            return True
        try:
            turn: PolicyTurn = await self.session.step(
                self.messages, self.template_tools,
                min(self.config.turn_max_new_tokens, budget - pending))
        except Exception as e:  # noqa: BLE001 -- the episode ends, the batch goes on
            return self._policy_failed(e)
        self.turns += 1
        self.context_tokens = turn.context_tokens or self.context_tokens
        if turn.finish_reason == "length":
            self.stats.length_cut_turns += 1
        calls, ids, errors, api = self._add_assistant_message(turn)
        for err in errors:  # block-level parse errors (no call id)
            self.stats.malformed_calls += 1
            self.messages.append(self._observation(None, None, f"ERROR: {err.message}"))
        if not calls and not errors:
            self.stats.no_call_turns += 1
            nudge = NO_CALL_NUDGE.replace("ask_user", self.config.interface.ask_tool)
            self.messages.append(self._observation(None, None, nudge) if not api
                                 else {"role": "user", "tool_call_id": None, "content": nudge})
            return False
        return await self._run_calls(calls, ids)

    def _add_assistant_message(self, turn: PolicyTurn):
        """Parses the turn (raw text, or the API's tool calls) and appends the assistant message;
        returns (calls, their ids, block-level parse errors, whether the calls came from an API)."""
        api = turn.tool_calls is not None
        if api:
            calls, errors, reasoning, content = list(turn.tool_calls), [], None, turn.text
        else:
            parsed = self.session.chat_format.parse_turn(turn.text, self.tools)
            calls, errors = list(parsed.calls), list(parsed.errors)
            reasoning, content = parsed.reasoning or None, parsed.content
            self.stats.calls_in_thinking += parsed.calls_in_thinking
        ids = [next(self.call_ids) for _ in calls]
        assistant: dict[str, Any] = {"role": "assistant", "content": content}
        if reasoning:
            assistant["reasoning_content"] = reasoning
        if calls:
            assistant["tool_calls"] = [
                {"id": cid, "type": "function", "function": {
                    "name": c.name, "arguments": dict(c.raw_arguments),
                    **({"raw_arguments": c.raw} if api else {})}}
                for cid, c in zip(ids, calls)]
        if not api:
            assistant["raw"] = turn.text
        self.messages.append(assistant)
        return calls, ids, errors, api

    async def _run_calls(self, calls: Sequence[Any], ids: Sequence[str]) -> bool:
        """Runs the turn's calls in order up to an accepted `finish` (later ones are dropped,
        counted); True when the agent finished."""
        finished = False
        run = calls_to_run([c.name for c in calls], self.config.interface,
                           self.domain.task_family)
        for k, (cid, call) in enumerate(zip(ids, calls)):
            if finished:
                self.stats.dropped_after_finish += 1
                continue
            if not run[k]:
                self.stats.dropped_extra_calls += 1
                continue
            self.stats.tool_calls += 1
            obs, error = await self._run_call(call)
            if call.name == FINISH and error is None:
                self.answer = str(call.arguments.get("answer", ""))
                if ANSWER_OVERRIDE in self.state:  # set by the domain's check_finish
                    self.answer = str(self.state.pop(ANSWER_OVERRIDE))
                    self.stats.finish_overridden += 1
                finished = True
                self.finish_reason = "finish"
            self.tool_calls.append(ToolCall(call.name, dict(call.arguments), self.turns - 1, obs,
                                            error))
            self.messages.append(self._observation(cid, call.name, obs))
        return finished

    def _observation(self, call_id: str | None, name: str | None, content: str) -> dict[str, Any]:
        """A tool output (or nudge, or error) as a message in the interface's observation role."""
        if self.obs_role == "user":
            return {"role": "user", "content": content}
        if name is None:
            return {"role": "tool", "tool_call_id": call_id, "content": content}
        return {"role": "tool", "tool_call_id": call_id, "name": name, "content": content}

    async def _run_call(self, call: ParsedCall) -> tuple[str, str | None]:
        """Runs one parsed call to (observation, error or None)."""
        stats, config = self.stats, self.config
        if call.error is not None:
            kind = call.error.kind
            if kind == UNKNOWN_TOOL:
                stats.unknown_tool += 1
            elif kind in (BAD_ARGUMENT, MISSING_PARAMETER, UNKNOWN_PARAMETER):
                stats.bad_argument += 1
            else:
                stats.malformed_calls += 1
            return f"ERROR: {call.error.message}", kind
        face = config.interface
        if call.name == face.ask_tool:
            return await self._ask(str(call.arguments.get(face.ask_argument, "")))
        if call.name == FINISH:
            # a domain whose answer is not text (SWE-Full submits its repository diff) says so
            needs_answer = getattr(self.domain, "finish_needs_answer", True)
            if needs_answer and not str(call.arguments.get("answer", "")).strip():
                stats.empty_finish += 1
                return EMPTY_FINISH_MESSAGE, "empty_answer"
            rejection = await self._check_finish(call.arguments)
            if rejection is not None:
                stats.finish_rejected += 1
                return rejection, "finish_rejected"
            return "Answer submitted.", None
        try:
            obs = await asyncio.wait_for(
                self.domain.run_tool(self.task, call.name, call.arguments, self.state),
                config.tool_timeout_s)
        except asyncio.TimeoutError:
            stats.tool_timeouts += 1
            return (f"ERROR: the tool '{call.name}' timed out after {config.tool_timeout_s:g}s.",
                    "timeout")
        except Exception as e:  # noqa: BLE001 -- tool bugs become observations
            stats.tool_errors += 1
            return f"ERROR: the tool '{call.name}' failed: {type(e).__name__}: {e}", "tool_error"
        obs = str(obs)
        if obs.startswith("ERROR:"):
            stats.tool_errors += 1
        return (truncate_observation(obs) if config.truncate else obs), None

    async def _check_finish(self, args: Mapping[str, Any]) -> str | None:
        """The domain's `check_finish` verdict: an observation refusing the finish, or
        None to accept it. Clears any stale `ANSWER_OVERRIDE` first, so only this call's hook can
        set it."""
        self.state.pop(ANSWER_OVERRIDE, None)
        try:
            verdict = self.domain.check_finish(self.task, args, self.state)
            if inspect.isawaitable(verdict):
                verdict = await verdict
        except Exception as e:  # noqa: BLE001 -- a buggy hook must not trap the agent in a loop
            self.stats.finish_check_errors += 1
            self.stats.finish_check_error = _error_text(e)
            log.warning("check_finish error: %s: %s", type(e).__name__, e)
            self.state.pop(ANSWER_OVERRIDE, None)
            return None
        return None if verdict is None else str(verdict)

    async def _ask(self, question: str) -> tuple[str, str | None]:
        """`ask_user`: the simulator's reply as the observation, the question recorded."""
        task, questions = self.task, self.questions
        ctx = SimulatorContext(
            precise_prompt=task.precise_prompt, hidden_info=task.hidden_info,
            preference_id=self.preference_id,
            questions_answered=sum(q.answered for q in questions),
            history=tuple((q.text, history_reply(q)) for q in questions),
            task_family=self.domain.task_family,  # type: ignore[arg-type]
            hint=str(task.metadata.get("hint", "") or ""))
        self.stats.simulator_questions += 1
        try:
            reply = await asyncio.wait_for(self.simulator.answer(ctx, question),
                                           self.config.simulator_timeout_s)
        except Exception as e:  # noqa: BLE001 -- the user is unreachable: an observation, counted
            # SimulatorUnavailable (backend down after its retries), a timeout, or a simulator
            # bug: an infrastructure failure the orchestrator re-runs or drops, never scored.
            self.stats.simulator_errors += 1
            self.stats.simulator_error = _error_text(e)
            log.warning("simulator error in episode: %s: %s", type(e).__name__, e)
            return (f"ERROR: the user could not be reached ({type(e).__name__}). Try again later "
                    "or continue on your own.", "simulator_error")
        self.stats.simulator_capped += int(not reply.answered)
        self.stats.simulator_format_retries += int(reply.format_retries or 0)
        self.stats.simulator_request_retries += int(reply.request_retries or 0)
        questions.append(to_question(question, reply, self.turns - 1))
        return reply.text, None

    async def close_domain_state(self) -> None:
        """The domain's `close_episode(task, state)`, if it has one (e.g. removing a sandbox);
        a failure there is logged, never raised."""
        close = getattr(self.domain, "close_episode", None)
        if close is None:
            return
        try:
            result = close(self.task, self.state)
            if inspect.isawaitable(result):
                await result
        except Exception as e:  # noqa: BLE001 -- cleanup must not lose the episode
            log.warning("close_episode failed in %s: %s", self.episode_id, _error_text(e))

    async def record(self) -> EpisodeRecord:
        """Scores the finish answer, judges the trajectory and builds the record."""
        stats, task = self.stats, self.task
        stats.simulator_malformed = sum(q.malformed for q in self.questions)
        try:
            details_of = getattr(self.domain, "score_details", None)
            if self.answer is None:
                score = 0.0
            elif details_of is not None:  # a score with its explanation (e.g. SWE-Full's grade)
                score, details = await details_of(task, self.answer)
                score = float(score)
                stats.score_details = dict(details) if details else None
            else:
                score = float(await self.domain.score(task, self.answer))
        except Exception as e:  # noqa: BLE001 -- a judge failure scores 0 and is counted
            stats.score_error = _error_text(e)
            score = 0.0
        try:
            verdict = judges.judge_trajectory(self.preference_id, self.tool_calls)
        except Exception as e:  # noqa: BLE001 -- unknown preference id
            stats.trajectory_error = _error_text(e)
            verdict = None
        stats.context_tokens = self.context_tokens
        stats.policy = dict(self.session.stats)
        return EpisodeRecord(
            task_id=task.task_id, domain=self.domain.name, preference_id=self.preference_id,
            prompt_kind=self.prompt_kind, messages=tuple(self.messages), questions=tuple(self.questions),
            tool_calls=tuple(self.tool_calls), answer=self.answer, task_score=score,
            finish_reason=self.finish_reason, num_turns=self.turns,
            trajectory_followed=verdict, tokens=self.session.token_view(), stats=stats.to_dict(),
            task_family=self.domain.task_family)


async def run_episodes(domain: TaskDomain, specs: Sequence[EpisodeSpec], policy: Policy,
                       simulator: UserSimulator, *, config: EpisodeConfig = EpisodeConfig(),
                       concurrency: int = 64) -> list[EpisodeRecord]:
    """Runs many episodes concurrently (at most `concurrency` at once); records in spec order."""
    sem = asyncio.Semaphore(concurrency)

    async def one(spec: EpisodeSpec) -> EpisodeRecord:
        async with sem:
            return await run_episode(domain, spec.task, policy, simulator,
                                     preference_id=spec.preference_id,
                                     prompt_kind=spec.prompt_kind, config=config,
                                     episode_id=spec.episode_id)

    return list(await asyncio.gather(*(one(s) for s in specs)))


def masked_spans(record: EpisodeRecord) -> list[tuple[int, int, int]]:
    """(start, end, mask) runs of the record's token view, for inspection and tests."""
    if record.tokens is None:
        return []
    spans, mask = [], record.tokens.loss_mask
    start = 0
    for i in range(1, len(mask) + 1):
        if i == len(mask) or mask[i] != mask[start]:
            spans.append((start, i, mask[start]))
            start = i
    return spans
