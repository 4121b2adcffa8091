"""The Llama 3.x JSON tool-call format (`ppp_jax.sampling.chat_format.llama3`): rendering against
the released Llama 3.1 template, parsing complete and streamed replies, detection."""

import json

import pytest

from ppp_jax.sampling.chat_format import (
    BAD_ARGUMENT,
    NO_FUNCTION,
    UNTERMINATED_BLOCK,
    detect_format,
    get_format,
    llama3,
    seed_oss,
)
from ppp_jax.sampling.chat import ChatTokenizer
from ppp_jax.sampling.tool_calls import ChatStreamParser, build_message
from tests.sampling.chat_templates import (TOOLS, llama3_tokenizer, template_text,
                                           template_tokenizer)



@pytest.fixture(scope="module")
def tok():
    return llama3_tokenizer()


def test_registered_and_renders_the_template_layout():
    fmt = get_format("llama3")
    assert fmt is llama3.FORMAT and fmt.think_open == fmt.think_close == ""
    assert fmt.render_turn("user", " hi \n") == "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
    assert fmt.render_turn("tool", 'a "b"') == (
        '<|start_header_id|>ipython<|end_header_id|>\n\n"a \\"b\\""<|eot_id|>')
    assert fmt.generation_prompt() == "<|start_header_id|>assistant<|end_header_id|>\n\n"
    assert fmt.render_tool_call("finish", {"answer": "a.py:f"}) == (
        '{"name": "finish", "parameters": {"answer": "a.py:f"}}')
    assert fmt.stop_tokens == ("<|eom_id|>",)


def test_the_whole_conversation_equals_the_released_template_token_for_token(tok):
    """System turn with tools, user turn, a call, its ipython result (non-ASCII), the generation
    prompt: our pieces, joined, are the Llama 3.1 template's text with tools in the system turn,
    and encode to the same ids; the system block rendered through the template alone (the
    episode runner's path) is ours too."""
    messages = [{"role": "system", "content": "Be brief. "}, {"role": "user", "content": "Find f.\n"},
                {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
                    "name": "view_file", "arguments": {"path": "a.py", "start_line": 3}}}]},
                {"role": "tool", "content": "3 lines: ünï"}]
    ref = tok.apply_chat_template(messages, tools=TOOLS, tokenize=False, add_generation_prompt=True,
                                  **dict(llama3.SYSTEM_TEMPLATE_KWARGS))
    fmt = llama3.FORMAT
    ours = (fmt.render_system("Be brief. ", TOOLS) + fmt.render_turn("user", "Find f.\n")
            + fmt.generation_prompt()
            + fmt.render_assistant_text("", [("view_file", {"path": "a.py", "start_line": 3})])
            + fmt.eos + fmt.render_turn("tool", "3 lines: ünï") + fmt.generation_prompt())
    assert ours == ref
    chat = ChatTokenizer(tok, "llama3")
    assert chat.encode(ours) == chat.encode(ref)
    assert chat.render_system("Be brief. ", TOOLS) == fmt.render_system("Be brief. ", TOOLS)
    assert chat.render_system("Be brief.", []) == fmt.render_system("Be brief.", [])
    assert chat.end_ids == (chat.eos_id, tok.convert_tokens_to_ids("<|eom_id|>"))
    # the template's default puts the tools into the first user turn instead (what `ppp serve`
    # renders); the same documentation, under the user-turn instruction
    default = tok.apply_chat_template(messages[:2], tools=TOOLS, tokenize=False,
                                      add_generation_prompt=True, date_string="26 Jul 2024")
    assert "<|start_header_id|>user<|end_header_id|>\n\nGiven the following functions" in default
    assert json.dumps(TOOLS[0], indent=4) in default


def test_rendered_calls_parse_back_with_typed_arguments():
    fmt = llama3.FORMAT
    args = {"path": "a/b.py", "start_line": 12, "flags": ["-n", "é"]}
    for content in ("", "Looking."):
        text = fmt.render_assistant_text(content, [("view_file", args), ("finish", {"answer": "x"})])
        turn = fmt.parse_turn(text + "<|eom_id|>", TOOLS)
        assert turn.content == content and turn.reasoning == "" and turn.errors == ()
        assert [c.name for c in turn.calls] == ["view_file", "finish"]
        assert turn.calls[0].arguments == args and all(c.ok for c in turn.calls)
    # as the model writes it: the python tag, "arguments" instead of "parameters"
    turn = fmt.parse_turn('<|python_tag|>{"name": "finish", "arguments": {"answer": "q"}}<|eot_id|>',
                          TOOLS)
    assert turn.calls[0].ok and turn.calls[0].arguments == {"answer": "q"} and turn.content == ""
    plain = fmt.parse_turn("The answer is {x}.<|eot_id|>", TOOLS)
    assert plain.calls == () and plain.content == "The answer is {x}."


