"""Test helpers for the agent loop: a tiny byte-level BPE tokenizer with the Seed-OSS special tokens.

`tiny_seed_tokenizer()` trains (in well under a second) a `tokenizers` byte-level BPE on a small
built-in corpus plus any extra text, and registers `<seed:bos>`=0, `<seed:pad>`=1, `<seed:eos>`=2
and the think/tool-call tags as atomic special tokens, like the real Seed-OSS tokenizer. Any text
round-trips through it (byte-level), so tests can decode masked and unmasked token spans exactly.
"""

from __future__ import annotations

from typing import Iterable

SEED_SPECIAL_TOKENS = ("<seed:bos>", "<seed:pad>", "<seed:eos>", "<seed:think>", "</seed:think>",
                       "<seed:cot_budget_reflect>", "</seed:cot_budget_reflect>",
                       "<seed:tool_call>", "</seed:tool_call>")

_CORPUS = [
    "<function=grep>\n<parameter=pattern>def foo</parameter>\n</function>\n",
    "<function=view_file>\n<parameter=path>json/decoder.py</parameter>\n</function>\n",
    "<function=finish>\n<parameter=answer>a.py:f</parameter>\n</function>\n",
    "<function=ask_user>\n<parameter=question>Which file?</parameter>\n</function>\n",
    "The function returns a wrong result. Please find the function that must be edited.",
    "Here's the result of running `cat -n` on the file: def class return import self",
    "You are a software engineering agent that localizes problems in a code base.",
]


def tiny_seed_tokenizer(extra_text: Iterable[str] = (), vocab_size: int = 800):
    """A trained `tokenizers.Tokenizer` (byte-level BPE) with the Seed-OSS special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SEED_SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(list(_CORPUS) + list(extra_text), trainer)
    return tok
