"""`ppp serve` under faults (issue #15 "Serving", issue #14 items 5 and 8).

The server runs a *scripted* tiny checkpoint: a random tiny Seed-OSS model whose attention and
MLP outputs are zeroed, so the residual stream is the current token's embedding, with embeddings
and LM head set so that greedy decoding follows `CHAIN` exactly. So the tests know what the
model writes: a chat answer is "ok" then a tool-call block, and a completion of "z" is "zzz..."
until max_tokens (a request that runs as long as a test needs).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from ppp_jax.commands.serve import ServeConfig, StartupError, check_tokenizer
from ppp_jax.sampling.config import EngineConfig
from ppp_jax.sampling.params import Request, RequestError, SamplingParams
from ppp_jax.sampling.runner import SlotBatch, SlotRow
from ppp_jax.sampling.testing import write_tiny_serving_checkpoint
from tests.sampling.serving import free_port, running_server

# token -> the token greedy decoding writes after it
CHAIN = {"\n": "o", "o": "k", "k": "<seed:tool_call>", "<seed:tool_call>": "x",
         "x": "</seed:tool_call>", "</seed:tool_call>": "<seed:eos>", "z": "z"}
MAX_SEQ = 4096
LIMIT = 2**20  # max_request_bytes of the test server
MAX_STOP = 4  # engine.max_stop_tokens: the client may send 3 besides EOS
ENGINE = EngineConfig(num_slots=4, page_size=16, num_pages=4 * MAX_SEQ // 16 + 1,
                      max_seq_len=MAX_SEQ, decode_steps=8, prefill_chunks=(16, 64),
                      prefill_rows=(1, 4), block_pages=8, max_stop_tokens=MAX_STOP)
MESSAGES = [{"role": "user", "content": "hello"}]


def write_scripted_checkpoint(path: Path) -> Path:
    """A servable tiny checkpoint whose greedy output follows CHAIN (see module docstring)."""
    import safetensors.numpy as st

    from ppp_jax.sampling.chat import load_tokenizer

    write_tiny_serving_checkpoint(path, seed=5, max_position_embeddings=MAX_SEQ)
    vocab = load_tokenizer(path).get_vocab()
    file = path / "model.safetensors"
    weights = dict(st.load_file(str(file)))
    for name in weights:
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            weights[name] = np.zeros_like(weights[name])
    embed = np.zeros_like(weights["model.embed_tokens.weight"])
    head = np.zeros_like(weights["lm_head.weight"])
    for j, (token, after) in enumerate(CHAIN.items()):
        embed[vocab[token], j] = 1.0
        head[vocab[after], j] = 10.0
    weights["model.embed_tokens.weight"], weights["lm_head.weight"] = embed, head
    weights["model.norm.weight"] = np.ones_like(weights["model.norm.weight"])
    st.save_file(weights, str(file), metadata={"format": "pt"})
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_scripted_checkpoint(tmp_path_factory.mktemp("faults") / "scripted")


@pytest.fixture(scope="module")
def server(ckpt):
    cfg = ServeConfig(checkpoint=str(ckpt), model_name="tiny", port=free_port(),
                      default_max_tokens=16, warmup=False, max_request_bytes=LIMIT, engine=ENGINE)
    with running_server(cfg) as (base, engine):
        yield base, engine


def post(base: str, route: str, body, timeout: float = 60.0) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(f"{base}/{route}", content=content, timeout=timeout,
                      headers={"content-type": "application/json"})
