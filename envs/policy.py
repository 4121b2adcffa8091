"""Agent policies for the episode runner: the protocol and three implementations.

The runner keeps the conversation as OpenAI-style message dicts (see `envs.episode`) and, once
per agent turn, calls `session.step(messages, tools, max_new_tokens)`. A policy session returns
a `PolicyTurn`: the raw assistant text, plus the tool calls when the backend parsed them itself
(OpenAI tool calling), else None and the runner parses the chat format's (Seed-OSS) calls out of
the text.

  * `EnginePolicy`: the JAX sampling engine (`ppp_jax.sampling`), token in, token out. It renders
    the model's chat format (`ppp_jax.sampling.chat_format`, Seed-OSS by default) itself,
    keeps one engine session per episode (each turn sends only the new tokens: the tool/user
    turns since its last turn plus the generation prompt), and records the exact sampled ids
    with loss mask 1 and their sampler log-probs; every rendered token (system, user, tool,
    template) has mask 0. The sampled text is decoded from those ids for parsing only; the ids
    are never re-tokenized.
  * `OpenAIPolicy`: any OpenAI-compatible chat endpoint with tool calling, through
    `envs.llm_client.LLMClient` (retries, backoff, timeouts, concurrency limit). No token view.
  * `ScriptedPolicy`: replays fixed assistant texts (tests, demos).

`ScriptedEngine` is a stand-in for the engine with the same `generate(Request)` /
`end_session(id)` surface: it tokenizes scripted replies with a real tokenizer, so the token
bookkeeping of `EnginePolicy` can be tested without a model.

Contract with the runner: after each `step`, the runner appends exactly one assistant message
for that turn before the next `step`; every other message is new input for the policy.

Context budget: a session may offer `prompt_tokens(messages, tools) -> int`, the number of tokens
the next `step` would add as prompt (EngineSession does). The runner uses it to end the episode
with finish_reason "token_limit" *before* sending a prompt that would not fit its
`EpisodeConfig.max_context_tokens` (the engine rejects a context longer than its max_seq_len), and
to cap the turn's `max_new_tokens` to what is left after the prompt. A session may also expose
`max_context_tokens` (EngineSession: the engine's `config.max_seq_len`, or `max_seq_len`); the
runner then uses the smaller of it and the episode's budget.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Any, Mapping, Protocol, Sequence

from ppp_jax.envs.records import TokenView
from ppp_jax.sampling.chat import ChatTokenizer
from ppp_jax.sampling.chat_format import (
    BAD_ARGUMENT,
    DEFAULT_FORMAT,
    ChatFormat,
    ParsedCall,
    ToolCallError,
    get_format,
    schema_index,
    validate_call,
)


@dataclasses.dataclass(frozen=True)
class PolicyTurn:
    """One assistant turn.

    Attributes:
      text: the raw assistant text (Seed-OSS format with think/tool-call tags for the engine; the
        message content for API policies), without the final `<seed:eos>`.
      tool_calls: calls parsed by the backend (API tool calling), or None to parse `text`.
      finish_reason: "stop", "length" (the turn was cut by max_new_tokens) or "error".
      context_tokens: tokens in the conversation after this turn (0 if unknown).
      new_tokens: tokens generated in this turn (0 if unknown).
    """

    text: str
    tool_calls: tuple[ParsedCall, ...] | None = None
    finish_reason: str = "stop"
    context_tokens: int = 0
    new_tokens: int = 0


class PolicySession(Protocol):
    """One episode's conversation with a policy. `stats` holds backend counters (copied into the
    record's stats with a `policy_` prefix).

    `chat_format` is the format raw turns are written in (the episode runner parses them with it);
    `max_context_tokens` is the session's own context limit (the engine's max_seq_len; None: no
    limit of its own); `prompt_tokens(messages, tools)` counts the tokens the next step would send
    as prompt (0 when the session cannot tell). `SessionDefaults` gives the last three to sessions
    without a token view.
    """

    stats: dict[str, int]
    chat_format: ChatFormat
    max_context_tokens: int | None

    def prompt_tokens(self, messages: Sequence[Mapping[str, Any]],
                      tools: Sequence[Mapping[str, Any]]) -> int: ...

    async def step(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]],
                   max_new_tokens: int) -> PolicyTurn: ...

    def token_view(self) -> TokenView | None: ...

    async def close(self) -> None: ...


class Policy(Protocol):
    """A factory of per-episode sessions."""

    def start(self, episode_id: str) -> PolicySession: ...


class SessionDefaults:
    """For sessions without a token view (API and scripted ones): the default chat format, no
    context limit of their own, and no prompt count."""

    chat_format: ChatFormat = get_format(DEFAULT_FORMAT)
    max_context_tokens: int | None = None

    def prompt_tokens(self, messages: Sequence[Mapping[str, Any]],
                      tools: Sequence[Mapping[str, Any]]) -> int:
        return 0


# --- engine-backed --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class EngineSampling:
    """Sampling settings of the engine policy (the released code: T = 1, top-p = 1)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None  # per-episode seeds are derived from it when set


