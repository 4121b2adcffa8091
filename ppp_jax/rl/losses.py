"""The GRPO/DAPO policy objective: PPO clip (clip-higher, dual-clip), KL, entropy, truncated IS,
and loss aggregation that is exact across micro-batches and data-parallel shards.

Symbols (all per token t of sequence i, float32 [B, T]):
  ℓ      = log π_θ(y_t | ·)         trainer log-prob at temperature τ (differentiated)
  ℓ_old  = log π_old(y_t | ·)       log-prob under the policy that produced the data (no gradient);
                                    the on-policy shortcut (one update per batch) uses sg(ℓ)
  ℓ_s    = sampler log-prob         what the inference engine reported while sampling
  A      = advantage of sequence i  broadcast over its tokens
  m      = loss mask                1 on tokens the policy sampled, 0 elsewhere (prompt, tool, user)
  r      = exp(clamp(ℓ − ℓ_old, −20, 20))      importance ratio (verl clamps the log-ratio)

PPO clipped surrogate with separate bounds (DAPO "clip-higher") and dual-clip (verl "vanilla"):
  L₁ = −A·r,  L₂ = −A·clip(r, 1−ε_low, 1+ε_high),  L_clip = max(L₁, L₂)
  A < 0 and c set:  L = min(L_clip, −A·c)    (dual-clip: caps the loss of a very large ratio)
  otherwise:        L = L_clip
Consequences (tested): for A > 0 the gradient wrt ℓ is zero exactly when r > 1+ε_high; for A < 0 it
is zero exactly when r < 1−ε_low or r > c. (EasyDeL's bug was to take min instead of max for A < 0,
which reverses that trust region.)

Per-token objective (the tokens with m = 0 contribute nothing):
  o_t = w_t · L_t + β · KL_t − c_H · H_t
where w_t = min(exp(ℓ_old − ℓ_s), C) (stop-gradient) is the truncated IS weight when `tis_cap` C is
set (1 otherwise), KL_t comes from `ppp_jax.rl.kl` and H_t is the policy's entropy at that position.

Aggregation: every mode is written as   J = (Σ_t a_t · o_t) / D
with per-token weights a_t and one global denominator D, so a batch split into micro-batches (or
shards) is combined exactly by adding the micro-batch sums Σ a_t·o_t and dividing once by D.
Sequences never straddle micro-batches, so a_t is computed locally. With n_i = Σ_t m_{i,t} the
loss tokens of sequence i, and N_seq = #{i : n_i > 0} the sequences *of the whole global batch*
that have at least one loss token (padding rows and fully masked episodes are not counted):

  mode                      a_t            D                 J
  token-mean                m_t            Σ_i n_i           (1/Σn_i) Σ_i Σ_t m·o       (DAPO; the paper)
  seq-mean-token-mean       m_t / n_i      N_seq             (1/N_seq) Σ_i (1/n_i) Σ_t m·o   (GRPO)
  seq-mean-token-sum        m_t            N_seq             (1/N_seq) Σ_i Σ_t m·o
  seq-mean-token-sum-norm   m_t            N_seq · L_norm    (1/N_seq) Σ_i (1/L_norm) Σ_t m·o (Dr.GRPO)

L_norm is `LossConfig.loss_scale_factor` (default: the row length T of the batch). verl 0.9.1's
`agg_loss`, given the global batch's token count and sequence count, computes the same J for all
four modes, seq-mean-token-sum-norm included (Σ / N_seq / loss_scale_factor); its `dp_size` factor
undoes the averaging of gradients over data-parallel ranks, which one global sum does not need.
Without them (one rank) verl uses the micro-batch's own counts, which equals J for a single
micro-batch. Older verl (e.g. main in January 2026) divided seq-mean-token-sum-norm by
loss_scale_factor alone, without 1/N_seq; ours keeps the Dr.GRPO paper's (1/(G·L_max)) Σ_i Σ_t.
A "sequence" is a segment: in a packed row (segment ids 1..k, 0 = padding) each segment is its
own sequence.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from ppp_jax.config.rl import LossConfig
from ppp_jax.rl.kl import kl_estimate

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


# ----------------------------------------------------------------------------------------------
# Aggregation
# ----------------------------------------------------------------------------------------------


def _row_segment_sum(values: jax.Array, segment_ids: jax.Array) -> jax.Array:
    """Per-token sum of `values` over the token's segment in its row. values, segment_ids [B, T]."""
    t = values.shape[-1]

    def one_row(v, s):
        sums = jax.ops.segment_sum(v, s, num_segments=t)  # segment ids < T always
        return sums[s]

    return jax.vmap(one_row)(values, segment_ids)


