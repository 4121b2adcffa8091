"""Text in and out of the engine: the checkpoint's tokenizer, chat rendering, streaming decode.

Two ways to render a chat:
  * `render_chat` (the server): the checkpoint's own chat template through transformers'
    `apply_chat_template` (never re-implemented: the Seed-OSS template's whitespace is
    idiosyncratic, see reference/seed_oss.md section 4.2), then encoded without adding special
    tokens again (the template already writes `<seed:bos>`).
  * `ChatTokenizer` (token-level episodes, SFT): turns rendered piece by piece by a
    `ppp_jax.sampling.chat_format` format, so that each turn's ids can be sent and masked on
    their own. The system block (system text plus tool documentation) is rendered by the
    tokenizer's chat template when it has one (a transformers tokenizer with `chat_template`
    set), so it matches the model's training format byte for byte; without one (tests, tiny
    tokenizers) by the format's `render_system` approximation. All other turns are plain
    role/content turns, rendered identically by both paths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from ppp_jax.sampling.chat_format import DEFAULT_FORMAT, ChatFormat, get_format


def load_tokenizer(path: str | Path) -> Any:
    """A `tokenizers.Tokenizer` from a `.json` file or a directory with only `tokenizer.json`;
    else the transformers tokenizer of a checkpoint directory (with its chat template)."""
    path = Path(path)
    if path.suffix == ".json":
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(path))
    if (path / "tokenizer_config.json").exists() or (path / "tokenizer.json").exists():
        if not (path / "tokenizer_config.json").exists():
            from tokenizers import Tokenizer

            return Tokenizer.from_file(str(path / "tokenizer.json"))
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path))
    raise FileNotFoundError(f"no tokenizer at {path} (expected tokenizer.json or a tokenizer "
                            "directory)")


def render_chat(tokenizer, messages: list[dict[str, Any]], *, tools: list[dict] | None = None,
                add_generation_prompt: bool = True, **template_kwargs: Any) -> list[int]:
    """Token ids of `messages` rendered by the tokenizer's chat template.

    template_kwargs go to the template (e.g. `thinking_budget=0` for Seed-OSS).
    Raises ValueError when the template cannot render the messages.
    """
    try:
        text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                             add_generation_prompt=add_generation_prompt,
                                             **template_kwargs)
    except Exception as e:  # jinja errors, missing template, wrong message shapes
        raise ValueError(f"cannot render the chat with the checkpoint's template: {e}") from e
    return encode(tokenizer, text)


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of `text`, special-token strings recognized, no BOS added."""
    return list(tokenizer.encode(text, add_special_tokens=False))


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas for streaming.

    Decodes the whole output each time (outputs are short next to the model's cost) and holds
    back a trailing U+FFFD, which means a multi-byte character is still incomplete.

    hidden_ids: when given, exactly these ids are dropped and every other token (special or not)
    is decoded, e.g. to keep Seed-OSS markup such as `<seed:tool_call>` while dropping
    `<seed:eos>`; skip_special_tokens is then ignored.
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = True,
                 hidden_ids: set[int] | frozenset[int] | None = None):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.hidden_ids = hidden_ids
        self.ids: list[int] = []
        self.emitted = 0  # characters of text already returned
        self.text = ""

    def add(self, ids: list[int]) -> str:
        """Appends ids; returns the newly completed text."""
        self.ids.extend(ids)
        if self.hidden_ids is None:
            self.text = self.tokenizer.decode(self.ids, skip_special_tokens=self.skip_special_tokens)
        else:
            self.text = self.tokenizer.decode([t for t in self.ids if t not in self.hidden_ids],
                                              skip_special_tokens=False)
        stable = len(self.text.rstrip("\ufffd"))
        delta = self.text[self.emitted:stable]
        self.emitted = max(self.emitted, stable)
        return delta

    def flush(self) -> str:
        """Whatever is left (including an incomplete character) at the end of the stream."""
        delta = self.text[self.emitted:]
        self.emitted = len(self.text)
        return delta


class ChatTokenizer:
    """Encodes/decodes rendered chat text with special tokens kept atomic and visible.

    Args:
      tokenizer: a `tokenizers.Tokenizer` or a transformers tokenizer. The format's special
        tokens in rendered text (`<seed:bos>`, `<seed:eos>`, `<seed:think>`, ... for Seed-OSS)
        must be single vocabulary entries so that rendering piecewise gives the same ids as
        rendering whole.
      chat_format: the chat format (or its registry name) the turns are rendered in.
    """

    def __init__(self, tokenizer: Any, chat_format: str | ChatFormat = DEFAULT_FORMAT):
        self.tok = tokenizer
        self.format = get_format(chat_format)
        self._hf = hasattr(tokenizer, "apply_chat_template")
        self.eos_id = self.token_id(self.format.eos)
        self.bos_id = self.token_id(self.format.bos)

    def token_id(self, token: str) -> int:
        tid = self.tok.convert_tokens_to_ids(token) if self._hf else self.tok.token_to_id(token)
        if tid is None or (self._hf and tid == getattr(self.tok, "unk_token_id", None)):
            raise ValueError(f"tokenizer has no single token for {token!r}")
        return int(tid)

    def encode(self, text: str) -> list[int]:
        if self._hf:
            return list(self.tok.encode(text, add_special_tokens=False))
        return list(self.tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        if self._hf:
            return self.tok.decode(list(ids), skip_special_tokens=False)
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def render_system(self, system: str, tools: Sequence[Mapping[str, Any]]) -> str:
        """The first system block, through the model's template when the tokenizer has one."""
        if self._hf and getattr(self.tok, "chat_template", None):
            text = self.tok.apply_chat_template(
                [{"role": "system", "content": system}], tools=list(tools) or None, tokenize=False,
                add_generation_prompt=False)
            return text
        return self.format.render_system(system, tools)
