"""The Hermes-style chat and tool-call format of Qwen2.5 and Qwen3 (ChatML turns, JSON calls).

Turns: `<|im_start|>{role}\\n{content}<|im_end|>\\n`; the generation prompt is
`<|im_start|>assistant\\n`. Tool results are rendered as the Qwen templates render the `tool`
role: a `user` turn whose content is wrapped in `<tool_response>...</tool_response>`, several
results in a row sharing ONE user turn (`render_tool_results`, `ChatFormat.render_turns`). The first
system turn carries the tool documentation: each tool's JSON schema on its own line inside
`<tools></tools>`, then the instruction to answer with

    <tool_call>
    {"name": NAME, "arguments": {...}}
    </tool_call>

Reasoning (Qwen3) is in `<think>...</think>`; `no_thinking_prefix` is the empty think block the
Qwen3 template pre-fills with `enable_thinking=False`.

Parsing rules (the same policy as the Seed-OSS parser, `seed_oss.py`):
  * The text is split at the first `</think>`; calls are searched for only after it. Call
    openings inside the reasoning are counted (`ParsedTurn.calls_in_thinking`) and ignored; an
    unclosed think block is all reasoning.
  * Every `<tool_call>...</tool_call>` block after the reasoning is one call, in order. Its body
    must be one JSON object with a string `name` and an object `arguments` (a JSON string holding
    an object is accepted too, as some checkpoints write it).
  * The arguments are checked against the tool schema exactly as for Seed-OSS
    (`base.validate_call`): each value is handed over in its JSON text form and converted by the
    schema's type, so the two formats accept and refuse the same calls.
  * Malformed text becomes a `ToolCallError` the agent can read; parsing never raises.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping, Sequence

from ppp_jax.sampling.chat_format.base import (
    BAD_ARGUMENT,
    NO_FUNCTION,
    UNTERMINATED_BLOCK,
    ChatFormat,
    ParsedCall,
    ParsedTurn,
    ToolCallError,
    call_from_json,
    schema_index,
    split_think,
)

BOS = "<|im_start|>"
EOS = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
RESPONSE_OPEN = "<tool_response>"
RESPONSE_CLOSE = "</tool_response>"

MARKUP_TOKENS = (THINK_OPEN, THINK_CLOSE, CALL_OPEN, CALL_CLOSE)
CONTROL_TOKENS = (BOS, EOS, END_OF_TEXT)
NO_THINKING_PREFIX = f"{THINK_OPEN}\n\n{THINK_CLOSE}\n\n"

_BLOCK_RE = re.compile(re.escape(CALL_OPEN) + r"(.*?)" + re.escape(CALL_CLOSE), re.DOTALL)
_TOOLS_INTRO = ("\n\n# Tools\n\nYou may call one or more functions to assist with the user "
                "query.\n\nYou are provided with function signatures within <tools></tools> XML "
                "tags:\n<tools>")
_TOOLS_OUTRO = ("\n</tools>\n\nFor each function call, return a json object with function name "
                "and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
                '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')


# --- rendering ------------------------------------------------------------------------------------


def render_tool_results(contents: Sequence[str]) -> str:
    """Consecutive tool results as the Qwen2.5 / Qwen3 templates render them: ONE user turn,
    each result in its own `<tool_response>` block."""
    blocks = "".join(f"\n{RESPONSE_OPEN}\n{c}\n{RESPONSE_CLOSE}" for c in contents)
    return f"{BOS}user{blocks}{EOS}\n"


def render_turn(role: str, content: str) -> str:
    """One complete non-assistant turn (a lone `tool` result as the Qwen templates render it;
    several in a row: `render_tool_results`)."""
    if role == "tool":
        return render_tool_results([content])
    return f"{BOS}{role}\n{content}{EOS}\n"


def generation_prompt() -> str:
    return f"{BOS}assistant\n"


def render_tool_doc(tools: Sequence[Mapping[str, Any]]) -> str:
    """The tool documentation the Qwen templates append to the system text."""
    lines = "".join("\n" + json.dumps(tool if "function" in tool else
                                      {"type": "function", "function": tool}, ensure_ascii=False)
                    for tool in tools)
    return _TOOLS_INTRO + lines + _TOOLS_OUTRO


def render_system(system: str, tools: Sequence[Mapping[str, Any]]) -> str:
    """The first system turn without the model's template: system text plus `render_tool_doc`."""
    return f"{BOS}system\n{system}{render_tool_doc(tools) if tools else ''}{EOS}\n"


