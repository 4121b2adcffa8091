"""`ppp serve` against the official `openai` client on a loopback port."""

from __future__ import annotations


import httpx
import openai
import pytest

from ppp_jax.commands.serve import ServeConfig
from ppp_jax.sampling.chat import load_tokenizer, render_chat
from ppp_jax.sampling.params import Request, SamplingParams
from ppp_jax.sampling.config import EngineConfig
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


def test_top_logprobs_chat_and_completions(server, client):
    """OpenAI's chat `logprobs` + `top_logprobs` and completions `logprobs: n`, parsed by the
    official client, equal the engine's own top log-probs for the same request."""
    _, engine, ckpt = server
    tok = load_tokenizer(ckpt)
    resp = client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=0.8,
                                          seed=9, max_tokens=12, logprobs=True, top_logprobs=3)
    content = resp.choices[0].logprobs.content
    direct = engine.generate_batch([Request(render_chat(tok, MESSAGES), SamplingParams(
        temperature=0.8, seed=9, max_new_tokens=12, stop_token_ids=(tok.eos_token_id,),
        top_logprobs=3))])[0]
    assert len(content) == len(direct.token_ids) == resp.usage.completion_tokens
    for item, tok_id, lp, top in zip(content, direct.token_ids, direct.logprobs,
                                     direct.top_logprobs):
        assert item.token == tok.decode([tok_id]) and item.logprob == pytest.approx(lp, abs=1e-6)
        assert [t.token for t in item.top_logprobs] == [tok.decode([i]) for i, _ in top]
        assert [t.logprob for t in item.top_logprobs] == pytest.approx([v for _, v in top],
                                                                       abs=1e-6)
        assert all(t.bytes == list(t.token.encode()) for t in item.top_logprobs)

    streamed = []
    for chunk in client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=0.8,
                                                seed=9, max_tokens=12, logprobs=True,
                                                top_logprobs=3, stream=True):
        if chunk.choices[0].logprobs is not None:
            streamed += chunk.choices[0].logprobs.content
    assert [(c.token, c.logprob, [t.logprob for t in c.top_logprobs]) for c in streamed] == \
        [(c.token, c.logprob, [t.logprob for t in c.top_logprobs]) for c in content]

    comp = client.completions.create(model="tiny", prompt="the user asks", max_tokens=8,
                                     temperature=0, logprobs=2).choices[0].logprobs
    assert len(comp.top_logprobs) == len(comp.tokens) == len(comp.token_logprobs) >= 1
    for token, lp, top in zip(comp.tokens, comp.token_logprobs, comp.top_logprobs):
        assert 1 <= len(top) <= 2 and max(top.values()) == pytest.approx(lp, abs=1e-6)  # greedy
        assert top[token] == pytest.approx(lp, abs=1e-6)
    plain = client.completions.create(model="tiny", prompt="the user asks", max_tokens=8,
                                      temperature=0, logprobs=0).choices[0].logprobs
    assert plain.top_logprobs is None and plain.token_logprobs == comp.token_logprobs


def test_top_logprobs_out_of_range_is_a_clear_400(client):
    for kw, param in ((dict(logprobs=True, top_logprobs=21), "top_logprobs"),
                      (dict(logprobs=True, top_logprobs=-1), "top_logprobs"),
                      (dict(top_logprobs=2), "top_logprobs")):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2, **kw)
        assert e.value.param == param and "top_logprobs" in str(e.value)
    for n in (21, -1):
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model="tiny", prompt="hi", max_tokens=2, logprobs=n)
        assert e.value.param == "logprobs" and "between 0 and 20" in str(e.value)
