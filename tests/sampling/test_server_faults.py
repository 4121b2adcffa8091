"""`ppp serve` under faults (issue #15 "Serving", issue #14 items 5 and 8).

The server runs a *scripted* tiny checkpoint: a random tiny Seed-OSS model whose attention and
MLP outputs are zeroed, so the residual stream is the current token's embedding, with embeddings
and LM head set so that greedy decoding follows `CHAIN` exactly. So the tests know what the
model writes: a chat answer is "ok" then a tool-call block, and a completion of "z" is "zzz..."
until max_tokens (a request that runs as long as a test needs).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
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
LIMIT = 4 * 2**20  # max_request_bytes of the test server
MAX_STOP = 4  # engine.max_stop_tokens: stop ids a client may send besides the EOS
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


def _completion(prompt="z", **kw):
    return {"model": "tiny", "prompt": prompt, "temperature": 0, **kw}


def _chat(**kw):
    return {"model": "tiny", "messages": MESSAGES, "temperature": 0, **kw}


def _nested(depth: int) -> str:
    return '{"model": "tiny", "messages": ' + "[" * depth + "]" * depth + "}"


# (route, body, expected status, expected `param`): one of every class of invalid value.
POISON = [
    *[("completions", _completion(max_tokens=v), "max_tokens")
      for v in (2**40, -1, 0, "8", 1.5, True)],
    ("chat/completions", _chat(max_completion_tokens=2**40), "max_completion_tokens"),
    ("chat/completions", _chat(max_completion_tokens=0, max_tokens=4), "max_completion_tokens"),
    *[("completions", _completion(top_k=v), "top_k") for v in (2**40, -1, "5")],
    *[("chat/completions", _chat(n=v), "n") for v in (2**40, 0, -1, "2")],
    *[("completions", _completion(seed=v), "seed") for v in (2**40, -1, 1.5)],
    *[("chat/completions", _chat(temperature=v), "temperature") for v in (-1, "hot", 1e300)],
    *[("completions", _completion(top_p=v), "top_p") for v in (0, 1.5, -0.1)],
    *[("completions", _completion(stop_token_ids=v), "stop_token_ids")
      for v in ([2**40], [-1], ["a"], [True], [10, 11, 12, 13, 14], "5")],
    *[("completions", _completion(logprobs=v), "logprobs") for v in (2**40, -1, 21, True)],
    ("chat/completions", _chat(logprobs=True, top_logprobs=2**40), "top_logprobs"),
    ("chat/completions", _chat(logprobs="yes"), "logprobs"),
    ("completions", _completion(prompt=[5, 2**40]), "prompt"),
    ("completions", _completion(stop=["a"] * 17), "stop"),
    ("completions", _completion(stop=[5]), "stop"),
    ("completions", _completion(prompt="z" * (MAX_SEQ + 5)), "prompt"),
    ("completions", _completion(stream="yes"), "stream"),
    ("completions", _completion(stream_options={"include_usage": True}), "stream_options"),
    ("chat/completions", _chat(stream=True, stream_options={"usage": True}), "stream_options"),
    ("chat/completions", _chat(chat_template_kwargs={"tools": []}), "chat_template_kwargs"),
    ("chat/completions", _chat(chat_template_kwargs={"add_generation_prompt": False}),
     "chat_template_kwargs"),
    ("chat/completions", _chat(messages=[{"role": "user", "content": [{"text": 5}]}]), "messages"),
    ("chat/completions", _chat(model="gpt-4"), "model"),
    # Raw bodies: a lone surrogate, NaN / 1e999 (Python's JSON reads them), deep nesting.
    ("chat/completions", '{"model": "tiny", "messages": [{"role": "user", "content": "a\\ud800"}]}',
     "messages"),
    ("completions", '{"model": "tiny", "prompt": "z", "temperature": NaN}', "temperature"),
    ("completions", '{"model": "tiny", "prompt": "z", "top_p": 1e999}', "top_p"),
    ("chat/completions", _nested(200), "messages"),
    ("chat/completions", _nested(100_000), None),
]


def _check_normal(kind: str, resp: httpx.Response) -> None:
    assert resp.status_code == 200, (kind, resp.text)
    if kind == "stream":
        events = [line[6:] for line in resp.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert not any("error" in c for c in chunks)
        assert "".join(c["choices"][0]["text"] for c in chunks) == "z" * 40
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    elif kind == "chat":
        body = resp.json()
        assert [c["message"]["content"] for c in body["choices"]] == ["ok", "ok"]
    else:
        choice = resp.json()["choices"][0]
        assert choice["text"] == "z" * 40 and choice["finish_reason"] == "length"


def test_poison_requests_fail_alone_with_a_4xx_naming_their_parameter(server):
    """Every invalid value class, sent concurrently with normal requests (streaming and not,
    n = 1 and 2): each poison request gets a 4xx whose `param` is the field as the client wrote
    it, and every normal request completes in full. On the old server a top_k, max_tokens or
    stop id beyond int32 failed the whole engine step, and with it every request in flight."""
    base, engine = server
    # The full stop-id allowance, with the EOS id listed too (it is not counted).
    normal = [("plain", "completions", _completion(max_tokens=40,
                                                    stop_token_ids=[2, 10, 11, 12, 13])),
              ("stream", "completions", _completion(max_tokens=40, stream=True)),
              ("chat", "chat/completions", _chat(n=2))] * 3
    jobs = [("normal", kind, route, body) for kind, route, body in normal]
    jobs += [("poison", param, route, body) for route, body, param in POISON]
    order = np.random.default_rng(0).permutation(len(jobs))
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        futures = {pool.submit(post, base, jobs[i][2], jobs[i][3]): jobs[i] for i in order}
        for fut, (what, tag, route, body) in futures.items():
            resp = fut.result()
            if what == "normal":
                _check_normal(tag, resp)
                continue
            assert 400 <= resp.status_code < 500, (tag, str(body)[:80], resp.text)
            error = resp.json()["error"]
            assert error["param"] == tag, (str(body)[:80], error)
            assert error["message"] and (tag is None or tag in error["message"]
                                         or tag == "model"), error
    stats = engine.stats()
    assert stats["active"] == stats["waiting"] == stats["pages_used"] == 0
    assert stats.get("failed", 0) == 0  # nothing reached the engine that it had to fail


def test_engine_fails_only_the_request_that_cannot_run(engine):
    """At the engine's own API (no server in front): requests whose values do not fit the
    device arrays, a prompt id outside the vocabulary, and a token callback that raises each
    fail alone; the requests around them complete. On the old engine the out-of-range values
    failed the batch build (or the prefill), and so every request in flight."""
    vocab = engine.model_config.vocab_size
    good = [Request([3, 4, 5, 6], SamplingParams(temperature=0.5, seed=i, max_new_tokens=24))
            for i in range(6)]
    bad = {"max_new_tokens": Request([3, 4], SamplingParams(max_new_tokens=2**40)),
           "top_k": Request([3, 4], SamplingParams(top_k=2**40)),
           "stop_token_ids": Request([3, 4], SamplingParams(stop_token_ids=(2**40,))),
           "prompt_ids": Request([3, 2**40], SamplingParams()),
           "vocabulary": Request([3, vocab], SamplingParams())}
    raised = []

    def broken_callback(ids, logps, tops):
        raised.append(ids)
        raise RuntimeError("client callback broke")

    requests = good[:3] + list(bad.values()) + good[3:]
    futures = engine.submit_many(requests)
    callback_victim = Request([3, 4, 5], SamplingParams(max_new_tokens=24, seed=1))
    victim = engine.submit(callback_victim, broken_callback)
    for name, fut in zip(bad, futures[3:3 + len(bad)]):
        with pytest.raises(RequestError) as e:
            fut.result(timeout=120)
        assert ("prompt_ids" if name == "vocabulary" else name) in str(e.value)
    with pytest.raises(RuntimeError, match="client callback broke"):
        victim.result(timeout=120)
    assert len(raised) == 1
    for fut in futures[:3] + futures[3 + len(bad):]:
        result = fut.result(timeout=120)
        assert result.finish_reason in ("stop", "length") and result.token_ids
    assert engine.stats()["pages_used"] == 0


def test_slot_row_that_does_not_fit_leaves_the_batch_unchanged():
    batch = SlotBatch.build(2, 4, 2)
    ok = SlotRow(pages=[1, 2], cache_len=5, last_token=7, num_generated=1, max_new_tokens=9,
                 stop_ids=[2], temperature=0.5, top_k=3, top_p=0.9, seed=11)
    batch.set_row(0, ok)
    before = {k: np.copy(v) for k, v in vars(batch).items()}
    for broken in (ok._replace(top_k=2**40), ok._replace(stop_ids=[2**40]),
                   ok._replace(stop_ids=[1, 2, 3]), ok._replace(pages=[1] * 5),
                   ok._replace(seed=2**32)):
        with pytest.raises((OverflowError, ValueError)):
            batch.set_row(1, broken)
        for k, v in vars(batch).items():
            np.testing.assert_array_equal(v, before[k], err_msg=k)
    batch.clear_row(0)
    idle = SlotBatch.build(2, 4, 2)
    for k, v in vars(batch).items():
        np.testing.assert_array_equal(v, getattr(idle, k), err_msg=k)


def _wait_for(predicate, timeout: float, step: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def test_abandoned_non_streaming_request_is_cancelled(server):
    """A client that gives up on a non-streaming request has its generation cancelled at the
    next decode block, freeing its slot; the old server generated all the tokens for nobody.
    The request asks for nearly the whole context (~5 s of decoding on a CI core, ~20 s here) so
    that "cut short" does not depend on how fast the machine decodes: a CI machine generated 1129
    tokens before the cancel took effect, which broke an earlier fixed bound of 1000."""
    base, engine = server
    assert post(base, "completions", _completion(max_tokens=3)).status_code == 200  # compiled
    before = engine.stats()
    max_tokens = MAX_SEQ - 64
    with pytest.raises(httpx.ReadTimeout):
        post(base, "completions", _completion(max_tokens=max_tokens), timeout=1.0)
    gone = time.monotonic()
    assert _wait_for(lambda: engine.stats().get("finished_cancelled", 0)
                     > before.get("finished_cancelled", 0), timeout=3.0)
    cancelled_after = time.monotonic() - gone
    stats = engine.stats()
    assert stats["active"] == 0 and stats["pages_used"] == 0
    generated = stats["decode_tokens"] - before.get("decode_tokens", 0)
    assert generated < max_tokens // 2, (generated, max_tokens)  # cut short, not run out
    assert cancelled_after < 2.0, cancelled_after


def test_oversized_body_is_refused_before_it_is_read(server):
    """413 naming the limit's config key: at once from Content-Length (the body is never sent
    here), and while reading a chunked body with no length."""
    base, engine = server
    host, port = base.split("//")[1].split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST /v1/completions HTTP/1.1\r\nhost: {host}\r\ncontent-type: "
                     f"application/json\r\ncontent-length: {100 * LIMIT}\r\n\r\n{{".encode())
        head = sock.recv(65536).decode()
    assert head.startswith("HTTP/1.1 413"), head[:200]
    body = json.loads(head.split("\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "request_too_large"
    assert "max_request_bytes" in body["error"]["message"]

    def chunks():
        for _ in range(2 * LIMIT // 2**16 + 1):
            yield b" " * 2**16

    resp = httpx.post(f"{base}/completions", content=chunks(), timeout=60)
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "request_too_large"
    assert post(base, "completions", _completion(max_tokens=3)).status_code == 200


def test_models_probe_stays_fast_during_a_big_request(server):
    """Tokenizing a ~2 MB prompt (under the test server's 4 MiB limit) takes seconds here; it runs in a worker thread (through the
    tokenizer call that releases the GIL), so /v1/models answers meanwhile. On the old server
    the probe waited for the whole tokenization."""
    base, _ = server
    big = _completion(prompt="the user asks a question and the assistant answers it. " * 36000)
    result = {}

    def send_big():
        start = time.monotonic()
        result["resp"] = post(base, "completions", big)
        result["took"] = time.monotonic() - start

    thread = threading.Thread(target=send_big)
    thread.start()
    latencies = []
    time.sleep(0.2)
    while thread.is_alive():
        start = time.monotonic()
        assert httpx.get(f"{base}/models", timeout=30).status_code == 200
        latencies.append(time.monotonic() - start)
        time.sleep(0.05)
    thread.join()
    assert result["resp"].status_code == 400  # far longer than the context
    assert result["resp"].json()["error"]["code"] == "context_length_exceeded"
    assert result["took"] > 1.0, "the big request was too quick to show anything"
    # Blocked, a probe would wait about as long as the big request; a loaded 2-core machine
    # alone explains a few hundred ms.
    assert len(latencies) >= 5 and max(latencies) < min(1.0, result["took"] / 3), (
        result["took"], latencies)


def _events(resp: httpx.Response) -> list[dict]:
    lines = [line[6:] for line in resp.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(x) for x in lines[:-1]]


def test_server_details_from_issue_14(server):
    """Too-long prompt names `prompt` on /v1/completions; max_tokens -1 names `max_tokens`;
    a wrong method or route is an OpenAI-style JSON error; stream_options.include_usage adds a
    final usage chunk; a chat without tools never streams tool-call markup as content."""
    base, _ = server
    resp = post(base, "completions", _completion(prompt=[5] * MAX_SEQ))
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "prompt"
    assert resp.json()["error"]["code"] == "context_length_exceeded"
    resp = post(base, "chat/completions", _chat(max_tokens=-1))
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "max_tokens"

    resp = httpx.get(f"{base}/chat/completions")
    assert resp.status_code == 405 and resp.json()["error"]["code"] == "method_not_allowed"
    assert "POST" in resp.json()["error"]["message"]
    resp = httpx.post(f"{base}/nothing/here", json={})
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"

    for route, body in (("completions", _completion(max_tokens=12, n=2)),
                        ("chat/completions", _chat(n=2))):
        full = post(base, route, body).json()
        events = _events(post(base, route, {**body, "stream": True,
                                            "stream_options": {"include_usage": True}}))
        assert events[-1]["choices"] == [] and events[-1]["usage"] == full["usage"]
        assert all(e["usage"] is None for e in events[:-1])
        plain = _events(post(base, route, {**body, "stream": True}))
        assert all("usage" not in e for e in plain)

    # The scripted model answers "ok" and then opens a tool-call block; without tools that
    # block ends the turn, streaming or not.
    full = post(base, "chat/completions", _chat()).json()["choices"][0]
    assert full["message"] == {"role": "assistant", "content": "ok"}
    assert full["finish_reason"] == "stop"
    streamed = _events(post(base, "chat/completions", _chat(stream=True)))
    content = "".join(e["choices"][0]["delta"].get("content") or "" for e in streamed)
    assert content == "ok" and streamed[-1]["choices"][0]["finish_reason"] == "stop"
    none = post(base, "chat/completions", _chat(tool_choice="none", tools=[
        {"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {}}}}])).json()["choices"][0]
    assert none["message"]["content"] == "ok"


def test_missing_chat_template_is_a_server_error_not_the_clients(ckpt, engine):
    """An app built on a tokenizer without a chat template answers chats with a 500
    server_error (a configuration fault), not a 400 blaming the client."""
    from starlette.testclient import TestClient

    from ppp_jax.sampling.chat import load_tokenizer
    from ppp_jax.sampling.server import build_app

    tokenizer = load_tokenizer(ckpt)
    tokenizer.chat_template = None
    with TestClient(build_app(engine, tokenizer, "tiny")) as client:
        resp = client.post("/v1/chat/completions", json=_chat(max_tokens=2))
        assert resp.status_code == 500
        assert resp.json()["error"]["type"] == "server_error"
        assert resp.json()["error"]["code"] == "chat_template_missing"
        resp = client.post("/v1/completions", json=_completion(max_tokens=2))
        assert resp.status_code == 200


def test_serve_refuses_a_checkpoint_without_tokenizer_or_template(ckpt, tmp_path):
    """Checked before any weight is loaded: one line naming the path and what writes the
    files. Through the CLI too: exit 1, no traceback, no engine built."""
    import shutil

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(ckpt / name, bare / name)
    with pytest.raises(StartupError, match="no tokenizer at .*bare.*convert orbax2hf"):
        check_tokenizer(bare)
    no_template = tmp_path / "no_template"
    shutil.copytree(ckpt, no_template)
    config = json.loads((no_template / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (no_template / "tokenizer_config.json").write_text(json.dumps(config))
    (no_template / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(StartupError, match="no chat template"):
        check_tokenizer(no_template)

    cfg = tmp_path / "serve.yaml"
    cfg.write_text(f"checkpoint: {no_template}\nport: {free_port()}\n")
    proc = subprocess.run([sys.executable, "-m", "ppp_jax.cli", "serve", str(cfg)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "loading" not in proc.stderr
    assert "ppp serve:" in proc.stderr and "no chat template" in proc.stderr


class ServeProcess:
    """`ppp serve` in a subprocess, its stderr collected line by line."""

    def __init__(self, ckpt: Path, tmp: Path, name: str, **config):
        self.port = free_port()
        cfg = {"checkpoint": str(ckpt), "model_name": "tiny", "port": self.port,
               "warmup": False, **config}
        path = tmp / f"{name}.yaml"
        path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in cfg.items()))
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "ppp_jax.cli", "serve", str(path)],
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     text=True, env=env)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True).start()

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def wait_ready(self, timeout: float = 240.0) -> None:
        def ready():
            assert self.proc.poll() is None, self.stderr
            try:
                return httpx.get(f"http://127.0.0.1:{self.port}/v1/models", timeout=2).is_success
            except httpx.HTTPError:
                return False
        assert _wait_for(ready, timeout, 0.2), "server did not start:\n" + self.stderr

    def hold_a_request(self) -> socket.socket:
        """A request in flight that never ends by itself: its body is never finished."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: "
                     b"application/json\r\ncontent-length: 100\r\n\r\n{\"model\": ")
        time.sleep(0.3)
        return sock

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def exit_within(self, seconds: float) -> int | None:
        try:
            return self.proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.mark.slow
