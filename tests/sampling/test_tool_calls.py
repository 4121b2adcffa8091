"""OpenAI tool-calling responses built from raw Seed-OSS model text (no model involved)."""

from __future__ import annotations

import json

import pytest

from ppp_jax.sampling.chat_format import seed_oss as tc
from ppp_jax.sampling.tool_calls import ChatStreamParser, build_message, prepare_messages

TOOLS = [
    {"type": "function", "function": {"name": "grep", "description": "d", "parameters": {
        "type": "object", "properties": {"pattern": {"type": "string"},
                                         "max_results": {"type": "integer"}},
        "required": ["pattern"]}}},
    {"type": "function", "function": {"name": "finish", "description": "d", "parameters": {
        "type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}}},
]

ONE_CALL = ("<seed:think>I should grep first.</seed:think>Searching now.\n"
            + tc.render_tool_call("grep", {"pattern": "def f", "max_results": 5}) + "<seed:eos>")
TWO_CALLS = (tc.render_tool_call("grep", {"pattern": "x"}) + "\n"
             + tc.render_tool_call("finish", {"answer": "a.py:f"}))
IN_THINKING = ("<seed:think>maybe " + tc.render_tool_call("finish", {"answer": "wrong"})
               + " no.</seed:think>I am not sure yet.")
UNTERMINATED = "Let me look.\n<seed:tool_call>\n<function=grep>\n<parameter=pattern>x"
SCHEMA_ERRORS = (tc.render_tool_call("nope", {"a": "1"})
                 + tc.render_tool_call("grep", {"pattern": "x", "max_results": "many"}))


def test_one_call_with_reasoning_and_content():
    m = build_message(ONE_CALL, TOOLS, parse_calls=True, id_prefix="call_ab")
    msg = m.message()
    assert msg["reasoning_content"] == "I should grep first."
    assert msg["content"] == "Searching now."
    [call] = msg["tool_calls"]
    assert call["id"] == "call_ab_0" and call["type"] == "function"
    assert call["function"]["name"] == "grep"
    assert json.loads(call["function"]["arguments"]) == {"pattern": "def f", "max_results": 5}
    assert m.finish_reason("stop") == "tool_calls" and m.finish_reason("length") == "length"
    assert not m.errors


def test_two_calls_in_order_with_null_content():
    msg = build_message(TWO_CALLS, TOOLS, parse_calls=True).message()
    assert msg["content"] is None and "reasoning_content" not in msg
    assert [c["function"]["name"] for c in msg["tool_calls"]] == ["grep", "finish"]
    assert [c["id"] for c in msg["tool_calls"]] == ["call_0", "call_1"]
    assert json.loads(msg["tool_calls"][1]["function"]["arguments"]) == {"answer": "a.py:f"}


def test_call_inside_thinking_is_not_returned():
    m = build_message(IN_THINKING, TOOLS, parse_calls=True)
    assert m.tool_calls == () and m.finish_reason("stop") == "stop"
    assert m.message()["content"] == "I am not sure yet."
    assert "wrong" in m.message()["reasoning_content"]


def test_malformed_text_is_kept_as_content():
    m = build_message(UNTERMINATED, TOOLS, parse_calls=True)
    assert m.tool_calls == () and m.errors
    assert m.message()["content"].startswith("Let me look.\n<seed:tool_call>")
    assert m.message()["content"].endswith("<parameter=pattern>x")


def test_schema_errors_are_returned_for_the_client_to_validate():
    m = build_message(SCHEMA_ERRORS, TOOLS, parse_calls=True)
    assert [c["function"]["name"] for c in m.tool_calls] == ["nope", "grep"]
    assert json.loads(m.tool_calls[1]["function"]["arguments"]) == {"pattern": "x",
                                                                    "max_results": "many"}
    assert len(m.errors) == 2


def test_tool_choice_none_returns_the_text():
    m = build_message(ONE_CALL, TOOLS, parse_calls=False)
    assert m.tool_calls == () and m.reasoning == "I should grep first."
    assert m.content == ONE_CALL.split("</seed:think>")[1].replace("<seed:eos>", "")


@pytest.mark.parametrize("text", [ONE_CALL, TWO_CALLS, IN_THINKING, UNTERMINATED, SCHEMA_ERRORS,
                                  "plain answer  \n with spaces ", "<seed:think>only thinking",
                                  "  <seed:think>a</seed:think>  b  "])
@pytest.mark.parametrize("parse_calls", [True, False])
def test_streaming_deltas_add_up_to_the_message(text, parse_calls):
    """Fed one character at a time, the deltas concatenate to the non-streaming message."""
    parser = ChatStreamParser(TOOLS, parse_calls=parse_calls)
    deltas = []
    for n in range(1, len(text)):
        deltas += parser.feed(text[:n])
    last, reason = parser.finish(text, "stop")
    deltas += last
    expect = build_message(text, TOOLS, parse_calls=parse_calls)
    assert "".join(d.get("content", "") for d in deltas) == expect.content
    assert "".join(d.get("reasoning_content", "") for d in deltas) == expect.reasoning
    calls = [c for d in deltas for c in d.get("tool_calls", [])]
    assert calls == list(expect.tool_calls)
    assert reason == expect.finish_reason("stop")
    if expect.tool_calls:  # no call markup leaks into the streamed content
        assert "<seed:tool_call>" not in "".join(d.get("content", "") for d in deltas[:-1])


def test_prepare_messages_decodes_json_arguments():
    msgs = prepare_messages([
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "grep", "arguments": '{"pattern": "x", "max_results": 3, "i": true}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "found"},
        {"role": "assistant", "content": "done", "tool_calls": None}])
    assert msgs[0]["content"] == "ab" and msgs[1]["content"] == ""
    # values are the text the model would write (JSON), since the template applies str()
    assert msgs[1]["tool_calls"][0]["function"]["arguments"] == {
        "pattern": "x", "max_results": "3", "i": "true"}
    assert msgs[2] == {"role": "tool", "tool_call_id": "c1", "content": "found"}
    assert "tool_calls" not in msgs[3]
    with pytest.raises(ValueError, match="not valid JSON"):
        prepare_messages([{"role": "assistant", "content": "", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{bad"}}]}])
    with pytest.raises(ValueError, match="JSON object"):
        prepare_messages([{"role": "assistant", "content": "", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}])