def tokens_per_sequence(loss_mask: jax.Array, segment_ids: jax.Array | None) -> jax.Array:
    """n_i broadcast to each token of sequence i, float32 [B, T].

    loss_mask: float/bool [B, T]. segment_ids: int [B, T] (0 = padding, 1..k = packed sequences)
    or None (one sequence per row).
    """
    m = loss_mask.astype(jnp.float32)
    if segment_ids is None:
        return jnp.broadcast_to(jnp.sum(m, axis=-1, keepdims=True), m.shape)
    return _row_segment_sum(m, segment_ids)


def num_sequences(loss_mask: jax.Array, segment_ids: jax.Array | None) -> jax.Array:
    """N_seq: the number of sequences with at least one loss token, float32 scalar."""
    m = loss_mask.astype(jnp.float32)
    if segment_ids is None:
        return jnp.sum((jnp.sum(m, axis=-1) > 0).astype(jnp.float32))
    t = m.shape[-1]
    # Per row, loss tokens per segment id (ids < T), then count the non-empty segments.
    counts = jax.vmap(lambda v, s: jax.ops.segment_sum(v, s, num_segments=t))(m, segment_ids)
    return jnp.sum((counts > 0).astype(jnp.float32))


def agg_weights(loss_mask: jax.Array, segment_ids: jax.Array | None, mode: str) -> jax.Array:
    """The per-token weights a_t of `mode` (module docstring), float32 [B, T]."""
    m = loss_mask.astype(jnp.float32)
    if mode == "seq-mean-token-mean":
        n = tokens_per_sequence(m, segment_ids)
        return m / jnp.maximum(n, 1.0)
    if mode in ("token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"):
        return m
    raise ValueError(f"unknown loss aggregation mode {mode!r}; expected one of {AGG_MODES}")


def agg_denominator(
    loss_mask: jax.Array,
    segment_ids: jax.Array | None,
    mode: str,
    loss_scale_factor: int | None = None,
) -> jax.Array:
    """D of `mode` for the batch given (module docstring), float32 scalar.

    Call it on the *global* batch (all micro-batches, all shards); a jitted call on a sharded
    batch already is global. L_norm = loss_scale_factor, or the row length T when None.
    """
    m = loss_mask.astype(jnp.float32)
    if mode == "token-mean":
        return jnp.sum(m)
    if mode in ("seq-mean-token-mean", "seq-mean-token-sum"):
        return num_sequences(m, segment_ids)
    if mode == "seq-mean-token-sum-norm":
        l_norm = m.shape[-1] if loss_scale_factor is None else loss_scale_factor
        return num_sequences(m, segment_ids) * jnp.float32(l_norm)
    raise ValueError(f"unknown loss aggregation mode {mode!r}; expected one of {AGG_MODES}")


