"""Shared fixtures for the engine tests: one tiny HF checkpoint per session, loaded once."""

from __future__ import annotations

import pytest

from ppp_jax.model import api
from ppp_jax.model import testing as mt
from ppp_jax.sampling.engine import Engine
from ppp_jax.sampling.config import EngineConfig

# Distinct sizes, GQA with 2 kv heads, vocab large enough that greedy ties are unlikely.
TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
            num_kv_heads=2, head_dim=8, max_position_embeddings=65536)

# Small pages and chunks so that every test crosses page, block and chunk boundaries.
SMALL_ENGINE = EngineConfig(num_slots=4, page_size=4, num_pages=160, max_seq_len=192,
                            decode_steps=8, prefill_chunks=(8, 32), prefill_rows=(1, 4),
                            block_pages=4)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """Path of a random tiny Seed-OSS checkpoint (float32, written by transformers)."""
    return mt.write_tiny_hf_checkpoint(tmp_path_factory.mktemp("engine_ckpt"), seed=1, **TINY)


@pytest.fixture(scope="session")
def tiny_model(tiny_ckpt):
    return api.load_pretrained(tiny_ckpt)


@pytest.fixture(scope="session")
def engine(tiny_model):
    """A small engine shared by all tests (compiles once). Tests must end their sessions."""
    eng = Engine(tiny_model, SMALL_ENGINE)
    yield eng
    eng.close()


def logprob_atol(model, sequences, temperature: float = 1.0) -> float:
    """Derived bound (tests/numerics.py) on the difference of two float32 evaluations of the
    log-probs of `sequences` (token lists) under `model`: the engine's paged prefill/decode
    programs against the trainer's dense forward, or against another engine batch (other
    buckets, rows, chunk sizes). The logits' magnitude is measured with one dense forward per
    sequence, padded to the engine's max_seq_len (one compilation)."""
    import numpy as np

    from ppp_jax.model import testing as mt
    from tests import numerics as nm

    pad_to = SMALL_ENGINE.max_seq_len
    t = 1.0 if temperature == 0 else temperature
    zs, longest = 0.0, 1
    for seq in sequences:
        seq = list(seq)[:pad_to]
        tokens = np.zeros((1, pad_to), np.int32)
        tokens[0, :len(seq)] = seq
        segs = (np.arange(pad_to) < len(seq)).astype(np.int32)[None]
        logits = mt.jit_logits(model, tokens, np.arange(pad_to)[None], segs)[0, :len(seq)]
        zs, longest = max(zs, float(np.abs(logits).max()) / t), max(longest, len(seq))
    cfg = model.config
    path = nm.transformer_path_length(cfg, longest)
    return nm.f32_logprob_atol(path, cfg.vocab_size, zs, 2 * zs + np.log(cfg.vocab_size))
