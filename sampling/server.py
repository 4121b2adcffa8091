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
(the text is returned unparsed, reasoning still split off).

Every malformed request gets a 4xx JSON body `{"error": {"message", "type", "param", "code"}}`
(bad JSON, unknown model, too-long prompt, bad parameters); an unexpected failure inside one
request is a 500 for that request only. The server keeps serving either way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from ppp_jax.sampling.chat import IncrementalDetokenizer, encode, render_chat
from ppp_jax.sampling.chat_format import DEFAULT_FORMAT, ChatFormat, get_format
from ppp_jax.sampling.engine import Engine
from ppp_jax.sampling.params import (MAX_TOP_LOGPROBS, GenerationResult, Request, RequestError,
                                     SamplingParams)
from ppp_jax.sampling.tool_calls import (ChatStreamParser, build_message, hidden_token_ids,
                                         prepare_messages)

log = logging.getLogger(__name__)


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


def _field(body: dict, name: str, types: tuple[type, ...], default: Any = None) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in types:
        raise APIError(400, f"'{name}' must be {' or '.join(t.__name__ for t in types)}", param=name)
    if not isinstance(value, types):
        raise APIError(400, f"'{name}' must be {' or '.join(t.__name__ for t in types)}, "
                            f"got {type(value).__name__}", param=name)
    return value


