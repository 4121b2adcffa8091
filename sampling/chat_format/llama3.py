"""The chat and JSON tool-call format of Llama 3.1, 3.2 and 3.3 Instruct.

Turns: `<|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>`, the content trimmed
as the template trims it; the conversation opens with `<|begin_of_text|>`; the generation prompt
is `<|start_header_id|>assistant<|end_header_id|>\\n\\n`. Tool results come back in the `ipython`
role, their content written with `tojson` as the released template writes a string (the
template's `content is iterable` test holds for a string, so a result `ok` is rendered `"ok"`).

The system turn always carries the template's date lines; with tools it starts with
`Environment: ipython` and documents each tool as `json.dumps(tool, indent=4)` under the
instruction to answer with `{"name": function name, "parameters": dictionary of argument name
and its value}`. The released template puts that documentation into the first *user* message by
default (`tools_in_user_message`, true unless set); the episode runner renders the system block
on its own, so this format uses the template's other layout, tools in the system turn
(`tools_in_user_message=False`), and passes that (and the template's fallback date) to a
tokenizer's template through `ChatFormat.system_template_kwargs`, so both paths give the same
text. `ppp serve` renders whole requests with the checkpoint's template and its defaults.

An assistant turn is a tool call when it starts (after whitespace) with `{` or holds
`<|python_tag|>` (text before the tag is content): one JSON object per call,
`{"name": NAME, "parameters": {...}}` (`"arguments"` accepted too), several separated by `;` or
whitespace; it ends with `<|eot_id|>` or, in the `ipython` environment, `<|eom_id|>` (both end a
turn: `ChatFormat.stop_tokens`). There is no reasoning block.

Parsing rules (the other formats' policy, `seed_oss.py`):
  * A turn that starts with `{` and whose first JSON object has no `"name"` is a JSON answer:
    all content, no calls. After `<|python_tag|>` the same object is an error (`no_function`).
  * Each call's arguments go through the same schema check as the other formats
    (`base.validate_call`, values handed over in their JSON text form), so all formats accept and
    refuse the same calls.
  * Text that is not valid JSON becomes a `ToolCallError` (`unterminated_block` when the text
    ends inside the object, as a cut-off turn does; `bad_argument` otherwise), and the unread
    text is kept in `ParsedTurn.unparsed`; parsing never raises.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping, Sequence

from ppp_jax.sampling.chat_format.base import (
    BAD_ARGUMENT,
    BAD_NAME,
    NO_FUNCTION,
    UNTERMINATED_BLOCK,
    ChatFormat,
    ParsedCall,
    ParsedTurn,
    ToolCallError,
    schema_index,
    validate_call,
)

BEGIN = "<|begin_of_text|>"
HEADER_OPEN = "<|start_header_id|>"
HEADER_CLOSE = "<|end_header_id|>"
EOT = "<|eot_id|>"
EOM = "<|eom_id|>"
END_OF_TEXT = "<|end_of_text|>"
PYTHON_TAG = "<|python_tag|>"
TOOL_ROLE = "ipython"

MARKUP_TOKENS = (PYTHON_TAG,)
CONTROL_TOKENS = (BEGIN, HEADER_OPEN, HEADER_CLOSE, EOT, EOM, END_OF_TEXT)
# The date the released 3.1 template falls back on; 3.2 / 3.3 use today's date when the
# renderer offers `strftime_now`, so it is passed explicitly for a reproducible system turn.
DATE_STRING = "26 Jul 2024"
SYSTEM_TEMPLATE_KWARGS = (("tools_in_user_message", False), ("date_string", DATE_STRING))

_CALL_INSTRUCTION = ("You have access to the following functions. To call a function, please "
                     "respond with JSON for a function call."
                     'Respond in the format {"name": function name, "parameters": dictionary of '
                     "argument name and its value}.Do not use variables.\n\n")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_DECODER = json.JSONDecoder()


# --- rendering ------------------------------------------------------------------------------------


def _header(role: str) -> str:
    return f"{HEADER_OPEN}{role}{HEADER_CLOSE}\n\n"


def render_turn(role: str, content: str) -> str:
    """One complete non-assistant turn; `tool` becomes the `ipython` role with JSON content."""
    if role in ("tool", TOOL_ROLE):
        return f"{_header(TOOL_ROLE)}{json.dumps(content, ensure_ascii=False)}{EOT}"
    return f"{_header(role)}{content.strip()}{EOT}"


def generation_prompt() -> str:
    return _header("assistant")


def _as_tool(tool: Mapping[str, Any]) -> Mapping[str, Any]:
    return tool if "function" in tool else {"type": "function", "function": tool}


def render_tool_doc(tools: Sequence[Mapping[str, Any]]) -> str:
    """The tool documentation the template writes into the system turn (tools_in_user_message
    false): the call instruction, then each tool as 4-space-indented JSON and a blank line."""
    return _CALL_INSTRUCTION + "".join(
        json.dumps(_as_tool(t), ensure_ascii=False, indent=4) + "\n\n" for t in tools)


def render_system(system: str, tools: Sequence[Mapping[str, Any]]) -> str:
    """The conversation's opening: `<|begin_of_text|>` and the whole system turn, tools included."""
    env = "Environment: ipython\n" if tools else ""
    doc = render_tool_doc(tools) if tools else ""
    return (f"{BEGIN}{_header('system')}{env}Cutting Knowledge Date: December 2023\n"
            f"Today Date: {DATE_STRING}\n\n{doc}{system.strip()}{EOT}")


