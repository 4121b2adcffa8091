"""The Hermes format of Qwen2.5 / Qwen3 (`ppp_jax.sampling.chat_format.hermes`): rendering and
parsing of JSON tool calls, held to the same schema checks as the Seed-OSS format."""

from ppp_jax.sampling.chat_format import (
    BAD_ARGUMENT,
    MISSING_PARAMETER,
    NO_FUNCTION,
    UNKNOWN_TOOL,
    UNTERMINATED_BLOCK,
    get_format,
)
from ppp_jax.sampling.chat_format import hermes, seed_oss
from tests.sampling.chat_templates import TOOLS


def test_registered_and_renders_the_qwen_layout():
    fmt = get_format("hermes")
    assert fmt is hermes.FORMAT and fmt.call_markers == ("<tool_call>",)
    assert fmt.render_turn("user", "hi") == "<|im_start|>user\nhi<|im_end|>\n"
    assert fmt.render_turn("tool", "3 lines") == (
        "<|im_start|>user\n<tool_response>\n3 lines\n</tool_response><|im_end|>\n")
    assert fmt.generation_prompt() == "<|im_start|>assistant\n"
    system = fmt.render_system("Be brief.", TOOLS)
    assert system.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n")
    assert '{"type": "function", "function": {"name": "view_file"' in system
    assert system.endswith("</tool_call><|im_end|>\n")
    assert fmt.render_tool_call("finish", {"answer": "a.py:f"}) == (
        '<tool_call>\n{"name": "finish", "arguments": {"answer": "a.py:f"}}\n</tool_call>')


def test_rendered_calls_parse_back_with_typed_arguments():
    fmt = hermes.FORMAT
    args = {"path": "a/b.py", "start_line": 12, "flags": ["-n", "x"]}
    text = (fmt.render_assistant_text("Looking.", [("view_file", args), ("finish", {"answer": "x"})],
                                      reasoning="think first") + "<|im_end|>")
    turn = fmt.parse_turn(text, TOOLS)
    assert turn.reasoning == "think first" and turn.content == "Looking."
    assert [c.name for c in turn.calls] == ["view_file", "finish"]
    assert turn.calls[0].arguments == args and all(c.ok for c in turn.calls)
    assert turn.errors == ()


def test_same_calls_as_seed_oss_for_the_same_arguments():
    """Both formats hand the arguments to the same schema check: same values, same errors."""
    cases = [("view_file", {"path": "a.py", "start_line": 3}),
             ("view_file", {"start_line": 3}),               # missing required path
             ("view_file", {"path": "a.py", "start_line": "three"}),  # not an integer
             ("grep", {"pattern": "x"})]                      # unknown tool
    for name, args in cases:
        ours = hermes.parse_turn(hermes.render_tool_call(name, args), TOOLS).calls[0]
        seed = seed_oss.parse_turn(seed_oss.render_tool_call(name, args), TOOLS).calls[0]
        assert (ours.name, ours.arguments) == (seed.name, seed.arguments)
        assert (ours.error and ours.error.kind) == (seed.error and seed.error.kind), (name, args)
    kinds = [hermes.parse_turn(hermes.render_tool_call(n, a), TOOLS).calls[0].error
             for n, a in cases]
    assert [k.kind if k else None for k in kinds] == [None, MISSING_PARAMETER, BAD_ARGUMENT,
                                                       UNKNOWN_TOOL]


def test_malformed_text_becomes_errors_never_exceptions():
    fmt = hermes.FORMAT
    bad_json = fmt.parse_turn('<tool_call>\n{"name": "finish", "arguments": {answer: 1}}\n</tool_call>', TOOLS)
    assert bad_json.calls == () and bad_json.errors[0].kind == BAD_ARGUMENT
    assert "not valid JSON" in bad_json.errors[0].message
    no_name = fmt.parse_turn('<tool_call>{"arguments": {}}</tool_call>', TOOLS)
    assert no_name.errors[0].kind == NO_FUNCTION
    cut = fmt.parse_turn('Sure.\n<tool_call>\n{"name": "finish", "argu', TOOLS)
    assert cut.content == "Sure." and cut.errors[0].kind == UNTERMINATED_BLOCK
    # arguments written as a JSON string are accepted
    as_string = fmt.parse_turn('<tool_call>{"name": "finish", "arguments": "{\\"answer\\": \\"q\\"}"}'
                               '</tool_call>', TOOLS)
    assert as_string.calls[0].ok and as_string.calls[0].arguments == {"answer": "q"}
    # a call drafted inside the reasoning is counted, not run
    drafted = fmt.parse_turn("<think>maybe " + fmt.render_tool_call("finish", {"answer": "x"})
                             + "</think>I am not sure yet.", TOOLS)
    assert drafted.calls == () and drafted.calls_in_thinking == 1
    assert fmt.parse_turn("<think>still thinking", TOOLS).thinking_unclosed


