"""Tiny servable checkpoints for tests and demos: a small BPE tokenizer with the Seed-OSS special
tokens and a Seed-OSS-style chat template, next to a random tiny Seed-OSS model.

Nothing is downloaded: the tokenizer is trained here with the `tokenizers` library on a built-in
corpus, and the model is written by transformers (`ppp_jax.model.testing`).

    from ppp_jax.sampling.testing import write_tiny_serving_checkpoint
    path = write_tiny_serving_checkpoint("/tmp/tiny")      # config.json, model.safetensors,
                                                           # tokenizer.json, chat template
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Special tokens at the ids Seed-OSS uses (<seed:bos>=0, <seed:pad>=1, <seed:eos>=2), then <unk>,
# then the Seed-OSS markup tokens (atomic in the real vocabulary too; ids differ there).
SPECIAL_TOKENS = ("<seed:bos>", "<seed:pad>", "<seed:eos>", "<unk>")
MARKUP_TOKENS = ("<seed:think>", "</seed:think>", "<seed:tool_call>", "</seed:tool_call>")

# A cut-down Seed-OSS template (reference/seed_oss.md, section 4.2). Kept: the turn format
# `<seed:bos>{role}\n{content}<seed:eos>` for every role (tool results included), the generation
# prompt `<seed:bos>assistant\n`, tool documentation in the first system turn (a default system
# text when there is none), history assistant turns with `reasoning_content` and `tool_calls`
# rendered exactly as the real template does (arguments must be a dict; values with `str()`).
# Dropped: the thinking budget and the Chinese format instructions. The real checkpoint ships
# its own template.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(first=0) -%}"
    "{%- if tools -%}"
    "{{ '<seed:bos>system\n' }}"
    "{%- if messages[0]['role'] == 'system' -%}{{ messages[0]['content'] }}"
    "{%- set ns.first = 1 -%}{%- else -%}{{ 'you may call one or more functions.' }}{%- endif -%}"
    "{%- for tool in tools -%}{%- set fn = tool['function'] -%}"
    "{{ '\n\nfunction:\ndef ' + fn['name'] + '(' }}"
    "{%- for name in fn['parameters']['properties'] -%}{{ name }}"
    "{%- if not loop.last -%}{{ ',' }}{%- endif -%}{%- endfor -%}"
    "{{ '):\n    ' + fn.get('description', '') }}"
    "{%- endfor -%}"
    "{{ '<seed:eos>' }}"
    "{%- endif -%}"
    "{%- for message in messages[ns.first:] -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<seed:bos>assistant' }}"
    "{%- if message.get('reasoning_content') -%}"
    "{{ '\n<seed:think>' + message['reasoning_content'] | trim + '</seed:think>' }}"
    "{%- endif -%}"
    "{%- if message.get('tool_calls') -%}"
    "{%- if message['content'] -%}{{ '\n' + message['content'] | trim + '\n' }}{%- endif -%}"
    "{%- for call in message['tool_calls'] -%}"
    "{%- set fn = call['function'] if call['function'] is defined else call -%}"
    "{{ '\n<seed:tool_call>\n<function=' + fn['name'] + '>\n' }}"
    "{%- for k, v in fn['arguments'].items() -%}"
    "{{ '<parameter=' + k + '>' + v | string + '</parameter>\n' }}"
    "{%- endfor -%}"
    "{{ '</function>\n</seed:tool_call>' }}"
    "{%- endfor -%}"
    "{{ '<seed:eos>' }}"
    "{%- else -%}"
    "{{ '\n' + message['content'] | trim + '<seed:eos>' }}"
    "{%- endif -%}"
    "{%- else -%}"
    "{{ '<seed:bos>' + message['role'] + '\n' + message['content'] + '<seed:eos>' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<seed:bos>assistant\n' }}{%- endif -%}"
)

_CORPUS = """\
the user asks a question and the assistant answers it. a good agent asks the user a short
question when the task is vague, and acts when the task is clear. which file defines the class?
the function returns a list of numbers: 1, 2, 3, 4, 5, 6, 7, 8, 9, 0. please answer in english.
what is the capital of france? paris is the capital of france. hello, how are you today?
i am fine, thank you! tools: search, open_page, ask_user. the answer is in the repository.
<function=finish> <parameter=answer>a.py:f</parameter> </function> <function=ask_user>
<parameter=question>which one?</parameter> <function=view_file> <parameter=path>
"""


def write_tiny_tokenizer(path: str | Path, vocab_size: int = 96):
    """Trains a character-level BPE (Metaspace pre-tokenizer) on a built-in corpus and saves it as
    a transformers `PreTrainedTokenizerFast` with `CHAT_TEMPLATE` in `path`. Returns the tokenizer.

    Ids 0..3 are `<seed:bos>`, `<seed:pad>`, `<seed:eos>`, `<unk>`, ids 4..7 the markup tokens
    `<seed:think>`, `</seed:think>`, `<seed:tool_call>`, `</seed:tool_call>`; total size <=
    vocab_size, so a model with `vocab_size` embedding rows can serve it.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    tok.decoder = decoders.Metaspace(prepend_scheme="never")
    alphabet = list("abcdefghijklmnopqrstuvwxyz0123456789 .,:;!?'\"()-_/\n<>=[]{}")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size,
                                  special_tokens=list(SPECIAL_TOKENS + MARKUP_TOKENS),
                                  initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    for i, t in enumerate(SPECIAL_TOKENS + MARKUP_TOKENS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<seed:bos>",
                                   pad_token="<seed:pad>", eos_token="<seed:eos>",
                                   unk_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(path))
    return fast


def write_tiny_serving_checkpoint(path: str | Path, seed: int = 0, vocab_size: int = 96,
                                  **model_overrides: Any) -> Path:
    """A random tiny Seed-OSS model plus the tiny tokenizer in one directory; returns `path`.

    model_overrides: `ppp_jax.model.config.ModelConfig` fields for `tiny(...)`.
    """
    from ppp_jax.model.testing import write_tiny_hf_checkpoint

    path = Path(path)
    write_tiny_hf_checkpoint(path, seed=seed, vocab_size=vocab_size, **model_overrides)
    write_tiny_tokenizer(path, vocab_size=vocab_size)
    return path
