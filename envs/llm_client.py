"""An async client for any OpenAI-compatible chat-completions endpoint, with retries and limits.

`LLMClient` wraps `openai.AsyncOpenAI` (its own retries switched off) and adds:

* the API key read from a *named* environment variable (`api_key_env`), never stored in the
  config, never logged, and masked in `repr`;
* a per-request timeout, and retries with exponential backoff (base * 2**attempt, capped, with
  deterministic jitter off by default) on HTTP 429, 5xx, timeouts, connection errors and
  malformed response bodies; other 4xx errors are not retried;
* an `asyncio.Semaphore` limiting requests in flight;
* event-loop rebinding: the HTTP client and the semaphore belong to the event loop that first
  uses them; when `chat` runs in a *different* loop (the trainer runs each rollout round under
  its own `asyncio.run`), both are rebuilt for the new loop and the old HTTP client is closed
  best-effort (`stats["loop_rebinds"]` counts this). One loop at a time: a client must not be
  used from two live loops concurrently;
* counters (`stats`): requests, successes, retries, failures, and per-cause retry counts.

Used by the LLM user simulator, the LLM vaguenizer, the OpenAI-backed policy and the answer judge.
Failures after the last retry raise `LLMRequestError` (the message never contains the key).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
from typing import Any

import openai

log = logging.getLogger(__name__)

# Used when the key variable is unset and a key is not required (local vLLM-style servers).
PLACEHOLDER_KEY = "EMPTY"


class LLMRequestError(RuntimeError):
    """A chat request failed for good (non-retriable error, or retries exhausted)."""


@dataclasses.dataclass(frozen=True)
class LLMClientConfig:
    """Where and how to call the chat endpoint. Holds the *name* of the key variable only."""

    model: str = "gpt-5-nano"
    base_url: str | None = None  # None = the openai library's default (api.openai.com)
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the key
    require_api_key: bool = False  # raise if the variable is unset (else send a placeholder)
    timeout_s: float = 120.0  # per request
    max_retries: int = 3  # retries after the first attempt
    backoff_base_s: float = 1.0  # sleep base * 2**attempt before retry `attempt` (0-based)
    backoff_max_s: float = 30.0
    max_concurrency: int = 32  # requests in flight per client
    temperature: float | None = None  # None = the endpoint's default
    max_tokens: int | None = None

    def __post_init__(self):
        if self.max_retries < 0 or self.max_concurrency < 1 or self.timeout_s <= 0:
            raise ValueError(
                "LLMClientConfig needs max_retries >= 0, max_concurrency >= 1, timeout_s > 0"
            )


@dataclasses.dataclass(frozen=True)
class ChatResult:
    """One successful completion: the first choice's text, tool calls, and the raw response."""

    text: str
    tool_calls: tuple[dict[str, Any], ...]
    finish_reason: str | None
    response: Any  # the openai ChatCompletion object
    attempts: int = 1  # HTTP attempts this result took (1 + the client's retries)


def backoff_delay(attempt: int, base_s: float, max_s: float) -> float:
    """Seconds to sleep before retry number `attempt` (0-based): min(base * 2**attempt, max)."""
    return min(base_s * (2**attempt), max_s)


class LLMClient:
    """Async chat client with retries, backoff, timeouts and a concurrency limit."""

    def __init__(self, config: LLMClientConfig):
        self.config = config
        key = os.environ.get(config.api_key_env)
        if not key:
            if config.require_api_key:
                raise LLMRequestError(
                    f"environment variable {config.api_key_env} is not set and a key is required"
                )
            key = PLACEHOLDER_KEY
        self._key = key
        self._client = self._new_client()
        self._semaphore = asyncio.Semaphore(config.max_concurrency)
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop _client/_semaphore serve
        self.stats: dict[str, int] = {
            "loop_rebinds": 0,
            "requests": 0,
            "successes": 0,
            "retries": 0,
            "failures": 0,
            "retry_rate_limit": 0,
            "retry_server_error": 0,
            "retry_timeout": 0,
            "retry_connection": 0,
            "retry_malformed": 0,
        }

    def __repr__(self) -> str:
        c = self.config
        return f"LLMClient(model={c.model!r}, base_url={c.base_url!r}, api_key=<from ${c.api_key_env}>)"

    def _new_client(self) -> openai.AsyncOpenAI:
        c = self.config
        return openai.AsyncOpenAI(
            api_key=self._key, base_url=c.base_url, timeout=c.timeout_s, max_retries=0
        )

    async def _bind_loop(self) -> None:
        """Makes the HTTP client and semaphore belong to the running loop (see module docstring).

        First use binds to the running loop. In a different loop, a fresh client and semaphore
        are built and the old client is closed best-effort: its connections were opened in the
        old (usually already closed) loop, so closing may fail; that is logged and ignored.
        """
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        if self._loop is None:
            self._loop = loop
            return
        old = self._client
        self._client = self._new_client()
        self._semaphore = asyncio.Semaphore(self.config.max_concurrency)
        self._loop = loop
        self.stats["loop_rebinds"] += 1
        await _close_quietly(old)

    async def close(self) -> None:
        """Closes the HTTP connections. Safe to call from any loop and more than once; a client
        last used in another (closed) loop is closed best-effort."""
        if self._loop is None or self._loop is asyncio.get_running_loop():
            await self._client.close()
        else:
            await _close_quietly(self._client)

    async def __aenter__(self) -> "LLMClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        **params: Any,
    ) -> ChatResult:
        """Sends one chat-completions request (with retries) and returns the first choice.

        Extra keyword args (e.g. `tool_choice`, `stop`, `seed`) are passed to the endpoint.
        Raises LLMRequestError when the request fails for good.
        """
        c = self.config
        kwargs: dict[str, Any] = {"model": c.model, "messages": messages, **params}
        if tools is not None:
            kwargs["tools"] = tools
        if c.temperature is not None:
            kwargs.setdefault("temperature", c.temperature)
        if c.max_tokens is not None:
            kwargs.setdefault("max_tokens", c.max_tokens)
        await self._bind_loop()
        async with self._semaphore:
            for attempt in range(c.max_retries + 1):
                self.stats["requests"] += 1
                try:
                    response = await self._client.chat.completions.create(**kwargs)
                    result = _parse_response(response, attempts=attempt + 1)
                    self.stats["successes"] += 1
                    return result
                except Exception as e:  # noqa: BLE001 -- classified just below
                    cause = _retry_cause(e)
                    if cause is None or attempt == c.max_retries:
                        self.stats["failures"] += 1
                        kind = "non-retriable" if cause is None else f"gave up after {attempt + 1} tries"
                        raise LLMRequestError(
                            f"chat request to model {c.model!r} failed ({kind}): "
                            f"{type(e).__name__}: {_safe_message(e, self._key)}"
                        ) from None
                    self.stats["retries"] += 1
                    self.stats[f"retry_{cause}"] += 1
                    delay = backoff_delay(attempt, c.backoff_base_s, c.backoff_max_s)
                    log.warning(
                        "chat request retry %d/%d in %.2fs (%s: %s)",
                        attempt + 1, c.max_retries, delay, cause, type(e).__name__,
                    )
                    await asyncio.sleep(delay)
        raise AssertionError("unreachable")


