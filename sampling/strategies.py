"""Token sampling as pure, jittable functions of logits: temperature, top-k, top-p, greedy.

Every function works on a batch of rows with *per-row* parameters (arrays, not Python values), so
one compiled decode step serves requests with different sampling settings.

Shapes: B = rows (slots), V = vocabulary.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_NEG = -1e30  # finite stand-in for -inf, so masked rows never produce NaN


def request_keys(seeds: jax.Array, steps: jax.Array) -> jax.Array:
    """Per-row PRNG keys: fold_in(PRNGKey(seed), step).

    Args:
      seeds: uint32 [B], each request's seed.
      steps: int32 [B], index of the token being sampled (0 for the first sampled token).
    Returns:
      raw uint32 keys [B, 2]. The key of a token depends only on (seed, step): never on the
      slot, the other rows, or how the engine batched the work.
    """
    return jax.vmap(lambda s, t: jax.random.fold_in(jax.random.PRNGKey(s), t))(seeds, steps)


def policy_logprobs(logits: jax.Array, temperature: jax.Array) -> jax.Array:
    """log softmax(logits / T) in float32, with T = 1 where temperature == 0 (greedy rows).

    Args:
      logits: [B, V], any float dtype.
      temperature: float32 [B].
    Returns:
      float32 [B, V].
    """
    t = jnp.where(temperature > 0, temperature, 1.0).astype(jnp.float32)
    return jax.nn.log_softmax(logits.astype(jnp.float32) / t[:, None], axis=-1)


def truncation_mask(logp: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """Which tokens survive top-k and top-p filtering.

    Args:
      logp: float32 [B, V] log-probs at the sampling temperature.
      top_k: int32 [B]; 0 disables top-k.
      top_p: float32 [B] in (0, 1]; 1 disables top-p.
    Returns:
      bool [B, V]: True for kept tokens. The most likely token is always kept. Ties at the
      top-k boundary are broken by token id (lower id first), as `jnp.argsort` is stable.
    """
    _, v = logp.shape
    order = jnp.argsort(-logp, axis=-1, stable=True)  # [B, V] token ids by decreasing prob
    sorted_logp = jnp.take_along_axis(logp, order, axis=-1)
    rank = jnp.arange(v)[None, :]
    k = jnp.where(top_k > 0, top_k, v)[:, None]
    keep_sorted = rank < k
    # Probability mass strictly before each sorted token; keep while it is below top_p.
    probs = jnp.exp(sorted_logp)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep_sorted &= (mass_before < top_p[:, None]) | (rank == 0)
    # Scatter the sorted decision back to vocabulary order.
    keep = jnp.zeros_like(keep_sorted)
    return keep.at[jnp.arange(logp.shape[0])[:, None], order].set(keep_sorted)


def sample_tokens(
    logits: jax.Array,
    temperature: jax.Array,
    top_k: jax.Array,
    top_p: jax.Array,
    keys: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Samples one token per row and returns it with its policy log-prob.

    Args:
      logits: [B, V] (cast to float32 inside).
      temperature: float32 [B]; 0 = greedy argmax.
      top_k: int32 [B]; 0 = off.
      top_p: float32 [B]; 1 = off.
      keys: uint32 [B, 2] raw PRNG keys, one per row (see `request_keys`).
    Returns:
      tokens int32 [B] and logprobs float32 [B] = log softmax(logits / T)[token] (T = 1 for
      greedy rows): the untruncated policy's log-prob, which is what the trainer recomputes.
    """
    logp = policy_logprobs(logits, temperature)
    return sample_from_logprobs(logp, temperature, top_k, top_p, keys)


def sample_from_logprobs(
    logp: jax.Array,
    temperature: jax.Array,
    top_k: jax.Array,
    top_p: jax.Array,
    keys: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """`sample_tokens` on the policy log-probs `logp` = `policy_logprobs(logits, temperature)`
    (float32 [B, V]), for callers that also need `logp` (e.g. `top_logprobs`)."""
    needs_filter = jnp.any(((top_k > 0) | (top_p < 1.0)) & (temperature > 0))
    keep = jax.lax.cond(
        needs_filter,
        lambda: truncation_mask(logp, top_k, top_p),
        lambda: jnp.ones(logp.shape, bool),
    )
    greedy = jnp.argmax(logp, axis=-1)

    def draw():  # Gumbel-max: argmax(logp + Gumbel noise) ~ softmax over the kept tokens
        gumbel = jax.vmap(lambda k: jax.random.gumbel(k, (logp.shape[-1],), jnp.float32))(keys)
        return jnp.argmax(jnp.where(keep, logp + gumbel, _NEG), axis=-1)

    # An all-greedy batch skips the [B, V] random numbers.
    sampled = jax.lax.cond(jnp.any(temperature > 0), draw, lambda: greedy)
    tokens = jnp.where(temperature > 0, sampled, greedy).astype(jnp.int32)
    token_logp = jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]
    return tokens, token_logp


def top_logprobs(logp: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """The k most likely tokens of each row and their log-probs.

    Args:
      logp: float32 [B, V] policy log-probs (see `policy_logprobs`).
      k: static, 1 <= k <= V.
    Returns:
      ids int32 [B, k] and log-probs float32 [B, k], most likely first; equal log-probs are
      ordered by lower token id first (`lax.top_k` is stable).
    """
    values, ids = jax.lax.top_k(logp, k)
    return ids.astype(jnp.int32), values
