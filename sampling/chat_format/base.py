"""What every chat format provides, and the format-independent half of tool calling.

A `ChatFormat` is one model family's chat and tool-call text format: its special-token strings,
how turns, the generation prompt, tool documentation and assistant tool calls are rendered, and
how a raw assistant turn is split into reasoning, visible content and tool calls. A format is a
plain value built from a module of functions (`seed_oss.FORMAT`); the registry in
`ppp_jax.sampling.chat_format` maps names to formats.

Format-independent (here): the parse results (`ParsedTurn`, `ParsedCall`, `ToolCallError` and
its error kinds) and the schema side of a call (`schema_index`, `convert_value`,
`validate_call`): once a format has read a call's name and raw argument strings out of the text,
converting and checking them against the OpenAI-style tool schemas is the same for every format.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from typing import Any, Callable, Mapping, Sequence

Tools = Sequence[Mapping[str, Any]]

# What `ppp_jax.sampling.chat_format` re-exports (the format-independent API).
__all__ = ["BAD_ARGUMENT", "BAD_NAME", "DUPLICATE_PARAMETER", "MISSING_PARAMETER", "NO_FUNCTION",
           "UNKNOWN_PARAMETER", "UNKNOWN_TOOL", "UNTERMINATED_BLOCK", "UNTERMINATED_FUNCTION",
           "UNTERMINATED_PARAMETER", "ChatFormat", "ParsedCall", "ParsedTurn", "ToolCallError",
           "convert_value", "schema_index", "validate_call"]

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
      errors: errors not tied to one call (e.g. an unterminated tool-call block).
      calls_in_thinking: how many call openings appeared inside the reasoning (ignored).
      thinking_unclosed: True when a think block was opened and never closed.
      unparsed: raw text the parser could not read as calls, from the failure on ("" when the
        format leaves this to the caller, see `tool_calls.build_message`).
    """

    reasoning: str
    content: str
    calls: tuple[ParsedCall, ...]
    errors: tuple[ToolCallError, ...] = ()
    calls_in_thinking: int = 0
    thinking_unclosed: bool = False
    unparsed: str = ""

    @property
    def valid_calls(self) -> tuple[ParsedCall, ...]:
        return tuple(c for c in self.calls if c.ok)

    @property
    def all_errors(self) -> tuple[ToolCallError, ...]:
        return self.errors + tuple(c.error for c in self.calls if c.error is not None)