def test_shutdown_second_signal_drain_timeout_and_interrupted_start(ckpt, tmp_path):
    """Three `ppp serve` processes at once (start-up dominates): a second SIGTERM exits now
    while a request is still in flight; a drain timeout cuts a request in flight off; Ctrl+C
    while the model loads ends with one line and no traceback. The old server waited forever
    for the unfinished request and printed a KeyboardInterrupt traceback."""
    forced = ServeProcess(ckpt, tmp_path, "forced", drain_timeout_s=600)
    timed = ServeProcess(ckpt, tmp_path, "timed", drain_timeout_s=1)
    starting = ServeProcess(ckpt, tmp_path, "starting", warmup=True)
    try:
        assert _wait_for(lambda: "loading" in starting.stderr, 240, 0.05), starting.stderr
        starting.signal(signal.SIGINT)
        assert starting.exit_within(120) == 130, starting.stderr
        assert "Traceback" not in starting.stderr
        assert "ppp serve: interrupted (SIGINT) while starting" in starting.stderr

        forced.wait_ready()
        timed.wait_ready()
        held = [forced.hold_a_request(), timed.hold_a_request()]
        # ... and a response that is streaming when the forced exit comes (4000 tokens).
        streamed = []

        def stream():
            with contextlib.suppress(httpx.HTTPError):
                with httpx.stream("POST", f"http://127.0.0.1:{forced.port}/v1/completions",
                                  json=_completion(max_tokens=4000, stream=True),
                                  timeout=60) as resp:
                    for line in resp.iter_lines():
                        streamed.append(line)

        threading.Thread(target=stream, daemon=True).start()
        assert _wait_for(lambda: len(streamed) > 3, 60), "the stream did not start"
        forced.signal(signal.SIGTERM)
        timed.signal(signal.SIGTERM)
        assert timed.exit_within(30) == 1, timed.stderr  # the 1 s drain ran out
        assert "cut off" in timed.stderr
        assert forced.exit_within(3) is None, "exited while a request was in flight"
        forced.signal(signal.SIGTERM)
        assert forced.exit_within(30) == 1, forced.stderr
        for proc in (forced, timed):
            assert "Traceback" not in proc.stderr, proc.stderr
        for sock in held:
            sock.close()
    finally:
        for proc in (forced, timed, starting):
            proc.kill()


