"""An OpenAI-backed policy episode against a real loopback OpenAI-compatible server."""

import asyncio
import json

from ppp_jax.envs.domains import stdlib_loc
from ppp_jax.envs.episode import run_episode
from ppp_jax.envs.llm_client import LLMClient, LLMClientConfig
from ppp_jax.envs.policy import OpenAIPolicy, to_openai_messages
from ppp_jax.envs.simulator_embedded import EmbeddedUserSimulator
from tests.envs.fake_openai_server import malformed, reply, tool_call_reply


def _raw_tool_call(name, arguments: str) -> str:
    return json.dumps({
        "id": "x", "object": "chat.completion", "created": 0, "model": "fake-model",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": None,
            "tool_calls": [{"id": "c9", "type": "function",
                            "function": {"name": name, "arguments": arguments}}]}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}})


def test_openai_policy_episode(server):
    task = stdlib_loc.build_tasks(stdlib_loc.StdlibLocConfig(num_tasks=12, seed=3))[0]
    path, qual = task.gold[0].split(":")
    server.reset()
    server.push(
        tool_call_reply("ask_user", {"question": "Which file is it in?"}),
        tool_call_reply([("grep", {"pattern": "def " + qual.split(".")[-1], "path": path}),
                         ("view_file", {"path": path, "start_line": "1", "end_line": 3})],
                        content="Two calls."),
        malformed(_raw_tool_call("grep", "{not json")),
        reply("Let me think about it."),
        tool_call_reply("finish", {"answer": task.gold[0]}),
    )
    client = LLMClient(LLMClientConfig(model="fake-model", base_url=server.base_url, max_retries=0))
    policy = OpenAIPolicy(client, {"temperature": 0.5})

    async def go():
        try:
            return await run_episode(stdlib_loc.make_domain(), task, policy, EmbeddedUserSimulator(),
                                     preference_id="one_question", prompt_kind="vague")
        finally:
            await client.close()

    rec = asyncio.run(go())
    assert rec.finish_reason == "finish" and rec.task_score == 1.0 and rec.num_turns == 5
    assert rec.tokens is None
    assert [c.name for c in rec.tool_calls] == ["ask_user", "grep", "view_file", "grep", "finish"]
    assert rec.tool_calls[2].arguments == {"path": path, "start_line": 1, "end_line": 3}
    assert rec.tool_calls[3].error == "bad_argument" and rec.stats["bad_argument"] == 1
    assert rec.stats["no_call_turns"] == 1
    assert len(rec.questions) == 1 and rec.questions[0].followed is True  # one question per turn

    bodies = [r["body"] for r in server.requests]
    assert len(bodies) == 5 and bodies[0]["model"] == "fake-model" and bodies[0]["temperature"] == 0.5
    assert {t["function"]["name"] for t in bodies[0]["tools"]} >= {"ask_user", "finish", "grep"}
    assert [m["role"] for m in bodies[0]["messages"]] == ["system", "user"]
    # Tool results answer the assistant's call ids; the nudge goes back as a user message.
    second = bodies[1]["messages"]
    assert second[2]["tool_calls"][0]["function"] == {
        "name": "ask_user", "arguments": json.dumps({"question": "Which file is it in?"})}
    assert second[3] == {"role": "tool", "tool_call_id": second[2]["tool_calls"][0]["id"],
                         "content": rec.questions[0].answer}
    last = bodies[4]["messages"]
    assert last[-1]["role"] == "user" and "No tool call" in last[-1]["content"]
    assert last[-2] == {"role": "assistant", "content": "Let me think about it."}
    bad = [m for m in last if m["role"] == "tool" and m["content"].startswith("ERROR")]
    assert len(bad) == 1 and "not valid JSON" in bad[0]["content"]


def test_to_openai_messages_orphan_tool_message_becomes_user():
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
            {"role": "assistant", "content": "<seed:tool_call> broken"},
            {"role": "tool", "tool_call_id": None, "content": "ERROR: malformed"}]
    out = to_openai_messages(msgs)
    assert out[2] == {"role": "assistant", "content": "<seed:tool_call> broken"}
    assert out[3] == {"role": "user", "content": "ERROR: malformed"}
