"""OpenAI tool calling on top of a model's own chat format, for `ppp serve`.

The format (a `ppp_jax.sampling.chat_format.ChatFormat`, Seed-OSS by default) supplies the
format-specific parts: how call arguments go into the checkpoint's chat template, how raw output
splits into reasoning, content and calls, and which tags and special tokens to watch for. This
module maps them to and from the OpenAI API.

Requests: OpenAI chat messages are turned into what the checkpoint's chat template expects
(`prepare_messages`): text-only content, assistant `tool_calls` whose JSON-string `arguments`
become what `ChatFormat.template_arguments` makes of them (Seed-OSS: a dict, since its template
iterates `arguments.items()` and a string makes it fail, with every non-string value written as
JSON text, the way the model writes it; the template would otherwise render Python `str()`:
`True`, `['a']`), and `tool` role messages kept as they are.

Responses: the model's raw text is split by the format's `parse_turn` (the parser the agent loop
uses) into reasoning (`<seed:think>...</seed:think>` for Seed-OSS, returned as
`reasoning_content`), visible content and tool calls, returned as OpenAI `tool_calls` (id, type
"function", name, JSON-string arguments) with finish_reason "tool_calls" (`build_message`).

  * A call with a name is returned even when it fails the schema (unknown tool, missing or
    ill-typed parameter): its arguments are the cleanly converted values plus the raw strings of
    the rest, and the client's own validation reports the error to the agent, as with any API.
  * Text that cannot be read as a call at all (an unterminated `<seed:tool_call>` block, a
    `<function=>` with no name) is appended to `content`, so the client sees what the model wrote.
  * Calls drafted inside the reasoning are never returned (`parse_turn`'s rule).

Streaming (`ChatStreamParser`): reasoning and content are sent as they grow, holding back trailing
whitespace and any suffix that could begin a tag; from where the format's calls begin
(`ChatFormat.find_call`: the first tool-call marker, or for Llama 3 a `{` opening the turn or
`<|python_tag|>`) the text is buffered, and the calls are sent as one delta each when the generation ends. The concatenated
deltas equal the non-streaming message, with one documented exception: a stray `</seed:think>`
with no opening tag turns the text before it into reasoning after the fact (that is how
`parse_turn` reads a turn whose think block was pre-filled by the prompt); text already streamed
as content then stays content.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Sequence

from ppp_jax.sampling.chat_format import DEFAULT_FORMAT, ChatFormat, ParsedCall, get_format


def hidden_token_ids(tokenizer, chat_format: str | ChatFormat = DEFAULT_FORMAT) -> set[int]:
    """Ids to drop from chat output before decoding: special tokens that are not the format's
    markup (kept in the decoded text: they are special tokens in the vocabulary, and parsing
    needs them); the format's control tokens (bos, eos, pad) are always dropped."""
    fmt = get_format(chat_format)
    vocab = tokenizer.get_vocab()
    markup = {vocab[t] for t in fmt.markup_tokens if t in vocab}
    ids = set(tokenizer.all_special_ids)
    for t in fmt.control_tokens:
        if t in vocab:
            ids.add(vocab[t])
    return ids - markup


def prepare_messages(messages: Sequence[Mapping[str, Any]],
                     chat_format: str | ChatFormat = DEFAULT_FORMAT) -> list[dict[str, Any]]:
    """OpenAI chat messages -> messages the format's chat template renders.

    Raises ValueError (a client error) for a malformed tool call in an assistant message.
    """
    fmt = get_format(chat_format)
    out = []
    for i, m in enumerate(messages):
        msg = dict(m)
        content = msg.get("content")
        if isinstance(content, list):  # the OpenAI content-parts form, text only
            msg["content"] = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        elif content is None:
            msg["content"] = ""
        elif not isinstance(content, str):
            raise ValueError(f"messages[{i}].content must be a string, a list of parts or null")
        if msg["role"] == "assistant" and msg.get("tool_calls"):
            msg["tool_calls"] = [_prepare_call(c, i, j, fmt) for j, c in enumerate(msg["tool_calls"])]
        elif "tool_calls" in msg:
            del msg["tool_calls"]  # null or [] would render an empty tool-call turn
        out.append(msg)
    return out


