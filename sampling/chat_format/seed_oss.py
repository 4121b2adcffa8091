"""The Seed-OSS chat and tool-call format (`shared/reference/seed_oss.md` section 4).

Turns: every turn is `<seed:bos>{role}\\n{content}<seed:eos>` with nothing between turns; tool
results use the `tool` role; the generation prompt is `<seed:bos>assistant\\n`. The first system
turn carries the tool documentation (`render_tool_doc`: an approximation of the template's
Python-stub layout, used when no tokenizer template is at hand, see
`ppp_jax.sampling.chat.ChatTokenizer`). Special tokens in rendered text (`<seed:bos>`,
`<seed:eos>`, `<seed:think>`, ...) are single vocabulary entries, so rendering piecewise gives
the same ids as rendering whole.

An assistant turn puts its reasoning in `<seed:think>...</seed:think>` and each tool call in a
block

    <seed:tool_call>
    <function=NAME>
    <parameter=K>V</parameter>
    </function>
    </seed:tool_call>

Parsing rules (vLLM's `seed_oss` parser is the model for them):
  * The text is split at the first `</seed:think>`. Everything before it is reasoning; only the
    text after it is searched for calls. A turn that opens `<seed:think>` and never closes it is
    all reasoning and has no calls. Rationale: the model drafts calls while thinking ("maybe I
    should call <function=grep>..."); executing those would act on text it never committed to.
    Calls found inside the reasoning are counted (`ParsedTurn.calls_in_thinking`) and ignored.
  * Every `<seed:tool_call>` block after the reasoning is parsed, in order: several calls per turn
    are allowed, and one block may hold several `<function=...>` elements.
  * Bare OpenHands-style `<function=NAME>...</function>` elements outside any block are accepted
    too (the released PPP code used that format), but only when the turn has no block at all.
  * A parameter value is the raw text between `<parameter=K>` and `</parameter>` with one leading
    and one trailing newline removed, then converted by the tool schema's JSON type: string as is,
    integer/number/boolean parsed, array/object as JSON (or a Python literal, since the chat
    template renders non-string values with `str()`).
  * Anything that cannot be parsed becomes a `ToolCallError` with a machine-readable `kind` and a
    message the agent can read as an observation; parsing never raises.

Besides the format's functions, the module exposes the shared parse results and error kinds of
`base`, so it reads as the whole Seed-OSS tool-call API on its own.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping, Sequence

from ppp_jax.sampling.chat_format.base import (
    BAD_ARGUMENT,
    BAD_NAME,
    DUPLICATE_PARAMETER,
    MISSING_PARAMETER,
    NO_FUNCTION,
    UNKNOWN_PARAMETER,
    UNKNOWN_TOOL,
    UNTERMINATED_BLOCK,
    UNTERMINATED_FUNCTION,
    UNTERMINATED_PARAMETER,
    ChatFormat,
    ParsedCall,
    ParsedTurn,
    ToolCallError,
    convert_value,
    schema_index,
    split_think,
    validate_call,
)

BOS = "<seed:bos>"
EOS = "<seed:eos>"
PAD = "<seed:pad>"
THINK_OPEN = "<seed:think>"
THINK_CLOSE = "</seed:think>"
CALL_OPEN = "<seed:tool_call>"
CALL_CLOSE = "</seed:tool_call>"
FUNCTION_OPEN = "<function="
BUDGET_REFLECT_OPEN = "<seed:cot_budget_reflect>"
BUDGET_REFLECT_CLOSE = "</seed:cot_budget_reflect>"

# Seed-OSS markup tokens kept in decoded chat output (special tokens in the vocabulary that
# parsing needs); the control tokens are dropped.
MARKUP_TOKENS = (THINK_OPEN, THINK_CLOSE, CALL_OPEN, CALL_CLOSE, BUDGET_REFLECT_OPEN,
                 BUDGET_REFLECT_CLOSE)
CONTROL_TOKENS = (BOS, EOS, PAD)

# The current Seed-OSS template's pre-fill for thinking_budget=0 (seed_oss.md 4.2). The template
# also adds a system turn telling the model to answer without thinking; put that instruction in
# the domain's system prompt when using this prefix.
THINKING_BUDGET_0_PREFIX = ("<seed:think>\n<seed:cot_budget_reflect>The current thinking budget is 0, "
                            "so I will directly start answering the question."
                            "</seed:cot_budget_reflect>\n</seed:think>")

_TYPE_NAMES = {"string": "str", "number": "int", "integer": "int", "boolean": "bool", "array": "list"}
# "Tool calls must follow this format:" (the template's Chinese instruction line).
_FORMAT_LINE = "工具调用请遵循如下格式:"

_BLOCK_RE = re.compile(re.escape(CALL_OPEN) + r"(.*?)" + re.escape(CALL_CLOSE), re.DOTALL)
_FUNCTION_RE = re.compile(r"<function=([^>\n]*)>(.*?)</function>", re.DOTALL)
_PARAM_RE = re.compile(r"<parameter=([^>\n]*)>(.*?)</parameter>", re.DOTALL)


# --- rendering ------------------------------------------------------------------------------------


def render_turn(role: str, content: str) -> str:
    """One complete non-assistant turn."""
    return f"{BOS}{role}\n{content}{EOS}"


def generation_prompt() -> str:
    return f"{BOS}assistant\n"


def render_tool_doc(tools: Sequence[Mapping[str, Any]]) -> str:
    """Tool documentation in the template's default (Python stub) layout, approximately."""
    parts = []
    for tool in tools:
        fn = tool.get("function", tool)
        params = fn.get("parameters", {}) or {}
        props = params.get("properties", {}) or {}
        required = set(params.get("required", []) or [])
        sig = ",".join(f"{k}: {_TYPE_NAMES.get(v.get('type'), 'Any')}" for k, v in props.items())
        args = "\n".join(
            f"    - {k} ({_TYPE_NAMES.get(v.get('type'), 'Any')}) [{'必填' if k in required else '选填'}]: "
            f"{v.get('description', '')}" for k, v in props.items())
        parts.append(f"Function:\ndef {fn['name']}({sig}):\n    \"\"\"\n    {fn.get('description', '')}"
                     f"\n\n    Args:\n{args}\n\n    \"\"\"")
    example = ("<seed:tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>"
               "value_1</parameter>\n<parameter=example_parameter_2>This is the value for the second "
               "parameter\nthat can span\nmultiple lines</parameter>\n</function>\n</seed:tool_call>\n")
    return "\n\n" + "\n\n".join(parts) + f"\n{_FORMAT_LINE}\n{example}"


