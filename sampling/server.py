"""An OpenAI-compatible HTTP server over the engine (Starlette; run with uvicorn).

Routes: `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions`, both POSTs with
`"stream": true` as server-sent events ending in `data: [DONE]`.

Supported request fields: model, prompt (string or token ids) / messages (+ `chat_template_kwargs`
passed to the template), max_tokens (or max_completion_tokens), temperature, top_p, top_k
(extension), seed, stop (strings), stop_token_ids (extension), n (the n samples of one prompt are
submitted together and share its prefill and KV pages; with a seed, sample i uses seed + i),
log-probs (chat: `logprobs: true` and `top_logprobs: 0..20`, returned as
`choices[].logprobs.content[]` = {token, logprob, bytes, top_logprobs}; completions:
`logprobs: 0..20`, returned as tokens / token_logprobs / top_logprobs), stream. Log-probs are
those of the sampling distribution, log softmax(logits / T) (T = 1 when greedy), as the engine
reports them. Generation always stops at the tokenizer's EOS (`<seed:eos>` for Seed-OSS).

Tool calling (chat): `tools` are rendered by the checkpoint's chat template; history may hold
assistant messages with `tool_calls` (JSON-string arguments) and `tool` messages; the output is
parsed by the model's chat format (`ppp_jax.sampling.chat_format`, Seed-OSS by default) into
`tool_calls` (finish_reason "tool_calls") and `reasoning_content`, see
`ppp_jax.sampling.tool_calls`. tool_choice: "auto" (default) or "none"
(no calls are parsed, reasoning is still split off; a tool-call block ends the turn, see below).

Every malformed request gets a 4xx JSON body `{"error": {"message", "type", "param", "code"}}`
(bad JSON, unknown model, too-long prompt, bad parameters), `param` naming the field as the
client wrote it; an unexpected failure inside one request is a 500 for that request only. The
server keeps serving either way. Limits at the edge (docs/reliability.md, "Serving"):
  * bodies over `max_request_bytes` are refused with 413 before they are read whole (at once
    when Content-Length says so); JSON nested deeper than `MAX_JSON_DEPTH` and strings that are
    not valid Unicode (lone surrogates) are 400s;
  * every number is range-checked here, so nothing reaches the engine that its int32 / float32
    arrays cannot hold: n in [1, max_n], max_tokens in [1, max_seq_len], top_k in [0, 2**31),
    seed in [0, 2**32), temperature finite in [0, MAX_TEMPERATURE] (below 1e-5 it is greedy),
    top_p in (0, 1], stop_token_ids in [0, vocab) and at most the engine's `max_stop_tokens`
    less the one EOS id the server adds (which the client's count leaves out; `ppp serve` builds
    its engine with one more than its config says), log-prob counts in [0, 20], at most
    MAX_STOP_STRINGS `stop` strings;
  * JSON parsing, chat-template rendering and tokenization run in worker threads, so a big
    request never stalls other routes; a client that disconnects has its generation cancelled
    (streaming or not) at the next decode block.
Unknown routes are 404 and a wrong method 405, with the same JSON error body.

Streaming: `stream_options: {"include_usage": true}` adds a last chunk with empty `choices`
and the `usage` of the whole request (other chunks carry `"usage": null`), as OpenAI does.

A chat request without tools (or with tool_choice "none") cannot receive tool calls, so a
tool-call block the model starts anyway (the format's block marker, `<seed:tool_call>`, after the
reasoning) ends the turn: content is the text before the marker, finish_reason "stop", and the
generation is stopped there; streaming and non-streaming agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from ppp_jax.sampling.chat import IncrementalDetokenizer, encode
from ppp_jax.sampling.chat_format import DEFAULT_FORMAT, ChatFormat, get_format
from ppp_jax.sampling.engine import Engine
from ppp_jax.sampling.params import (MAX_TOP_LOGPROBS, GenerationResult, Request, RequestError,
                                     SamplingParams)
from ppp_jax.sampling.tool_calls import (ChatStreamParser, build_message, hidden_token_ids,
                                         prepare_messages)

log = logging.getLogger(__name__)

INT32_MAX = 2**31 - 1
# Default request-body limit: a full 64k-token conversation with tools is well under 1 MiB.
DEFAULT_MAX_REQUEST_BYTES = 4 * 2**20
# Deepest JSON nesting accepted (tool schemas nest a few levels; Python's parser recurses).
MAX_JSON_DEPTH = 64
MAX_TEMPERATURE = 100.0
MAX_STOP_STRINGS = 16
# Temperatures below this sample as greedy (T = 0): logits / T overflows float32 otherwise.
GREEDY_BELOW = 1e-5


class APIError(Exception):
    """A request the server rejects, with its HTTP status and OpenAI-style error fields."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.type,
                                       "param": self.param, "code": self.code}},
                            status_code=self.status)


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _kind(value: Any) -> str:
    return {bool: "a boolean", str: "a string", list: "an array", dict: "an object",
            float: "a number", int: "an integer"}.get(type(value), type(value).__name__)


