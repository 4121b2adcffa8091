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

  * the policy returns raw text (Seed-OSS tool calls parsed by `envs.toolcall`) or API tool calls;
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
    `empty_finish`). Then, if the domain has the optional hook
    `check_finish(task, args, state) -> str | None` (sync or async; `state` is the episode's
    per-episode dict that `run_tool` also sees), it is asked before the episode ends: a string is
    returned to the agent as the observation and the finish is refused (error "finish_rejected",
    counted in `finish_rejected`; the episode continues); None accepts it. The hook may also set
    `state[ANSWER_OVERRIDE]` to replace the answer that is recorded and scored (e.g. "" to blank
    it: BrowseComp-Plus zeroes answers given without any search); counted in
    `finish_overridden`. A hook that raises accepts the finish unchanged and is counted in
    `finish_check_errors`;
  * tool outputs are truncated by the reference's rules (`domain_base.truncate_observation`) and
    returned in the `tool` role;
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

from ppp_jax.envs import judges, toolcall
from ppp_jax.envs.domains.base import (ASK_USER, FINISH, PromptKind, Task, TaskDomain,
                                       ask_user_schema, truncate_observation)
from ppp_jax.envs.policy import Policy, PolicyTurn
from ppp_jax.envs.records import EpisodeRecord, Question, ToolCall
from ppp_jax.envs.simulator import SimulatorContext, UserSimulator, history_reply, to_question

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
    """

    max_turns: int = 30
    max_context_tokens: int = 32_768
    turn_max_new_tokens: int = 2048
    min_turn_tokens: int = 10
    tool_timeout_s: float = 120.0
    simulator_timeout_s: float = 300.0
    truncate: bool = True


@dataclasses.dataclass(frozen=True)
class EpisodeSpec:
    """One episode to run: a task, the user's preference and the prompt kind."""

    task: Task
    preference_id: str
    prompt_kind: PromptKind = "vague"
    episode_id: str | None = None