def render_system(system: str, tools: Sequence[Mapping[str, Any]]) -> str:
    """The first system turn without the model's template: system text plus `render_tool_doc`."""
    return f"{BOS}system\n{system}{render_tool_doc(tools) if tools else ''}{EOS}"


def _render_value(value: Any) -> str:
    """Renders an argument value as the model would write it (strings raw, others as JSON)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def template_arguments(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """A call's arguments for the checkpoint's template: a dict (the template iterates
    `arguments.items()`) with every non-string value written as JSON text, the way the model
    writes it (the template would otherwise render Python `str()`: `True`, `['a']`)."""
    return {k: _render_value(v) for k, v in arguments.items()}


def render_tool_call(name: str, arguments: Mapping[str, Any]) -> str:
    """Renders one call exactly as the Seed-OSS chat template renders a history tool call.

    `<seed:tool_call>\\n<function=NAME>\\n<parameter=K>V</parameter>\\n...</function>\\n</seed:tool_call>`
    """
    parts = [CALL_OPEN, "\n", f"<function={name}>", "\n"]
    for key, value in arguments.items():
        parts.append(f"<parameter={key}>{_render_value(value)}</parameter>\n")
    parts.append("</function>\n" + CALL_CLOSE)
    return "".join(parts)


def render_assistant_text(content: str = "", calls: Sequence[tuple[str, Mapping[str, Any]]] = (),
                          reasoning: str | None = None) -> str:
    """Renders the body of an assistant turn (what follows `<seed:bos>assistant`) like the template.

    Layout (seed_oss.md 4.2): optional `\\n<seed:think>{reasoning}</seed:think>`; then for a
    tool-call turn optional `\\n{content}\\n` and `\\n` + each call; for a plain turn
    `\\n{content}`. The closing `<seed:eos>` is not included.
    """
    out = []
    if reasoning:
        out.append(f"\n{THINK_OPEN}{reasoning.strip()}{THINK_CLOSE}")
    if calls:
        if content.strip():
            out.append(f"\n{content.strip()}\n")
        for name, args in calls:
            out.append("\n" + render_tool_call(name, args))
    else:
        out.append(f"\n{content.strip()}")
    return "".join(out)


# --- parsing --------------------------------------------------------------------------------------


def split_reasoning(text: str) -> tuple[str, str, bool]:
    """Splits raw assistant text at the first `</seed:think>`.

    Returns:
      (reasoning, rest, unclosed): reasoning without its tags; the text after the close tag;
      unclosed is True when a think block was opened and never closed (then rest is "").
      Text with no think tags at all is all `rest`.
    """
    return split_think(text, THINK_OPEN, THINK_CLOSE)


def strip_one_newline(value: str) -> str:
    """Removes exactly one leading and one trailing newline (vLLM's rule for parameter values)."""
    if value.startswith("\n"):
        value = value[1:]
    if value.endswith("\n"):
        value = value[:-1]
    return value


def _parse_function(name: str, body: str, raw: str,
                    schemas: dict[str, Mapping[str, Any]] | None) -> ParsedCall:
    name = name.strip()
    if not name or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]*", name):
        return ParsedCall(name, {}, {}, raw, ToolCallError(
            BAD_NAME, f"Malformed function name {name!r} in tool call.", name or None))
    raw_args: dict[str, str] = {}
    for m in _PARAM_RE.finditer(body):
        key = m.group(1).strip()
        if key in raw_args:
            return ParsedCall(name, {}, raw_args, raw, ToolCallError(
                DUPLICATE_PARAMETER, f"Parameter '{key}' given twice in a call to '{name}'.", name))
        raw_args[key] = strip_one_newline(m.group(2))
    leftover = _PARAM_RE.sub("", body)
    if "<parameter=" in leftover:
        return ParsedCall(name, {}, raw_args, raw, ToolCallError(
            UNTERMINATED_PARAMETER,
            f"A <parameter=...> in the call to '{name}' is not closed with </parameter>.", name))
    return validate_call(name, raw_args, raw, schemas)