def test_session_survives_a_failed_turn(engine):
    """A turn that fails inside a step (its callback raises) leaves its session usable: the
    next turn runs (re-prefilling the history) instead of finding the session busy."""
    def broken(ids, logps, tops):
        raise RuntimeError("callback broke")

    first = engine.submit(Request([3, 4, 5], SamplingParams(max_new_tokens=4, temperature=0),
                                  session_id="s-fail"))
    assert first.result(timeout=120).finish_reason in ("stop", "length")
    with pytest.raises(RuntimeError):
        engine.submit(Request([6, 7], SamplingParams(max_new_tokens=20), session_id="s-fail"),
                      broken).result(timeout=120)
    again = engine.submit(Request([6, 7], SamplingParams(max_new_tokens=4, temperature=0),
                                  session_id="s-fail")).result(timeout=120)
    assert again.finish_reason in ("stop", "length")
    assert again.prompt_len == 3 + len(first.result().token_ids) + 2
    engine.end_session("s-fail")
    assert engine.stats()["pages_used"] == 0


def _one_error_line(err: str, expect: str) -> bool:
    """stderr holds exactly one `ppp serve:` line, containing `expect`, and no traceback (INFO
    log lines may come before it)."""
    lines = [line for line in err.splitlines() if line.startswith("ppp serve:")]
    assert len(lines) == 1 and expect in lines[0] and "Traceback" not in err, err
    return True