async def run_episode(domain: TaskDomain, task: Task, policy: Policy, simulator: UserSimulator,
                      *, preference_id: str, prompt_kind: PromptKind = "vague",
                      config: EpisodeConfig = EpisodeConfig(),
                      episode_id: str | None = None) -> EpisodeRecord:
    """Runs one episode to an `EpisodeRecord`; never raises for agent, tool or simulator errors."""
    episode_id = episode_id or f"{task.task_id}|{preference_id}|{prompt_kind}"
    tools = list(domain.tool_schemas(task)) + [ask_user_schema()]
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": domain.system_prompt(task)},
        {"role": "user", "content": domain.first_message(task, prompt_kind)},
    ]
    stats: dict[str, Any] = {k: 0 for k in (
        "tool_calls", "malformed_calls", "unknown_tool", "bad_argument", "no_call_turns",
        "calls_in_thinking", "dropped_after_finish", "tool_errors", "tool_timeouts",
        "simulator_errors", "empty_finish", "policy_errors", "length_cut_turns",
        "simulator_questions", "simulator_malformed", "simulator_capped",
        "simulator_format_retries", "simulator_request_retries", "finish_rejected",
        "finish_overridden", "finish_check_errors")}
    tool_calls: list[ToolCall] = []
    questions: list[Question] = []
    state: dict[str, Any] = {}
    answer: str | None = None
    finish_reason = "turn_limit"
    context_tokens = 0
    turns = 0
    family = domain.task_family
    session = policy.start(episode_id)
    call_ids = (f"call_{i}" for i in range(10**9))
    max_context = config.max_context_tokens
    session_limit = getattr(session, "max_context_tokens", None)
    if isinstance(session_limit, int) and session_limit > 0:
        max_context = min(max_context, session_limit)  # e.g. the engine's max_seq_len
    try:
        while turns < config.max_turns:
            budget = max_context - context_tokens
            try:
                pending = _pending_prompt_tokens(session, messages, tools)
            except Exception as e:  # noqa: BLE001 -- e.g. a message the template cannot render
                log.warning("policy error in %s: %s: %s", episode_id, type(e).__name__, e)
                stats["policy_errors"] += 1
                stats["policy_error"] = f"{type(e).__name__}: {e}"[:500]
                finish_reason = "error"
                break
            if budget - pending < config.min_turn_tokens:
                finish_reason = "token_limit"
                stats["token_limit_pending_prompt"] = pending
                break
            try:
                turn: PolicyTurn = await session.step(
                    messages, tools, min(config.turn_max_new_tokens, budget - pending))
            except Exception as e:  # noqa: BLE001 -- the episode ends, the batch goes on
                log.warning("policy error in %s: %s: %s", episode_id, type(e).__name__, e)
                stats["policy_errors"] += 1
                stats["policy_error"] = f"{type(e).__name__}: {e}"[:500]
                finish_reason = "error"
                break
            turns += 1
            context_tokens = turn.context_tokens or context_tokens
            if turn.finish_reason == "length":
                stats["length_cut_turns"] += 1
            api = turn.tool_calls is not None
            if api:
                calls, errors, reasoning, content = list(turn.tool_calls), [], None, turn.text
            else:
                parsed = toolcall.parse_turn(turn.text, tools)
                calls, errors = list(parsed.calls), list(parsed.errors)
                reasoning, content = parsed.reasoning or None, parsed.content
                stats["calls_in_thinking"] += parsed.calls_in_thinking
            ids = [next(call_ids) for _ in calls]
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
            messages.append(assistant)

            for err in errors:  # block-level parse errors (no call id)
                stats["malformed_calls"] += 1
                messages.append({"role": "tool", "tool_call_id": None,
                                 "content": f"ERROR: {err.message}"})
            if not calls and not errors:
                stats["no_call_turns"] += 1
                messages.append({"role": "tool" if not api else "user", "tool_call_id": None,
                                 "content": NO_CALL_NUDGE})
                continue

            finished = False
            for cid, call in zip(ids, calls):
                if finished:
                    stats["dropped_after_finish"] += 1
                    continue
                stats["tool_calls"] += 1
                obs, error = await _run_call(call, domain, task, simulator, state, questions,
                                             stats, config, preference_id, family, turns - 1)
                if call.name == FINISH and error is None:
                    answer = str(call.arguments.get("answer", ""))
                    if ANSWER_OVERRIDE in state:  # set by the domain's check_finish
                        answer = str(state.pop(ANSWER_OVERRIDE))
                        stats["finish_overridden"] += 1
                    finished = True
                    finish_reason = "finish"
                tool_calls.append(ToolCall(call.name, dict(call.arguments), turns - 1, obs, error))
                messages.append({"role": "tool", "tool_call_id": cid, "name": call.name,
                                 "content": obs})
            if finished:
                break
    finally:
        try:
            await session.close()
        except Exception:  # noqa: BLE001
            pass

    stats["simulator_malformed"] = sum(q.malformed for q in questions)
    try:
        score = float(await domain.score(task, answer)) if answer is not None else 0.0
    except Exception as e:  # noqa: BLE001 -- a judge failure scores 0 and is counted
        stats["score_error"] = f"{type(e).__name__}: {e}"[:500]
        score = 0.0
    try:
        verdict = judges.judge_trajectory(preference_id, tool_calls)
    except Exception as e:  # noqa: BLE001 -- unknown preference id
        stats["trajectory_error"] = f"{type(e).__name__}: {e}"[:500]
        verdict = None
    stats["context_tokens"] = context_tokens
    stats.update({f"policy_{k}": v for k, v in session.stats.items()})
    return EpisodeRecord(
        task_id=task.task_id, domain=domain.name, preference_id=preference_id,
        prompt_kind=prompt_kind, messages=tuple(messages), questions=tuple(questions),
        tool_calls=tuple(tool_calls), answer=answer, task_score=score,
        finish_reason=finish_reason, num_turns=turns, trajectory_followed=verdict,
        tokens=session.token_view(), stats=stats)


def _pending_prompt_tokens(session: Any, messages: list[dict[str, Any]], tools: list[Any]) -> int:
    """Tokens the session's next step would send as prompt (0 if it cannot tell)."""
    count = getattr(session, "prompt_tokens", None)
    return int(count(messages, tools)) if callable(count) else 0