def _parse_block(block: str, raw: str, schemas) -> tuple[list[ParsedCall], list[ToolCallError]]:
    calls: list[ParsedCall] = []
    for m in _FUNCTION_RE.finditer(block):
        calls.append(_parse_function(m.group(1), m.group(2), m.group(0), schemas))
    leftover = _FUNCTION_RE.sub("", block)
    errors: list[ToolCallError] = []
    if FUNCTION_OPEN in leftover:
        errors.append(ToolCallError(
            UNTERMINATED_FUNCTION, "A <function=...> in a tool call is not closed with </function>."))
    elif not calls:
        errors.append(ToolCallError(
            NO_FUNCTION, "A <seed:tool_call> block holds no <function=NAME>...</function> element."))
    return calls, errors


def parse_turn(text: str, tools: Sequence[Mapping[str, Any]] | None = None) -> ParsedTurn:
    """Parses a raw Seed-OSS assistant turn into reasoning, content and tool calls.

    Args:
      text: the decoded assistant text (may include `<seed:think>` and the final `<seed:eos>`).
      tools: OpenAI-style tool schemas used to check names and convert values; None skips checks
        (values then become JSON where they parse, else strings).

    Returns:
      A ParsedTurn; never raises on malformed text.
    """
    schemas = schema_index(tools)
    text = text.replace(EOS, "")
    reasoning, rest, unclosed = split_reasoning(text)
    in_thinking = reasoning.count(FUNCTION_OPEN)
    calls: list[ParsedCall] = []
    errors: list[ToolCallError] = []
    content_parts: list[str] = []
    pos = 0
    has_block = CALL_OPEN in rest
    if has_block:
        for m in _BLOCK_RE.finditer(rest):
            content_parts.append(rest[pos:m.start()])
            pos = m.end()
            c, e = _parse_block(m.group(1), m.group(0), schemas)
            calls.extend(c)
            errors.extend(e)
        tail = rest[pos:]
        if CALL_OPEN in tail:
            cut = tail.find(CALL_OPEN)
            content_parts.append(tail[:cut])
            errors.append(ToolCallError(
                UNTERMINATED_BLOCK,
                "A <seed:tool_call> block was not closed with </seed:tool_call> (output cut off?)."))
        else:
            content_parts.append(tail)
    else:
        for m in _FUNCTION_RE.finditer(rest):
            content_parts.append(rest[pos:m.start()])
            pos = m.end()
            calls.append(_parse_function(m.group(1), m.group(2), m.group(0), schemas))
        tail = rest[pos:]
        if FUNCTION_OPEN in tail:
            errors.append(ToolCallError(
                UNTERMINATED_FUNCTION, "A <function=...> is not closed with </function>."))
            tail = tail[:tail.find(FUNCTION_OPEN)]
        content_parts.append(tail)
    content = "".join(content_parts).replace(CALL_CLOSE, "").strip()
    return ParsedTurn(reasoning, content, tuple(calls), tuple(errors), in_thinking, unclosed)