def test_config_and_checkpoint_errors_are_one_line(ckpt, tmp_path, capsys):
    import argparse
    import shutil

    from ppp_jax.commands import serve

    for text, expect in (("checkpoint: x\nmax_request_bytes: 0\n",
                          "max_request_bytes must be >= 1"),
                         ("checkpoint: x\ndrain_timeout_s: -1\n", "drain_timeout_s must be >= 0"),
                         ("checkpoint: x\nmax_body: 5\n", "max_request_bytes")):
        path = tmp_path / "serve.yaml"
        path.write_text(text)
        assert serve.run(argparse.Namespace(config=str(path), overrides=[])) == 2
        assert _one_error_line(capsys.readouterr().err, expect)
    path.write_text(f"checkpoint: {tmp_path / 'missing'}\n")
    assert serve.run(argparse.Namespace(config=str(path), overrides=[])) == 1
    assert _one_error_line(capsys.readouterr().err, "does not exist")
    tokenizer_only = tmp_path / "tokenizer_only"
    tokenizer_only.mkdir()
    for file in ckpt.iterdir():
        if file.name.startswith(("tokenizer", "chat_template")):
            shutil.copy(file, tokenizer_only / file.name)
    path.write_text(f"checkpoint: {tokenizer_only}\nwarmup: false\n")
    assert serve.run(argparse.Namespace(config=str(path), overrides=[])) == 1
    assert _one_error_line(capsys.readouterr().err, "config.json")
