"""A 32k-token context on the tiny model: chunked prefill works and KV pages track live tokens."""

from __future__ import annotations

import time

import numpy as np

from ppp_jax.sampling.engine import Engine
from ppp_jax.sampling.params import Request, SamplingParams
from ppp_jax.sampling.config import EngineConfig

LONG = 32 * 1024


# A must-show of its issue: kept in the default suite (about 1-2 min on 2 cores).
def test_32k_context_and_page_accounting(tiny_model):
    page = 64
    cfg = EngineConfig(num_slots=2, page_size=page, num_pages=700, max_seq_len=LONG + 256,
                       decode_steps=8, prefill_chunks=(64, 512), prefill_rows=(1,), block_pages=8)
    rng = np.random.default_rng(0)
    prompt = rng.integers(3, 97, size=LONG).tolist()
    with Engine(tiny_model, cfg) as eng:
        t0 = time.perf_counter()
        res = eng.generate_batch([Request(prompt, SamplingParams(0.0, max_new_tokens=16),
                                          session_id="long")])[0]
        elapsed = time.perf_counter() - t0
        print(f"32k prefill + 16 decode steps: {elapsed:.1f} s")
        assert res.finish_reason == "length" and len(res.token_ids) == 16
        assert np.all(np.isfinite(res.logprobs)) and max(res.logprobs) <= 0.0
        live = LONG + 16 - 1  # the last sampled token is not cached yet
        stats = eng.stats()
        assert stats["pages_used"] == -(-live // page)  # pages follow live tokens, not max_seq_len
        # A short request alongside takes only its own few pages.
        short = eng.generate_batch([Request([5, 6, 7], SamplingParams(0.0, max_new_tokens=4))])[0]
        assert len(short.token_ids) == 4
        assert eng.stats()["pages_used"] == -(-live // page)
        # Continuing the session appends without re-prefilling the 32k tokens.
        before = eng.stats()["prefill_tokens"]
        more = eng.generate_batch([Request([9, 10, 11], SamplingParams(0.0, max_new_tokens=4),
                                           session_id="long")])[0]
        assert eng.stats()["prefill_tokens"] - before == 3
        assert more.prompt_len == LONG + 16 + 3
        eng.end_session("long")
        assert eng.stats()["pages_used"] == 0