class EnginePolicy:
    """Policy over the JAX sampling engine (see the module docstring).

    Args:
      engine: anything with `async generate(Request) -> GenerationResult` and
        `end_session(session_id)` (`ppp_jax.sampling.engine.Engine`, or `ScriptedEngine`).
      tokenizer: a `tokenizers.Tokenizer` or transformers tokenizer with the chat format's special
        tokens, or a `ChatTokenizer` (which brings its own format).
      sampling: temperature / top-p / top-k / seed.
      generation_prefix: text forced after the generation prompt each turn (mask 0), e.g. the
        format's `no_thinking_prefix` (Seed-OSS: `THINKING_BUDGET_0_PREFIX`); it is part of the
        turn's text for parsing.
      chat_format: the chat format (or its registry name) when `tokenizer` is not a ChatTokenizer.
    """

    def __init__(self, engine: Any, tokenizer: Any, sampling: EngineSampling = EngineSampling(),
                 generation_prefix: str = "", chat_format: str | ChatFormat = DEFAULT_FORMAT):
        self.engine = engine
        self.chat = (tokenizer if isinstance(tokenizer, ChatTokenizer)
                     else ChatTokenizer(tokenizer, chat_format))
        self.sampling = sampling
        self.generation_prefix = generation_prefix
        self._counter = itertools.count()

    def start(self, episode_id: str) -> EngineSession:
        n = next(self._counter)
        seed = None if self.sampling.seed is None else (self.sampling.seed + n) % 2**32
        return EngineSession(self, f"{episode_id}#{n}", seed)


class EngineSession:
    """One episode on the engine: a KV-cache session plus the token record."""

    def __init__(self, policy: EnginePolicy, session_id: str, seed: int | None):
        self.policy = policy
        self.session_id = session_id
        self.seed = seed
        self.ids: list[int] = []
        self.mask: list[int] = []
        self.logprobs: list[float] = []
        self.turn_starts: list[int] = []
        self._seen = 0  # messages already in the session
        self._open_turn = False  # last turn was cut without <seed:eos>
        self._pending: tuple[int, int, list[int]] | None = None  # (seen, len(messages), prompt)
        self.stats = {"prompt_len_mismatch": 0}

    def _render_new(self, messages: Sequence[Mapping[str, Any]],
                    tools: Sequence[Mapping[str, Any]]) -> str:
        chat = self.policy.chat
        fmt = chat.format
        parts = []
        start = self._seen
        if start > 0:  # after the session's own assistant turn, what the template writes next
            parts.append(fmt.turn_separator)
        if start == 0:
            if not messages or messages[0]["role"] != "system":
                raise ValueError("an engine episode must start with a system message")
            parts.append(chat.render_system(messages[0]["content"], tools))
            start = 1
        if any(msg["role"] == "assistant" for msg in messages[start:]):
            raise ValueError("EngineSession cannot render assistant messages it did not sample")
        parts.append(fmt.render_turns(messages[start:]))  # consecutive tool results merged
        parts.append(fmt.generation_prompt() + self.policy.generation_prefix)
        return "".join(parts)

    def _append(self, ids: Sequence[int], mask: int, logprobs: Sequence[float] | None = None):
        self.ids.extend(int(t) for t in ids)
        self.mask.extend([mask] * len(ids))
        if logprobs is None:
            self.logprobs.extend([0.0] * len(ids))
        else:
            self.logprobs.extend(float(x) for x in logprobs)

    def _prompt(self, messages, tools) -> list[int]:
        """The token ids the next step sends (cached until the session or messages change)."""
        key = (self._seen, len(messages))
        if self._pending is not None and self._pending[:2] == key:
            return self._pending[2]
        chat = self.policy.chat
        prompt: list[int] = [chat.eos_id] if self._open_turn else []
        prompt += chat.encode(self._render_new(messages, tools))
        self._pending = (*key, prompt)
        return prompt

    def prompt_tokens(self, messages, tools) -> int:
        """How many tokens the next `step(messages, tools, ...)` would add before generating."""
        return len(self._prompt(messages, tools))

    @property
    def max_context_tokens(self) -> int | None:
        """The engine's sequence limit (context + generation), None if it does not say."""
        engine = self.policy.engine
        limit = getattr(getattr(engine, "config", None), "max_seq_len", None)
        if limit is None:
            limit = getattr(engine, "max_seq_len", None)
        return int(limit) if isinstance(limit, int) else None

    @property
    def chat_format(self) -> ChatFormat:
        """The format the policy's turns are rendered and written in."""
        return self.policy.chat.format

    @property
    def context_tokens(self) -> int:
        """Tokens in the session so far (prompts and sampled turns)."""
        return len(self.ids)

    async def step(self, messages, tools, max_new_tokens: int) -> PolicyTurn:
        from ppp_jax.sampling.params import Request, SamplingParams

        chat = self.policy.chat
        prompt = self._prompt(messages, tools)
        self._pending = None
        self._append(prompt, 0)
        s = self.policy.sampling
        params = SamplingParams(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                                max_new_tokens=max(1, max_new_tokens),
                                stop_token_ids=chat.end_ids, seed=self.seed)
        result = await self.policy.engine.generate(
            Request(prompt_ids=prompt, params=params, session_id=self.session_id))
        if result.prompt_len != len(self.ids):
            self.stats["prompt_len_mismatch"] += 1
        self.turn_starts.append(len(self.ids))
        self._append(result.token_ids, 1, result.logprobs)
        ids = list(result.token_ids)
        ended = bool(ids) and ids[-1] in chat.end_ids
        self._open_turn = not ended
        self._seen = len(messages) + 1  # + the assistant message the runner appends for this turn
        text = self.policy.generation_prefix + chat.decode(ids[:-1] if ended else ids)
        return PolicyTurn(text, None, "stop" if ended else "length", len(self.ids), len(ids))

    def token_view(self) -> TokenView:
        return TokenView(tuple(self.ids), tuple(self.mask), tuple(self.logprobs),
                         tuple(self.turn_starts))

    async def close(self) -> None:
        end = getattr(self.policy.engine, "end_session", None)
        if end is not None:
            try:
                end(self.session_id)
            except Exception:  # noqa: BLE001 -- a session that never started has nothing to free
                pass


