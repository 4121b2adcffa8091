"""Chat formats: the registry, and Seed-OSS tool-call parsing and rendering."""

import pytest

from ppp_jax.sampling.chat_format import ChatFormat, get_format
from ppp_jax.sampling.chat_format import seed_oss as tc

TOOLS = [
    {"type": "function", "function": {"name": "grep", "description": "d", "parameters": {
        "type": "object",
        "properties": {"pattern": {"type": "string"}, "max_results": {"type": "integer"},
                       "ignore_case": {"type": "boolean"}, "paths": {"type": "array"}},
        "required": ["pattern"]}}},
    {"type": "function", "function": {"name": "finish", "description": "d", "parameters": {
        "type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}}},
]


def test_well_formed_single_call_with_types():
    text = ("<seed:think>I will grep.</seed:think>Let me search.\n"
            + tc.render_tool_call("grep", {"pattern": "def foo\\(", "max_results": 5,
                                           "ignore_case": True, "paths": ["a.py", "b.py"]})
            + "<seed:eos>")
    turn = tc.parse_turn(text, TOOLS)
    assert turn.reasoning == "I will grep."
    assert turn.content == "Let me search."
    assert len(turn.calls) == 1 and turn.calls[0].ok
    assert turn.calls[0].arguments == {"pattern": "def foo\\(", "max_results": 5,
                                       "ignore_case": True, "paths": ["a.py", "b.py"]}
    assert not turn.all_errors


def test_value_strips_exactly_one_newline_each_side():
    text = "<seed:tool_call>\n<function=finish>\n<parameter=answer>\n\na.py:f\n\n</parameter>\n</function>\n</seed:tool_call>"
    call = tc.parse_turn(text, TOOLS).calls[0]
    assert call.arguments["answer"] == "\na.py:f\n"


def test_several_calls_in_one_turn_and_one_block():
    text = (tc.render_tool_call("grep", {"pattern": "x"}) + "\n"
            + tc.render_tool_call("grep", {"pattern": "y"})
            + "<seed:tool_call>\n<function=grep>\n<parameter=pattern>z</parameter>\n</function>\n"
              "<function=finish>\n<parameter=answer>done</parameter>\n</function>\n</seed:tool_call>")
    turn = tc.parse_turn(text, TOOLS)
    assert [c.name for c in turn.calls] == ["grep", "grep", "grep", "finish"]
    assert [c.arguments.get("pattern") for c in turn.calls[:3]] == ["x", "y", "z"]
    assert all(c.ok for c in turn.calls)


def test_calls_inside_thinking_are_ignored_and_counted():
    inner = tc.render_tool_call("finish", {"answer": "wrong"})
    text = f"<seed:think>maybe {inner} no wait</seed:think>" + tc.render_tool_call("finish", {"answer": "right"})
    turn = tc.parse_turn(text, TOOLS)
    assert [c.arguments["answer"] for c in turn.calls] == ["right"]
    assert turn.calls_in_thinking == 1
    # An unclosed think block is all reasoning: no call runs.
    turn = tc.parse_turn("<seed:think>thinking " + inner, TOOLS)
    assert turn.calls == () and turn.thinking_unclosed and turn.calls_in_thinking == 1


def test_split_reasoning_at_first_close_only():
    reasoning, rest, unclosed = tc.split_reasoning("<seed:think>a</seed:think>b</seed:think>c")
    assert (reasoning, rest, unclosed) == ("a", "b</seed:think>c", False)
    assert tc.split_reasoning("plain") == ("", "plain", False)


def test_malformed_calls_become_structured_errors():
    cases = {
        "<seed:tool_call>\n<function=grep>\n<parameter=pattern>x</parameter>\n</function>": tc.UNTERMINATED_BLOCK,
        "<seed:tool_call>\nhello\n</seed:tool_call>": tc.NO_FUNCTION,
        "<seed:tool_call>\n<function=grep>\n<parameter=pattern>x</parameter>\n</seed:tool_call>": tc.UNTERMINATED_FUNCTION,
        "<seed:tool_call><function=grep><parameter=pattern>x</function></seed:tool_call>": tc.UNTERMINATED_PARAMETER,
        "<seed:tool_call><function=rm_rf><parameter=x>1</parameter></function></seed:tool_call>": tc.UNKNOWN_TOOL,
        "<seed:tool_call><function=grep><parameter=pattern>x</parameter><parameter=bogus>1</parameter></function></seed:tool_call>": tc.UNKNOWN_PARAMETER,
        "<seed:tool_call><function=grep><parameter=max_results>3</parameter></function></seed:tool_call>": tc.MISSING_PARAMETER,
        "<seed:tool_call><function=grep><parameter=pattern>x</parameter><parameter=max_results>many</parameter></function></seed:tool_call>": tc.BAD_ARGUMENT,
        "<seed:tool_call><function=grep><parameter=pattern>x</parameter><parameter=paths>[oops</parameter></function></seed:tool_call>": tc.BAD_ARGUMENT,
        "<seed:tool_call><function=grep><parameter=pattern>x</parameter><parameter=pattern>y</parameter></function></seed:tool_call>": tc.DUPLICATE_PARAMETER,
        "<seed:tool_call><function=gr ep!><parameter=pattern>x</parameter></function></seed:tool_call>": tc.BAD_NAME,
    }
    for text, kind in cases.items():
        turn = tc.parse_turn(text, TOOLS)
        kinds = [e.kind for e in turn.all_errors]
        assert kinds == [kind], (text, kinds)
        assert not turn.valid_calls
        assert all(e.message for e in turn.all_errors)


def test_bare_openhands_function_format_and_python_literal_values():
    text = "I'll look.\n<function=grep>\n<parameter=pattern>foo</parameter>\n<parameter=paths>['a.py', 'b.py']</parameter>\n</function>"
    turn = tc.parse_turn(text, TOOLS)
    assert turn.content == "I'll look."
    assert turn.calls[0].ok and turn.calls[0].arguments["paths"] == ["a.py", "b.py"]


def test_no_calls_plain_text():
    turn = tc.parse_turn("<seed:think>hmm</seed:think>The answer is 42.<seed:eos>", TOOLS)
    assert turn.calls == () and turn.errors == () and turn.content == "The answer is 42."


def test_render_assistant_text_matches_template_layout():
    body = tc.render_assistant_text("Looking.", [("grep", {"pattern": "x", "max_results": 3})], reasoning=" r ")
    assert body == ("\n<seed:think>r</seed:think>\nLooking.\n\n<seed:tool_call>\n<function=grep>\n"
                    "<parameter=pattern>x</parameter>\n<parameter=max_results>3</parameter>\n"
                    "</function>\n</seed:tool_call>")
    assert tc.render_assistant_text("Hi") == "\nHi"
    # Round trip.
    turn = tc.parse_turn(body, TOOLS)
    assert turn.calls[0].arguments == {"pattern": "x", "max_results": 3}


def test_registry_returns_the_seed_oss_format():
    fmt = get_format("seed_oss")
    assert fmt is tc.FORMAT and get_format() is fmt and get_format(fmt) is fmt
    assert isinstance(fmt, ChatFormat) and fmt.name == "seed_oss"
    with pytest.raises(ValueError, match="seed_oss"):
        get_format("no_such_format")


def test_seed_oss_format_entry_is_the_module():
    fmt = tc.FORMAT
    assert (fmt.bos, fmt.eos, fmt.think_open, fmt.think_close) == (
        "<seed:bos>", "<seed:eos>", "<seed:think>", "</seed:think>")
    assert fmt.call_markers == ("<seed:tool_call>", "<function=")
    assert fmt.render_turn("user", "hi") == "<seed:bos>user\nhi<seed:eos>"
    assert fmt.generation_prompt() == "<seed:bos>assistant\n"
    assert fmt.render_system("s", []) == "<seed:bos>system\ns<seed:eos>"
    assert fmt.render_system("s", TOOLS) == "<seed:bos>system\ns" + tc.render_tool_doc(TOOLS) + "<seed:eos>"
    assert fmt.template_arguments({"a": "x", "b": 3, "c": ["é"]}) == {"a": "x", "b": "3", "c": '["é"]'}
    text = fmt.render_tool_call("finish", {"answer": "a.py:f"})
    assert fmt.parse_turn(text, TOOLS).calls[0].arguments == {"answer": "a.py:f"}
    assert fmt.no_thinking_prefix == tc.THINKING_BUDGET_0_PREFIX