def _prepare_call(call: Any, i: int, j: int, fmt: ChatFormat) -> dict[str, Any]:
    where = f"messages[{i}].tool_calls[{j}]"
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise ValueError(f"{where} must be {{'type': 'function', 'function': {{'name', 'arguments'}}}}")
    args = fn.get("arguments")
    if args is None or args == "":
        args = {}
    elif isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}.function.arguments is not valid JSON: {e}") from None
    if not isinstance(args, dict):
        raise ValueError(f"{where}.function.arguments must be a JSON object")
    args = fmt.template_arguments(args)
    return {"id": call.get("id"), "type": "function", "function": {"name": fn["name"], "arguments": args}}


def _openai_call(call: ParsedCall, index: int, call_id: str) -> dict[str, Any]:
    args = {**call.raw_arguments, **call.arguments}  # converted values where they converted
    return {"index": index, "id": call_id, "type": "function",
            "function": {"name": call.name, "arguments": json.dumps(args, ensure_ascii=False)}}


@dataclasses.dataclass(frozen=True)
class ParsedMessage:
    """An assistant message read from raw model text.

    Attributes:
      reasoning: the think block's text ("" if none).
      content: visible text (tool-call blocks removed, unparseable call text kept).
      tool_calls: OpenAI tool calls, each with index, id, type and function {name, arguments}.
      errors: the parser's messages for everything malformed (calls with schema errors included).
    """

    reasoning: str
    content: str
    tool_calls: tuple[dict[str, Any], ...]
    errors: tuple[str, ...]

    def message(self) -> dict[str, Any]:
        """The OpenAI `message` object (content None when there are calls and no text)."""
        msg: dict[str, Any] = {"role": "assistant",
                               "content": self.content if self.content or not self.tool_calls else None}
        if self.reasoning:
            msg["reasoning_content"] = self.reasoning
        if self.tool_calls:
            msg["tool_calls"] = [{k: v for k, v in c.items() if k != "index"} for c in self.tool_calls]
        return msg

    def finish_reason(self, engine_reason: str) -> str:
        """"tool_calls" when the turn ended normally with calls; otherwise the engine's reason."""
        return "tool_calls" if self.tool_calls and engine_reason == "stop" else engine_reason


def build_message(text: str, tools: Sequence[Mapping[str, Any]] | None, *, parse_calls: bool,
                  id_prefix: str = "call",
                  chat_format: str | ChatFormat = DEFAULT_FORMAT) -> ParsedMessage:
    """Reads raw assistant text (markup tokens included) as an OpenAI assistant message.

    Args:
      text: the decoded completion.
      tools: the request's tool schemas (names and argument types for conversion).
      parse_calls: False for requests without tools or with tool_choice "none": only the
        reasoning is split off, the rest is content verbatim.
      id_prefix: tool-call ids are f"{id_prefix}_{k}".
      chat_format: the model's chat format (or its registry name).
    """
    fmt = get_format(chat_format)
    if not parse_calls:
        for token in (fmt.eos, *fmt.stop_tokens):
            text = text.replace(token, "")
        reasoning, rest, _ = fmt.split_reasoning(text)
        return ParsedMessage(reasoning, rest, (), ())
    turn = fmt.parse_turn(text, tools)
    content = turn.content
    extra = [c.raw for c in turn.calls if not c.name]
    calls = [c for c in turn.calls if c.name]
    if turn.unparsed:  # the format says what it could not read
        extra.append(turn.unparsed)
    elif turn.errors:  # unterminated block or function: show the unparsed tail
        _, rest, _ = fmt.split_reasoning(text.replace(fmt.eos, ""))
        marker = next((m for m in fmt.call_markers if m in rest), fmt.call_markers[-1])
        extra.append(rest[rest.rfind(marker):])
    if extra:
        content = (content + "\n" if content else "") + "\n".join(e.strip() for e in extra)
    return ParsedMessage(
        turn.reasoning, content,
        tuple(_openai_call(c, k, f"{id_prefix}_{k}") for k, c in enumerate(calls)),
        tuple(e.message for e in turn.all_errors))