def _tokenizer(specials):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["hello world"], trainers.BpeTrainer(
        vocab_size=300, special_tokens=list(specials), show_progress=False))
    return tok


def test_the_format_is_told_by_the_tokenizer_or_set_in_the_config(tmp_path):
    import pytest

    from ppp_jax.config import loader as cfgmod
    from ppp_jax.config.run import load_run_config
    from ppp_jax.envs.testing import tiny_seed_tokenizer
    from ppp_jax.sampling.chat_format import detect_format
    from ppp_jax.train.builders import chat_format_of, make_policy

    seed = tiny_seed_tokenizer()
    qwen = _tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>",
                       "</tool_call>", "<think>", "</think>"])
    assert detect_format(seed) == "seed_oss" and detect_format(qwen) == "hermes"
    plain = _tokenizer(["<s>", "</s>"])
    with pytest.raises(ValueError, match="set policy.chat_format"):
        detect_format(plain)
    # in a run: a config error naming the key (`ppp train` reports it in one line, exit 2)
    with pytest.raises(cfgmod.ConfigError, match="policy.chat_format: cannot tell the chat format"):
        chat_format_of(load_run_config("configs/tiny_cpu.yaml"), plain)
    cfg = load_run_config("configs/tiny_cpu.yaml")
    assert chat_format_of(cfg, qwen) == "hermes"
    forced = load_run_config("configs/tiny_cpu.yaml", ["policy.chat_format=seed_oss"])
    assert chat_format_of(forced, qwen) == "seed_oss"
    with pytest.raises(cfgmod.ConfigError, match="policy.chat_format"):
        load_run_config("configs/tiny_cpu.yaml", ["policy.chat_format=llama3x"])
    policy = make_policy(cfg, engine=object(), tokenizer=qwen)
    assert policy.chat.format.name == "hermes"


def test_serve_refuses_an_unknown_format_before_loading(tmp_path):
    import pytest

    from ppp_jax.commands.serve import ServeConfig, StartupError, build_server
    from ppp_jax.sampling.testing import write_tiny_serving_checkpoint

    path = write_tiny_serving_checkpoint(tmp_path / "tiny")
    with pytest.raises(StartupError, match=r"chat_format 'llama3x' is not one of \[.hermes., "
                       r".llama3., .llama3_pythonic., .seed_oss.\]"):
        build_server(ServeConfig(checkpoint=str(path), chat_format="llama3x", warmup=False))


def test_serve_refuses_tools_the_template_would_drop(tmp_path):
    """A checkpoint whose chat template ignores `tools` answers 400 naming `tools` instead of
    serving a prompt without them; the same chat without tools is served."""
    import httpx

    from ppp_jax.commands.serve import ServeConfig
    from ppp_jax.sampling.config import EngineConfig
    from ppp_jax.sampling.testing import write_tiny_serving_checkpoint
    from tests.sampling.serving import free_port, running_server

    path = write_tiny_serving_checkpoint(tmp_path / "tiny")
    (path / "chat_template.jinja").write_text(
        "{% for m in messages %}<seed:bos>{{ m['role'] }}\n{{ m['content'] }}<seed:eos>"
        "{% endfor %}{% if add_generation_prompt %}<seed:bos>assistant\n{% endif %}")
    cfg = ServeConfig(checkpoint=str(path), model_name="tiny", port=free_port(), warmup=False,
                      default_max_tokens=4,
                      engine=EngineConfig(num_slots=2, page_size=16, num_pages=33, max_seq_len=256,
                                          decode_steps=4, prefill_chunks=(64,), prefill_rows=(1,)))
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    with running_server(cfg) as (base, _engine):
        refused = httpx.post(f"{base}/chat/completions", json={**chat, "tools": TOOLS}, timeout=60)
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["param"] == "tools" and "does not render 'tools'" in error["message"]
        assert httpx.post(f"{base}/chat/completions", json=chat, timeout=60).status_code == 200


def _assistant(content, calls, reasoning=None):
    """An episode's assistant message: the raw sampled text (`raw`, what the session holds) and
    the parsed fields a chat template renders."""
    msg = {"role": "assistant", "content": content,
           "raw": hermes.render_assistant_text(content, calls, reasoning=reasoning),
           "tool_calls": [{"type": "function", "function": {"name": n, "arguments": a}}
                          for n, a in calls] or None}
    if reasoning:
        msg["reasoning_content"] = reasoning
    return msg