def template_arguments(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """A call's arguments for the checkpoint's template, which writes them with `tojson`."""
    return dict(arguments)


def render_tool_call(name: str, arguments: Mapping[str, Any]) -> str:
    """`<tool_call>\\n{"name": NAME, "arguments": {...}}\\n</tool_call>`, as the template writes
    a history call."""
    body = json.dumps({"name": name, "arguments": dict(arguments)}, ensure_ascii=False)
    return f"{CALL_OPEN}\n{body}\n{CALL_CLOSE}"


def render_assistant_text(content: str = "", calls: Sequence[tuple[str, Mapping[str, Any]]] = (),
                          reasoning: str | None = None) -> str:
    """The body of an assistant turn (after `<|im_start|>assistant\\n`), without `<|im_end|>`:
    optional `<think>\\n{reasoning}\\n</think>\\n\\n`, the content, then each call on its own line."""
    out = []
    if reasoning:
        out.append(f"{THINK_OPEN}\n{reasoning.strip()}\n{THINK_CLOSE}\n\n")
    out.append(content.strip())
    for i, (name, args) in enumerate(calls):
        out.append(("\n" if (i or content.strip()) else "") + render_tool_call(name, args))
    return "".join(out)


# --- parsing --------------------------------------------------------------------------------------


def split_reasoning(text: str) -> tuple[str, str, bool]:
    """(reasoning, rest, unclosed), split at the first `</think>` (`base.split_think`)."""
    return split_think(text, THINK_OPEN, THINK_CLOSE)


def _parse_call(body: str, raw: str, schemas) -> ParsedCall | ToolCallError:
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as e:
        return ToolCallError(BAD_ARGUMENT, f"The <tool_call> body is not valid JSON ({e.msg} at "
                                           f"character {e.pos}); write "
                                           '{"name": ..., "arguments": {...}}.')
    if not isinstance(obj, dict) or "name" not in obj:
        return ToolCallError(NO_FUNCTION, 'A <tool_call> must hold a JSON object with a "name".')
    return call_from_json(obj["name"], obj.get("arguments", {}), raw, schemas, "arguments")


def parse_turn(text: str, tools: Sequence[Mapping[str, Any]] | None = None) -> ParsedTurn:
    """Parses a raw Hermes-format assistant turn into reasoning, content and tool calls.

    Args:
      text: the decoded assistant text (may include `<think>` and the final `<|im_end|>`).
      tools: OpenAI-style tool schemas to check names and convert values; None skips checks.

    Returns:
      A ParsedTurn; never raises on malformed text.
    """
    schemas = schema_index(tools)
    for token in CONTROL_TOKENS:
        text = text.replace(token, "")
    reasoning, rest, unclosed = split_reasoning(text)
    calls: list[ParsedCall] = []
    errors: list[ToolCallError] = []
    content_parts: list[str] = []
    pos = 0
    for m in _BLOCK_RE.finditer(rest):
        content_parts.append(rest[pos:m.start()])
        pos = m.end()
        parsed = _parse_call(m.group(1).strip(), m.group(0), schemas)
        if isinstance(parsed, ToolCallError):
            errors.append(parsed)
        else:
            calls.append(parsed)
    tail = rest[pos:]
    if CALL_OPEN in tail:
        content_parts.append(tail[:tail.find(CALL_OPEN)])
        errors.append(ToolCallError(
            UNTERMINATED_BLOCK, "A <tool_call> was not closed with </tool_call> (output cut off?)."))
    else:
        content_parts.append(tail)
    content = "".join(content_parts).replace(CALL_CLOSE, "").strip()
    return ParsedTurn(reasoning, content, tuple(calls), tuple(errors),
                      reasoning.count(CALL_OPEN), unclosed)


FORMAT = ChatFormat(
    name="hermes", bos=BOS, eos=EOS, think_open=THINK_OPEN, think_close=THINK_CLOSE,
    call_markers=(CALL_OPEN,), markup_tokens=MARKUP_TOKENS, control_tokens=CONTROL_TOKENS,
    no_thinking_prefix=NO_THINKING_PREFIX, render_turn=render_turn,
    generation_prompt=generation_prompt, render_tool_doc=render_tool_doc,
    render_system=render_system, render_tool_call=render_tool_call,
    render_assistant_text=render_assistant_text, template_arguments=template_arguments,
    split_reasoning=split_reasoning, parse_turn=parse_turn, turn_separator="\n",
    render_tool_results=render_tool_results)

__all__ = ["FORMAT", "BOS", "EOS", "END_OF_TEXT", "THINK_OPEN", "THINK_CLOSE", "CALL_OPEN",
           "CALL_CLOSE", "RESPONSE_OPEN", "RESPONSE_CLOSE", "MARKUP_TOKENS", "CONTROL_TOKENS",
           "NO_THINKING_PREFIX", "render_turn", "render_tool_results", "generation_prompt",
           "render_tool_doc", "render_system", "render_tool_call", "render_assistant_text",
           "template_arguments", "split_reasoning", "parse_turn"]