def _field(body: dict, name: str, types: tuple[type, ...], default: Any = None) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        raise APIError(400, f"'{name}' must be {' or '.join(t.__name__ for t in types)}, "
                            f"got {_kind(value)}", param=name)
    return value


def _int_field(body: dict, name: str, lo: int, hi: int, default: int | None = None,
               why: str = "") -> int | None:
    """An integer field in [lo, hi] (400 naming `name` otherwise); default when absent/null."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise APIError(400, f"'{name}' must be an integer, got {_kind(value)}", param=name)
    if not lo <= value <= hi:
        raise APIError(400, f"'{name}' must be between {lo} and {hi}{why}, got {_short(value)}",
                       param=name)
    return value


def _float_field(body: dict, name: str, lo: float, hi: float, default: float, *,
                 lo_open: bool = False) -> float:
    """A finite number in [lo, hi] ((lo, hi] with lo_open); 400 naming `name` otherwise."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise APIError(400, f"'{name}' must be a number, got {_kind(value)}", param=name)
    value = float(value)  # an int beyond float's range raises OverflowError: caught below
    low_ok = value > lo if lo_open else value >= lo
    if not (math.isfinite(value) and low_ok and value <= hi):
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise APIError(400, f"'{name}' must be a finite number in {interval}, got {_short(value)}",
                       param=name)
    return value


def _parse_json(raw: bytes) -> Any:
    """The request body as JSON (in a worker thread: big bodies take a while). 400 for bad
    JSON, nesting deeper than MAX_JSON_DEPTH and strings that are not valid Unicode."""
    try:
        body = json.loads(raw)
    except RecursionError:
        raise APIError(400, f"request body is nested too deeply (at most {MAX_JSON_DEPTH} "
                            "levels)", code="invalid_json") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError, too many int digits
        raise APIError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None
    _check_tree(body)
    return body


def _check_tree(body: Any) -> None:
    """Walks the parsed body iteratively (so depth cannot overflow the stack here): nesting
    at most MAX_JSON_DEPTH, every string (and key) encodable as UTF-8."""
    stack: list[tuple[Any, str, int]] = [(body, "", 0)]
    while stack:
        node, path, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise APIError(400, f"request body is nested too deeply at {path or 'the top'} (at "
                                f"most {MAX_JSON_DEPTH} levels)", param=_top(path),
                           code="invalid_json")
        if isinstance(node, dict):
            for key, value in node.items():
                where = f"{path}.{key}" if path else str(key)
                _check_text(key, where)
                stack.append((value, where, depth + 1))
        elif isinstance(node, list):
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(node))
        elif isinstance(node, str):
            _check_text(node, path)


def _top(path: str) -> str | None:
    return path.split(".")[0].split("[")[0] or None


