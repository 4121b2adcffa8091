"""An OpenAI-compatible HTTP server over the engine (Starlette; run with uvicorn).

Routes: `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions`, both POSTs with
`"stream": true` as server-sent events ending in `data: [DONE]`.

Supported request fields: model, prompt (string or token ids) / messages (+ tools, and
`chat_template_kwargs` passed to the template), max_tokens (or max_completion_tokens),
temperature, top_p, top_k (extension), seed, stop (strings), stop_token_ids (extension), n=1,
logprobs, stream. Generation always stops at the tokenizer's EOS (`<seed:eos>` for Seed-OSS).

Every malformed request gets a 4xx JSON body `{"error": {"message", "type", "param", "code"}}`
(bad JSON, unknown model, too-long prompt, bad parameters); an unexpected failure inside one
request is a 500 for that request only. The server keeps serving either way.
"""

from __future__ import annotations

import contextlib
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
from ppp_jax.sampling.engine import Engine
from ppp_jax.sampling.params import GenerationResult, Request, RequestError, SamplingParams

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
    """Request parsing, generation and response formatting for one engine and one tokenizer."""

    def __init__(self, engine: Engine, tokenizer, model_name: str, *, default_max_tokens: int = 256):
        self.engine = engine
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.default_max_tokens = default_max_tokens
        self.eos_id = tokenizer.eos_token_id

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
        if _field(body, "n", (int,), 1) != 1:
            raise APIError(400, "only n=1 is supported", param="n")
        return body

    def _params(self, body: dict) -> tuple[SamplingParams, list[str]]:
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
                seed=_field(body, "seed", (int,)))
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

    async def _run(self, prompt_ids: list[int], params: SamplingParams, stop: list[str],
                   ) -> AsyncIterator[tuple[str, list[int], list[float], str | None]]:
        """Yields (text delta, new ids, new logprobs, finish reason or None) per decode block."""
        detok = IncrementalDetokenizer(self.tokenizer)
        request = Request(prompt_ids, params)
        sent = 0  # characters of text yielded
        async with contextlib.aclosing(self.engine.stream(request)) as chunks:
            async for chunk in chunks:
                detok.add(chunk.token_ids)
                text = detok.text if chunk.result is not None else detok.text.rstrip("\ufffd")
                reason = None
                for s in stop:
                    at = text.find(s, max(0, sent - len(s)))
                    if at >= 0:
                        text, reason = text[:at], "stop"
                if chunk.result is not None and reason is None:
                    reason = "length" if chunk.result.finish_reason == "length" else "stop"
                delta, sent = text[sent:], max(sent, len(text))
                yield delta, chunk.token_ids, chunk.logprobs, reason
                if reason is not None:
                    return  # leaving the stream cancels the request if it is still running

    async def _collect(self, prompt_ids, params, stop):
        text, ids, logps, reason = "", [], [], "stop"
        async for delta, new_ids, new_logps, fin in self._run(prompt_ids, params, stop):
            text, ids, logps = text + delta, ids + new_ids, logps + new_logps
            reason = fin or reason
        return text, ids, logps, reason

    def _usage(self, prompt_ids, ids) -> dict:
        return {"prompt_tokens": len(prompt_ids), "completion_tokens": len(ids),
                "total_tokens": len(prompt_ids) + len(ids)}

    def _token_strs(self, ids: list[int]) -> list[str]:
        return [self.tokenizer.decode([t]) for t in ids]

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
        params, stop = self._params(body)
        self._check_length(prompt_ids)
        want_logprobs = _field(body, "logprobs", (int,)) is not None
        rid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def envelope(choice, **extra):
            return {"id": rid, "object": "text_completion", "created": created,
                    "model": self.model_name, "choices": [{"index": 0, **choice}], **extra}

        def logprobs_obj(ids, logps):
            if not want_logprobs:
                return None
            return {"tokens": self._token_strs(ids), "token_logprobs": logps,
                    "top_logprobs": None, "text_offset": None}

        if body.get("stream"):
            async def events():
                async for delta, ids, logps, reason in self._run(prompt_ids, params, stop):
                    yield envelope({"text": delta, "finish_reason": reason,
                                    "logprobs": logprobs_obj(ids, logps)})
            return _sse(events())
        text, ids, logps, reason = await self._collect(prompt_ids, params, stop)
        return JSONResponse(envelope({"text": text, "finish_reason": reason,
                                      "logprobs": logprobs_obj(ids, logps)},
                                     usage=self._usage(prompt_ids, ids)))

    async def chat_completions(self, request: HTTPRequest):
        body = await self._body(request)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
            raise APIError(400, "'messages' must be a non-empty list of {role, content} objects",
                           param="messages")
        for m in messages:  # the OpenAI content-parts form, text only
            if isinstance(m.get("content"), list):
                m["content"] = "".join(p.get("text", "") for p in m["content"] if isinstance(p, dict))
            elif m.get("content") is None:
                m["content"] = ""
        kwargs = _field(body, "chat_template_kwargs", (dict,), {})
        try:
            prompt_ids = render_chat(self.tokenizer, messages, tools=body.get("tools"), **kwargs)
        except ValueError as e:
            raise APIError(400, str(e), param="messages") from None
        params, stop = self._params(body)
        self._check_length(prompt_ids)
        want_logprobs = bool(_field(body, "logprobs", (bool,), False))
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def envelope(obj, choice, **extra):
            return {"id": rid, "object": obj, "created": created, "model": self.model_name,
                    "choices": [{"index": 0, **choice}], **extra}

        def logprobs_obj(ids, logps):
            if not want_logprobs:
                return None
            return {"content": [{"token": s, "logprob": lp, "bytes": list(s.encode()),
                                 "top_logprobs": []}
                                for s, lp in zip(self._token_strs(ids), logps)]}

        if body.get("stream"):
            async def events():
                yield envelope("chat.completion.chunk", {
                    "delta": {"role": "assistant", "content": ""}, "finish_reason": None})
                async for delta, ids, logps, reason in self._run(prompt_ids, params, stop):
                    yield envelope("chat.completion.chunk", {
                        "delta": {"content": delta} if delta else {}, "finish_reason": reason,
                        "logprobs": logprobs_obj(ids, logps)})
            return _sse(events())
        text, ids, logps, reason = await self._collect(prompt_ids, params, stop)
        return JSONResponse(envelope("chat.completion", {
            "message": {"role": "assistant", "content": text}, "finish_reason": reason,
            "logprobs": logprobs_obj(ids, logps)}, usage=self._usage(prompt_ids, ids)))


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


def build_app(engine: Engine, tokenizer, model_name: str, *, default_max_tokens: int = 256) -> Starlette:
    """The Starlette app serving `engine` as `model_name`."""
    server = OpenAIServer(engine, tokenizer, model_name, default_max_tokens=default_max_tokens)

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