def _template(tok, msgs, **kwargs):
    """The checkpoint template's rendering of `msgs` (our `raw` field and unset fields dropped)."""
    msgs = [{k: v for k, v in m.items() if k != "raw" and v is not None} for m in msgs]
    return tok.apply_chat_template(msgs, tools=TOOLS, tokenize=False, **kwargs)


_CALLS = [("view_file", {"path": "ü/a.py", "start_line": 3, "flags": ["-n"]}),
          ("view_file", {"path": "b.py"}), ("finish", {"answer": "a.py:f"})]


def _episode(reasoning=(None, None, None)):
    """System, user, then: two calls answered by two tool results in a row, one call and its
    result, and a closing answer (`reasoning[i]`: the i-th assistant turn's think text)."""
    return [{"role": "system", "content": "Find the function."},
            {"role": "user", "content": "Where is f?"},
            _assistant("Looking.", _CALLS[:2], reasoning[0]),
            {"role": "tool", "content": "3: def f():"},
            {"role": "tool", "content": "1: import os"},
            _assistant("", _CALLS[2:], reasoning[1]),
            {"role": "tool", "content": "done"},
            _assistant("It is a.py:f.", [], reasoning[2])]


def _episode_text(tok, messages):
    """(decoded text, token ids) of `messages` as an engine episode and SFT render them."""
    from ppp_jax.sampling.chat import ChatTokenizer
    from ppp_jax.train.sft import render_token_view

    chat = ChatTokenizer(tok, "hermes")
    view = render_token_view(messages, TOOLS, chat)
    return chat.decode(view.token_ids), list(view.token_ids), chat


def test_an_episode_renders_as_the_released_qwen2_5_template_token_for_token():
    """A conversation with tools, rendered the way an engine episode and SFT render it (system
    block, then turn by turn, each assistant turn ending at the eos the engine stops on), is the
    Qwen2.5 Instruct template's rendering, token for token, two tool results in a row included
    (the template merges them into ONE user turn of `<tool_response>` blocks; so do we). One
    difference, asserted exactly: the template ends a history assistant turn with
    `<|im_end|>\\n`, and an episode's last sampled turn stops at `<|im_end|>`."""
    from tests.sampling.chat_templates import qwen_tokenizer

    tok = qwen_tokenizer()
    fmt = hermes.FORMAT
    messages = _episode()
    ref = _template(tok, messages)
    ours, ids, chat = _episode_text(tok, messages)
    assert ours + "\n" == ref  # the one difference: the template's "\n" after the last turn
    assert ids + chat.encode("\n") == chat.encode(ref)
    # the system block without a template (render_system) is the template's too
    assert ref.startswith(fmt.render_system("Find the function.", TOOLS))
    # the generation prompt after the two results, as an episode sends it
    prompt = _template(tok, messages[:5], add_generation_prompt=True)
    merged = ("<|im_start|>user\n<tool_response>\n3: def f():\n</tool_response>\n"
              "<tool_response>\n1: import os\n</tool_response><|im_end|>\n")
    assert prompt.endswith(fmt.eos + "\n" + merged + fmt.generation_prompt())
    assert fmt.render_turns(messages[3:5]) == merged
    assert fmt.render_turns(messages[6:7]) == fmt.render_turn("tool", "done")


