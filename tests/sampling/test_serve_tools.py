"""`ppp serve` tool calling and n > 1, with the real engine on a tiny random checkpoint.

The random model writes junk, so these tests check the protocol (shapes, consistency between
streaming and non-streaming, history rendering, errors) and that an agent episode driven through
the server by `envs.policy.OpenAIPolicy` completes with a well-formed record. How raw model text
becomes tool calls is tested on fixed texts in test_tool_calls.py.
"""

from __future__ import annotations

import asyncio
import json

import openai
import pytest

from ppp_jax.commands.serve import ServeConfig
from ppp_jax.sampling.config import EngineConfig
from ppp_jax.sampling.testing import write_tiny_serving_checkpoint
from tests.sampling.serving import free_port, running_server

TOOLS = [
    {"type": "function", "function": {"name": "grep", "description": "search the code",
                                      "parameters": {"type": "object", "properties": {
                                          "pattern": {"type": "string"}}, "required": ["pattern"]}}},
    {"type": "function", "function": {"name": "finish", "description": "give the answer",
                                      "parameters": {"type": "object", "properties": {
                                          "answer": {"type": "string"}}, "required": ["answer"]}}},
]
MESSAGES = [{"role": "system", "content": "you are an agent."},
            {"role": "user", "content": "which file defines the class?"}]



@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ckpt = write_tiny_serving_checkpoint(tmp_path_factory.mktemp("serve_tools") / "tiny", seed=3)
    # Long enough for a stdlib-domain episode (char-level tokenizer: ~1 token per character).
    cfg = ServeConfig(checkpoint=str(ckpt), model_name="tiny", port=free_port(),
                      default_max_tokens=16, warmup=False,
                      engine=EngineConfig(num_slots=4, page_size=16, num_pages=512,
                                          max_seq_len=3072, decode_steps=8,
                                          prefill_chunks=(32, 512), prefill_rows=(1,),
                                          block_pages=16))
    with running_server(cfg) as served:
        yield served


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0], api_key="unused", max_retries=0)


def _check_calls(message):
    for call in message.tool_calls or []:
        assert call.type == "function" and call.id and call.function.name
        assert isinstance(json.loads(call.function.arguments), dict)


def test_tools_history_and_streaming_match(client):
    """A request with tools and a tool-call history renders, answers, and streams the same."""
    history = MESSAGES + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "grep", "arguments": json.dumps({"pattern": "class a"})}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "a.py:3: class a:"}]
    kw = dict(model="tiny", messages=history, tools=TOOLS, temperature=0, max_tokens=24)
    full = client.chat.completions.create(**kw).choices[0]
    assert full.finish_reason in ("stop", "length", "tool_calls")
    assert (full.finish_reason == "tool_calls") == bool(full.message.tool_calls)
    _check_calls(full.message)
    content, reasoning, calls, reasons = "", "", [], []
    for chunk in client.chat.completions.create(stream=True, **kw):
        delta = chunk.choices[0].delta
        content += delta.content or ""
        reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
        calls += delta.tool_calls or []
        reasons.append(chunk.choices[0].finish_reason)
    assert content == (full.message.content or "")
    assert reasoning == ((full.message.model_extra or {}).get("reasoning_content") or "")
    assert [(c.function.name, c.function.arguments) for c in calls] == [
        (c.function.name, c.function.arguments) for c in full.message.tool_calls or []]
    assert reasons[-1] == full.finish_reason and all(r is None for r in reasons[:-1])
    # tool_choice "none" is the same generation, returned as text.
    none = client.chat.completions.create(tool_choice="none", **kw).choices[0]
    assert not none.message.tool_calls and none.finish_reason in ("stop", "length")


