"""Llama 3.2's pythonic tool calls (`llama3.PYTHONIC_FORMAT`, registry name `llama3_pythonic`):
`[func(a="v", n=3), other(x=1)]` read with `ast`, never evaluated; rendering, parsing complete
and streamed replies (the byte-split stream test is `test_chat_format_llama3.py`'s), detection.

Checked against Meta's own description of the format (no jinja template of Meta's writes it: the
released Llama 3.2 chat template writes JSON calls, see `test_chat_format_llama3.py`): the
replies below marked "Meta" are the model responses of github.com/meta-llama/llama-models
`models/llama3_2/text_prompt_format.md` ("Zero shot function calling" sections), and the
instruction in the system turn is that of `models/llama3/prompt_templates/system_prompts.py`
(`PythonListCustomToolGenerator`)."""

import json

from ppp_jax.sampling.chat_format import base, detect_format, get_format, llama3, seed_oss
from ppp_jax.sampling.tool_calls import build_message
from tests.sampling import chat_templates
from tests.sampling.chat_templates import TOOLS

FMT = llama3.PYTHONIC_FORMAT
WEATHER = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "metric": {"type": "string"}},
    "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_user_info", "parameters": {
        "type": "object", "properties": {"user_id": {"type": "integer"},
                                         "special": {"type": "string"}},
        "required": ["user_id"]}}}]


def _calls(turn):
    return [(c.name, c.arguments) for c in turn.calls]


def test_registered_and_meta_s_documented_replies_parse():
    assert get_format("llama3_pythonic") is FMT and FMT.think_open == ""
    assert FMT.render_turn("tool", "25 C") == llama3.FORMAT.render_turn("tool", "25 C")
    # Meta: two calls in one list, single-quoted strings, ended by <|eot_id|>
    two = FMT.parse_turn("[get_weather(city='San Francisco', metric='celsius'), "
                         "get_weather(city='Seattle', metric='celsius')]<|eot_id|>", WEATHER)
    assert _calls(two) == [("get_weather", {"city": "San Francisco", "metric": "celsius"}),
                           ("get_weather", {"city": "Seattle", "metric": "celsius"})]
    assert two.content == "" and two.errors == () and all(c.ok for c in two.calls)
    # Meta: an integer argument, converted by the schema
    user = FMT.parse_turn("[get_user_info(user_id=7890, special='black')]<|eot_id|>", WEATHER)
    assert _calls(user) == [("get_user_info", {"user_id": 7890, "special": "black"})]
    # Meta (the end-to-end example's history turn): after <|python_tag|>, double quotes
    tagged = FMT.parse_turn('<|python_tag|>[get_weather(city="San Francisco", metric="celsius")]'
                            "<|eot_id|>", WEATHER)
    assert _calls(tagged) == [("get_weather", {"city": "San Francisco", "metric": "celsius"})]
    # the system turn asks for lists in Meta's words
    system = FMT.render_system("Be brief.", WEATHER)
    assert ("you MUST put it in the format of [func_name1(params_name1=params_value1, "
            "params_name2=params_value2...), func_name2(params)]\n") in system
    assert json.dumps([WEATHER[0]["function"]], indent=4)[:-2] in system


def test_rendered_calls_parse_back_with_typed_arguments():
    args = {"path": 'ü/"a".py\n', "start_line": 12, "flags": ["-n", True, None, 1.5, {"k": [1]}]}
    for content in ("", "Looking."):
        text = FMT.render_assistant_text(content, [("view_file", args), ("finish", {"answer": "x"})])
        turn = FMT.parse_turn(text + "<|eot_id|>", TOOLS)
        assert turn.content == content and turn.errors == ()
        assert _calls(turn) == [("view_file", args), ("finish", {"answer": "x"})]
    assert FMT.render_tool_call("finish", {"answer": "a"}) == '[finish(answer="a")]'
    assert FMT.render_assistant_text("", [("finish", {"answer": "a"})]) == '[finish(answer="a")]'
    assert FMT.render_assistant_text("Done.", [("finish", {"answer": "a"})]) == (
        'Done.<|python_tag|>[finish(answer="a")]')
    # one list per call, as Meta's reference encoder writes history calls, reads the same
    assert _calls(FMT.parse_turn('[view_file(path="a")] [finish(answer="b")]', TOOLS)) == [
        ("view_file", {"path": "a"}), ("finish", {"answer": "b"})]
    # JSON's literals are accepted for a model that mixes the two
    assert FMT.parse_turn("[view_file(path='a', flags=[1], start_line=null)]",
                          TOOLS).calls[0].raw_arguments["start_line"] == "null"


def test_same_calls_as_seed_oss_for_the_same_arguments():
    cases = [("view_file", {"path": "a.py", "start_line": 3}), ("view_file", {"start_line": 3}),
             ("view_file", {"path": "a.py", "start_line": "three"}), ("grep", {"pattern": "x"})]
    for name, args in cases:
        ours = FMT.parse_turn(FMT.render_tool_call(name, args), TOOLS).calls[0]
        seed = seed_oss.parse_turn(seed_oss.render_tool_call(name, args), TOOLS).calls[0]
        assert (ours.name, ours.arguments) == (seed.name, seed.arguments)
        assert (ours.error and ours.error.kind) == (seed.error and seed.error.kind), (name, args)


