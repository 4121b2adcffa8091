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

The pythonic variant (`PYTHONIC_FORMAT`, registry name `llama3_pythonic`): Llama 3.2 1B / 3B
Instruct's zero-shot calls, `[func_name(arg1="v", arg2=3), other(x=1)]`, as Meta documents them
(github.com/meta-llama/llama-models `models/llama3_2/text_prompt_format.md`, the system prompt of
`models/llama3/prompt_templates/system_prompts.py`'s `PythonListCustomToolGenerator`). The
checkpoints' released chat template still writes the JSON calls above; the variant is chosen by
`policy.chat_format` or by a chat template that asks for the list (`detect_format`). Turns,
tool results and stop tokens are the JSON variant's; the system block is the template's only when
the template asks for lists (`ChatFormat.system_template_mark`), else `render_system_pythonic`
(Meta's list instruction), so the policy is never told to answer in JSON. A turn is a call list when it starts (after
whitespace) with `[` or holds `<|python_tag|>` (text before the tag is content); several lists
in a row are read one after another (Meta's reference encoder writes one list per call). Rules:
  * The list is read with Python's `ast` (never evaluated): each element must be a call of a
    plain or dotted name with keyword arguments only, each value a literal (`ast.literal_eval`;
    JSON's `true` / `false` / `null` are accepted as names). Anything else is a `ToolCallError`
    the agent can read (`no_function`, `bad_name`, `bad_argument`).
  * A turn that starts with `[` and is no call list (`[1, 2] are ...`, no call in it) is an
    answer: all content. After `<|python_tag|>` the same text is an error.
  * Text that ends inside the list (a cut-off turn) is `unterminated_block`; the unread text is
    kept in `ParsedTurn.unparsed`. Values go through the same schema check as every format.
  * Rendering writes strings in double quotes with JSON escapes (valid Python literals),
    `True` / `False` / `None`, lists and dicts as Python literals.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import json
import re
import tokenize
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
    call_from_json,
    raw_value,
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


def render_system(system: str, tools: Sequence[Mapping[str, Any]], tool_doc=None) -> str:
    """The conversation's opening: `<|begin_of_text|>` and the whole system turn, tools included
    (documented by `tool_doc`, default `render_tool_doc`)."""
    env = "Environment: ipython\n" if tools else ""
    doc = (tool_doc or render_tool_doc)(tools) if tools else ""
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


def _call_start(rest: str, opener: str) -> int:
    """Where the calls begin in `rest`: `<|python_tag|>`, or an `opener` that opens the turn; -1
    if neither."""
    tag = rest.find(PYTHON_TAG)
    lead = len(rest) - len(rest.lstrip())
    if lead < len(rest) and rest[lead] == opener and (tag < 0 or lead < tag):
        return lead
    return tag


def find_call(rest: str) -> int:
    """Where the calls begin in `rest`: `<|python_tag|>`, or a `{` that opens the turn; -1 if
    neither."""
    return _call_start(rest, "{")


def _parse_object(obj: Any, raw: str, schemas) -> ParsedCall | ToolCallError:
    if not isinstance(obj, dict) or "name" not in obj:
        return ToolCallError(NO_FUNCTION, 'A tool call must be a JSON object with a "name" and '
                                          '"parameters".')
    args = obj.get("parameters", obj.get("arguments", {}))
    return call_from_json(obj["name"], {} if args is None else args, raw, schemas, "parameters")


def _parse_calls(text: str, tools, locate, opener: str, separators: str, read_one) -> ParsedTurn:
    """The turn loop both variants share: calls begin where `locate` says (after
    `<|python_tag|>`, or at an `opener` that opens the turn); `read_one(region, pos, tagged,
    have_calls, schemas)` reads one object / list at `pos` and answers ("calls", items, end),
    ("answer", ...) (the whole turn is content), ("trailing", ...) (prose from `pos`) or
    ("error", ToolCallError, ...) (stop; the rest is `unparsed`)."""
    schemas = schema_index(tools)
    for token in CONTROL_TOKENS:
        text = text.replace(token, "")
    start = locate(text)
    if start < 0:
        return ParsedTurn("", text.strip(), ())
    tagged = text.startswith(PYTHON_TAG, start)
    region = text[start + len(PYTHON_TAG):] if tagged else text[start:]
    calls: list[ParsedCall] = []
    errors: list[ToolCallError] = []
    unparsed = trailing = ""
    pos = 0
    while True:
        while pos < len(region) and (region[pos].isspace() or region[pos] in separators):
            pos += 1
        if pos == len(region):
            break
        if region[pos] != opener:
            trailing = region[pos:]  # prose after the calls
            break
        kind, value, end = read_one(region, pos, tagged, bool(calls), schemas)
        if kind == "answer":
            return ParsedTurn("", text.strip(), ())
        if kind == "trailing":
            trailing = region[pos:]
            break
        if kind == "error":
            errors.append(value)
            unparsed = region[pos:]
            break
        for item in value:
            (errors if isinstance(item, ToolCallError) else calls).append(item)
        pos = end
    content = (text[:start].strip() + ("\n" if text[:start].strip() and trailing.strip() else "")
               + trailing.strip())
    return ParsedTurn("", content, tuple(calls), tuple(errors), unparsed=unparsed.strip())


def _read_json(region: str, pos: int, tagged: bool, have_calls: bool, schemas):
    try:
        obj, end = _DECODER.raw_decode(region, pos)
    except json.JSONDecodeError as e:
        cut = e.pos >= len(region.rstrip()) or e.msg.startswith("Unterminated string")
        return "error", (ToolCallError(UNTERMINATED_BLOCK, "A tool call's JSON object ends before "
                                       "it is closed (output cut off?).") if cut else
                         ToolCallError(BAD_ARGUMENT, f"The tool call is not valid JSON ({e.msg} at "
                                       f"character {e.pos - pos}); write "
                                       '{"name": ..., "parameters": {...}}.')), pos
    parsed = _parse_object(obj, region[pos:end], schemas)
    if isinstance(parsed, ToolCallError) and not tagged and not have_calls:
        return "answer", None, pos  # a JSON answer, not a call
    return "calls", [parsed], end


def parse_turn(text: str, tools: Sequence[Mapping[str, Any]] | None = None) -> ParsedTurn:
    """Parses a raw Llama 3 assistant turn into content and tool calls.

    Args:
      text: the decoded assistant text (may include `<|python_tag|>` and the final
        `<|eot_id|>` / `<|eom_id|>`).
      tools: OpenAI-style tool schemas to check names and convert values; None skips checks.

    Returns:
      A ParsedTurn (reasoning always ""); never raises on malformed text.
    """
    return _parse_calls(text, tools, find_call, "{", ";", _read_json)


# --- the pythonic variant (Llama 3.2 1B / 3B) -----------------------------------------------------

# Meta's wording of the call instruction for the list format (llama-models,
# PythonListCustomToolGenerator); the functions follow as one JSON list.
_PY_CALL_INSTRUCTION = (
    "If you decide to invoke any of the function(s), you MUST put it in the format of "
    "[func_name1(params_name1=params_value1, params_name2=params_value2...), func_name2(params)]\n"
    "You SHOULD NOT include any other text in the response.\n\n"
    "Here is a list of functions in JSON format that you can invoke.\n\n")
PYTHONIC_TEMPLATE_MARK = "[func_name1("  # what a chat template asking for call lists writes
_JSON_NAMES = {"true": True, "false": False, "null": None}


def _py_literal(value: Any) -> str:
    """`value` as a Python literal that `ast.literal_eval` reads back (strings double-quoted)."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_py_literal(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_py_literal(str(k))}: {_py_literal(v)}"
                               for k, v in value.items()) + "}"
    raise ValueError(f"cannot write a {type(value).__name__} as a call argument")


def _py_call(name: str, arguments: Mapping[str, Any]) -> str:
    return f"{name}({', '.join(f'{k}={_py_literal(v)}' for k, v in arguments.items())})"


def render_tool_call_pythonic(name: str, arguments: Mapping[str, Any]) -> str:
    """`[NAME(arg="v", n=3)]`: one call as a one-element list."""
    return f"[{_py_call(name, arguments)}]"


def render_assistant_text_pythonic(content: str = "",
                                   calls: Sequence[tuple[str, Mapping[str, Any]]] = (),
                                   reasoning: str | None = None) -> str:
    """The body of an assistant turn: calls alone as one list `[a(...), b(...)]` (the model's
    own layout); calls after text follow `<|python_tag|>`. No reasoning block."""
    text = content.strip()
    if not calls:
        return text
    body = "[" + ", ".join(_py_call(name, args) for name, args in calls) + "]"
    return f"{text}{PYTHON_TAG}{body}" if text else body


def render_tool_doc_pythonic(tools: Sequence[Mapping[str, Any]]) -> str:
    """The call instruction and the functions as a 4-space-indented JSON list."""
    fns = [t.get("function", t) for t in tools]
    return _PY_CALL_INSTRUCTION + json.dumps(fns, ensure_ascii=False, indent=4) + "\n\n"


def render_system_pythonic(system: str, tools: Sequence[Mapping[str, Any]]) -> str:
    """`render_system` with the list-call instruction in place of the JSON one."""
    return render_system(system, tools, render_tool_doc_pythonic)


def find_call_pythonic(rest: str) -> int:
    """Where the calls begin in `rest`: `<|python_tag|>`, or a `[` that opens the turn; -1 if
    neither."""
    return _call_start(rest, "[")


_CALL_START_RE = re.compile(r"\[\s*[A-Za-z_][\w.]*\s*\(")


def _list_end(src: str) -> int | None:
    """Length of the bracketed list that opens `src` (Python tokens, so brackets inside strings
    do not count); None when the text ends inside it; -1 when it cannot be tokenized."""
    starts = [0]
    for line in src.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    depth = 0
    try:
        for tok in tokenize.generate_tokens(io.StringIO(src).readline):
            if tok.type == tokenize.OP and tok.string in "([{":
                depth += 1
            elif tok.type == tokenize.OP and tok.string in ")]}":
                depth -= 1
                if depth == 0:
                    return starts[tok.end[0] - 1] + tok.end[1]
    except tokenize.TokenError:
        return None
    except (SyntaxError, ValueError):
        return -1
    return None


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return f"{head}.{node.attr}" if head else None
    return None


def _literal(node: ast.expr) -> Any:
    if isinstance(node, ast.Name) and node.id in _JSON_NAMES:
        return _JSON_NAMES[node.id]
    return ast.literal_eval(node)


def _parse_py_call(node: ast.expr, src: str, schemas) -> ParsedCall | ToolCallError:
    raw = ast.get_source_segment(src, node) or ""
    if not isinstance(node, ast.Call):
        return ToolCallError(NO_FUNCTION, f"{raw[:80]!r} in the call list is not a function call; "
                                          "write [name(arg=value, ...)].")
    name = _dotted(node.func)
    if name is None:
        return ParsedCall(raw[:40], {}, {}, raw, ToolCallError(
            BAD_NAME, f"Malformed function name in tool call {raw[:80]!r}.", None))
    if node.args or any(kw.arg is None for kw in node.keywords):
        return ParsedCall(name, {}, {}, raw, ToolCallError(
            BAD_ARGUMENT, f"Pass the arguments of {name!r} by keyword: {name}(arg=value, ...).",
            name))
    raw_args: dict[str, str] = {}
    for kw in node.keywords:
        try:
            value = _literal(kw.value)
            raw_args[kw.arg] = raw_value(value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            segment = ast.get_source_segment(src, kw.value) or ""
            return ParsedCall(name, {}, raw_args, raw, ToolCallError(
                BAD_ARGUMENT, f"The value of '{kw.arg}' in the call to '{name}' must be a literal "
                              f"(a string, number, list, ...), not {segment[:60]!r}; variables "
                              "and expressions are not evaluated.", name))
    return validate_call(name, raw_args, raw, schemas)


def _parse_call_list(src: str, schemas):
    """(calls and errors, None) for a list with at least one call; (None, None) for a list
    without calls or not a list; (None, error) for text Python cannot parse."""
    try:
        node = ast.parse(src.strip(), mode="eval").body
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        msg = getattr(e, "msg", str(e))
        return None, ToolCallError(BAD_ARGUMENT, f"The call list is not valid Python ({msg}); "
                                                 "write [name(arg=value, ...)].")
    if not isinstance(node, ast.List) or not any(isinstance(e, ast.Call) for e in node.elts):
        return None, None
    return [_parse_py_call(e, src.strip(), schemas) for e in node.elts], None


def _read_list(region: str, pos: int, tagged: bool, have_calls: bool, schemas):
    rest = region[pos:]
    looks_like_calls = tagged or have_calls or bool(_CALL_START_RE.match(rest))
    end = _list_end(rest)
    if end is None:  # the text ends inside the list
        if not looks_like_calls:
            return "answer", None, pos
        return "error", ToolCallError(UNTERMINATED_BLOCK, "A tool call list ends before it is "
                                      "closed with ] (output cut off?)."), pos
    items, error = _parse_call_list(rest if end < 0 else rest[:end], schemas)
    if items is None:
        if not tagged and not have_calls and (error is None or not looks_like_calls):
            return "answer", None, pos  # a turn that only looks like a call list
        if error is None and have_calls:
            return "trailing", None, pos  # a bracketed remark after the calls
        return "error", error or ToolCallError(
            NO_FUNCTION, "The text after <|python_tag|> is not a list of function calls; write "
                         "[name(arg=value, ...)]."), pos
    return "calls", items, pos + (end if end >= 0 else len(rest))


def parse_turn_pythonic(text: str, tools: Sequence[Mapping[str, Any]] | None = None) -> ParsedTurn:
    """Parses a raw Llama 3.2 assistant turn whose calls are Python lists (module docstring);
    arguments as `parse_turn`'s, never raises on malformed text."""
    return _parse_calls(text, tools, find_call_pythonic, "[", ";,", _read_list)


FORMAT = ChatFormat(
    name="llama3", bos=HEADER_OPEN, eos=EOT, think_open="", think_close="",
    call_markers=(PYTHON_TAG, "{"), markup_tokens=MARKUP_TOKENS, control_tokens=CONTROL_TOKENS,
    no_thinking_prefix="", render_turn=render_turn, generation_prompt=generation_prompt,
    render_tool_doc=render_tool_doc, render_system=render_system,
    render_tool_call=render_tool_call, render_assistant_text=render_assistant_text,
    template_arguments=template_arguments, split_reasoning=split_reasoning, parse_turn=parse_turn,
    locate_call=find_call, stop_tokens=(EOM,), system_template_kwargs=SYSTEM_TEMPLATE_KWARGS)

PYTHONIC_FORMAT = dataclasses.replace(
    FORMAT, name="llama3_pythonic", call_markers=(PYTHON_TAG, "["),
    render_tool_doc=render_tool_doc_pythonic, render_system=render_system_pythonic,
    render_tool_call=render_tool_call_pythonic,
    render_assistant_text=render_assistant_text_pythonic, parse_turn=parse_turn_pythonic,
    locate_call=find_call_pythonic, system_template_mark=PYTHONIC_TEMPLATE_MARK)

__all__ = ["FORMAT", "BEGIN", "HEADER_OPEN", "HEADER_CLOSE", "EOT", "EOM", "END_OF_TEXT",
           "PYTHON_TAG", "TOOL_ROLE", "MARKUP_TOKENS", "CONTROL_TOKENS", "DATE_STRING",
           "SYSTEM_TEMPLATE_KWARGS", "render_turn", "generation_prompt", "render_tool_doc",
           "render_system", "render_tool_call", "render_assistant_text", "template_arguments",
           "split_reasoning", "find_call", "parse_turn", "PYTHONIC_FORMAT",
           "PYTHONIC_TEMPLATE_MARK", "render_tool_call_pythonic", "render_assistant_text_pythonic",
           "render_tool_doc_pythonic", "render_system_pythonic", "find_call_pythonic",
           "parse_turn_pythonic"]
