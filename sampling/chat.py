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


# Files a tokenizer directory may hold (transformers' names); copied together when a checkpoint's
# tokenizer travels with it.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja", "chat_template.json",
                   "tokenizer.model", "vocab.json", "merges.txt")


class TokenizerNotFound(FileNotFoundError):
    """No tokenizer where one was looked for; the message names every place tried."""


def has_tokenizer(path: str | Path) -> bool:
    """True when `path` is a tokenizer `.json` file or a directory holding a tokenizer."""
    path = Path(path)
    if path.suffix == ".json":
        return path.is_file()
    return (path / "tokenizer_config.json").is_file() or (path / "tokenizer.json").is_file()


def load_tokenizer(path: str | Path) -> Any:
    """A `tokenizers.Tokenizer` from a `.json` file or a directory with only `tokenizer.json`;
    else the transformers tokenizer of a checkpoint directory (with its chat template).

    Raises:
      TokenizerNotFound naming the resolved path when there is no tokenizer there.
    """
    path = Path(path)
    if not has_tokenizer(path):
        raise TokenizerNotFound(f"no tokenizer at {path.absolute()} (expected a tokenizer.json "
                                "file or a directory holding tokenizer.json)")
    if path.suffix == ".json":
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(path))
    if not (path / "tokenizer_config.json").exists():
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(path / "tokenizer.json"))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def find_tokenizer(candidates: Sequence[tuple[str | Path | None, str]]) -> Path:
    """The first candidate path that holds a tokenizer.

    candidates: (path, what puts a tokenizer there) pairs, e.g.
      (run_dir / "tokenizer.json", "written by `ppp sft`"); empty paths are skipped.
    Raises:
      TokenizerNotFound listing every resolved path tried and what would have written it.
    """
    tried = []
    for path, source in candidates:
        if not path or str(path) in ("", "."):
            continue
        if has_tokenizer(path):
            return Path(path)
        tried.append(f"{Path(path).absolute()} ({source})")
    if not tried:
        raise TokenizerNotFound("no tokenizer: set policy.tokenizer=PATH (a tokenizer.json or "
                                "a Hugging Face tokenizer directory)")
    raise TokenizerNotFound("no tokenizer at " + "; nor at ".join(tried)
                            + "; set policy.tokenizer=PATH to name one")


def copy_tokenizer(src: str | Path, dst_dir: str | Path) -> list[str]:
    """Copies the tokenizer at `src` (a `.json` file or a tokenizer directory) into `dst_dir`
    unchanged, so that a checkpoint carries the exact tokenizer it was trained with. Returns the
    file names written."""
    import shutil

    src, dst_dir = Path(src), Path(dst_dir)
    dst_dir.mkdir(parents=True, exist_ok=True)
    if src.suffix == ".json":
        shutil.copyfile(src, dst_dir / "tokenizer.json")
        return ["tokenizer.json"]
    names = [n for n in TOKENIZER_FILES if (src / n).is_file()]
    for name in names:
        shutil.copyfile(src / name, dst_dir / name)
    return names