def template_arguments(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """A call's arguments for the checkpoint's template, which writes them with `tojson`."""
    return dict(arguments)


def render_tool_call(name: str, arguments: Mapping[str, Any]) -> str:
    """`{"name": "NAME", "parameters": {...}}`, as the template writes a history call."""
    return f'{{"name": "{name}", "parameters": {json.dumps(dict(arguments), ensure_ascii=False)}}}'


def render_assistant_text(content: str = "", calls: Sequence[tuple[str, Mapping[str, Any]]] = (),
                          reasoning: str | None = None) -> str:
    """The body of an assistant turn (after the assistant header), without `<|eot_id|>`.

    Calls alone are written as the template writes a history call (several joined by `; `);
    calls after text follow `<|python_tag|>`, so that they still read as calls. The format has no
    reasoning block: `reasoning` is not rendered.
    """
    text = content.strip()
    if not calls:
        return text
    body = "; ".join(render_tool_call(name, args) for name, args in calls)
    return f"{text}{PYTHON_TAG}{body}" if text else body


# --- parsing --------------------------------------------------------------------------------------


def split_reasoning(text: str) -> tuple[str, str, bool]:
    """No reasoning block in this format: ("", text, False)."""
    return "", text, False


def find_call(rest: str) -> int:
    """Where the calls begin in `rest`: `<|python_tag|>`, or a `{` that opens the turn; -1 if
    neither."""
    tag = rest.find(PYTHON_TAG)
    lead = len(rest) - len(rest.lstrip())
    if lead < len(rest) and rest[lead] == "{" and (tag < 0 or lead < tag):
        return lead
    return tag


def _parse_object(obj: Any, raw: str, schemas) -> ParsedCall | ToolCallError:
    if not isinstance(obj, dict) or "name" not in obj:
        return ToolCallError(NO_FUNCTION, 'A tool call must be a JSON object with a "name" and '
                                          '"parameters".')
    name = obj["name"]
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        return ParsedCall(str(name), {}, {}, raw, ToolCallError(
            BAD_NAME, f"Malformed function name {name!r} in tool call.", None))
    args = obj.get("parameters", obj.get("arguments", {}))
    if isinstance(args, str):  # parameters written as a JSON string
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            pass
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return ParsedCall(name, {}, {}, raw, ToolCallError(
            BAD_ARGUMENT, f'The "parameters" of the call to {name!r} must be a JSON object.', name))
    raw_args = {k: v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
                for k, v in args.items()}
    return validate_call(name, raw_args, raw, schemas)


def parse_turn(text: str, tools: Sequence[Mapping[str, Any]] | None = None) -> ParsedTurn:
    """Parses a raw Llama 3 assistant turn into content and tool calls.

    Args:
      text: the decoded assistant text (may include `<|python_tag|>` and the final
        `<|eot_id|>` / `<|eom_id|>`).
      tools: OpenAI-style tool schemas to check names and convert values; None skips checks.

    Returns:
      A ParsedTurn (reasoning always ""); never raises on malformed text.
    """
    schemas = schema_index(tools)
    for token in CONTROL_TOKENS:
        text = text.replace(token, "")
    start = find_call(text)
    if start < 0:
        return ParsedTurn("", text.strip(), ())
    tagged = text.startswith(PYTHON_TAG, start)
    region = text[start + len(PYTHON_TAG):] if tagged else text[start:]
    calls: list[ParsedCall] = []
    errors: list[ToolCallError] = []
    unparsed = trailing = ""
    pos = 0
    while True:
        while pos < len(region) and (region[pos].isspace() or region[pos] == ";"):
            pos += 1
        if pos == len(region):
            break
        if region[pos] != "{":
            trailing = region[pos:]  # prose after the calls
            break
        try:
            obj, end = _DECODER.raw_decode(region, pos)
        except json.JSONDecodeError as e:
            cut = e.pos >= len(region.rstrip()) or e.msg.startswith("Unterminated string")
            errors.append(ToolCallError(UNTERMINATED_BLOCK, "A tool call's JSON object ends before "
                                        "it is closed (output cut off?).") if cut else
                          ToolCallError(BAD_ARGUMENT, f"The tool call is not valid JSON ({e.msg} at "
                                        f"character {e.pos - pos}); write "
                                        '{"name": ..., "parameters": {...}}.'))
            unparsed = region[pos:]
            break
        parsed = _parse_object(obj, region[pos:end], schemas)
        if isinstance(parsed, ToolCallError):
            if not tagged and not calls:  # a JSON answer, not a call
                return ParsedTurn("", text.strip(), ())
            errors.append(parsed)
        else:
            calls.append(parsed)
        pos = end
    content = (text[:start].strip() + ("\n" if text[:start].strip() and trailing.strip() else "")
               + trailing.strip())
    return ParsedTurn("", content, tuple(calls), tuple(errors), unparsed=unparsed.strip())


FORMAT = ChatFormat(
    name="llama3", bos=HEADER_OPEN, eos=EOT, think_open="", think_close="",
    call_markers=(PYTHON_TAG, "{"), markup_tokens=MARKUP_TOKENS, control_tokens=CONTROL_TOKENS,
    no_thinking_prefix="", render_turn=render_turn, generation_prompt=generation_prompt,
    render_tool_doc=render_tool_doc, render_system=render_system,
    render_tool_call=render_tool_call, render_assistant_text=render_assistant_text,
    template_arguments=template_arguments, split_reasoning=split_reasoning, parse_turn=parse_turn,
    locate_call=find_call, stop_tokens=(EOM,), system_template_kwargs=SYSTEM_TEMPLATE_KWARGS)

__all__ = ["FORMAT", "BEGIN", "HEADER_OPEN", "HEADER_CLOSE", "EOT", "EOM", "END_OF_TEXT",
           "PYTHON_TAG", "TOOL_ROLE", "MARKUP_TOKENS", "CONTROL_TOKENS", "DATE_STRING",
           "SYSTEM_TEMPLATE_KWARGS", "render_turn", "generation_prompt", "render_tool_doc",
           "render_system", "render_tool_call", "render_assistant_text", "template_arguments",
           "split_reasoning", "find_call", "parse_turn"]