def aggregate(
    values: jax.Array,
    loss_mask: jax.Array,
    segment_ids: jax.Array | None = None,
    mode: str = "token-mean",
    loss_scale_factor: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """(Σ_t a_t · values_t, D): the unreduced sum and the denominator of `mode`, float32 scalars.

    `sum / denominator` is the aggregated loss of this batch alone. To combine micro-batches
    exactly, add their sums and divide by the denominator of the union (`agg_denominator` of the
    whole batch), which for every mode is the sum of the micro-batch denominators.
    """
    w = agg_weights(loss_mask, segment_ids, mode)
    total = jnp.sum(w * values.astype(jnp.float32))
    return total, agg_denominator(loss_mask, segment_ids, mode, loss_scale_factor)


# ----------------------------------------------------------------------------------------------
# Policy loss
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PolicyLossTerms:
    """Per-token outputs of `ppo_clip_loss`, all [B, T].

    loss:          L_t (unmasked, float32).
    log_ratio:     clamp(ℓ − ℓ_old, ±log_ratio_clamp) (float32).
    clipped_low:   1.0 where A < 0 and r < 1 − ε_low  (the surrogate took the clipped branch).
    clipped_high:  1.0 where A > 0 and r > 1 + ε_high.
    dual_clipped:  1.0 where A < 0 and −A·r > −A·c (the dual-clip bound is active).
    """

    loss: jax.Array
    log_ratio: jax.Array
    clipped_low: jax.Array
    clipped_high: jax.Array
    dual_clipped: jax.Array


def ppo_clip_loss(
    logp: jax.Array, old_logp: jax.Array, advantages: jax.Array, cfg: LossConfig
) -> PolicyLossTerms:
    """verl's "vanilla" PPO loss with ε_low/ε_high and dual-clip (module docstring).

    logp: float [B, T] trainer log-probs (differentiated); old_logp: float [B, T] (not
    differentiated; pass sg(logp) for the on-policy shortcut); advantages: float [B, T].
    """
    adv = jax.lax.stop_gradient(advantages.astype(jnp.float32))
    old = jax.lax.stop_gradient(old_logp.astype(jnp.float32))
    log_ratio = jnp.clip(logp.astype(jnp.float32) - old, -cfg.log_ratio_clamp, cfg.log_ratio_clamp)
    ratio = jnp.exp(log_ratio)
    l1 = -adv * ratio
    l2 = -adv * jnp.clip(ratio, 1.0 - cfg.clip_ratio_low, 1.0 + cfg.clip_ratio_high)
    l_clip = jnp.maximum(l1, l2)
    clipped = l2 > l1
    neg = adv < 0
    if cfg.clip_ratio_c is not None:
        l3 = -adv * cfg.clip_ratio_c
        loss = jnp.where(neg, jnp.minimum(l_clip, l3), l_clip)
        dual = neg & (l_clip > l3)
    else:
        loss = l_clip
        dual = jnp.zeros_like(neg)
    f32 = jnp.float32
    return PolicyLossTerms(
        loss=loss,
        log_ratio=log_ratio,
        clipped_low=(clipped & neg).astype(f32),
        clipped_high=(clipped & (adv > 0)).astype(f32),
        dual_clipped=dual.astype(f32),
    )


def truncated_is_weights(old_logp: jax.Array, sampler_logp: jax.Array, cap: float) -> jax.Array:
    """w_t = min(exp(ℓ_old − ℓ_s), C), stop-gradient, float32 [B, T] (token-level TIS).

    Corrects for the sampler's numerics differing from the trainer's: the data was drawn from
    π_s, the objective wants π_old. Capped at C to bound the variance.
    """
    d = jax.lax.stop_gradient(old_logp.astype(jnp.float32) - sampler_logp.astype(jnp.float32))
    return jnp.minimum(jnp.exp(jnp.clip(d, -20.0, 20.0)), cap)


# ----------------------------------------------------------------------------------------------
# The whole objective of one micro-batch
# ----------------------------------------------------------------------------------------------

# Keys of the summed statistics `objective_sums` returns; see `finalize_metrics`.
_AGG_KEYS = ("pg_loss", "kl", "entropy")  # Σ a_t·x_t, later / D
_TOKEN_KEYS = (  # Σ m_t·x_t, later / Σ m_t
    "clipfrac_low", "clipfrac_high", "dual_clipfrac", "ppo_kl", "ratio", "tis_weight",
    "tis_capped_frac", "logp_abs_diff",
)
_PEARSON_KEYS = ("x", "y", "xx", "yy", "xy")  # trainer ℓ_old (x) vs sampler ℓ_s (y)


def objective_sums(
    logp: jax.Array,
    entropy: jax.Array | None,
    *,
    loss_mask: jax.Array,
    advantages: jax.Array,
    segment_ids: jax.Array | None,
    old_logp: jax.Array | None,
    sampler_logp: jax.Array | None,
    ref_logp: jax.Array | None,
    cfg: LossConfig,
    stat_shift: jax.Array | float = 0.0,
) -> tuple[jax.Array, dict[str, jax.Array], dict[str, jax.Array]]:
    """Σ_t a_t·o_t of one micro-batch and its statistics (module docstring for the symbols).

    logp: float32 [b, T] trainer log-probs (the only differentiated input).
    entropy: float32 [b, T] or None (required when entropy_coef != 0).
    loss_mask, advantages: float [b, T]. segment_ids: int [b, T] or None.
    old_logp: float [b, T] or None (None: on-policy, ℓ_old = sg(ℓ)).
    sampler_logp: float [b, T] or None (needed for TIS; enables agreement statistics).
    ref_logp: float [b, T] or None; must be given iff cfg.kl_coef > 0.
    stat_shift: a constant subtracted from both log-probs before their moments are summed for the
      Pearson correlation (use the global mean sampler log-prob: it keeps the float32 moment sums
      free of cancellation; the correlation itself does not depend on it).

    Returns (objective_sum, sums, maxes): objective_sum is the differentiable scalar Σ a_t·o_t
    (divide by the global D); `sums` are additive float32 scalars and `maxes` max-combined ones,
    turned into metrics by `finalize_metrics`.
    """
    m = loss_mask.astype(jnp.float32)
    if cfg.use_reference != (ref_logp is not None):
        raise ValueError(
            f"kl_coef={cfg.kl_coef}: reference log-probs must be given iff kl_coef > 0 "
            f"(got {'some' if ref_logp is not None else 'none'})"
        )
    # Masked positions (prompt, tool, padding) must not reach the loss or its gradient even if
    # their inputs hold garbage (NaN or inf times a zero weight is still NaN): replace them.
    valid = m > 0
    sg = jax.lax.stop_gradient
    logp_sg = sg(logp)
    old = logp_sg if old_logp is None else jnp.where(valid, old_logp, logp_sg)
    advantages = jnp.where(valid, advantages, 0.0)
    if sampler_logp is not None:
        sampler_logp = jnp.where(valid, sampler_logp, old)
    if ref_logp is not None:
        ref_logp = jnp.where(valid, ref_logp, logp_sg)
    terms = ppo_clip_loss(logp, old, advantages, cfg)
    a = agg_weights(m, segment_ids, cfg.agg_mode)

    pg = terms.loss
    f32 = jnp.float32
    sums: dict[str, jax.Array] = {}
    maxes: dict[str, jax.Array] = {}
    if cfg.tis_cap is not None:
        if sampler_logp is None:
            raise ValueError("tis_cap is set but the batch has no sampler log-probs")
        w = truncated_is_weights(old, sampler_logp, cfg.tis_cap)
        pg = w * pg
        sums["tis_weight"] = jnp.sum(m * w)
        sums["tis_capped_frac"] = jnp.sum(m * (w >= cfg.tis_cap))
    objective = a * pg
    sums["pg_loss"] = jnp.sum(a * pg)

    if ref_logp is not None:
        kl = kl_estimate(logp, ref_logp, cfg.kl_estimator, straight_through=cfg.kl_straight_through)
        objective = objective + cfg.kl_coef * a * kl
        sums["kl"] = jnp.sum(a * kl)
    if entropy is not None:
        ent = jnp.where(valid, entropy.astype(f32), 0.0)
        if cfg.entropy_coef != 0.0:
            objective = objective - cfg.entropy_coef * a * ent
        sums["entropy"] = jax.lax.stop_gradient(jnp.sum(a * ent))
    elif cfg.entropy_coef != 0.0:
        raise ValueError("entropy_coef != 0 needs the per-token entropy")

    sums["tokens"] = jnp.sum(m)
    sums["clipfrac_low"] = jnp.sum(m * terms.clipped_low)
    sums["clipfrac_high"] = jnp.sum(m * terms.clipped_high)
    sums["dual_clipfrac"] = jnp.sum(m * terms.dual_clipped)
    sums["ppo_kl"] = sg(jnp.sum(m * -terms.log_ratio))
    sums["ratio"] = sg(jnp.sum(m * jnp.exp(terms.log_ratio)))
    if sampler_logp is not None:
        x = sg(old.astype(f32)) - stat_shift
        y = sampler_logp.astype(f32) - stat_shift
        diff = jnp.abs(x - y)
        sums["logp_abs_diff"] = jnp.sum(m * diff)
        maxes["logp_abs_diff_max"] = jnp.max(jnp.where(m > 0, diff, 0.0), initial=0.0)
        for k, v in zip(_PEARSON_KEYS, (x, y, x * x, y * y, x * y)):
            sums["pearson_" + k] = jnp.sum(m * v)
    return jnp.sum(objective), sums, maxes


def finalize_metrics(
    sums: dict[str, jax.Array], maxes: dict[str, jax.Array], denominator: jax.Array
) -> dict[str, jax.Array]:
    """Metrics from summed statistics of the whole batch.

    pg_loss / kl / entropy are divided by the aggregation denominator D (so they are in the loss's
    units); per-token fractions and means by the number of loss tokens. The sampler/trainer
    agreement is logp_abs_diff (mean |ℓ_old − ℓ_s|), logp_abs_diff_max, and logp_pearson (Pearson
    correlation of ℓ_old and ℓ_s over loss tokens).
    """
    out: dict[str, jax.Array] = {}
    d = jnp.maximum(denominator, 1e-12)
    n = jnp.maximum(sums["tokens"], 1.0)
    for k in _AGG_KEYS:
        if k in sums:
            out[k] = sums[k] / d
    for k in _TOKEN_KEYS:
        if k in sums:
            out[k] = sums[k] / n
    if "pearson_x" in sums:
        ex, ey = sums["pearson_x"] / n, sums["pearson_y"] / n
        cov = sums["pearson_xy"] / n - ex * ey
        vx = jnp.maximum(sums["pearson_xx"] / n - ex * ex, 0.0)
        vy = jnp.maximum(sums["pearson_yy"] / n - ey * ey, 0.0)
        out["logp_pearson"] = cov / jnp.maximum(jnp.sqrt(vx * vy), 1e-12)
    out.update(maxes)
    out["loss_tokens"] = sums["tokens"]
    out["agg_denominator"] = denominator
    return out


def combine_stats(a: tuple[dict, dict], b: tuple[dict, dict]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Adds `sums` and max-combines `maxes` of two micro-batches."""
    (sa, ma), (sb, mb) = a, b
    return (
        {k: sa[k] + sb[k] for k in sa},
        {k: jnp.maximum(ma[k], mb[k]) for k in ma},
    )
