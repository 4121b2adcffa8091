"""A simple greedy decoder over `DenseKVCache`, for demos and tests (the engine is `sampling/`).

Prompts are left-padded to a common length: padding carries segment id 0 (never attended) and
real tokens get RoPE positions 0, 1, ... from their first real token, so each row decodes exactly
as it would alone. Prefill and the whole decode loop run in one jitted call; the weights are an
argument of that call (graphdef/state split), so new weights do not recompile.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ppp_jax.model.kv_cache import DenseKVCache


def greedy_generate(model, prompt_ids: Sequence[int] | Sequence[Sequence[int]] | np.ndarray,
                    max_new_tokens: int, eos_id: int | None = None):
    """Greedy continuation of one prompt (list of ids) or a batch (list of lists / [B, P] array).

    Returns the generated ids: a list for one prompt, a list of lists for a batch. A row stops
    after `eos_id` (which is included) or after `max_new_tokens` tokens.
    """
    single = len(prompt_ids) > 0 and np.isscalar(prompt_ids[0])
    rows = [list(map(int, prompt_ids))] if single else [list(map(int, r)) for r in prompt_ids]
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("greedy_generate needs at least one non-empty prompt")
    if max_new_tokens <= 0:
        return [] if single else [[] for _ in rows]
    p = max(len(r) for r in rows)
    pad_id = model.config.pad_token_id
    tokens = np.full((len(rows), p), pad_id, np.int32)
    segs = np.zeros((len(rows), p), np.int32)
    for i, r in enumerate(rows):
        tokens[i, p - len(r):] = r
        segs[i, p - len(r):] = 1
    positions = np.maximum(np.cumsum(segs, axis=1) - 1, 0).astype(np.int32)
    graphdef, state = nnx.split(model)
    out, n_out = _generate(graphdef, state, jnp.asarray(tokens), jnp.asarray(positions),
                           jnp.asarray(segs), jnp.int32(-1 if eos_id is None else eos_id),
                           max_new_tokens)
    out, n_out = np.asarray(out), np.asarray(n_out)
    result = [out[i, : n_out[i]].tolist() for i in range(len(rows))]
    return result[0] if single else result


@functools.partial(jax.jit, static_argnums=(0, 6))
def _generate(graphdef, state, tokens, positions, segs, eos_id, max_new: int):
    """tokens/positions/segs int32 [B, P], eos_id int32 scalar (-1: none) ->
    (generated int32 [B, max_new], counts int32 [B])."""
    model = nnx.merge(graphdef, state)
    b, p = tokens.shape
    cache = DenseKVCache.create(model.config, b, p + max_new)
    hidden, cache = model.hidden(tokens, positions, segs, cache=cache)
    first = jnp.argmax(model.logits(hidden[:, -1:]), axis=-1).astype(jnp.int32)  # [B, 1]
    out = jnp.zeros((b, max_new), jnp.int32).at[:, 0].set(first[:, 0])
    done = first[:, 0] == eos_id
    counts = jnp.ones((b,), jnp.int32)
    pos = positions[:, -1:] + 1

    def cond(carry):
        i, _, _, _, done, _, _ = carry
        return (i < max_new) & ~jnp.all(done)

    def step(carry):
        i, tok, pos, cache, done, out, counts = carry
        hidden, cache = model.hidden(tok, pos, jnp.ones_like(tok), cache=cache)
        nxt = jnp.argmax(model.logits(hidden), axis=-1).astype(jnp.int32)  # [B, 1]
        out = out.at[:, i].set(jnp.where(done, 0, nxt[:, 0]))
        counts = counts + (~done).astype(jnp.int32)
        done = done | (nxt[:, 0] == eos_id)
        return i + 1, nxt, pos + 1, cache, done, out, counts

    carry = (jnp.int32(1), first, pos, cache, done, out, counts)
    _, _, _, _, _, out, counts = jax.lax.while_loop(cond, step, carry)
    return out, counts