def test_same_calls_as_seed_oss_for_the_same_arguments():
    cases = [("view_file", {"path": "a.py", "start_line": 3}), ("view_file", {"start_line": 3}),
             ("view_file", {"path": "a.py", "start_line": "three"}), ("grep", {"pattern": "x"})]
    for name, args in cases:
        ours = llama3.parse_turn(llama3.render_tool_call(name, args), TOOLS).calls[0]
        seed = seed_oss.parse_turn(seed_oss.render_tool_call(name, args), TOOLS).calls[0]
        assert (ours.name, ours.arguments) == (seed.name, seed.arguments)
        assert (ours.error and ours.error.kind) == (seed.error and seed.error.kind), (name, args)


def test_malformed_text_becomes_errors_never_exceptions():
    fmt = llama3.FORMAT
    bad = fmt.parse_turn('{"name": "finish", "parameters": {answer: 1}}', TOOLS)
    assert bad.calls == () and bad.errors[0].kind == BAD_ARGUMENT
    assert bad.unparsed == '{"name": "finish", "parameters": {answer: 1}}'
    cut = fmt.parse_turn('Sure.<|python_tag|>{"name": "finish", "parameters": {"answer": "a', TOOLS)
    assert cut.content == "Sure." and cut.errors[0].kind == UNTERMINATED_BLOCK
    # a JSON object without a name is an answer when it opens the turn, an error after the tag
    answer = fmt.parse_turn('{"result": 42}', TOOLS)
    assert answer.calls == () and answer.errors == () and answer.content == '{"result": 42}'
    tagged = fmt.parse_turn('<|python_tag|>{"result": 42}', TOOLS)
    assert tagged.errors[0].kind == NO_FUNCTION
    # the second of two calls cut off: the first is kept, the rest shown to the client
    two = llama3.render_tool_call("finish", {"answer": "a"}) + '; {"name": "view_f'
    msg = build_message(two, TOOLS, parse_calls=True, chat_format="llama3")
    assert [c["function"]["name"] for c in msg.tool_calls] == ["finish"]
    assert msg.content == '{"name": "view_f' and msg.finish_reason("stop") == "tool_calls"


def _stream(text: str, tools, chat_format: str = "llama3") -> tuple[str, list]:
    """Feeds every UTF-8 byte prefix of `text` (an incomplete character held back, as the
    detokenizer does) and returns the concatenated content and the tool calls."""
    parser = ChatStreamParser(tools, parse_calls=True, chat_format=chat_format)
    data = text.encode()
    content, calls = "", []
    for i in range(1, len(data)):
        for d in parser.feed(data[:i].decode("utf-8", errors="replace").rstrip("\ufffd")):
            assert "tool_calls" not in d and "reasoning_content" not in d
            content += d.get("content", "")
    early = content
    deltas, reason = parser.finish(text, "stop")
    for d in deltas:
        content += d.get("content", "")
        calls += d.get("tool_calls", [])
    return early, content, calls, reason


# (chat format, reply, the content streamed before the end); llama3_pythonic: Llama 3.2's lists
PARAMS = [
    ("llama3", '{"name": "view_file", "parameters": {"path": "ü/a.py", "start_line": 3}}<|eot_id|>',
     ""),
    ("llama3", 'Let me look.<|python_tag|>{"name": "view_file", "parameters": {"path": "a.py"}}; '
     '{"name": "finish", "parameters": {"answer": "ñ"}}<|eom_id|>', "Let me look."),
    ("llama3", "No call here: use {braces} freely, ünïcode too.<|eot_id|>",
     "No call here: use {braces} freely, ünïcode too."),
    ("llama3", '  {"name": "finish", "parameters": {"answer": "cut', ""),
    ("llama3_pythonic", '[view_file(path="ü/a.py", start_line=3)]<|eot_id|>', ""),
    ("llama3_pythonic", 'Let me look.<|python_tag|>[view_file(path="a]b.py"), '
     'finish(answer="ñ")]<|eom_id|>', "Let me look."),
    ("llama3_pythonic", "No call here: [brackets] and (parens) freely, ünïcode too.<|eot_id|>",
     "No call here: [brackets] and (parens) freely, ünïcode too."),
    ("llama3_pythonic", "[1, 2] are the lines.<|eot_id|>", ""),
    ("llama3_pythonic", '  [finish(answer="cut', ""),
]


@pytest.mark.parametrize("fmt, reply, streamed", PARAMS)
def test_a_stream_split_at_every_byte_gives_the_complete_replys_calls(fmt, reply, streamed):
    whole = build_message(reply, TOOLS, parse_calls=True, chat_format=fmt)
    early, content, calls, reason = _stream(reply, TOOLS, fmt)
    assert content == (whole.content or "")
    assert early == streamed  # text is streamed as it comes, up to where the calls begin
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == \
        [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in whole.tool_calls]
    assert reason == whole.finish_reason("stop")
    # no part of a call was ever streamed as content
    assert not whole.tool_calls or ('"name"' not in content and "view_file(" not in content)


