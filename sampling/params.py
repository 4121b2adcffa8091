"""Requests, per-request sampling parameters and results of the sampling engine.

Everything here is plain host-side data. The engine turns a batch of `SamplingParams` into
device arrays (`[B]` temperatures, top-k, top-p, seeds, `[B, max_stop_tokens]` stop ids) once per
decode block, so changing parameters between requests never recompiles anything.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from typing import Literal

FinishReason = Literal["stop", "length", "cancelled"]

# Most alternatives a request may ask for per sampled position (OpenAI's limit for chat).
MAX_TOP_LOGPROBS = 20

# The top alternatives at one sampled position: (token id, log-prob) pairs, most likely first.
TopLogprobs = list[tuple[int, float]]

# The per-request token callback of `Engine.submit`: on_tokens(new_ids, new_logprobs,
# new_top_logprobs), called on the engine thread after each decode block that sampled tokens for
# the request; new_top_logprobs is one `TopLogprobs` per new id when the request asked for them
# (`SamplingParams.top_logprobs` > 0), else None.
TokenCallback = Callable[[list[int], list[float], list[TopLogprobs] | None], None]

_request_ids = itertools.count()


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to sample the continuation of one request.

    Attributes:
      temperature: 0 means greedy (argmax). Otherwise tokens are drawn from
        softmax(logits / temperature), restricted by `top_k` and `top_p`.
      top_p: nucleus sampling: keep the smallest set of most likely tokens whose probability
        (at the sampling temperature) reaches `top_p`. 1.0 disables it.
      top_k: keep only the `top_k` most likely tokens. 0 disables it.
      max_new_tokens: stop with finish reason "length" after this many sampled tokens.
      stop_token_ids: stop with finish reason "stop" right after sampling one of these ids
        (the stop token is included in the result, with its log-prob, because the trainer
        needs it). Seed-OSS ends a turn with `<seed:eos>` (id 2).
      seed: the request's random seed. The k-th sampled token uses
        `fold_in(PRNGKey(seed), k)`, so results never depend on which other requests share the
        batch, on the slot, or on preemption. None: the engine picks a fresh seed.
      top_logprobs: also return, for every sampled position, the `top_logprobs` most likely
        token ids with their log-probs (same distribution as `logprobs` below), in
        `GenerationResult.top_logprobs`. 0 (default) returns none and costs nothing; at most
        `MAX_TOP_LOGPROBS`.

    Log-probs: every result carries, per sampled token, log softmax(logits / T)[token] with
    T = `temperature` (the *untruncated* policy, which is what the trainer computes, not the
    top-k/top-p renormalized sampling distribution). For greedy decoding (T = 0) the log-probs
    are reported at T = 1.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None
    top_logprobs: int = 0

    def __post_init__(self):
        if not self.temperature >= 0.0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.seed is not None and not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {self.seed}")
        if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}], "
                             f"got {self.top_logprobs}")
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclasses.dataclass
class Request:
    """One generation request: prompt token ids plus sampling parameters.

    Attributes:
      prompt_ids: token ids to condition on. For a request that continues a session these are
        only the *new* tokens of this turn (e.g. a rendered tool or user message plus the
        assistant header); they are appended to the session's conversation so far.
      params: sampling parameters.
      session_id: optional session name. A session keeps the KV pages of its conversation
        between turns, so the next turn only prefills the new tokens. Free it with
        `engine.end_session(session_id)`.
      request_id: unique id (assigned automatically when left as None).
    """

    prompt_ids: list[int]
    params: SamplingParams = dataclasses.field(default_factory=SamplingParams)
    session_id: str | None = None
    request_id: str | None = None

    def __post_init__(self):
        self.prompt_ids = [int(t) for t in self.prompt_ids]
        if self.request_id is None:
            self.request_id = f"req-{next(_request_ids)}"


@dataclasses.dataclass(frozen=True)
class GenerationResult:
    """The outcome of one request.

    Attributes:
      request_id: the request's id.
      token_ids: the sampled ids, in order (the stop token, if any, is the last one).
      logprobs: log-prob of each sampled id under the policy at the sampling temperature
        (T = 1 for greedy), float32 precision, same length as `token_ids`.
      finish_reason: "stop" (a stop token was sampled), "length" (max_new_tokens or the engine's
        max_seq_len was reached) or "cancelled".
      prompt_len: how many tokens of context the first sampled token was conditioned on
        (for a session turn: the whole conversation so far plus this turn's prompt).
      session_id: the session this request continued, if any.
      top_logprobs: None unless the request asked (`SamplingParams.top_logprobs` = k > 0); then
        one list per sampled token, of k (token id, log-prob) pairs, most likely first (ties:
        lower id first), log-probs as in `logprobs`.
    """

    request_id: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason
    prompt_len: int
    session_id: str | None = None
    top_logprobs: list[TopLogprobs] | None = None


class RequestError(ValueError):
    """A request the engine cannot serve (too long, bad session use, too many stop ids)."""
