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

# Special tokens at the ids Seed-OSS uses (<seed:bos>=0, <seed:pad>=1, <seed:eos>=2), then <unk>.
SPECIAL_TOKENS = ("<seed:bos>", "<seed:pad>", "<seed:eos>", "<unk>")

# Seed-OSS renders every turn as `<seed:bos>{role}\n{content}<seed:eos>` and the generation prompt
# as `<seed:bos>assistant\n` (reference/seed_oss.md, section 4.2). This template keeps only that
# turn format (no tool documentation or thinking budget); the real checkpoint ships its own.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<seed:bos>' + message['role'] + '\n' + message['content'] + '<seed:eos>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<seed:bos>assistant\n' }}{% endif %}"
)

_CORPUS = """\
the user asks a question and the assistant answers it. a good agent asks the user a short
question when the task is vague, and acts when the task is clear. which file defines the class?
the function returns a list of numbers: 1, 2, 3, 4, 5, 6, 7, 8, 9, 0. please answer in english.
what is the capital of france? paris is the capital of france. hello, how are you today?
i am fine, thank you! tools: search, open_page, ask_user. the answer is in the repository.
"""


def write_tiny_tokenizer(path: str | Path, vocab_size: int = 96):
    """Trains a character-level BPE (Metaspace pre-tokenizer) on a built-in corpus and saves it as
    a transformers `PreTrainedTokenizerFast` with `CHAT_TEMPLATE` in `path`. Returns the tokenizer.

    Ids 0..3 are `<seed:bos>`, `<seed:pad>`, `<seed:eos>`, `<unk>`; total size <= vocab_size, so a
    model with `vocab_size` embedding rows can serve it.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    tok.decoder = decoders.Metaspace(prepend_scheme="never")
    alphabet = list("abcdefghijklmnopqrstuvwxyz0123456789 .,:;!?'\"()-_/\n")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    for i, t in enumerate(SPECIAL_TOKENS):
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