@dataclasses.dataclass(frozen=True)
class ChatFormat:
    """One model family's chat and tool-call text format.

    Token strings:
      name: the registry name.
      bos, eos: the strings that open and close every turn (single vocabulary entries).
      think_open, think_close: the reasoning block's tags ("" for a format without one).
      call_markers: text that begins a tool call in raw output, the format's own block marker
        first (streaming holds text back from the first one found, or from `locate_call`'s
        answer when the format has one).
      stop_tokens: tokens besides `eos` that end an assistant turn (Llama 3: `<|eom_id|>`).
      turn_separator: text the template writes after an assistant turn's closing eos (Hermes:
        "\n"); the engine stops at the eos, so the next prompt starts with it.
      markup_tokens: special tokens that are part of the visible format (kept when decoding a
        chat completion, since parsing needs them).
      control_tokens: special tokens dropped from a decoded chat completion (bos, eos, pad).
      no_thinking_prefix: a generation pre-fill with an empty, closed think block (answer
        without thinking); "" if the format has none.

    Rendering (the model's template layout; `render_system` is the tokenizer-free approximation
    of the template's first system turn):
      render_turn(role, content): one complete non-assistant turn.
      render_tool_results(contents): a run of consecutive tool results as the template writes
        them together (Hermes: one user turn of `<tool_response>` blocks); None: each result is
        its own `render_turn("tool", ...)`. Used through `render_turns`.
      generation_prompt(): what opens the assistant's turn.
      render_tool_doc(tools): the tool documentation appended to the system text.
      render_system(system, tools): the whole first system turn, tool documentation included.
      render_tool_call(name, arguments): one tool call as the model writes it.
      render_assistant_text(content="", calls=(), reasoning=None): the body of an assistant turn
        as the template renders a history turn (no closing eos).
      template_arguments(arguments): a call's arguments in the form the checkpoint's chat
        template expects in an assistant message's `tool_calls`.

      system_template_kwargs: (name, value) pairs passed to a tokenizer's chat template when it
        renders the system block alone (`ChatTokenizer.render_system`), for the layout
        `render_system` writes.
      system_template_mark: text a tokenizer's chat template must contain for
        `ChatTokenizer.render_system` to use it ("" = any template); a template without it
        documents another call layout, so the format's own `render_system` is used instead
        (`llama3_pythonic` on a Llama 3.2 checkpoint whose template asks for JSON calls).

    Parsing:
      split_reasoning(text) -> (reasoning, rest, unclosed).
      parse_turn(text, tools=None) -> ParsedTurn; never raises on malformed text.
      locate_call(rest) -> int: where the calls begin in the text after the reasoning, -1 if
        nowhere; None: at the first of `call_markers` (see `find_call`).
    """

    name: str
    bos: str
    eos: str
    think_open: str
    think_close: str
    call_markers: tuple[str, ...]
    markup_tokens: tuple[str, ...]
    control_tokens: tuple[str, ...]
    no_thinking_prefix: str
    render_turn: Callable[[str, str], str]
    generation_prompt: Callable[[], str]
    render_tool_doc: Callable[[Tools], str]
    render_system: Callable[[str, Tools], str]
    render_tool_call: Callable[[str, Mapping[str, Any]], str]
    render_assistant_text: Callable[..., str]
    template_arguments: Callable[[Mapping[str, Any]], dict[str, Any]]
    split_reasoning: Callable[[str], tuple[str, str, bool]]
    parse_turn: Callable[..., ParsedTurn]
    locate_call: Callable[[str], int] | None = None
    render_tool_results: Callable[[Sequence[str]], str] | None = None
    stop_tokens: tuple[str, ...] = ()
    turn_separator: str = ""
    system_template_kwargs: tuple[tuple[str, Any], ...] = ()
    system_template_mark: str = ""

    def render_turns(self, messages: Sequence[Mapping[str, Any]]) -> str:
        """Consecutive non-assistant messages (`role`, `content`) as the template renders them:
        each by `render_turn`, except that a run of `tool` messages goes to
        `render_tool_results` as one piece when the format has it."""
        out: list[str] = []
        i = 0
        while i < len(messages):
            role = messages[i]["role"]
            if role == "tool" and self.render_tool_results is not None:
                j = i
                while j < len(messages) and messages[j]["role"] == "tool":
                    j += 1
                out.append(self.render_tool_results([m["content"] for m in messages[i:j]]))
                i = j
                continue
            out.append(self.render_turn(role, messages[i]["content"]))
            i += 1
        return "".join(out)

    def find_call(self, rest: str) -> int:
        """Index in `rest` (text after the reasoning) where tool calls begin; -1 if none."""
        if self.locate_call is not None:
            return self.locate_call(rest)
        cuts = [i for i in (rest.find(m) for m in self.call_markers) if i >= 0]
        return min(cuts) if cuts else -1

    def call_block_at(self, rest: str) -> int:
        """Index in `rest` of the format's own call block (`call_markers[0]`, or `locate_call`);
        -1 if none. Where a request that may not call tools is cut."""
        if self.locate_call is not None:
            return self.locate_call(rest)
        return rest.find(self.call_markers[0])


def split_think(text: str, think_open: str, think_close: str) -> tuple[str, str, bool]:
    """Splits raw assistant text at the first `think_close` (the formats' `split_reasoning`).

    Returns:
      (reasoning, rest, unclosed): reasoning without its tags; the text after the close tag;
      unclosed is True when a think block was opened and never closed (then rest is "").
      Text with no think tags at all is all `rest`.
    """
    close = text.find(think_close)
    if close < 0:
        open_ = text.find(think_open)
        if open_ >= 0:
            return text[open_ + len(think_open):].strip(), "", True
        return "", text, False
    head = text[:close]
    open_ = head.find(think_open)
    reasoning = head[open_ + len(think_open):] if open_ >= 0 else head
    return reasoning.strip(), text[close + len(think_close):], False


def schema_index(tools: Tools | None) -> dict[str, Mapping[str, Any]] | None:
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
    else a Python literal, since a chat template may render non-string values with `str()`). A
    schema with no or several types tries JSON, else keeps the string.
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


NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")  # a function name the formats accept


def raw_value(value: Any) -> str:
    """A decoded argument value as the raw text `validate_call` converts by the schema type:
    strings as they are, anything else its JSON text."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def call_from_json(name: Any, args: Any, raw: str, schemas: dict[str, Mapping[str, Any]] | None,
                   field: str) -> ParsedCall:
    """A call whose name and arguments were decoded from JSON (Hermes' `"arguments"`, Llama 3's
    `"parameters"`, named by `field` in the error): the name checked, arguments written as a
    JSON string decoded, then `validate_call`."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        return ParsedCall(str(name), {}, {}, raw, ToolCallError(
            BAD_NAME, f"Malformed function name {name!r} in tool call.", None))
    if isinstance(args, str):  # arguments written as a JSON string
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            pass
    if not isinstance(args, dict):
        return ParsedCall(name, {}, {}, raw, ToolCallError(
            BAD_ARGUMENT, f'The "{field}" of the call to {name!r} must be a JSON object.', name))
    return validate_call(name, {k: raw_value(v) for k, v in args.items()}, raw, schemas)


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