def _check_text(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise APIError(400, f"'{path}' is not valid Unicode: a lone surrogate "
                            f"(U+{ord(text[e.start]):04X} at character {e.start}) cannot be "
                            "encoded as UTF-8",
                       param=_top(path)) from None


def _encode(tokenizer, text: str) -> list[int]:
    """`chat.encode`, through the Rust batch call when the tokenizer has one: it releases the
    GIL, so a long text tokenized in a worker thread does not stall the event loop (the plain
    `encode` holds it for the whole call: seconds for a megabyte)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return encode(tokenizer, text)
    return list(backend.encode_batch([text], add_special_tokens=False)[0].ids)


def _render_chat(tokenizer, messages: list[dict], tools: list | None, kwargs: dict) -> list[int]:
    """`chat.render_chat` (same text, same ids) with the GIL-releasing `_encode`."""
    try:
        text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                             add_generation_prompt=True, **kwargs)
    except Exception as e:  # jinja errors, wrong message shapes
        raise ValueError(f"cannot render the chat with the checkpoint's template: {e}") from e
    return _encode(tokenizer, text)


_PROBE_TOOL = {"type": "function", "function": {
    "name": "probe_tool_7f3a", "description": "probe", "parameters": {
        "type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]}}}


def _template_renders_tools(tokenizer) -> bool:
    """Whether the chat template puts a request's `tools` into the prompt: a probe chat rendered
    with one tool must differ from the same chat without it (many templates ignore `tools`)."""
    messages = [{"role": "user", "content": "hi"}]
    try:
        with_tool = tokenizer.apply_chat_template(messages, tools=[_PROBE_TOOL], tokenize=False,
                                                  add_generation_prompt=True)
        without = tokenizer.apply_chat_template(messages, tokenize=False,
                                                add_generation_prompt=True)
    except Exception:  # a template that cannot render the probe cannot render tools either
        return False
    return with_tool != without


class ClientDisconnected(Exception):
    """The client went away before its response was ready (its generation is cancelled)."""


class OpenAIServer:
    """Request parsing, generation and response formatting for one engine and one tokenizer.

    chat_format: the model's chat format (or its registry name), for tool calls and reasoning.
    max_request_bytes: largest request body accepted (413 above it).
    """

    def __init__(self, engine: Engine, tokenizer, model_name: str, *, default_max_tokens: int = 256,
                 max_n: int = 64, chat_format: str | ChatFormat = DEFAULT_FORMAT,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES):
        self.engine = engine
        self.chat_format = get_format(chat_format)
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.default_max_tokens = default_max_tokens
        self.max_n = max_n
        self.max_request_bytes = max_request_bytes
        self.eos_id = getattr(tokenizer, "eos_token_id", None)
        # turn ends besides EOS that the format names (Llama 3: <|eom_id|>), when in the vocabulary
        vocab = tokenizer.get_vocab()
        self.end_ids = list(dict.fromkeys(
            ([self.eos_id] if self.eos_id is not None else [])
            + [vocab[t] for t in self.chat_format.stop_tokens if t in vocab]))
        self.hidden_ids = frozenset(hidden_token_ids(tokenizer, self.chat_format))
        self.has_chat_template = bool(getattr(tokenizer, "chat_template", None))
        # Names the server itself gives the chat template; chat_template_kwargs may not repeat
        # them (a duplicate keyword would be a TypeError inside transformers).
        self.reserved_template_kwargs = {"messages", "tools", "documents", "add_generation_prompt"}
        render = getattr(tokenizer, "apply_chat_template", None)
        if render is not None:
            self.reserved_template_kwargs |= {
                name for name, p in inspect.signature(render).parameters.items()
                if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        self.renders_tools = self.has_chat_template and _template_renders_tools(tokenizer)

    # ---- parsing -------------------------------------------------------------------------

    async def _read_body(self, request: HTTPRequest) -> bytes:
        """The body, refused (413) as soon as it is known to exceed max_request_bytes: from
        Content-Length before reading anything, else while reading it."""
        limit = self.max_request_bytes
        too_big = (f"request body exceeds this server's limit of {limit} bytes (serve config "
                   "max_request_bytes)")
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise APIError(400, f"bad Content-Length header {_short(declared)}") from None
            if size > limit:
                raise APIError(413, f"{too_big}: Content-Length is {size}",
                               code="request_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise APIError(413, too_big, code="request_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _body(self, request: HTTPRequest) -> dict:
        raw = await self._read_body(request)
        body = await asyncio.to_thread(_parse_json, raw)
        if not isinstance(body, dict):
            raise APIError(400, "request body must be a JSON object", code="invalid_json")
        model = body.get("model")
        if model is None:
            raise APIError(400, "missing required field 'model'", param="model")
        if model != self.model_name:
            raise APIError(404, f"the model {_short(model)} does not exist; this server serves "
                                f"{self.model_name!r}", param="model", code="model_not_found")
        _int_field(body, "n", 1, self.max_n, 1)
        stream = _field(body, "stream", (bool,), False)
        options = _field(body, "stream_options", (dict,))
        if options is not None:
            if not stream:
                raise APIError(400, "'stream_options' is only allowed with 'stream': true",
                               param="stream_options")
            unknown = sorted(set(options) - {"include_usage"})
            if unknown:
                raise APIError(400, f"'stream_options' has unknown keys {unknown}; the one "
                                    "supported is 'include_usage'", param="stream_options")
            _field(options, "include_usage", (bool,), False)
        return body

    @staticmethod
    def _include_usage(body: dict) -> bool:
        return bool((body.get("stream_options") or {}).get("include_usage"))

    @staticmethod
    def _top_count(body: dict, param: str) -> int | None:
        return _int_field(body, param, 0, MAX_TOP_LOGPROBS)

    def _choice_params(self, params: SamplingParams, n: int) -> list[SamplingParams]:
        """n copies of params; with a seed, choice i uses seed + i (so the n differ)."""
        if params.seed is None:
            return [params] * n
        return [dataclasses.replace(params, seed=(params.seed + i) % 2**32) for i in range(n)]

    def _max_tokens(self, body: dict) -> int:
        """max_completion_tokens (the newer name) or max_tokens, named as the client wrote it."""
        limit = self.engine.config.max_seq_len
        why = f" (this model's context is {limit} tokens)"
        value = _int_field(body, "max_completion_tokens", 1, limit, why=why)
        if value is None:
            value = _int_field(body, "max_tokens", 1, limit, self.default_max_tokens, why=why)
        return value

    def _stop_ids(self, body: dict) -> list[int]:
        """The client's stop ids (checked, deduplicated) after the EOS id the server adds."""
        stop_ids = _field(body, "stop_token_ids", (list,), [])
        vocab = self.engine.model_config.vocab_size
        for i, t in enumerate(stop_ids):
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab:
                raise APIError(400, f"'stop_token_ids[{i}]' must be a token id in [0, {vocab}), "
                                    f"got {_short(t)}", param="stop_token_ids")
        own = [t for t in dict.fromkeys(stop_ids) if t not in self.end_ids]
        room = self.engine.config.max_stop_tokens - len(self.end_ids)
        if len(own) > room:
            eos = " besides the end-of-turn ids the server adds" if self.end_ids else ""
            raise APIError(400, f"'stop_token_ids' may hold at most {room} distinct ids{eos}, "
                                f"got {len(own)}", param="stop_token_ids")
        return self.end_ids + own

    def _params(self, body: dict, top_logprobs: int = 0) -> tuple[SamplingParams, list[str]]:
        max_tokens = self._max_tokens(body)
        stop = _field(body, "stop", (str, list), [])
        stop = [stop] if isinstance(stop, str) else stop
        if not all(isinstance(s, str) and s for s in stop):
            raise APIError(400, "'stop' must be a non-empty string or a list of them", param="stop")
        if len(stop) > MAX_STOP_STRINGS:  # each is searched in the text after every block
            raise APIError(400, f"'stop' may hold at most {MAX_STOP_STRINGS} strings, got "
                                f"{len(stop)}", param="stop")
        temperature = _float_field(body, "temperature", 0.0, MAX_TEMPERATURE, 1.0)
        params = SamplingParams(
            temperature=0.0 if temperature < GREEDY_BELOW else temperature,
            top_p=_float_field(body, "top_p", 0.0, 1.0, 1.0, lo_open=True),
            top_k=_int_field(body, "top_k", 0, INT32_MAX, 0, why=" (0 disables it)"),
            max_new_tokens=max_tokens,
            stop_token_ids=tuple(self._stop_ids(body)),
            seed=_int_field(body, "seed", 0, 2**32 - 1),
            top_logprobs=top_logprobs)
        return params, stop

    def _check_length(self, prompt_ids: list[int], param: str) -> None:
        limit = self.engine.config.max_seq_len
        if not prompt_ids:
            raise APIError(400, "the prompt is empty", param=param)
        if len(prompt_ids) >= limit:
            raise APIError(400, f"the prompt has {len(prompt_ids)} tokens; this model's context "
                                f"is {limit} tokens including the completion",
                           param=param, code="context_length_exceeded")
        vocab = self.engine.model_config.vocab_size
        if any(not 0 <= t < vocab for t in prompt_ids):
            raise APIError(400, f"prompt token ids must be in [0, {vocab})", param=param)

    @staticmethod
    def _check_messages(messages: Any) -> None:
        if not isinstance(messages, list) or not messages:
            raise APIError(400, "'messages' must be a non-empty list of {role, content} objects",
                           param="messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise APIError(400, f"'messages[{i}]' must be an object with a string 'role'",
                               param="messages")
            content = m.get("content")
            if isinstance(content, list) and not all(
                    isinstance(part, dict) and isinstance(part.get("text", ""), str)
                    for part in content):
                raise APIError(400, f"'messages[{i}].content' parts must be objects with a "
                                    "string 'text'", param="messages")

    def _template_kwargs(self, body: dict) -> dict:
        kwargs = _field(body, "chat_template_kwargs", (dict,), {})
        clash = sorted(set(kwargs) & self.reserved_template_kwargs)
        if clash:
            raise APIError(400, f"'chat_template_kwargs' may not set {clash}: the server passes "
                                "them itself (send tools as the request's 'tools')",
                           param="chat_template_kwargs")
        return kwargs

    # ---- generation ----------------------------------------------------------------------

    def _call_marker_at(self, text: str) -> int | None:
        """Where the format's tool-call block marker starts in `text` outside the reasoning."""
        _, rest, unclosed = self.chat_format.split_reasoning(text)
        at = -1 if unclosed else self.chat_format.call_block_at(rest)
        return None if at < 0 else len(text) - len(rest) + at

    async def _run(self, prompt_ids: list[int], params: list[SamplingParams], stop: list[str],
                   hidden_ids: frozenset[int] | None = None, *, cut_calls: bool = False,
                   ) -> AsyncIterator[tuple[int, str, list[int], list[float], list, str | None]]:
        """Generates len(params) choices of one prompt, submitted together so that they share
        the prompt's prefill and KV pages. Yields (choice index, full text so far, new ids, new
        logprobs, new top log-probs (one list of (id, logprob) per id; empty lists when not
        asked), finish reason or None) per decode block and choice; each choice's last item has
        its finish reason. hidden_ids: see `IncrementalDetokenizer` (None: skip specials).
        cut_calls: end a choice at the format's tool-call block marker (a chat request that
        cannot receive calls), holding back a partial marker while streaming.
        """
        requests = [Request(list(prompt_ids), p) for p in params]
        detoks = [IncrementalDetokenizer(self.tokenizer, hidden_ids=hidden_ids) for _ in params]
        done = [False] * len(params)
        marker = self.chat_format.call_markers[0]
        async with contextlib.aclosing(self.engine.stream_many(requests)) as chunks:
            async for i, chunk in chunks:
                if done[i]:
                    continue
                detok = detoks[i]
                detok.add(chunk.token_ids)
                text = detok.text if chunk.result is not None else detok.text.rstrip("\ufffd")
                reason = None
                for s in stop:
                    at = text.find(s)
                    if at >= 0:
                        text, reason = text[:at], "stop"
                if cut_calls:
                    at = self._call_marker_at(text)
                    if at is not None:
                        text, reason = text[:at], "stop"
                    elif chunk.result is None:  # a marker may still complete
                        text = text[:len(text) - _partial_suffix(text, marker)]
                if chunk.result is not None and reason is None:
                    reason = "length" if chunk.result.finish_reason == "length" else "stop"
                if reason is not None:
                    done[i] = True
                    self.engine.cancel(requests[i].request_id)  # a no-op when it already ended
                tops = chunk.top_logprobs or [[] for _ in chunk.token_ids]
                yield i, text, chunk.token_ids, chunk.logprobs, tops, reason
                if all(done):
                    return

    async def _collect(self, prompt_ids, params, stop, hidden_ids=None, *, cut_calls=False):
        """Per choice: (text, ids, logprobs, top log-probs, finish reason)."""
        out = [["", [], [], [], "stop"] for _ in params]
        async for i, text, new_ids, new_logps, new_tops, fin in self._run(
                prompt_ids, params, stop, hidden_ids, cut_calls=cut_calls):
            out[i][0] = text
            out[i][1] += new_ids
            out[i][2] += new_logps
            out[i][3] += new_tops
            out[i][4] = fin or out[i][4]
        return [tuple(o) for o in out]

    @staticmethod
    async def _unless_disconnected(request: HTTPRequest, work):
        """Awaits `work` (a coroutine) while watching the connection: when the client goes
        away first, `work` is cancelled (which cancels its engine requests) and
        ClientDisconnected is raised."""
        task = asyncio.ensure_future(work)

        async def gone():
            while (await request.receive())["type"] != "http.disconnect":
                pass

        watcher = asyncio.ensure_future(gone())
        try:
            await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                return task.result()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise ClientDisconnected()
        finally:
            watcher.cancel()
            task.cancel()  # a no-op when done; stops the work when we are cancelled ourselves

    def _usage(self, prompt_ids, choices) -> dict:
        completion = sum(len(c[1]) for c in choices)
        return self._usage_counts(len(prompt_ids), completion)

    @staticmethod
    def _usage_counts(prompt: int, completion: int) -> dict:
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}

    def _token_strs(self, ids: list[int]) -> list[str]:
        return [self.tokenizer.decode([t]) for t in ids]

    def _top_dict(self, top: list[tuple[int, float]]) -> dict[str, float]:
        """Legacy completions format of one position: {token string: logprob}. Two ids that
        decode to the same string share a key; the more likely one (listed first) is kept."""
        out: dict[str, float] = {}
        for token_id, logprob in top:
            out.setdefault(self.tokenizer.decode([token_id]), logprob)
        return out

    # ---- routes --------------------------------------------------------------------------

    async def models(self, request: HTTPRequest) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [
            {"id": self.model_name, "object": "model", "created": 0, "owned_by": "ppp-jax"}]})

    async def completions(self, request: HTTPRequest):
        body = await self._body(request)
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            prompt_ids = await asyncio.to_thread(_encode, self.tokenizer, prompt)
        elif isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            prompt_ids = list(prompt)
        else:
            raise APIError(400, "'prompt' must be a string or a list of token ids", param="prompt")
        num_logprobs = self._top_count(body, "logprobs")
        want_logprobs = num_logprobs is not None
        num_top = num_logprobs or 0
        params, stop = self._params(body, num_top)
        self._check_length(prompt_ids, "prompt")
        choice_params = self._choice_params(params, _field(body, "n", (int,), 1))
        rid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        include_usage = self._include_usage(body)

        def envelope(choices, **extra):
            return {"id": rid, "object": "text_completion", "created": created,
                    "model": self.model_name, "choices": choices, **extra}

        def logprobs_obj(ids, logps, tops):
            if not want_logprobs:
                return None
            top = [self._top_dict(pos) for pos in tops] if num_top else None
            return {"tokens": self._token_strs(ids), "token_logprobs": logps,
                    "top_logprobs": top, "text_offset": None}

        if body.get("stream"):
            async def events():
                sent = [0] * len(choice_params)
                generated = 0
                extra = {"usage": None} if include_usage else {}
                async for i, text, ids, logps, tops, reason in self._run(
                        prompt_ids, choice_params, stop):
                    generated += len(ids)
                    delta, sent[i] = text[sent[i]:], max(sent[i], len(text))
                    yield envelope([{"index": i, "text": delta, "finish_reason": reason,
                                     "logprobs": logprobs_obj(ids, logps, tops)}], **extra)
                if include_usage:
                    yield envelope([], usage=self._usage_counts(len(prompt_ids), generated))
            return _sse(events())
        results = await self._unless_disconnected(
            request, self._collect(prompt_ids, choice_params, stop))
        return JSONResponse(envelope(
            [{"index": i, "text": text, "finish_reason": reason,
              "logprobs": logprobs_obj(ids, logps, tops)}
             for i, (text, ids, logps, tops, reason) in enumerate(results)],
            usage=self._usage(prompt_ids, results)))

    async def chat_completions(self, request: HTTPRequest):
        body = await self._body(request)
        if not self.has_chat_template:
            raise APIError(500, "this server cannot render chats: its checkpoint's tokenizer has "
                                "no chat template (a server configuration error; "
                                "/v1/completions works)", type="server_error",
                           code="chat_template_missing")
        messages = body.get("messages")
        self._check_messages(messages)
        tools = _field(body, "tools", (list,))
        if tools is not None and not all(
                isinstance(t, dict) and isinstance(t.get("function"), dict)
                and isinstance(t["function"].get("name"), str) for t in tools):
            raise APIError(400, "'tools' must be a list of {type: 'function', function: {name, ...}}",
                           param="tools")
        tool_choice = body.get("tool_choice", "auto") or "auto"
        if tool_choice not in ("auto", "none"):
            raise APIError(400, "only tool_choice 'auto' and 'none' are supported (the model's "
                                "output is not constrained)", param="tool_choice")
        if tools and not self.renders_tools:
            raise APIError(400, "this checkpoint's chat template does not render 'tools' (the "
                                "model would never see them); send the tool documentation in the "
                                "messages, or serve a checkpoint whose template takes tools",
                           param="tools")
        parse_calls = bool(tools) and tool_choice == "auto"
        try:
            messages = prepare_messages(messages, self.chat_format)
        except ValueError as e:
            raise APIError(400, str(e), param="messages") from None
        kwargs = self._template_kwargs(body)
        try:
            prompt_ids = await asyncio.to_thread(_render_chat, self.tokenizer, messages,
                                                 tools or None, kwargs)
        except ValueError as e:
            raise APIError(400, str(e), param="messages") from None
        want_logprobs = bool(_field(body, "logprobs", (bool,), False))
        num_top = self._top_count(body, "top_logprobs") or 0
        if num_top and not want_logprobs:
            raise APIError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
        params, stop = self._params(body, num_top)
        self._check_length(prompt_ids, "messages")
        choice_params = self._choice_params(params, _field(body, "n", (int,), 1))
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        include_usage = self._include_usage(body)
        cut_calls = not parse_calls

        def call_prefix(i):
            return f"call_{rid[9:21]}_{i}"

        def envelope(obj, choices, **extra):
            return {"id": rid, "object": obj, "created": created, "model": self.model_name,
                    "choices": choices, **extra}

        def entry(token_id, logprob):
            s = self.tokenizer.decode([token_id])
            return {"token": s, "logprob": logprob, "bytes": list(s.encode())}

        def logprobs_obj(ids, logps, tops):
            if not want_logprobs:
                return None
            return {"content": [{**entry(t, lp), "top_logprobs": [entry(*x) for x in top]}
                                for t, lp, top in zip(ids, logps, tops)]}

        if body.get("stream"):
            async def events():
                parsers = [ChatStreamParser(tools, parse_calls=parse_calls, id_prefix=call_prefix(i),
                                            chat_format=self.chat_format)
                           for i in range(len(choice_params))]
                extra = {"usage": None} if include_usage else {}
                generated = 0
                for i in range(len(choice_params)):
                    yield envelope("chat.completion.chunk", [{
                        "index": i, "delta": {"role": "assistant", "content": ""},
                        "finish_reason": None}], **extra)
                async for i, text, ids, logps, tops, reason in self._run(
                        prompt_ids, choice_params, stop, self.hidden_ids, cut_calls=cut_calls):
                    generated += len(ids)
                    if reason is None:
                        deltas = parsers[i].feed(text)
                    else:
                        deltas, reason = parsers[i].finish(text, reason)
                    merged = {k: v for d in deltas for k, v in d.items()}
                    yield envelope("chat.completion.chunk", [{
                        "index": i, "delta": merged, "finish_reason": reason,
                        "logprobs": logprobs_obj(ids, logps, tops)}], **extra)
                if include_usage:
                    yield envelope("chat.completion.chunk", [],
                                   usage=self._usage_counts(len(prompt_ids), generated))
            return _sse(events())
        results = await self._unless_disconnected(request, self._collect(
            prompt_ids, choice_params, stop, self.hidden_ids, cut_calls=cut_calls))
        choices = []
        for i, (text, ids, logps, tops, reason) in enumerate(results):
            parsed = build_message(text, tools, parse_calls=parse_calls, id_prefix=call_prefix(i),
                                   chat_format=self.chat_format)
            choices.append({"index": i, "message": parsed.message(),
                            "finish_reason": parsed.finish_reason(reason),
                            "logprobs": logprobs_obj(ids, logps, tops)})
        return JSONResponse(envelope("chat.completion", choices,
                                     usage=self._usage(prompt_ids, results)))


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0