def _held_back(text: str, tags: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of one of `tags`."""
    best = 0
    for tag in tags:
        for n in range(min(len(tag) - 1, len(text)), best, -1):
            if text.endswith(tag[:n]):
                best = n
                break
    return best


def _stable(text: str, tags: Sequence[str]) -> str:
    """`text` without trailing whitespace or a trailing partial tag (both may still change)."""
    text = text[: len(text) - _held_back(text, tags)]
    return text.rstrip()


class ChatStreamParser:
    """Turns a growing completion into OpenAI chat-completion deltas.

    feed(text) takes the whole decoded text so far and returns the deltas to send now;
    finish(text, engine_reason) returns the last deltas and the finish reason.
    """

    def __init__(self, tools: Sequence[Mapping[str, Any]] | None, *, parse_calls: bool,
                 id_prefix: str = "call", chat_format: str | ChatFormat = DEFAULT_FORMAT):
        self.format = get_format(chat_format)
        self.tools = tools
        self.parse_calls = parse_calls
        self.id_prefix = id_prefix
        self.sent_reasoning = ""
        self.sent_content = ""

    def _view(self, text: str) -> tuple[str, str]:
        """(reasoning, content) of `text` that no later text can change (see module docstring).
        A format without think tags (Llama 3) has no reasoning: all of the text is `rest`."""
        fmt = self.format
        for token in (fmt.eos, *fmt.stop_tokens):
            text = text.replace(token, "")
        tags = [fmt.eos, *fmt.stop_tokens]
        close = text.find(fmt.think_close) if fmt.think_close else -1
        if close >= 0:
            reasoning, rest, _ = fmt.split_reasoning(text)
        elif not fmt.think_open:
            reasoning, rest = "", text
        else:
            start = text.find(fmt.think_open)
            if start >= 0:
                return _stable(text[start + len(fmt.think_open):].lstrip(),
                               [fmt.think_close, fmt.eos]), ""
            if fmt.think_open.startswith(text.lstrip()):
                return "", ""  # may still become a think block
            reasoning, rest = "", text
            tags.append(fmt.think_close)  # a stray close tag may still come
        if self.parse_calls:
            cut = fmt.find_call(rest)
            if cut >= 0:
                return reasoning, rest[:cut].strip()
            return reasoning, _stable(rest, tags + list(fmt.call_markers)).lstrip()
        rest = rest[: len(rest) - _held_back(rest, tags)]
        return reasoning, rest

    def _deltas(self, reasoning: str, content: str) -> list[dict[str, Any]]:
        out = []
        if reasoning.startswith(self.sent_reasoning) and len(reasoning) > len(self.sent_reasoning):
            out.append({"reasoning_content": reasoning[len(self.sent_reasoning):]})
            self.sent_reasoning = reasoning
        if content.startswith(self.sent_content) and len(content) > len(self.sent_content):
            out.append({"content": content[len(self.sent_content):]})
            self.sent_content = content
        return out

    def feed(self, text: str) -> list[dict[str, Any]]:
        return self._deltas(*self._view(text))

    def finish(self, text: str, engine_reason: str) -> tuple[list[dict[str, Any]], str]:
        parsed = build_message(text, self.tools, parse_calls=self.parse_calls, id_prefix=self.id_prefix,
                               chat_format=self.format)
        deltas = self._deltas(parsed.reasoning, parsed.content)
        if parsed.tool_calls:
            deltas.append({"tool_calls": list(parsed.tool_calls)})
        return deltas, parsed.finish_reason(engine_reason)


__all__ = ["ChatStreamParser", "ParsedMessage", "build_message", "hidden_token_ids",
           "prepare_messages"]