class MalformedResponseError(ValueError):
    """The endpoint answered 200 but the body is not a usable chat completion."""


async def _close_quietly(client: Any) -> None:
    """Closes an HTTP client whose loop may be gone; failures are logged, never raised."""
    try:
        await asyncio.wait_for(client.close(), timeout=5.0)
    except Exception as e:  # noqa: BLE001 -- connections of a dead loop cannot be closed cleanly
        log.debug("closing a client from a previous event loop failed: %s: %s",
                  type(e).__name__, e)


def _parse_response(response: Any, attempts: int = 1) -> ChatResult:
    choices = getattr(response, "choices", None)
    if not choices:
        raise MalformedResponseError("response has no choices")
    msg = getattr(choices[0], "message", None)
    if msg is None:
        raise MalformedResponseError("first choice has no message")
    tool_calls = []
    for tc in getattr(msg, "tool_calls", None) or ():
        fn = getattr(tc, "function", None)
        tool_calls.append(
            {
                "id": getattr(tc, "id", None),
                "name": getattr(fn, "name", None),
                "arguments": getattr(fn, "arguments", None),
            }
        )
    text = msg.content if isinstance(msg.content, str) else ""
    if not text and not tool_calls:
        raise MalformedResponseError("first choice has neither content nor tool calls")
    return ChatResult(text, tuple(tool_calls), getattr(choices[0], "finish_reason", None), response,
                      attempts)


def _retry_cause(e: Exception) -> str | None:
    """Why `e` is worth retrying ("rate_limit", "server_error", ...), or None if it is not."""
    if isinstance(e, openai.APITimeoutError):
        return "timeout"
    if isinstance(e, openai.APIConnectionError):
        return "connection"
    if isinstance(e, openai.RateLimitError):
        return "rate_limit"
    if isinstance(e, openai.APIStatusError):
        return "server_error" if e.status_code >= 500 else None
    if isinstance(e, (MalformedResponseError, openai.APIResponseValidationError, json.JSONDecodeError)):
        return "malformed"
    return None


ERROR_TEXT_LIMIT = 300  # characters of an endpoint's error text kept in LLMRequestError
_MIN_FRAGMENT = 8  # shortest run of key characters redacted anywhere in the text
_MIN_TAIL = 4  # shortest key prefix redacted where the text ends (a body cut mid-key)
REDACTED = "<redacted>"


def redact_secret(text: str, secret: str | None, limit: int = ERROR_TEXT_LIMIT) -> str:
    """`text` with every trace of `secret` replaced by "<redacted>", then cut to `limit` chars.

    Redaction comes first: cutting first could leave a prefix of the key at the cut, where a
    whole-key replace no longer finds it. Besides whole occurrences, any run of at least 8
    characters that occurs inside the secret is redacted (an error body may quote the key
    partly, or masked in the middle), and so is a prefix of the secret of at least 4
    characters at the very end (a body that was itself cut inside the key). Pure function.
    """
    if secret and secret != PLACEHOLDER_KEY:
        text = text.replace(secret, REDACTED)
        k = min(_MIN_FRAGMENT, len(secret))
        grams = {secret[i:i + k] for i in range(len(secret) - k + 1)}
        covered = [False] * len(text)
        for i in range(len(text) - k + 1):
            if text[i:i + k] in grams:
                covered[i:i + k] = [True] * k
        out, i = [], 0
        while i < len(text):
            if covered[i]:
                while i < len(text) and covered[i]:
                    i += 1
                out.append(REDACTED)
            else:
                out.append(text[i])
                i += 1
        text = "".join(out)
        for n in range(min(len(secret), len(text)), min(_MIN_TAIL, len(secret)) - 1, -1):
            if text.endswith(secret[:n]):
                text = text[:-n] + REDACTED
                break
    if len(text) > limit:
        text = text[:limit]
        # a cut inside the marker would leave "<reda": drop the partial marker
        start = text.rfind("<")
        if start >= 0 and REDACTED.startswith(text[start:]) and text[start:] != REDACTED:
            text = text[:start]
    return text


def _safe_message(e: Exception, key: str | None) -> str:
    """A short error message with the API key scrubbed (defence in depth)."""
    return redact_secret(str(e), key)
