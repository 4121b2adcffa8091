"""A tiny, real OpenAI-compatible chat-completions server on loopback, scriptable per test.

It is a Starlette app served by uvicorn in a background thread on 127.0.0.1 (a free port), so
clients talk real HTTP to it. Each `POST /v1/chat/completions` takes the next *action* from a
script queue (or, when the queue is empty, from `server.default` or a `responder` callback) and
records the request (JSON body and headers) in `server.requests`.

Actions (build them with the helpers below):
  reply(text)                       a normal 200 completion with `text` as the message content
  tool_call_reply(name, args, ...)  a 200 completion whose message carries one or more tool calls
  error(status, message)            an error status (429, 500, 400, ...) with an OpenAI error body
  malformed(body, status=200)       a raw body returned as-is (not valid JSON, or JSON missing keys)
  delayed(action, seconds)          sleep first (to trigger client timeouts), then run `action`

Usage:
    with FakeOpenAIServer() as server:
        server.push(error(500), reply("hello"))
        client = LLMClient(LLMClientConfig(model="fake", base_url=server.base_url))
        ...
        assert server.requests[-1]["body"]["messages"][0]["role"] == "system"

In a test, take the shared fixtures of tests/conftest.py instead of starting one: `server` (one
started server per test module) or `fake` (that server, reset for the test).

`responder(body) -> action` (settable attribute) computes an action from the request body when
the queue is empty, e.g. to echo. `GET /v1/models` lists one model named "fake-model".
Streaming is not supported. Usable from any test (the policy test reuses it for tool calls).
"""

from __future__ import annotations

import asyncio
import collections
import json
import socket
import threading
import time
from typing import Any, Callable

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

Action = dict[str, Any]


def reply(text: str, *, finish_reason: str = "stop", model: str = "fake-model") -> Action:
    """A 200 chat completion with `text` as the assistant message content."""
    return {"kind": "reply", "text": text, "finish_reason": finish_reason, "model": model}


def tool_call_reply(
    name: str | list[tuple[str, dict[str, Any]]],
    arguments: dict[str, Any] | None = None,
    *,
    content: str | None = None,
) -> Action:
    """A 200 completion with tool calls: one `(name, arguments)` or a list of such pairs."""
    calls = [(name, arguments or {})] if isinstance(name, str) else list(name)
    return {"kind": "tool_calls", "calls": calls, "content": content}


def error(status: int, message: str = "scripted error") -> Action:
    """An HTTP error with an OpenAI-style error body."""
    return {"kind": "error", "status": status, "message": message}


def malformed(body: str, status: int = 200, content_type: str = "application/json") -> Action:
    """A raw response body returned verbatim (e.g. "not json", or '{"choices": []}')."""
    return {"kind": "raw", "body": body, "status": status, "content_type": content_type}


def delayed(action: Action, seconds: float) -> Action:
    """`action`, after sleeping `seconds` on the server."""
    return {**action, "delay": seconds}


def _completion(choice_message: dict[str, Any], finish_reason: str, model: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-fake-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": choice_message, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


class FakeOpenAIServer:
    """The server; a context manager that starts/stops uvicorn in a daemon thread."""

    def __init__(self):
        self.script: collections.deque[Action] = collections.deque()
        self.requests: list[dict[str, Any]] = []
        self.default: Action = error(500, "fake server script exhausted")
        self.responder: Callable[[dict[str, Any]], Action] | None = None
        self.in_flight = 0  # requests being handled now
        self.max_in_flight = 0  # the most ever handled at once (for concurrency-limit tests)
        self._lock = threading.Lock()
        self._port = _free_port()
        app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ]
        )
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self._port, log_level="warning", access_log=False
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}/v1"

    def push(self, *actions: Action) -> None:
        """Appends actions to the script (consumed one per request, in order)."""
        with self._lock:
            self.script.extend(actions)

    def wait_idle(self, timeout_s: float = 5.0) -> None:
        """Waits until no request is being handled (e.g. delayed ones a timed-out client left)."""
        deadline = time.monotonic() + timeout_s
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)

    def reset(self) -> None:
        """Waits for idle, then clears the script, requests, responder, default and counters."""
        self.wait_idle()
        with self._lock:
            self.script.clear()
            self.requests.clear()
            self.responder = None
            self.default = error(500, "fake server script exhausted")
            self.max_in_flight = 0

    def start(self) -> "FakeOpenAIServer":
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake OpenAI server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    async def _models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

    async def _chat(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            body = {"_unparsed": raw.decode("utf-8", "replace")}
        with self._lock:
            self.requests.append({"body": body, "headers": dict(request.headers)})
            if self.script:
                action = self.script.popleft()
            elif self.responder is not None:
                action = self.responder(body)
            else:
                action = self.default
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if action.get("delay"):
                await asyncio.sleep(action["delay"])
            return self._respond(action)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _respond(self, action: Action) -> Response:
        kind = action["kind"]
        if kind == "reply":
            msg = {"role": "assistant", "content": action["text"]}
            return JSONResponse(_completion(msg, action["finish_reason"], action["model"]))
        if kind == "tool_calls":
            calls = [
                {
                    "id": f"call_{i}",
                    "type": "function",
                    "function": {"name": n, "arguments": json.dumps(a)},
                }
                for i, (n, a) in enumerate(action["calls"])
            ]
            msg = {"role": "assistant", "content": action["content"], "tool_calls": calls}
            return JSONResponse(_completion(msg, "tool_calls", "fake-model"))
        if kind == "error":
            err = {"error": {"message": action["message"], "type": "fake", "code": action["status"]}}
            return JSONResponse(err, status_code=action["status"])
        if kind == "raw":
            return Response(
                action["body"], status_code=action["status"], media_type=action["content_type"]
            )
        raise ValueError(f"unknown fake-server action kind {kind!r}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