def test_n_samples_share_the_prompt(server, client):
    _, engine = server
    before = engine.stats()
    resp = client.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS, n=4,
                                          temperature=1.0, seed=7, max_tokens=12, logprobs=True)
    assert [c.index for c in resp.choices] == [0, 1, 2, 3]
    after = engine.stats()
    assert after.get("prefix_hits", 0) - before.get("prefix_hits", 0) == 3  # 1 prefill, 3 sharers
    assert resp.usage.completion_tokens == sum(len(c.logprobs.content) for c in resp.choices)
    again = client.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS, n=4,
                                           temperature=1.0, seed=7, max_tokens=12, logprobs=True)
    lps = [[t.logprob for t in c.logprobs.content] for c in resp.choices]
    assert lps == [[t.logprob for t in c.logprobs.content] for c in again.choices]
    assert len({tuple(x) for x in lps}) > 1  # seed + i: the samples differ
    streamed = {}
    for chunk in client.completions.create(model="tiny", prompt="the user", n=3, max_tokens=8,
                                           temperature=1.0, seed=1, stream=True):
        for c in chunk.choices:
            streamed[c.index] = streamed.get(c.index, "") + c.text
    plain = client.completions.create(model="tiny", prompt="the user", n=3, max_tokens=8,
                                      temperature=1.0, seed=1)
    assert streamed == {c.index: c.text for c in plain.choices}
    assert engine.stats()["pages_used"] == 0


def test_tool_request_errors_are_4xx(server, client):
    def bad(**kw):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="tiny", **kw)
        return str(e.value)

    assert "JSON" in bad(messages=MESSAGES + [{"role": "assistant", "content": "", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "grep", "arguments": "{oops"}}]}])
    assert "tool_choice" in bad(messages=MESSAGES, tools=TOOLS, tool_choice="required")
    assert "tools" in bad(messages=MESSAGES, tools=[{"type": "function"}])
    assert "'n'" in bad(messages=MESSAGES, n=0)
    assert "top_logprobs" in bad(messages=MESSAGES, logprobs=True, top_logprobs=21)
    assert client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2).choices


def test_openai_policy_episode_through_ppp_serve(server):
    """envs.policy.OpenAIPolicy drives a stdlib-domain episode through the server."""
    from ppp_jax.envs.domains import stdlib_loc
    from ppp_jax.envs.episode import EpisodeConfig, run_episode
    from ppp_jax.envs.llm_client import LLMClient, LLMClientConfig
    from ppp_jax.envs.policy import OpenAIPolicy
    from ppp_jax.envs.records import EpisodeRecord
    from ppp_jax.envs.simulator_embedded import EmbeddedUserSimulator

    base, engine = server
    task = stdlib_loc.build_tasks(stdlib_loc.StdlibLocConfig(num_tasks=4, seed=3))[0]
    domain = stdlib_loc.make_domain()
    config = EpisodeConfig(max_turns=3, max_context_tokens=3000, turn_max_new_tokens=16)

    async def episode():
        async with LLMClient(LLMClientConfig(model="tiny", base_url=base, max_retries=0)) as llm:
            policy = OpenAIPolicy(llm, {"temperature": 1.0, "max_tokens": 16, "seed": 0})
            return await run_episode(domain, task, policy, EmbeddedUserSimulator(),
                                     preference_id="no_preference", prompt_kind="vague",
                                     config=config)

    record = asyncio.run(episode())
    assert isinstance(record, EpisodeRecord)
    assert record.finish_reason in ("finish", "turn_limit", "token_limit", "error")
    assert record.num_turns <= 3
    assert record.num_turns >= 1 or record.stats["policy_errors"] == 1
    assert record.messages[0]["role"] == "system" and record.messages[1]["role"] == "user"
    assert sum(m["role"] == "assistant" for m in record.messages) == record.num_turns
    # Junk is counted, never raised: every assistant turn either called tools or got an error
    # or nudge observation next.
    msgs = list(record.messages)
    for i, m in enumerate(msgs):
        if m["role"] == "assistant" and not m.get("tool_calls") and i + 1 < len(msgs):
            assert msgs[i + 1]["role"] in ("user", "tool")
    counted = record.stats["no_call_turns"] + record.stats["malformed_calls"] \
        + record.stats["tool_calls"]
    assert counted >= record.num_turns
    assert 0.0 <= record.task_score <= 1.0
    json.dumps(record.messages, default=str)  # serializable
    # The server is still healthy and leaked no KV pages.
    ok = openai.OpenAI(base_url=base, api_key="unused", max_retries=0).chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=2)
    assert ok.choices[0].finish_reason in ("stop", "length")
    assert engine.stats()["pages_used"] == 0