class OpenAIServer:
    """Request parsing, generation and response formatting for one engine and one tokenizer.

    chat_format: the model's chat format (or its registry name), for tool calls and reasoning.
    """

    def __init__(self, engine: Engine, tokenizer, model_name: str, *, default_max_tokens: int = 256,
                 max_n: int = 64, chat_format: str | ChatFormat = DEFAULT_FORMAT):
        self.engine = engine
        self.chat_format = get_format(chat_format)
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.default_max_tokens = default_max_tokens
        self.max_n = max_n
        self.eos_id = tokenizer.eos_token_id
        self.hidden_ids = frozenset(hidden_token_ids(tokenizer, self.chat_format))

    # ---- parsing -------------------------------------------------------------------------

    async def _body(self, request: HTTPRequest) -> dict:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise APIError(400, "request body must be a JSON object", code="invalid_json")
        model = body.get("model")
        if model is None:
            raise APIError(400, "missing required field 'model'", param="model")
        if model != self.model_name:
            raise APIError(404, f"the model {model!r} does not exist; this server serves "
                                f"{self.model_name!r}", param="model", code="model_not_found")
        n = _field(body, "n", (int,), 1)
        if not 1 <= n <= self.max_n:
            raise APIError(400, f"'n' must be between 1 and {self.max_n}", param="n")
        return body

    @staticmethod
    def _top_count(value: int, param: str) -> int:
        if not 0 <= value <= MAX_TOP_LOGPROBS:
            raise APIError(400, f"'{param}' must be between 0 and {MAX_TOP_LOGPROBS}, got {value}",
                           param=param)
        return value

    def _choice_params(self, params: SamplingParams, n: int) -> list[SamplingParams]:
        """n copies of params; with a seed, choice i uses seed + i (so the n differ)."""
        if params.seed is None:
            return [params] * n
        return [dataclasses.replace(params, seed=(params.seed + i) % 2**32) for i in range(n)]

    def _params(self, body: dict, top_logprobs: int = 0) -> tuple[SamplingParams, list[str]]:
        max_tokens = _field(body, "max_completion_tokens", (int,)) or _field(
            body, "max_tokens", (int,), self.default_max_tokens)
        stop = _field(body, "stop", (str, list), [])
        stop = [stop] if isinstance(stop, str) else stop
        if not all(isinstance(s, str) and s for s in stop):
            raise APIError(400, "'stop' must be a non-empty string or a list of them", param="stop")
        stop_ids = _field(body, "stop_token_ids", (list,), [])
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in stop_ids):
            raise APIError(400, "'stop_token_ids' must be a list of ints", param="stop_token_ids")
        if self.eos_id is not None:
            stop_ids = [self.eos_id] + [t for t in stop_ids if t != self.eos_id]
        try:
            params = SamplingParams(
                temperature=float(_field(body, "temperature", (int, float), 1.0)),
                top_p=float(_field(body, "top_p", (int, float), 1.0)),
                top_k=_field(body, "top_k", (int,), 0),
                max_new_tokens=max_tokens,
                stop_token_ids=tuple(stop_ids),
                seed=_field(body, "seed", (int,)),
                top_logprobs=top_logprobs)
        except ValueError as e:
            raise APIError(400, str(e)) from None
        return params, stop

    def _check_length(self, prompt_ids: list[int]) -> None:
        limit = self.engine.config.max_seq_len
        if not prompt_ids:
            raise APIError(400, "the prompt is empty", param="prompt")
        if len(prompt_ids) >= limit:
            raise APIError(400, f"the prompt has {len(prompt_ids)} tokens; this model's context "
                                f"is {limit} tokens including the completion",
                           param="messages", code="context_length_exceeded")
        vocab = self.engine.model_config.vocab_size
        if any(not 0 <= t < vocab for t in prompt_ids):
            raise APIError(400, f"prompt token ids must be in [0, {vocab})", param="prompt")

    # ---- generation ----------------------------------------------------------------------

    async def _run(self, prompt_ids: list[int], params: list[SamplingParams], stop: list[str],
                   hidden_ids: frozenset[int] | None = None,
                   ) -> AsyncIterator[tuple[int, str, list[int], list[float], list, str | None]]:
        """Generates len(params) choices of one prompt, submitted together so that they share
        the prompt's prefill and KV pages. Yields (choice index, full text so far, new ids, new
        logprobs, new top log-probs (one list of (id, logprob) per id; empty lists when not
        asked), finish reason or None) per decode block and choice; each choice's last item has
        its finish reason. hidden_ids: see `IncrementalDetokenizer` (None: skip specials).
        """
        requests = [Request(list(prompt_ids), p) for p in params]
        detoks = [IncrementalDetokenizer(self.tokenizer, hidden_ids=hidden_ids) for _ in params]
        done = [False] * len(params)
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
                if chunk.result is not None and reason is None:
                    reason = "length" if chunk.result.finish_reason == "length" else "stop"
                if reason is not None:
                    done[i] = True
                    self.engine.cancel(requests[i].request_id)  # a no-op when it already ended
                tops = chunk.top_logprobs or [[] for _ in chunk.token_ids]
                yield i, text, chunk.token_ids, chunk.logprobs, tops, reason
                if all(done):
                    return

    async def _collect(self, prompt_ids, params, stop, hidden_ids=None):
        """Per choice: (text, ids, logprobs, top log-probs, finish reason)."""
        out = [["", [], [], [], "stop"] for _ in params]
        async for i, text, new_ids, new_logps, new_tops, fin in self._run(
                prompt_ids, params, stop, hidden_ids):
            out[i][0] = text
            out[i][1] += new_ids
            out[i][2] += new_logps
            out[i][3] += new_tops
            out[i][4] = fin or out[i][4]
        return [tuple(o) for o in out]

    def _usage(self, prompt_ids, choices) -> dict:
        completion = sum(len(c[1]) for c in choices)
        return {"prompt_tokens": len(prompt_ids), "completion_tokens": completion,
                "total_tokens": len(prompt_ids) + completion}

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
            prompt_ids = encode(self.tokenizer, prompt)
        elif isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            prompt_ids = list(prompt)
        else:
            raise APIError(400, "'prompt' must be a string or a list of token ids", param="prompt")
        num_logprobs = _field(body, "logprobs", (int,))
        want_logprobs = num_logprobs is not None
        num_top = self._top_count(num_logprobs, "logprobs") if want_logprobs else 0
        params, stop = self._params(body, num_top)
        self._check_length(prompt_ids)
        choice_params = self._choice_params(params, _field(body, "n", (int,), 1))
        rid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())

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
                async for i, text, ids, logps, tops, reason in self._run(
                        prompt_ids, choice_params, stop):
                    delta, sent[i] = text[sent[i]:], max(sent[i], len(text))
                    yield envelope([{"index": i, "text": delta, "finish_reason": reason,
                                     "logprobs": logprobs_obj(ids, logps, tops)}])
            return _sse(events())
        results = await self._collect(prompt_ids, choice_params, stop)
        return JSONResponse(envelope(
            [{"index": i, "text": text, "finish_reason": reason,
              "logprobs": logprobs_obj(ids, logps, tops)}
             for i, (text, ids, logps, tops, reason) in enumerate(results)],
            usage=self._usage(prompt_ids, results)))

    async def chat_completions(self, request: HTTPRequest):
        body = await self._body(request)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
            raise APIError(400, "'messages' must be a non-empty list of {role, content} objects",
                           param="messages")
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
        parse_calls = bool(tools) and tool_choice == "auto"
        try:
            messages = prepare_messages(messages, self.chat_format)
        except ValueError as e:
            raise APIError(400, str(e), param="messages") from None
        kwargs = _field(body, "chat_template_kwargs", (dict,), {})
        try:
            prompt_ids = render_chat(self.tokenizer, messages, tools=tools or None, **kwargs)
        except ValueError as e:
            raise APIError(400, str(e), param="messages") from None
        want_logprobs = bool(_field(body, "logprobs", (bool,), False))
        num_top = self._top_count(_field(body, "top_logprobs", (int,), 0), "top_logprobs")
        if num_top and not want_logprobs:
            raise APIError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
        params, stop = self._params(body, num_top)
        self._check_length(prompt_ids)
        choice_params = self._choice_params(params, _field(body, "n", (int,), 1))
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

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
                for i in range(len(choice_params)):
                    yield envelope("chat.completion.chunk", [{
                        "index": i, "delta": {"role": "assistant", "content": ""},
                        "finish_reason": None}])
                async for i, text, ids, logps, tops, reason in self._run(
                        prompt_ids, choice_params, stop, self.hidden_ids):
                    if reason is None:
                        deltas = parsers[i].feed(text)
                    else:
                        deltas, reason = parsers[i].finish(text, reason)
                    merged = {k: v for d in deltas for k, v in d.items()}
                    yield envelope("chat.completion.chunk", [{
                        "index": i, "delta": merged, "finish_reason": reason,
                        "logprobs": logprobs_obj(ids, logps, tops)}])
            return _sse(events())
        results = await self._collect(prompt_ids, choice_params, stop, self.hidden_ids)
        choices = []
        for i, (text, ids, logps, tops, reason) in enumerate(results):
            parsed = build_message(text, tools, parse_calls=parse_calls, id_prefix=call_prefix(i),
                                   chat_format=self.chat_format)
            choices.append({"index": i, "message": parsed.message(),
                            "finish_reason": parsed.finish_reason(reason),
                            "logprobs": logprobs_obj(ids, logps, tops)})
        return JSONResponse(envelope("chat.completion", choices,
                                     usage=self._usage(prompt_ids, results)))


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


def build_app(engine: Engine, tokenizer, model_name: str, *, default_max_tokens: int = 256,
              max_n: int = 64, chat_format: str | ChatFormat = DEFAULT_FORMAT) -> Starlette:
    """The Starlette app serving `engine` as `model_name`."""
    server = OpenAIServer(engine, tokenizer, model_name, default_max_tokens=default_max_tokens,
                          max_n=max_n, chat_format=chat_format)

    def guarded(handler):
        async def endpoint(request: HTTPRequest):
            try:
                return await handler(request)
            except APIError as e:
                return e.response()
            except RequestError as e:
                return APIError(400, str(e)).response()
            except Exception as e:  # noqa: BLE001 - one bad request must not stop the server
                log.exception("request failed")
                return APIError(500, f"internal error: {e}", type="server_error").response()
        return endpoint

    routes = [
        Route("/v1/models", guarded(server.models), methods=["GET"]),
        Route("/v1/completions", guarded(server.completions), methods=["POST"]),
        Route("/v1/chat/completions", guarded(server.chat_completions), methods=["POST"]),
    ]
    return Starlette(routes=routes)


__all__ = ["APIError", "GenerationResult", "OpenAIServer", "build_app"]
