"""Seed-OSS tool calls: parsing them out of raw model text, and rendering them back.

The Seed-OSS chat format (see `shared/reference/seed_oss.md` section 4) puts an assistant turn's
reasoning in `<seed:think>...</seed:think>` and each tool call in a block

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
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from typing import Any, Mapping, Sequence

THINK_OPEN = "<seed:think>"
THINK_CLOSE = "</seed:think>"
CALL_OPEN = "<seed:tool_call>"
CALL_CLOSE = "</seed:tool_call>"

_BLOCK_RE = re.compile(re.escape(CALL_OPEN) + r"(.*?)" + re.escape(CALL_CLOSE), re.DOTALL)
_FUNCTION_RE = re.compile(r"<function=([^>\n]*)>(.*?)</function>", re.DOTALL)
_PARAM_RE = re.compile(r"<parameter=([^>\n]*)>(.*?)</parameter>", re.DOTALL)

# Error kinds (ToolCallError.kind).
UNTERMINATED_BLOCK = "unterminated_block"
NO_FUNCTION = "no_function"
UNTERMINATED_FUNCTION = "unterminated_function"
BAD_NAME = "bad_name"
UNTERMINATED_PARAMETER = "unterminated_parameter"
DUPLICATE_PARAMETER = "duplicate_parameter"
UNKNOWN_TOOL = "unknown_tool"
UNKNOWN_PARAMETER = "unknown_parameter"
MISSING_PARAMETER = "missing_parameter"
BAD_ARGUMENT = "bad_argument"


@dataclasses.dataclass(frozen=True)
class ToolCallError:
    """Why one call (or one block of text) could not be turned into a valid call.

    Attributes:
      kind: one of the module-level error kinds (`unknown_tool`, `bad_argument`, ...).
      message: a sentence the agent can read and recover from.
      name: the tool name, where one was parsed.
    """

    kind: str
    message: str
    name: str | None = None


@dataclasses.dataclass(frozen=True)
class ParsedCall:
    """One tool call parsed from a turn.

    Attributes:
      name: the function name.
      arguments: parameter name -> converted value (only parameters that converted cleanly).
      raw_arguments: parameter name -> the raw string value (one edge newline stripped).
      raw: the exact source text of the call.
      error: set when the call is malformed or fails schema validation; such a call must not be
        executed, its error is shown to the agent instead.
    """

    name: str
    arguments: dict[str, Any]
    raw_arguments: dict[str, str]
    raw: str
    error: ToolCallError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclasses.dataclass(frozen=True)
class ParsedTurn:
    """An assistant turn split into reasoning, visible content and tool calls.

    Attributes:
      reasoning: text inside the think block (without the tags); "" if none.
      content: the text after the reasoning with every tool-call block removed, stripped.
      calls: the calls in order, valid and invalid alike (check `ParsedCall.error`).
      errors: errors not tied to one call (e.g. an unterminated `<seed:tool_call>` block).
      calls_in_thinking: how many `<function=` openings appeared inside the reasoning (ignored).
      thinking_unclosed: True when `<seed:think>` was opened and never closed.
    """

    reasoning: str
    content: str
    calls: tuple[ParsedCall, ...]
    errors: tuple[ToolCallError, ...] = ()
    calls_in_thinking: int = 0
    thinking_unclosed: bool = False

    @property
    def valid_calls(self) -> tuple[ParsedCall, ...]:
        return tuple(c for c in self.calls if c.ok)

    @property
    def all_errors(self) -> tuple[ToolCallError, ...]:
        return self.errors + tuple(c.error for c in self.calls if c.error is not None)


def split_reasoning(text: str) -> tuple[str, str, bool]:
    """Splits raw assistant text at the first `</seed:think>`.

    Returns:
      (reasoning, rest, unclosed): reasoning without its tags; the text after the close tag;
      unclosed is True when a think block was opened and never closed (then rest is "").
      Text with no think tags at all is all `rest`.
    """
    close = text.find(THINK_CLOSE)
    if close < 0:
        open_ = text.find(THINK_OPEN)
        if open_ >= 0:
            return text[open_ + len(THINK_OPEN):].strip(), "", True
        return "", text, False
    head = text[:close]
    open_ = head.find(THINK_OPEN)
    reasoning = head[open_ + len(THINK_OPEN):] if open_ >= 0 else head
    return reasoning.strip(), text[close + len(THINK_CLOSE):], False


def strip_one_newline(value: str) -> str:
    """Removes exactly one leading and one trailing newline (vLLM's rule for parameter values)."""
    if value.startswith("\n"):
        value = value[1:]
    if value.endswith("\n"):
        value = value[:-1]
    return value


def schema_index(tools: Sequence[Mapping[str, Any]] | None) -> dict[str, Mapping[str, Any]] | None:
    """Maps tool name -> its `parameters` schema, accepting OpenAI `{"type": "function", ...}` dicts."""
    if tools is None:
        return None
    index = {}
    for tool in tools:
        fn = tool.get("function", tool)
        index[fn["name"]] = fn.get("parameters", {}) or {}
    return index


def convert_value(raw: str, schema: Mapping[str, Any] | None) -> Any:
    """Converts a raw parameter string by its JSON-schema type; raises ValueError if it does not fit.

    Types: string (as is), integer, number, boolean (true/false, any case), array/object (JSON,
    else a Python literal). A schema with no or several types tries JSON, else keeps the string.
    """
    typ = (schema or {}).get("type")
    if isinstance(typ, list):
        typ = next((t for t in typ if t != "null"), None)
    text = raw.strip()
    if typ == "string":
        return raw
    if typ == "integer":
        try:
            return int(text)
        except ValueError:
            f = float(text)  # "3.0" is accepted as 3; "3.5" is not an integer
            if f.is_integer():
                return int(f)
            raise ValueError(f"expected an integer, got {text!r}") from None
    if typ == "number":
        f = float(text)
        return int(f) if f.is_integer() and re.fullmatch(r"[+-]?\d+", text) else f
    if typ == "boolean":
        low = text.lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    if typ in ("array", "object"):
        want = list if typ == "array" else dict
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                raise ValueError(f"expected a JSON {typ}, got {text[:80]!r}") from None
        if isinstance(value, tuple) and want is list:
            value = list(value)
        if not isinstance(value, want):
            raise ValueError(f"expected a JSON {typ}, got {type(value).__name__}")
        return value
    # Unknown or missing type: JSON if it parses as a non-string, else the raw text.
    try:
        value = json.loads(text)
        return value
    except (json.JSONDecodeError, ValueError):
        return raw


def validate_call(name: str, raw_args: dict[str, str], raw: str,
                  schemas: dict[str, Mapping[str, Any]] | None) -> ParsedCall:
    """Converts raw arguments by the tool's schema and checks required/unknown parameters."""
    if schemas is None:
        args = {k: convert_value(v, None) for k, v in raw_args.items()}
        return ParsedCall(name, args, raw_args, raw)
    if name not in schemas:
        known = ", ".join(sorted(schemas))
        return ParsedCall(name, {}, raw_args, raw, ToolCallError(
            UNKNOWN_TOOL, f"Unknown tool '{name}'. Available tools: {known}.", name))
    params = schemas[name]
    props = params.get("properties", {}) or {}
    args: dict[str, Any] = {}
    for key, value in raw_args.items():
        if key not in props:
            return ParsedCall(name, args, raw_args, raw, ToolCallError(
                UNKNOWN_PARAMETER,
                f"Tool '{name}' has no parameter '{key}'. Its parameters: {', '.join(props) or 'none'}.",
                name))
        try:
            args[key] = convert_value(value, props[key])
        except (ValueError, OverflowError) as e:
            return ParsedCall(name, args, raw_args, raw, ToolCallError(
                BAD_ARGUMENT, f"Bad value for parameter '{key}' of tool '{name}': {e}.", name))
    missing = [k for k in params.get("required", []) or [] if k not in raw_args]
    if missing:
        return ParsedCall(name, args, raw_args, raw, ToolCallError(
            MISSING_PARAMETER,
            f"Tool '{name}' is missing required parameter(s): {', '.join(missing)}.", name))
    return ParsedCall(name, args, raw_args, raw)


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
    if "<function=" in leftover:
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
    text = text.replace("<seed:eos>", "")
    reasoning, rest, unclosed = split_reasoning(text)
    in_thinking = reasoning.count("<function=")
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
        if "<function=" in tail:
            errors.append(ToolCallError(
                UNTERMINATED_FUNCTION, "A <function=...> is not closed with </function>."))
            tail = tail[:tail.find("<function=")]
        content_parts.append(tail)
    content = "".join(content_parts).replace(CALL_CLOSE, "").strip()
    return ParsedTurn(reasoning, content, tuple(calls), tuple(errors), in_thinking, unclosed)


def _render_value(value: Any) -> str:
    """Renders an argument value as the model would write it (strings raw, others as JSON)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


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