async def _run_call(call: toolcall.ParsedCall, domain: TaskDomain, task: Task,
                    simulator: UserSimulator, state: dict[str, Any], questions: list[Question],
                    stats: dict[str, Any], config: EpisodeConfig, preference_id: str,
                    family: str, turn: int) -> tuple[str, str | None]:
    """Runs one parsed call to (observation, error or None)."""
    if call.error is not None:
        kind = call.error.kind
        if kind == toolcall.UNKNOWN_TOOL:
            stats["unknown_tool"] += 1
        elif kind in (toolcall.BAD_ARGUMENT, toolcall.MISSING_PARAMETER, toolcall.UNKNOWN_PARAMETER):
            stats["bad_argument"] += 1
        else:
            stats["malformed_calls"] += 1
        return f"ERROR: {call.error.message}", kind
    if call.name == ASK_USER:
        return await _ask(call, task, simulator, questions, stats, config, preference_id, family,
                          turn)
    if call.name == FINISH:
        if not str(call.arguments.get("answer", "")).strip():
            stats["empty_finish"] += 1
            return EMPTY_FINISH_MESSAGE, "empty_answer"
        rejection = await _check_finish(domain, task, call.arguments, state, stats)
        if rejection is not None:
            stats["finish_rejected"] += 1
            return rejection, "finish_rejected"
        return "Answer submitted.", None
    try:
        obs = await asyncio.wait_for(domain.run_tool(task, call.name, call.arguments, state),
                                     config.tool_timeout_s)
    except asyncio.TimeoutError:
        stats["tool_timeouts"] += 1
        return f"ERROR: the tool '{call.name}' timed out after {config.tool_timeout_s:g}s.", "timeout"
    except Exception as e:  # noqa: BLE001 -- tool bugs become observations
        stats["tool_errors"] += 1
        return f"ERROR: the tool '{call.name}' failed: {type(e).__name__}: {e}", "tool_error"
    obs = str(obs)
    if obs.startswith("ERROR:"):
        stats["tool_errors"] += 1
    return (truncate_observation(obs) if config.truncate else obs), None


async def _check_finish(domain: TaskDomain, task: Task, args: Mapping[str, Any],
                        state: dict[str, Any], stats: dict[str, Any]) -> str | None:
    """The domain's optional `check_finish` verdict: an observation refusing the finish, or None
    to accept it. Clears any stale `ANSWER_OVERRIDE` first, so only this call's hook can set it."""
    state.pop(ANSWER_OVERRIDE, None)
    check = getattr(domain, "check_finish", None)
    if check is None:
        return None
    try:
        verdict = check(task, args, state)
        if inspect.isawaitable(verdict):
            verdict = await verdict
    except Exception as e:  # noqa: BLE001 -- a buggy hook must not trap the agent in a loop
        stats["finish_check_errors"] += 1
        stats["finish_check_error"] = f"{type(e).__name__}: {e}"[:500]
        log.warning("check_finish error: %s: %s", type(e).__name__, e)
        state.pop(ANSWER_OVERRIDE, None)
        return None
    return None if verdict is None else str(verdict)


async def _ask(call, task, simulator, questions, stats, config, preference_id, family, turn):
    question = str(call.arguments.get("question", ""))
    ctx = SimulatorContext(
        precise_prompt=task.precise_prompt, hidden_info=task.hidden_info,
        preference_id=preference_id, questions_answered=sum(q.answered for q in questions),
        history=tuple((q.text, history_reply(q)) for q in questions),
        task_family=family,  # type: ignore[arg-type]
        hint=str(task.metadata.get("hint", "") or ""))
    stats["simulator_questions"] += 1
    try:
        reply = await asyncio.wait_for(simulator.answer(ctx, question), config.simulator_timeout_s)
    except Exception as e:  # noqa: BLE001 -- the user is unreachable: an observation, counted
        # SimulatorUnavailable (backend down after its retries), a timeout, or a simulator bug:
        # an infrastructure failure the orchestrator re-runs or drops, never a scored answer.
        stats["simulator_errors"] += 1
        stats["simulator_error"] = f"{type(e).__name__}: {e}"[:500]
        log.warning("simulator error in episode: %s: %s", type(e).__name__, e)
        return f"ERROR: the user could not be reached ({type(e).__name__}). Try again later or " \
               "continue on your own.", "simulator_error"
    stats["simulator_capped"] += int(not reply.answered)
    stats["simulator_format_retries"] += int(getattr(reply, "format_retries", 0) or 0)
    stats["simulator_request_retries"] += int(getattr(reply, "request_retries", 0) or 0)
    questions.append(to_question(question, reply, turn))
    return reply.text, None


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


def message_text(messages: Sequence[Mapping[str, Any]], role: str) -> list[str]:
    """Contents of the messages with a role (convenience for tests and reports)."""
    return [m.get("content", "") for m in messages if m["role"] == role]
