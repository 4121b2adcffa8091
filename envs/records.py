"""The episode record: what one agent episode leaves behind for scoring and training.

This is the contract between the episode runner (which fills it), the scorers and the PPP reward
(which read it), and the trainer (which reads the token view). Rewards and metrics are pure
functions of these records.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

Effort = Literal["low", "medium", "high"]
PromptKind = Literal["vague", "precise"]


@dataclasses.dataclass(frozen=True)
class Question:
    """One `ask_user` call and the simulated user's verdict on it.

    Attributes:
      text: the question exactly as the agent asked it.
      answer: the reply shown to the agent (judge tags stripped unless configured otherwise).
      effort: how much effort the question cost the user (low / medium / high).
      followed: whether the question followed the user's preference, as the per-question judge
        (LLM tag or rule) saw it; None where the preference has no per-question judge.
      turn: index of the agent turn that asked it.
      answered: False when the user's question cap was reached and the question went unanswered.
      level: the simulator's raw cost level on the released code's scale (SWE 1-5, search 1-3),
        when the simulator produced one (envs.simulator.SimulatorReply.level); used by the
        `released` reward variant. None when unknown or the reply was malformed/capped.
      malformed: the simulator's reply never parsed (after its format retries): effort and
        `followed` are fallbacks, so scoring and reward exclude this question from effort and
        per-question compliance (envs.scoring); the runner counts it in
        `EpisodeRecord.stats["simulator_malformed"]`.
      raw: the simulator's raw output (LLM: the reply with its [Cost]/[Reward] tags), fed back as
        the simulator's history; "" when unknown.
    """

    text: str
    answer: str
    effort: Effort
    followed: bool | None = None
    turn: int = 0
    answered: bool = True
    level: int | None = None
    malformed: bool = False
    raw: str = ""


@dataclasses.dataclass(frozen=True)
class ToolCall:
    """One tool call made by the agent (including `ask_user` and `finish`), in episode order."""

    name: str
    arguments: dict[str, Any]
    turn: int
    observation: str = ""
    error: str | None = None  # set when the call was malformed, unknown, or failed


@dataclasses.dataclass(frozen=True)
class TokenView:
    """The token-level view of an engine-backed episode, used for training.

    All arrays are plain Python lists of equal length S (the whole conversation as the policy saw
    it, template tokens included):
      token_ids: int token ids; the policy's own tokens are exactly the ids it sampled.
      loss_mask: 1 on tokens the policy sampled, 0 on system/user/tool/template tokens.
      sampler_logprobs: float log-prob of each sampled token under the sampler (0.0 where mask 0).
      turn_starts: index into token_ids where each policy turn's sampled span begins.
    """

    token_ids: tuple[int, ...]
    loss_mask: tuple[int, ...]
    sampler_logprobs: tuple[float, ...]
    turn_starts: tuple[int, ...] = ()

    def __post_init__(self):
        n = len(self.token_ids)
        if len(self.loss_mask) != n or len(self.sampler_logprobs) != n:
            raise ValueError(
                f"TokenView arrays differ in length: token_ids {n}, loss_mask "
                f"{len(self.loss_mask)}, sampler_logprobs {len(self.sampler_logprobs)}"
            )


@dataclasses.dataclass(frozen=True)
class EpisodeRecord:
    """Everything one episode produced.

    Attributes:
      task_id: the task instance id.
      domain: e.g. "swe_func_loc", "browsecomp_plus", "stdlib_loc".
      preference_id: the simulated user's preference id (see envs.preferences).
      prompt_kind: whether the agent saw the vague or the precise prompt.
      messages: the chat messages (OpenAI-style dicts) of the episode, in order.
      questions: every `ask_user` call with its effort and compliance verdict.
      tool_calls: every tool call, in order (ask_user and finish included).
      answer: the final answer text (None if the episode never called finish).
      task_score: the task metric in [0, 1] (F1 or exact match); None if not scored yet.
      finish_reason: "finish", "turn_limit", "token_limit", "error".
      num_turns: agent turns taken.
      trajectory_followed: verdict of a trajectory-level preference rule (e.g. answer_more,
        only_begin); None when the preference has no trajectory rule.
      tokens: the token view for engine-backed episodes; None for API-backed ones.
      stats: free-form counters (malformed tool calls, simulator retries, ...).
      task_family: the domain's `task_family` ("swe" | "search"), recorded by the episode runner;
        the released reward's constants follow it. None (records built elsewhere, older code):
        the reward falls back to `RewardConfig.search_domain_markers` on the domain name.
    """

    task_id: str
    domain: str
    preference_id: str
    prompt_kind: PromptKind
    messages: tuple[dict[str, Any], ...] = ()
    questions: tuple[Question, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    answer: str | None = None
    task_score: float | None = None
    finish_reason: str = "finish"
    num_turns: int = 0
    trajectory_followed: bool | None = None
    tokens: TokenView | None = None
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    task_family: str | None = None

    @property
    def num_questions(self) -> int:
        return len(self.questions)