def test_malformed_calls_are_clear_errors_and_nothing_is_evaluated(monkeypatch):
    import builtins

    def no_eval(*a, **k):
        raise AssertionError("eval/exec must never run")

    monkeypatch.setattr(builtins, "eval", no_eval)
    monkeypatch.setattr(builtins, "exec", no_eval)
    cases = {
        '[view_file("a.py")]': base.BAD_ARGUMENT,  # positional
        "[view_file(**opts)]": base.BAD_ARGUMENT,  # unpacking
        "[view_file(path=p)]": base.BAD_ARGUMENT,  # a variable
        "[view_file(path=__import__('os').getcwd())]": base.BAD_ARGUMENT,  # an expression
        "[__import__('os').system(cmd='ls')]": base.BAD_NAME,  # not a name
    }
    for text, kind in cases.items():
        turn = FMT.parse_turn(text, TOOLS)
        assert [c.error.kind for c in turn.calls] == [kind], text
        assert turn.calls[0].error.message.endswith((".", ").")), text
    assert "not evaluated" in FMT.parse_turn("[view_file(path=p)]", TOOLS).calls[0].error.message
    syntax = FMT.parse_turn("[view_file(path='a' start_line=3)]", TOOLS)
    assert syntax.calls == () and syntax.errors[0].kind == base.BAD_ARGUMENT
    assert "not valid Python" in syntax.errors[0].message and syntax.unparsed.startswith("[view")
    cut = FMT.parse_turn('Sure.<|python_tag|>[view_file(path="a.py", start_line=', TOOLS)
    assert cut.content == "Sure." and cut.errors[0].kind == base.UNTERMINATED_BLOCK
    assert FMT.parse_turn('[view_file(path="a', TOOLS).errors[0].kind == base.UNTERMINATED_BLOCK
    mixed = FMT.parse_turn('[finish(answer="a"), 3]', TOOLS)
    assert _calls(mixed) == [("finish", {"answer": "a"})]
    assert mixed.errors[0].kind == base.NO_FUNCTION
    # a bracket that opens an answer is content; after the python tag it is an error
    for text in ("[1, 2] are the lines.", "[Note] see a.py", "[see a.py"):
        answer = FMT.parse_turn(text, TOOLS)
        assert answer.calls == () and answer.errors == () and answer.content == text
    assert FMT.parse_turn("<|python_tag|>[1, 2]", TOOLS).errors[0].kind == base.NO_FUNCTION
    # the second list cut off: the first call is kept, the rest shown to the client
    msg = build_message('[finish(answer="a")] [view_f', TOOLS, parse_calls=True,
                        chat_format="llama3_pythonic")
    assert [c["function"]["name"] for c in msg.tool_calls] == ["finish"]
    assert msg.content == "[view_f" and msg.finish_reason("stop") == "tool_calls"


def test_chosen_by_a_template_that_asks_for_lists_or_by_config():
    tok = chat_templates.llama3_tokenizer()
    assert detect_format(tok) == "llama3"  # the released template writes JSON calls
    tok.chat_template = chat_templates.template_text("llama3_1_instruct").replace(
        "Respond in the format {\"name\": function name, \"parameters\": dictionary of argument "
        "name and its value}.", "Respond in the format [func_name1(params_name1=params_value1, "
        "params_name2=params_value2...), func_name2(params)]")
    assert llama3.PYTHONIC_TEMPLATE_MARK in tok.chat_template
    assert detect_format(tok) == "llama3_pythonic"
    bare = chat_templates.template_tokenizer(("<|begin_of_text|>", "<|eot_id|>"),
                                             tok.chat_template, bos="<|begin_of_text|>",
                                             eos="<|eot_id|>")
    assert detect_format(bare) == "llama3_pythonic"  # by the template alone

    from ppp_jax.config.run import load_run_config
    from ppp_jax.train.builders import chat_format_of

    cfg = load_run_config("configs/tiny_cpu.yaml", ["policy.chat_format=llama3_pythonic"])
    assert chat_format_of(cfg, object()) == "llama3_pythonic"


def test_the_system_block_never_asks_a_pythonic_policy_for_json():
    """On a checkpoint whose template asks for JSON calls (the released Llama 3.2 one), the
    episode's system block is the format's own (Meta's list instruction); a template that asks
    for lists renders it itself."""
    from ppp_jax.sampling.chat import ChatTokenizer

    tok = chat_templates.llama3_tokenizer()
    chat = ChatTokenizer(tok, "llama3_pythonic")
    assert chat.render_system("Be brief.", TOOLS) == FMT.render_system("Be brief.", TOOLS)
    assert "[func_name1(" in chat.render_system("Be brief.", TOOLS)
    assert '{"name": function name' in ChatTokenizer(tok, "llama3").render_system("Be brief.", TOOLS)
    tok.chat_template = tok.chat_template.replace("Do not use variables.", "Do not use variables. "
                                                  "Or answer [func_name1(params)].")
    assert ChatTokenizer(tok, "llama3_pythonic").render_system("Be brief.", TOOLS) == \
        ChatTokenizer(tok, "llama3").render_system("Be brief.", TOOLS)