def test_an_episode_renders_as_the_released_qwen3_templates():
    """The same episode against both Qwen3 templates (`chat_templates.py` names the copies used):
    with reasoning in every assistant turn (as a thinking model writes it) our rendering is the
    template's token for token, merged tool results included. Where Qwen3 differs, asserted
    below: (a) a last assistant turn without reasoning gets an empty think block from the
    template; (b) the template drops the reasoning of assistant turns before the last real user
    message, while a session keeps every sampled token (append-only; episodes answer through
    `tool` messages, so this bites only when observations come as `user` messages); (c) the
    generation prompt: the hybrid template's is ours, with `enable_thinking=False` ours plus
    `no_thinking_prefix`; the 2507 thinking template's opens `<think>\\n` (a run sets that as
    the policy's generation prefix); (d) a history turn answered after `no_thinking_prefix`
    loses that empty think block in the template, while a session keeps the prefix it sent."""
    from tests.sampling.chat_templates import qwen3_tokenizer

    fmt = hermes.FORMAT
    for name in ("qwen3_hybrid", "qwen3_thinking"):
        tok = qwen3_tokenizer(name)
        messages = _episode(("look at a.py first", None, "found it"))
        ref = _template(tok, messages)
        ours, ids, chat = _episode_text(tok, messages)
        assert ours + "\n" == ref, name
        assert ids + chat.encode("\n") == chat.encode(ref), name
        assert ref.startswith(fmt.render_system("Find the function.", TOOLS))
        # (a) a closing answer without reasoning
        plain = _episode(("look at a.py first", None, None))
        assert _template(tok, plain).endswith(
            "<|im_start|>assistant\n<think>\n\n</think>\n\nIt is a.py:f.<|im_end|>\n")
        assert _episode_text(tok, plain)[0].endswith(
            "<|im_start|>assistant\nIt is a.py:f.<|im_end|>")
        # (b) a user message after a turn with reasoning: the template drops that reasoning
        asked = messages[:5] + [{"role": "user", "content": "Hurry."}]
        assert "look at a.py first" in _episode_text(tok, asked + [messages[-1]])[0]
        assert "look at a.py first" not in _template(tok, asked + [messages[-1]])
        # (c) the generation prompt
        prompt = _template(tok, messages[:5], add_generation_prompt=True)
        closed = _template(tok, messages[:5], add_generation_prompt=True, enable_thinking=False)
        head = _template(tok, messages[:5])
        if name == "qwen3_hybrid":
            assert prompt == head + fmt.generation_prompt()
            assert closed == head + fmt.generation_prompt() + fmt.no_thinking_prefix
        else:
            assert prompt == closed == head + fmt.generation_prompt() + "<think>\n"
        # (d) a turn sampled after `no_thinking_prefix`: the template drops the empty think
        # block from history (a session keeps the prefix it sent)
        quiet = [*messages[:2], {**messages[2], "raw": None, "reasoning_content": None,
                                 "content": fmt.no_thinking_prefix + "Looking."}, *messages[3:]]
        assert "<|im_start|>assistant\nLooking.\n<tool_call>" in _template(tok, quiet)


def test_generation_prefix_from_the_checkpoints_template_or_the_config():
    """`policy.generation_prefix: auto` (the default) takes what the chat template writes after
    the format's generation prompt: `<think>\\n` for Qwen3 2507 thinking, nothing for the hybrid
    Qwen3, Qwen2.5, Llama 3.1 and a tokenizer without a template; "none" and literal text
    override it; a template whose generation prompt is not the format's is a config error
    naming both keys. The rollout policy opens its turns with the result."""
    import pytest

    from ppp_jax.config import loader as cfgmod
    from ppp_jax.config.run import load_run_config
    from ppp_jax.envs.testing import tiny_seed_tokenizer
    from ppp_jax.sampling.chat_format import GenerationPromptMismatch, template_generation_prefix
    from ppp_jax.train.builders import generation_prefix_of, make_policy
    from tests.sampling.chat_templates import llama3_tokenizer, qwen3_tokenizer, qwen_tokenizer

    thinking = qwen3_tokenizer("qwen3_thinking")
    assert template_generation_prefix(thinking, "hermes") == "<think>\n"
    assert template_generation_prefix(qwen3_tokenizer("qwen3_hybrid"), "hermes") == ""
    assert template_generation_prefix(qwen_tokenizer(), "hermes") == ""
    assert template_generation_prefix(llama3_tokenizer(), "llama3") == ""
    assert template_generation_prefix(tiny_seed_tokenizer(), "seed_oss") == ""  # no template
    with pytest.raises(GenerationPromptMismatch, match=r"'llama3' format's '<\|start_header_id\|>"):
        template_generation_prefix(thinking, "llama3")

    cfg = load_run_config("configs/tiny_cpu.yaml")
    assert cfg.policy.generation_prefix == "auto"
    assert generation_prefix_of(cfg, thinking) == "<think>\n"
    assert make_policy(cfg, engine=object(), tokenizer=thinking).generation_prefix == "<think>\n"
    assert generation_prefix_of(cfg, tiny_seed_tokenizer()) == ""
    none = load_run_config("configs/tiny_cpu.yaml", ["policy.generation_prefix=none"])
    assert generation_prefix_of(none, thinking) == ""
    # a YAML value, as on the command line: double quotes for the escapes
    literal = load_run_config("configs/tiny_cpu.yaml",
                              ['policy.generation_prefix="<think>\\n\\n</think>\\n\\n"'])
    assert make_policy(literal, engine=object(), tokenizer=thinking).generation_prefix == \
        "<think>\n\n</think>\n\n"
    wrong = load_run_config("configs/tiny_cpu.yaml", ["policy.chat_format=llama3"])
    with pytest.raises(cfgmod.ConfigError, match="policy.generation_prefix: auto: .*policy.chat_format"):
        generation_prefix_of(wrong, thinking)