class ScriptedEngine:
    """An engine stand-in: each `generate` returns the next scripted reply for its session,
    tokenized by a real tokenizer, with `<seed:eos>` appended and fake log-probs (-0.5 each).

    `replies`: session-independent list of raw assistant texts, consumed per session in order.
    A reply ending in `"<cut>"` is returned without `<seed:eos>` (finish reason "length", unless
    it ends in another of the format's turn ends, e.g. Llama 3's `<|eom_id|>`).
    `max_seq_len` (optional) mimics the real engine's limit: a request whose session context plus
    prompt reaches it raises ValueError, and generation stops at it.
    """

    def __init__(self, tokenizer: Any, replies: Sequence[str], max_seq_len: int | None = None):
        self.chat = tokenizer if isinstance(tokenizer, ChatTokenizer) else ChatTokenizer(tokenizer)
        self.replies = list(replies)
        self.max_seq_len = max_seq_len
        self.sessions: dict[str, int] = {}  # session -> tokens so far
        self.cursor: dict[str, int] = {}
        self.requests: list[Any] = []

    async def generate(self, request):
        from ppp_jax.sampling.params import GenerationResult

        self.requests.append(request)
        sid = request.session_id
        prompt_len = self.sessions.get(sid, 0) + len(request.prompt_ids)
        if self.max_seq_len is not None and prompt_len >= self.max_seq_len:
            raise ValueError(f"context of {prompt_len} tokens reaches max_seq_len {self.max_seq_len}")
        k = self.cursor.get(sid, 0)
        self.cursor[sid] = k + 1
        text = self.replies[k] if k < len(self.replies) else "I give up."
        cut = text.endswith("<cut>")
        ids = self.chat.encode(text[:-5] if cut else text)
        if not cut:
            ids.append(self.chat.eos_id)
        ids = ids[:request.params.max_new_tokens]
        if self.max_seq_len is not None:
            ids = ids[:self.max_seq_len - prompt_len]
        self.sessions[sid] = prompt_len + len(ids)
        reason = "stop" if ids and ids[-1] in self.chat.end_ids else "length"
        return GenerationResult(request.request_id, ids, [-0.5] * len(ids), reason, prompt_len, sid)

    def end_session(self, session_id: str) -> None:
        self.sessions.pop(session_id, None)


# --- OpenAI-compatible ----------------------------------------------------------------------------


