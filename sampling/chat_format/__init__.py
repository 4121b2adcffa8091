"""Chat and tool-call formats, one module per model family, and their registry.

Everything that depends on how a model family writes its chats lives here: rendering turns, the
generation prompt, tool documentation and tool calls; splitting think blocks; parsing tool calls
out of raw assistant text; the format's special-token strings. The server
(`ppp_jax.sampling.server`, `ppp_jax.sampling.tool_calls`), the token-level tokenizer wrapper
(`ppp_jax.sampling.chat.ChatTokenizer`), the agent policies (`ppp_jax.envs.policy`) and SFT
(`ppp_jax.train.sft`) take a `ChatFormat` (or its registry name) instead of hard-coding one.

    from ppp_jax.sampling.chat_format import get_format
    fmt = get_format("seed_oss")
    fmt.parse_turn(text, tools).calls

Adding a format: write a module like `seed_oss.py` (its functions and a `FORMAT =
ChatFormat(...)`), and add one entry to `FORMATS`.
"""

from __future__ import annotations

from ppp_jax.sampling.chat_format import base, hermes, llama3, seed_oss
from ppp_jax.sampling.chat_format.base import *  # noqa: F401,F403 -- `base.__all__`
from ppp_jax.sampling.chat_format.base import ChatFormat

FORMATS: dict[str, ChatFormat] = {
    "seed_oss": seed_oss.FORMAT,
    "hermes": hermes.FORMAT,  # Qwen2.5 / Qwen3: ChatML turns, <tool_call>{json}</tool_call>
    "llama3": llama3.FORMAT,  # Llama 3.1 / 3.2 / 3.3: header turns, {"name", "parameters"} JSON
    # Llama 3.2 1B / 3B: the same turns, calls as a Python list [f(a="v"), g(x=1)]
    "llama3_pythonic": llama3.PYTHONIC_FORMAT,
}
DEFAULT_FORMAT = "seed_oss"


# Special tokens that identify a format in a tokenizer's vocabulary (all must be present).
_SIGNATURES = {"seed_oss": ("<seed:bos>", "<seed:eos>"),
               "hermes": ("<|im_start|>", "<|im_end|>", "<tool_call>"),
               "llama3": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                          "<|python_tag|>")}


# Text that only a format's chat template writes (a template that renders tool calls).
_TEMPLATE_SIGNATURES = {"seed_oss": ("<seed:tool_call>",),
                        "hermes": ("<tool_call>", "<|im_start|>"),
                        "llama3": ("<|start_header_id|>", '"parameters": '),
                        "llama3_pythonic": ("<|start_header_id|>", llama3.PYTHONIC_TEMPLATE_MARK)}

# A format the vocabulary tells, refined by its chat template: (variant, text the template writes).
_TEMPLATE_VARIANTS = {"llama3": ("llama3_pythonic", llama3.PYTHONIC_TEMPLATE_MARK)}


def detect_format(tokenizer) -> str:
    """The registered format of a checkpoint that does not say: the one whose special tokens the
    tokenizer has (`get_vocab()`), else the one whose call layout its chat template writes (a
    template is inspected only when the vocabulary alone does not tell, or to pick a variant:
    a Llama 3 template that asks for `[func_name1(...)]` lists is `llama3_pythonic`). Raises
    ValueError naming what was looked for otherwise."""
    vocab = tokenizer.get_vocab()
    found = [name for name, tokens in _SIGNATURES.items() if all(t in vocab for t in tokens)]
    template = getattr(tokenizer, "chat_template", None)
    if len(found) == 1 and found[0] in _TEMPLATE_VARIANTS and isinstance(template, str):
        variant, mark = _TEMPLATE_VARIANTS[found[0]]
        if mark in template:
            return variant
    if len(found) != 1 and isinstance(template, str):
        by_template = [name for name, marks in _TEMPLATE_SIGNATURES.items()
                       if all(m in template for m in marks)]
        by_template = [name for name in by_template  # a variant's template also names its base's
                       if _TEMPLATE_VARIANTS.get(name, ("",))[0] not in by_template]
        if len(by_template) == 1:
            return by_template[0]
    if len(found) != 1:
        wanted = "; ".join(f"{n}: {', '.join(t)}" for n, t in _SIGNATURES.items())
        raise ValueError(
            f"cannot tell the chat format from the tokenizer's special tokens (found "
            f"{found or 'none'} of {wanted}) or its chat template; set policy.chat_format to one "
            f"of {sorted(FORMATS)}")
    return found[0]


class GenerationPromptMismatch(ValueError):
    """A chat template's generation prompt does not begin with the format's own."""


def template_generation_prefix(tokenizer, chat_format: str | ChatFormat) -> str:
    """What the tokenizer's chat template writes after `chat_format`'s generation prompt.

    Qwen3 2507 thinking checkpoints open every assistant turn with `<think>\n` (their template's
    generation prompt is ChatML's plus that), so a policy sampling after the bare ChatML prompt
    would start its turns off the distribution it was trained on. The template is rendered on a
    one-message probe chat with and without `add_generation_prompt`; the difference is the
    template's generation prompt. Returns "" when the tokenizer has no chat template (a
    `tokenizers.Tokenizer`, a tokenizer trained here) or its generation prompt is the format's.

    Raises:
      GenerationPromptMismatch when the template's generation prompt does not start with the
        format's (the wrong `chat_format` for this checkpoint), naming both.
    """
    fmt = get_format(chat_format)
    if not isinstance(getattr(tokenizer, "chat_template", None), str):
        return ""
    probe = [{"role": "user", "content": "Hello."}]
    bare = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=False)
    full = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
    if not full.startswith(bare):
        raise GenerationPromptMismatch(
            "the chat template renders a chat differently with add_generation_prompt "
            f"(without: ...{bare[-40:]!r}; with: ...{full[-60:]!r}); cannot tell its generation "
            "prompt: set policy.generation_prefix explicitly")
    prompt = full[len(bare):]
    ours = fmt.generation_prompt()
    if prompt.startswith(ours):
        return prompt[len(ours):]
    raise GenerationPromptMismatch(
        f"the chat template's generation prompt {prompt!r} does not start with the "
        f"{fmt.name!r} format's {ours!r}: is policy.chat_format right for this checkpoint? "
        "(or set policy.generation_prefix explicitly)")


def get_format(name: str | ChatFormat = DEFAULT_FORMAT) -> ChatFormat:
    """The registered format called `name` (a `ChatFormat` is returned as it is)."""
    if isinstance(name, ChatFormat):
        return name
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown chat format {name!r}; known: {', '.join(sorted(FORMATS))}") from None


__all__ = [*base.__all__, "DEFAULT_FORMAT", "FORMATS", "GenerationPromptMismatch", "detect_format",
           "get_format", "template_generation_prefix"]
