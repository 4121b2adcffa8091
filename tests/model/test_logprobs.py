"""Chunked per-token log-probs/entropy equal the naive full-logits computation (values and
gradients), and the chunked path never holds [B, T, V] logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ppp_jax.model import testing as mt
from ppp_jax.model.config import tiny
from ppp_jax.model.logprobs import naive_token_logprobs, token_logprobs
from ppp_jax.model.transformer import SeedOssForCausalLM
from tests import numerics as nm

CFG = tiny(num_kv_heads=2)  # V=67
B, T = 2, 13  # T prime: chunk sizes 4 and 5 do not divide it


def _inputs(seed=0):
    rng = np.random.RandomState(seed)
    tokens = jnp.asarray(rng.randint(0, CFG.vocab_size, (B, T)), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    targets = jnp.roll(tokens, -1, axis=1)
    return tokens, positions, targets


def _objective(fn, graphdef, tokens, positions, targets, **kw):
    def f(state):
        model = nnx.merge(graphdef, state)
        hidden, _ = model.hidden(tokens, positions)
        logp, ent = fn(model, hidden, targets, **kw)
        # weights make every position matter differently
        w = jnp.linspace(0.5, 1.5, T)
        return jnp.sum(logp * w) + 0.3 * jnp.sum(ent * w), (logp, ent)

    return jax.jit(jax.value_and_grad(f, has_aux=True))


def _bounds(model, tokens, positions, temperature=1.0, logits_path=None):
    """(log-prob bound, entropy bound) for two float32 evaluations (tests/numerics.py): the
    forward chain (or only `logits_path` when the hidden states are shared), the vocabulary's
    log-sum-exp, at the logits' largest magnitude."""
    z = np.abs(mt.jit_logits(model, tokens, positions)).max() / temperature
    path = nm.transformer_path_length(CFG, T) if logits_path is None else logits_path
    scale = 2 * z + np.log(CFG.vocab_size)  # bounds |z/T|, |logp_j| and the log-sum-exp
    return (nm.f32_logprob_atol(path, CFG.vocab_size, z, scale),
            nm.f32_entropy_atol(path, CFG.vocab_size, z, scale))


def test_chunked_equals_naive_values_and_grads():
    """Chunk 4 (does not divide T=13), temperature 1: values and parameter gradients."""
    model = mt.make_model(CFG, seed=1)
    graphdef, state = nnx.split(model)
    tokens, positions, targets = _inputs()
    (v1, (lp1, en1)), g1 = _objective(token_logprobs, graphdef, tokens, positions, targets,
                                      chunk_size=4)(state)
    (v2, (lp2, en2)), g2 = _objective(naive_token_logprobs, graphdef, tokens, positions,
                                      targets)(state)
    assert lp1.shape == en1.shape == (B, T) and lp1.dtype == en1.dtype == jnp.float32
    # two programs (chunked, naive), each with its own forward: two float32 evaluations
    tol_lp, tol_en = _bounds(model, tokens, positions)
    np.testing.assert_allclose(lp1, lp2, atol=tol_lp, rtol=0)
    np.testing.assert_allclose(en1, en2, atol=tol_en, rtol=0)
    leaves1, leaves2 = jax.tree.leaves(g1), jax.tree.leaves(g2)
    assert len(leaves1) == len(leaves2) > 0
    path = nm.transformer_path_length(CFG, T)
    for a, b in zip(leaves1, leaves2):
        # backward through the same chain, summed over B·T positions, at the leaf's scale
        tol = nm.f32_grad_atol(path, CFG.vocab_size, B * T, np.abs(np.asarray(b)).max())
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=tol, rtol=0)
    assert (np.asarray(lp1) <= 0).all()
    assert (np.asarray(en1) >= -1e-6).all()
    assert (np.asarray(en1) <= np.log(CFG.vocab_size) + 1e-5).all()


@jax.jit(static_argnums=(0, 4, 5))
def _both(graphdef, state, tokens, targets, temperature, chunk_size):
    model = nnx.merge(graphdef, state)
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    hidden, _ = model.hidden(tokens, positions)
    return (token_logprobs(model, hidden, targets, temperature=temperature, chunk_size=chunk_size),
            naive_token_logprobs(model, hidden, targets, temperature=temperature))


def test_chunked_equals_naive_tied_tempered_one_chunk():
    """Tied embeddings, temperature 0.7, chunk 64 > T (a single padded chunk): values."""
    model = mt.make_model(CFG.replace(tie_word_embeddings=True), seed=3)
    graphdef, state = nnx.split(model)
    tokens, _, targets = _inputs(2)
    (lp1, en1), (lp2, en2) = _both(graphdef, state, tokens, targets, 0.7, 64)
    # one program, one shared forward: only the LM head (D) and the log-softmax differ
    positions = np.broadcast_to(np.arange(T), (B, T))
    tol_lp, tol_en = _bounds(model, tokens, positions, 0.7, logits_path=CFG.hidden_size)
    np.testing.assert_allclose(lp1, lp2, atol=tol_lp, rtol=0)
    np.testing.assert_allclose(en1, en2, atol=tol_en, rtol=0)


def test_naive_matches_log_softmax_by_hand():
    model = mt.make_model(CFG, seed=2)
    tokens, positions, targets = _inputs(1)
    hidden, _ = model.hidden(tokens, positions)
    z = np.asarray(model.logits(hidden), np.float64) / 0.5
    logz = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(-1, keepdims=True)
    want = np.take_along_axis(logz, np.asarray(targets)[..., None], -1)[..., 0]
    ent = -(np.exp(logz) * logz).sum(-1)
    lp, en = token_logprobs(model, hidden, targets, temperature=0.5, chunk_size=3)
    # the same hidden states; the LM head (D) evaluated twice, the log-softmax once in float32
    zs = np.abs(z).max()
    tol_lp = nm.f32_logprob_atol(CFG.hidden_size, CFG.vocab_size, zs, 2 * zs + np.log(CFG.vocab_size))
    tol_en = nm.f32_entropy_atol(CFG.hidden_size, CFG.vocab_size, zs, 2 * zs + np.log(CFG.vocab_size))
    np.testing.assert_allclose(lp, want, atol=tol_lp)
    np.testing.assert_allclose(en, ent, atol=tol_en)


def _shapes_in_jaxpr(jaxpr) -> set:
    shapes = set()
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            shapes.add(tuple(getattr(var.aval, "shape", ())))
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", None)
            if inner is not None:
                shapes |= _shapes_in_jaxpr(getattr(inner, "jaxpr", inner))
    return shapes


def test_chunked_path_never_builds_full_logits():
    """No intermediate of the forward+backward program has shape [B, T, V] (the naive one does)."""
    model = nnx.eval_shape(lambda: SeedOssForCausalLM(CFG, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    tokens, positions, targets = _inputs()

    def program(fn, **kw):
        def f(state):
            m = nnx.merge(graphdef, state)
            hidden, _ = m.hidden(tokens, positions)
            return fn(m, hidden, targets, **kw)[0].sum()
        return jax.make_jaxpr(jax.grad(f))(state).jaxpr

    full = (B, T, CFG.vocab_size)
    assert full in _shapes_in_jaxpr(program(naive_token_logprobs))  # the probe can see it
    assert full not in _shapes_in_jaxpr(program(token_logprobs, chunk_size=4))