def to_openai_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Canonical episode messages -> chat-completions messages.

    Assistant tool calls get JSON-string arguments (the raw string the API returned when known).
    A tool message whose id answers no call of the previous assistant message (an error about
    unparseable output, a nudge) is sent as a user message, since the API requires ids to match.
    An assistant turn written as text (it has `raw`: its calls were parsed from the text, as with
    tools described in the system prompt) is sent as that text, without API tool calls.
    """
    out: list[dict[str, Any]] = []
    open_ids: set[str] = set()
    for m in messages:
        role = m["role"]
        if role == "assistant" and "raw" in m:
            open_ids = set()
            out.append({"role": "assistant", "content": m["raw"]})
        elif role == "assistant":
            msg: dict[str, Any] = {"role": "assistant", "content": m.get("content") or None}
            calls = []
            for c in m.get("tool_calls") or ():
                fn = c["function"]
                args = fn.get("raw_arguments")
                if args is None:
                    args = json.dumps(fn.get("arguments", {}), ensure_ascii=False)
                calls.append({"id": c["id"], "type": "function",
                              "function": {"name": fn["name"], "arguments": args}})
            if calls:
                msg["tool_calls"] = calls
            elif msg["content"] is None:
                msg["content"] = ""
            open_ids = {c["id"] for c in calls}
            out.append(msg)
        elif role == "tool":
            cid = m.get("tool_call_id")
            if cid in open_ids:
                out.append({"role": "tool", "tool_call_id": cid, "content": m["content"]})
            else:
                out.append({"role": "user", "content": m["content"]})
        else:
            out.append({"role": role, "content": m["content"]})
    return out


def _api_call(call: Mapping[str, Any], tools: Sequence[Mapping[str, Any]]) -> ParsedCall:
    """An API tool call -> ParsedCall, with JSON decoding and the same schema checks as text."""
    name = call.get("name") or ""
    raw = call.get("arguments") or "{}"
    try:
        args = json.loads(raw) if isinstance(raw, str) else dict(raw)
        if not isinstance(args, dict):
            raise ValueError("arguments are not a JSON object")
    except (ValueError, TypeError) as e:
        return ParsedCall(name, {}, {}, str(raw), ToolCallError(
            BAD_ARGUMENT, f"The arguments of '{name}' are not valid JSON: {e}.", name))
    raw_args = {k: v if isinstance(v, str) else json.dumps(v) for k, v in args.items()}
    return validate_call(name, raw_args, str(raw), schema_index(tools))


class OpenAIPolicy:
    """Policy over an OpenAI-compatible chat endpoint with tool calling.

    Args:
      client: an `envs.llm_client.LLMClient` (model name, base URL, retries are its business).
      params: extra request parameters (e.g. `{"temperature": 1.0}`).
    """

    def __init__(self, client: Any, params: Mapping[str, Any] | None = None):
        self.client = client
        self.params = dict(params or {})

    def start(self, episode_id: str) -> OpenAISession:
        return OpenAISession(self)


class OpenAISession(SessionDefaults):
    def __init__(self, policy: OpenAIPolicy):
        self.policy = policy
        self.stats: dict[str, int] = {}

    async def step(self, messages, tools, max_new_tokens: int) -> PolicyTurn:
        result = await self.policy.client.chat(to_openai_messages(messages),
                                               tools=list(tools) or None, **self.policy.params)
        # No API tools (they are text in the system prompt): the reply is text whose calls the
        # runner parses (tool_calls None), as for an engine policy.
        calls = tuple(_api_call(c, tools) for c in result.tool_calls) if tools else None
        usage = getattr(result.response, "usage", None)
        total = getattr(usage, "total_tokens", 0) or 0
        completion = getattr(usage, "completion_tokens", 0) or 0
        reason = "length" if result.finish_reason == "length" else "stop"
        return PolicyTurn(result.text or "", calls, reason, int(total), int(completion))

    def token_view(self) -> None:
        return None

    async def close(self) -> None:
        return None


# --- scripted -------------------------------------------------------------------------------------


class ScriptedPolicy:
    """Replays raw assistant texts, the same script for every episode, written in `chat_format`
    (Seed-OSS by default; the episode runner parses them with it)."""

    def __init__(self, replies: Sequence[str], chat_format: str | ChatFormat = DEFAULT_FORMAT):
        self.replies = list(replies)
        self.chat_format = get_format(chat_format)

    def start(self, episode_id: str) -> ScriptedSession:
        return ScriptedSession(self.replies, self.chat_format)


class ScriptedSession(SessionDefaults):
    def __init__(self, replies: Sequence[str], chat_format: ChatFormat | None = None):
        self.replies = iter(replies)
        self.stats: dict[str, int] = {}
        if chat_format is not None:
            self.chat_format = chat_format

    async def step(self, messages, tools, max_new_tokens: int) -> PolicyTurn:
        text = next(self.replies, "I have nothing more to do.")
        return PolicyTurn(text)

    def token_view(self) -> None:
        return None

    async def close(self) -> None:
        return None
