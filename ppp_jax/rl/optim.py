"""The optimizer: optax AdamW with linear warmup + schedule and global-norm gradient clipping.

  g ← g · min(1, G_max / ‖g‖₂)                                   (global-norm clip, when set)
  η_k = η · k / K_warm                 for k < K_warm              (linear warmup)
        η · s((k − K_warm) / (K − K_warm))  afterwards            (s: constant 1, cosine or
                                                                  linear decay to final_lr_ratio)
  θ ← θ − η_k · (m̂ / (√v̂ + ε) + λ θ)                             (AdamW, decoupled decay λ)

The non-finite-gradient guard lives in the train step (it must also skip the optimizer-state
update), so this chain is plain optax.
"""

from __future__ import annotations

import optax

from ppp_jax.config.rl import OptimConfig


def learning_rate_schedule(cfg: OptimConfig) -> optax.Schedule:
    """η_k as a function of the update count k (see module docstring)."""
    decay_steps = max(cfg.total_steps - cfg.warmup_steps, 1)
    end = cfg.learning_rate * cfg.final_lr_ratio
    if cfg.schedule == "constant":
        after = optax.constant_schedule(cfg.learning_rate)
    elif cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(cfg.learning_rate, decay_steps, alpha=cfg.final_lr_ratio)
    elif cfg.schedule == "linear":
        after = optax.linear_schedule(cfg.learning_rate, end, decay_steps)
    else:
        raise ValueError(f"unknown schedule {cfg.schedule!r}")
    if cfg.warmup_steps == 0:
        return after
    warm = optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
    return optax.join_schedules([warm, after], [cfg.warmup_steps])


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """clip_by_global_norm (optional) → AdamW(schedule, b1, b2, eps, weight_decay)."""
    parts = []
    if cfg.max_grad_norm is not None:
        parts.append(optax.clip_by_global_norm(cfg.max_grad_norm))
    parts.append(
        optax.adamw(
            learning_rate_schedule(cfg),
            b1=cfg.b1,
            b2=cfg.b2,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
        )
    )
    return optax.chain(*parts)
