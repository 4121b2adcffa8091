"""`ppp serve` against the official `openai` client on a loopback port."""

from __future__ import annotations


import httpx
import openai
import pytest

from ppp_jax.commands.serve import ServeConfig
from ppp_jax.sampling.chat import load_tokenizer, render_chat
from ppp_jax.sampling.params import Request, SamplingParams
from ppp_jax.sampling.scheduler import EngineConfig
from ppp_jax.sampling.testing import write_tiny_serving_checkpoint
from ppp_jax.sampling.tool_calls import build_message, hidden_token_ids
from tests.sampling.serving import free_port, running_server

MAX_SEQ = 160



@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ckpt = write_tiny_serving_checkpoint(tmp_path_factory.mktemp("serve") / "tiny", seed=2)
    cfg = ServeConfig(checkpoint=str(ckpt), model_name="tiny", port=free_port(),
                      default_max_tokens=24, warmup=False,
                      engine=EngineConfig(num_slots=4, page_size=8, num_pages=96,
                                          max_seq_len=MAX_SEQ, decode_steps=8,
                                          prefill_chunks=(16, 64), prefill_rows=(1, 4),
                                          block_pages=4))
    with running_server(cfg) as (base, engine):
        yield base, engine, ckpt


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0], api_key="unused", max_retries=0)


MESSAGES = [{"role": "system", "content": "you are a helpful agent."},
            {"role": "user", "content": "which file defines the class?"}]


def test_models_and_chat_match_the_engine(server, client):
    _, engine, ckpt = server
    assert [m.id for m in client.models.list().data] == ["tiny"]
    resp = client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=0,
                                          max_tokens=20, logprobs=True)
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    # Same ids through the engine directly, from the chat template's rendering.
    tok = load_tokenizer(ckpt)
    prompt = render_chat(tok, MESSAGES)
    assert tok.decode(prompt).startswith("<seed:bos>system\n")
    direct = engine.generate_batch([Request(prompt, SamplingParams(
        temperature=0.0, max_new_tokens=20, stop_token_ids=(tok.eos_token_id,)))])[0]
    hidden = hidden_token_ids(tok)  # <seed:eos> etc. dropped, Seed markup tokens kept
    text = tok.decode([t for t in direct.token_ids if t not in hidden])
    expect = build_message(text, None, parse_calls=False)  # no tools: only reasoning is split
    assert choice.message.content == expect.content
    assert getattr(choice.message, "reasoning_content", None) == (expect.reasoning or None)
    assert [c.logprob for c in choice.logprobs.content] == pytest.approx(direct.logprobs, abs=1e-6)
    assert resp.usage.prompt_tokens == len(prompt)
    assert resp.usage.completion_tokens == len(direct.token_ids)


def test_streaming_equals_non_streaming(client):
    kw = dict(model="tiny", temperature=0, max_tokens=30, seed=1)
    full = client.chat.completions.create(messages=MESSAGES, **kw).choices[0]
    parts, reasons = [], []
    for chunk in client.chat.completions.create(messages=MESSAGES, stream=True, **kw):
        parts.append(chunk.choices[0].delta.content or "")
        reasons.append(chunk.choices[0].finish_reason)
    assert "".join(parts) == full.message.content
    assert reasons[-1] == full.finish_reason and all(r is None for r in reasons[:-1])

    comp = client.completions.create(model="tiny", prompt="the user asks", max_tokens=30,
                                     temperature=0.8, seed=4)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny", prompt="the user asks", max_tokens=30, temperature=0.8, seed=4, stream=True))
    assert streamed == comp.choices[0].text and comp.usage.completion_tokens >= 1


def test_stop_strings_truncate(client):
    full = client.completions.create(model="tiny", prompt="hello", max_tokens=30,
                                     temperature=0).choices[0].text
    if len(full) < 6:
        pytest.skip("model stopped too early to test stop strings")
    stop = full[3:5]
    cut = client.completions.create(model="tiny", prompt="hello", max_tokens=30, temperature=0,
                                    stop=[stop]).choices[0]
    assert cut.text == full[: full.index(stop)] and cut.finish_reason == "stop"


def test_errors_are_clear_4xx_and_server_stays_up(server, client):
    base, engine, _ = server
    r = httpx.post(f"{base}/chat/completions", content=b"{not json",
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4", messages=MESSAGES)
    assert "tiny" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt=list(range(4, 90)) * 2)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=-1)
    assert "temperature" in str(e.value)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=[{"content": "no role"}])
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt="hi", max_tokens=0)
    # Still serving, and no KV pages leaked by the failed requests.
    ok = client.completions.create(model="tiny", prompt="hi", max_tokens=3, temperature=0)
    assert ok.choices[0].finish_reason in ("stop", "length")
    assert engine.stats()["pages_used"] == 0