FORMAT = ChatFormat(
    name="seed_oss", bos=BOS, eos=EOS, think_open=THINK_OPEN, think_close=THINK_CLOSE,
    call_markers=(CALL_OPEN, FUNCTION_OPEN), markup_tokens=MARKUP_TOKENS,
    control_tokens=CONTROL_TOKENS, no_thinking_prefix=THINKING_BUDGET_0_PREFIX,
    render_turn=render_turn, generation_prompt=generation_prompt, render_tool_doc=render_tool_doc,
    render_system=render_system, render_tool_call=render_tool_call,
    render_assistant_text=render_assistant_text, template_arguments=template_arguments,
    split_reasoning=split_reasoning, parse_turn=parse_turn)

__all__ = [
    # the format
    "FORMAT", "BOS", "EOS", "PAD", "THINK_OPEN", "THINK_CLOSE", "CALL_OPEN", "CALL_CLOSE",
    "FUNCTION_OPEN", "BUDGET_REFLECT_OPEN", "BUDGET_REFLECT_CLOSE", "MARKUP_TOKENS",
    "CONTROL_TOKENS", "THINKING_BUDGET_0_PREFIX", "render_turn", "generation_prompt",
    "render_tool_doc", "render_system", "render_tool_call", "render_assistant_text",
    "template_arguments", "split_reasoning", "strip_one_newline", "parse_turn",
    # shared with every format (`base`)
    "ChatFormat", "ParsedCall", "ParsedTurn", "ToolCallError", "convert_value", "schema_index",
    "validate_call", "BAD_ARGUMENT", "BAD_NAME", "DUPLICATE_PARAMETER", "MISSING_PARAMETER",
    "NO_FUNCTION", "UNKNOWN_PARAMETER", "UNKNOWN_TOOL", "UNTERMINATED_BLOCK",
    "UNTERMINATED_FUNCTION", "UNTERMINATED_PARAMETER",
]