def _sse(events: AsyncIterator[dict]) -> StreamingResponse:
    async def lines():
        try:
            async for event in events:
                yield f"data: {json.dumps(event)}\n\n"
        except Exception as e:  # noqa: BLE001 - the status is already sent; report in-band
            log.exception("stream failed")
            yield f"data: {json.dumps({'error': {'message': str(e), 'type': 'server_error'}})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(lines(), media_type="text/event-stream")


def _http_error(request: HTTPRequest, exc: HTTPException) -> JSONResponse:
    """Starlette's own errors (unknown route 404, wrong method 405) as OpenAI-style JSON."""
    codes = {404: "not_found", 405: "method_not_allowed"}
    message = f"{request.method} {request.url.path}: {exc.detail}"
    if exc.status_code == 405 and exc.headers and "Allow" in exc.headers:
        message += f" (allowed: {exc.headers['Allow']})"
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error",
                                   "param": None, "code": codes.get(exc.status_code)}},
                        status_code=exc.status_code, headers=exc.headers)


class _QuietOnShutdown:
    """ASGI middleware: a request task cancelled by the server's shutdown (drain timeout, forced
    exit) ends quietly, with one log line, instead of uvicorn's "Exception in ASGI application"
    traceback; this covers responses already streaming, which the route handler has returned."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError:
            if scope["type"] != "http":
                raise
            log.warning("%s %s cut off by the server's shutdown", scope.get("method"),
                        scope.get("path"))


def build_app(engine: Engine, tokenizer, model_name: str, *, default_max_tokens: int = 256,
              max_n: int = 64, chat_format: str | ChatFormat = DEFAULT_FORMAT,
              max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> Starlette:
    """The Starlette app serving `engine` as `model_name`."""
    server = OpenAIServer(engine, tokenizer, model_name, default_max_tokens=default_max_tokens,
                          max_n=max_n, chat_format=chat_format, max_request_bytes=max_request_bytes)

    def guarded(handler):
        async def endpoint(request: HTTPRequest):
            try:
                return await handler(request)
            except APIError as e:
                return e.response()
            except RequestError as e:
                return APIError(400, str(e)).response()
            except asyncio.CancelledError:
                # Only a shutdown cancels a request's own task (drain timeout or a forced
                # exit); answer it, rather than end in a logged traceback per request.
                return APIError(503, "the server is shutting down; this request was cut off",
                                type="server_error", code="shutting_down").response()
            except (ClientDisconnected, ClientDisconnect):
                # nobody reads this; the work is already cancelled
                return JSONResponse({"error": {"message": "client disconnected",
                                               "type": "invalid_request_error", "param": None,
                                               "code": "client_disconnected"}}, status_code=499)
            except Exception as e:  # noqa: BLE001 - one bad request must not stop the server
                log.exception("request failed")
                return APIError(500, f"internal error: {e}", type="server_error").response()
        return endpoint

    routes = [
        Route("/v1/models", guarded(server.models), methods=["GET"]),
        Route("/v1/completions", guarded(server.completions), methods=["POST"]),
        Route("/v1/chat/completions", guarded(server.chat_completions), methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: _http_error},
                     middleware=[Middleware(_QuietOnShutdown)])


__all__ = ["APIError", "ClientDisconnected", "DEFAULT_MAX_REQUEST_BYTES", "GenerationResult",
           "OpenAIServer", "build_app"]