def test_detected_from_the_vocabulary_or_the_released_template(tok):
    assert detect_format(tok) == "llama3"
    # a vocabulary without the python tag (a Llama 3.0 tokenizer, or one with the tokens renamed):
    # the 3.1 template's call layout still tells
    bare = template_tokenizer(("<|begin_of_text|>", "<|eot_id|>"), template_text("llama3_1_instruct"),
                              bos="<|begin_of_text|>", eos="<|eot_id|>")
    assert detect_format(bare) == "llama3"
    bare.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(ValueError, match="set policy.chat_format"):
        detect_format(bare)


def test_config_and_serve_accept_the_format():
    from ppp_jax.config.run import load_run_config
    from ppp_jax.train.builders import chat_format_of

    cfg = load_run_config("configs/tiny_cpu.yaml", ["policy.chat_format=llama3"])
    assert chat_format_of(cfg, object()) == "llama3"


def test_an_engine_episode_ends_a_turn_at_eom_and_sends_the_template_text(tok):
    """EnginePolicy in Llama 3 format: the engine is asked to stop at <|eot_id|> or <|eom_id|>;
    a turn ended by <|eom_id|> is complete (the next prompt adds no <|eot_id|>) and its call
    parses; the session's tokens are the template's text for the same conversation."""
    import asyncio

    from ppp_jax.envs.policy import EnginePolicy, ScriptedEngine

    chat = ChatTokenizer(tok, "llama3")
    call = llama3.render_tool_call("view_file", {"path": "a.py"})
    engine = ScriptedEngine(chat, [f"<|python_tag|>{call}<|eom_id|><cut>", "Done."])
    session = EnginePolicy(engine, chat).start("ep")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Look."}]

    async def episode():
        first = await session.step(messages, TOOLS, 64)
        messages.append({"role": "assistant", "content": first.text})
        messages.append({"role": "tool", "content": "1: x = 1"})
        second = await session.step(messages, TOOLS, 64)
        return first, second

    first, second = asyncio.run(episode())
    assert engine.requests[0].params.stop_token_ids == chat.end_ids
    assert first.finish_reason == "stop"
    turn = llama3.parse_turn(first.text, TOOLS)
    assert [(c.name, c.arguments) for c in turn.calls] == [("view_file", {"path": "a.py"})]
    assert second.text == "Done." and second.finish_reason == "stop"
    view = session.token_view()
    text = chat.decode(view.token_ids)
    expected = (llama3.render_system("Be brief.", TOOLS) + llama3.render_turn("user", "Look.")
                + llama3.generation_prompt() + f"<|python_tag|>{call}<|eom_id|>"
                + llama3.render_turn("tool", "1: x = 1") + llama3.generation_prompt()
                + "Done.<|eot_id|>")
    assert text == expected


def test_serve_detects_llama3_renders_tools_and_stops_at_eom(tok, tmp_path):
    """`ppp serve` on a tiny random Llama checkpoint with a Llama 3 tokenizer and the released
    3.1 template: the format is detected, `tools` are accepted (the template renders them into
    the first user turn), and the server sends both <|eot_id|> and <|eom_id|> as stop ids of its
    own (not counted against the client's `max_stop_tokens`)."""
    import httpx

    from ppp_jax.commands.serve import ServeConfig
    from ppp_jax.model import testing as mt
    from ppp_jax.sampling.config import EngineConfig
    from tests.sampling.serving import free_port, running_server

    path = mt.write_tiny_hf_checkpoint(tmp_path / "tiny_llama", family="llama",
                                       vocab_size=len(tok), attention_bias=False,
                                       attention_out_bias=False)
    tok.save_pretrained(str(path))
    cfg = ServeConfig(checkpoint=str(path), model_name="tiny", port=free_port(), warmup=False,
                      default_max_tokens=4,
                      engine=EngineConfig(num_slots=2, page_size=16, num_pages=129, max_seq_len=1024,
                                          decode_steps=4, prefill_chunks=(1024,), prefill_rows=(1,),
                                          max_stop_tokens=2))
    tool = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
            "tools": tool}
    ends = sorted({tok.convert_tokens_to_ids("<|eot_id|>"), tok.convert_tokens_to_ids("<|eom_id|>")})
    with running_server(cfg) as (base, _engine):
        reply = httpx.post(f"{base}/chat/completions", json=chat, timeout=120)
        assert reply.status_code == 200, reply.text
        # the server adds both turn ends itself: the client's room (2) is not used by them ...
        own = httpx.post(f"{base}/chat/completions", timeout=120,
                         json={**chat, "stop_token_ids": ends + [10, 11]})
        assert own.status_code == 200, own.text
        # ... and a third id of the client's is one too many
        over = httpx.post(f"{base}/chat/completions", timeout=120,
                          json={**chat, "stop_token_ids": [10, 11, 12]})
        assert over.status_code == 400 and "end-of-turn ids" in over.json()["error"]["message"]