def export_chat_template() -> str:
    """The chat template written into an export whose tokenizer has none (the demo's bare BPE).

    The cut-down Seed-OSS template of `ppp_jax.sampling.testing` for every turn, except that the
    first system turn is rendered exactly as `seed_oss.render_system` renders it: that is the text
    a policy trained through `ChatTokenizer` without a template saw, and an exported tokenizer
    with a template renders its system turn through the template (a different system text moved
    the tiny demo policy's ask ratio from 0.76 to 0.30).
    """
    from ppp_jax.sampling.chat_format import seed_oss
    from ppp_jax.sampling.testing import CHAT_TEMPLATE

    tail = seed_oss.render_tool_doc([])[2:]  # "\n<format line>\n<example call>"
    assert "'" not in tail
    types = "{'string': 'str', 'number': 'int', 'integer': 'int', 'boolean': 'bool', 'array': 'list'}"
    system = (
        "{%- set ns = namespace(first=0) -%}"
        "{%- set types = " + types + " -%}"
        "{%- if tools -%}"
        "{{ '<seed:bos>system\n' }}"
        "{%- if messages[0]['role'] == 'system' -%}{{ messages[0]['content'] }}"
        "{%- set ns.first = 1 -%}{%- else -%}{{ 'you may call one or more functions.' }}{%- endif -%}"
        "{%- for tool in tools -%}"
        "{%- set fn = tool['function'] if tool['function'] is defined else tool -%}"
        "{%- set params = fn['parameters'] if fn['parameters'] is defined and fn['parameters'] "
        "else {} -%}"
        "{%- set props = params['properties'] if params['properties'] is defined and "
        "params['properties'] else {} -%}"
        "{%- set required = params['required'] if params['required'] is defined and "
        "params['required'] else [] -%}"
        "{{ '\n\nFunction:\ndef ' + fn['name'] + '(' }}"
        "{%- for k, v in props.items() -%}{{ k + ': ' + types.get(v.get('type'), 'Any') }}"
        "{%- if not loop.last -%}{{ ',' }}{%- endif -%}{%- endfor -%}"
        "{{ '):\n    \"\"\"\n    ' + (fn['description'] if fn['description'] is defined "
        "else '') + '\n\n    Args:\n' }}"
        "{%- for k, v in props.items() -%}"
        "{{ '    - ' + k + ' (' + types.get(v.get('type'), 'Any') + ') [' + "
        "('必填' if k in required else '选填') + ']: ' + (v.get('description', '') | string) }}"
        "{%- if not loop.last -%}{{ '\n' }}{%- endif -%}{%- endfor -%}"
        "{{ '\n\n    \"\"\"' }}"
        "{%- endfor -%}"
        "{{ '" + tail + "' }}"
        "{{ '<seed:eos>' }}"
        "{%- endif -%}"
    )
    turns = CHAT_TEMPLATE[CHAT_TEMPLATE.index("{%- for message in messages[ns.first:]"):]
    return system + turns


def save_serving_tokenizer(src: str | Path, dst_dir: str | Path) -> bool:
    """Writes the tokenizer at `src` into `dst_dir` as a transformers tokenizer with a chat
    template, which `ppp serve` needs. A bare `tokenizers` tokenizer (the demo's) is wrapped with
    the Seed-OSS special tokens and the cut-down Seed-OSS template of
    `ppp_jax.sampling.testing`, its system turn as the policy saw it in training
    (`export_chat_template`); a tokenizer that has its own template keeps it. Returns True when
    the fallback template was used."""
    tok = load_tokenizer(src)
    fallback = False
    if not hasattr(tok, "apply_chat_template"):
        from transformers import PreTrainedTokenizerFast

        fmt = get_format(DEFAULT_FORMAT)
        specials = {k: v for k, v in (("bos_token", fmt.bos), ("eos_token", fmt.eos),
                                      ("pad_token", "<seed:pad>"))
                    if tok.token_to_id(v) is not None}
        tok = PreTrainedTokenizerFast(tokenizer_object=tok, **specials)
    if not getattr(tok, "chat_template", None):
        tok.chat_template = export_chat_template()
        fallback = True
    tok.save_pretrained(str(dst_dir))
    return fallback


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
        # every id that ends an assistant turn: eos, then the format's other turn ends present in
        # the vocabulary (Llama 3: <|eom_id|>)
        self.end_ids: tuple[int, ...] = (self.eos_id,) + tuple(
            i for i in (self._maybe_id(t) for t in self.format.stop_tokens) if i is not None)

    def _maybe_id(self, token: str) -> int | None:
        try:
            return self.token_id(token)
        except ValueError:
            return None

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
        """The first system block, through the model's template when the tokenizer has one (and
        it writes the format's call layout: `ChatFormat.system_template_mark`)."""
        template = getattr(self.tok, "chat_template", None) if self._hf else None
        mark = self.format.system_template_mark
        if template and (not mark or (isinstance(template, str) and mark in template)):
            text = self.tok.apply_chat_template(
                [{"role": "system", "content": system}], tools=list(tools) or None, tokenize=False,
                add_generation_prompt=False, **dict(self.format.system_template_kwargs))
            return text
        return self.format.render_system(system, tools)
