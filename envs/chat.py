"""Seed-OSS chat rendering for token-level episodes (the engine-backed policy).

Turn format (`shared/reference/seed_oss.md` 4.2): every turn is `<seed:bos>{role}\\n{content}<seed:eos>`
with nothing between turns; tool results use the `tool` role; the generation prompt is
`<seed:bos>assistant\\n`. The first system turn carries the tool documentation.

Exactness: when the tokenizer carries the model's own chat template (a transformers tokenizer
with `chat_template` set), the system block (system text plus tool documentation) is rendered by
that template, so it matches the model's training format byte for byte. Without one (tests, tiny
tokenizers) `render_tool_doc` writes an approximation of the template's Python-stub layout. All
other turns are plain role/content turns, rendered identically by both paths.

Tokenization: `ChatTokenizer` wraps either a `tokenizers.Tokenizer` or a transformers tokenizer;
special tokens in rendered text (`<seed:bos>`, `<seed:eos>`, `<seed:think>`, ...) must be single
vocabulary entries so that rendering piecewise gives the same ids as rendering whole.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

BOS = "<seed:bos>"
EOS = "<seed:eos>"

_TYPE_NAMES = {"string": "str", "number": "int", "integer": "int", "boolean": "bool", "array": "list"}
# "Tool calls must follow this format:" (the template's Chinese instruction line).
_FORMAT_LINE = "工具调用请遵循如下格式:"


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


class ChatTokenizer:
    """Encodes/decodes rendered chat text with special tokens kept atomic and visible.

    Args:
      tokenizer: a `tokenizers.Tokenizer` or a transformers tokenizer.
    """

    def __init__(self, tokenizer: Any):
        self.tok = tokenizer
        self._hf = hasattr(tokenizer, "apply_chat_template")
        self.eos_id = self.token_id(EOS)
        self.bos_id = self.token_id(BOS)

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
        return f"{BOS}system\n{system}{render_tool_doc(tools) if tools else ''}{EOS}"
