"""Per-token log-probabilities and entropies of given targets, chunked over the sequence.

Seed-OSS has V = 155,136 and sequences reach 65k tokens, so `[B, T, V]` float32 logits would take
B x 40 GB. `token_logprobs` runs the lm_head on `chunk_size` positions at a time inside
`lax.map`, each chunk under `jax.checkpoint`, so neither the forward nor the backward pass holds
more than `[B, chunk_size, V]` logits at once.

With temperature tau, for logits z (the lm_head output cast to float32):

    logp[b, t]    = z[b, t, y] / tau - logsumexp_v(z[b, t, v] / tau),  y = targets[b, t]
    entropy[b, t] = -sum_v p_v log p_v,   p = softmax(z[b, t] / tau)

which is what a sampler drawing from softmax(z / tau) assigns to the token it drew.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

F32 = jnp.float32


def _stats(logits: jax.Array, targets: jax.Array, temperature: float):
    """logits [..., V] (any dtype), targets int [...] -> (logp f32 [...], entropy f32 [...])."""
    logp = jax.nn.log_softmax(logits.astype(F32) / F32(temperature), axis=-1)
    picked = jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    # -sum p log p on the normalized log-probs: no cancellation between logsumexp and E[z]
    entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    return picked, entropy


def token_logprobs(model, hidden: jax.Array, targets: jax.Array, *, temperature: float = 1.0,
                   chunk_size: int = 512) -> tuple[jax.Array, jax.Array]:
    """Log-prob and entropy at every position, never materializing `[B, T, V]`.

    model: a `SeedOssForCausalLM` (only `model.logits` is used).
    hidden: [B, T, D] from `model.hidden(...)` (after the final norm).
    targets: int [B, T], the token whose log-prob is wanted at each position (usually the
      inputs shifted left by one; mask the result yourself).
    Returns (logp float32 [B, T], entropy float32 [B, T]). T need not divide by chunk_size.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    b, t, d = hidden.shape
    if targets.shape != (b, t):
        raise ValueError(f"targets {targets.shape} must be [B, T] = {(b, t)}")
    c = max(1, min(chunk_size, t))
    n = -(-t // c)
    pad = n * c - t
    h = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(b, n, c, d).swapaxes(0, 1)
    y = jnp.pad(targets, ((0, 0), (0, pad))).reshape(b, n, c).swapaxes(0, 1)

    @jax.checkpoint
    def one_chunk(args):
        h_c, y_c = args  # [B, C, D], [B, C]
        return _stats(model.logits(h_c), y_c, temperature)

    logp, ent = jax.lax.map(one_chunk, (h, y))  # [n, B, C] each
    logp = logp.swapaxes(0, 1).reshape(b, n * c)[:, :t]
    ent = ent.swapaxes(0, 1).reshape(b, n * c)[:, :t]
    return logp, ent


def naive_token_logprobs(model, hidden: jax.Array, targets: jax.Array, *,
                         temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """Reference: the same as `token_logprobs` through the full `[B, T, V]` logits."""
    return _stats(model.logits(hidden), targets, temperature)
