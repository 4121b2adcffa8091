"""Per-token estimators of KL(π_θ ‖ π_ref) from the log-probs of the sampled tokens (verl's set).

Symbols: ℓ = log π_θ(y_t | ·) and ℓ_ref = log π_ref(y_t | ·), both float32 [B, T], for the tokens y_t
the policy sampled (so y_t ~ π_old ≈ π_θ; every estimator is a Monte-Carlo estimate under that).

  k1   ℓ − ℓ_ref                                   (unbiased, high variance, can be negative)
  abs  |ℓ − ℓ_ref|
  k2   ½ (ℓ − ℓ_ref)²                              ("mse"; its gradient is the k1 gradient ⋅ (ℓ−ℓ_ref))
  k3   d = clamp(ℓ_ref − ℓ, −20, 20); e^d − d − 1, clamped to [−10, 10]   ("low_var_kl", ≥ 0)

`straight_through=True` is verl's "+" suffix (e.g. "k3+"): the forward value is the chosen
estimator and the gradient is k2's: k = k2 + stop_gradient(k_est − k2).

The reference policy is only ever run when β > 0 (`LossConfig.use_reference`); with β = 0 the train
step takes no reference params at all (see `ppp_jax.rl.train_step`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

K3_LOG_RATIO_CLAMP = 20.0  # |ℓ_ref − ℓ| is clamped to this before exp in k3
K3_VALUE_CLAMP = 10.0  # k3 is clamped to [−10, 10]


def kl_estimate(
    logp: jax.Array, ref_logp: jax.Array, estimator: str = "k3", *, straight_through: bool = False
) -> jax.Array:
    """Per-token KL estimate, float32 [B, T] (unmasked: multiply by the loss mask when aggregating).

    logp, ref_logp: float [B, T] log-probs of the sampled tokens under π_θ and π_ref.
    estimator: "k1" | "abs" | "k2" | "k3" (see module docstring).
    """
    logp = logp.astype(jnp.float32)
    ref_logp = ref_logp.astype(jnp.float32)
    diff = logp - ref_logp
    if estimator == "k1":
        kl = diff
    elif estimator == "abs":
        kl = jnp.abs(diff)
    elif estimator == "k2":
        kl = 0.5 * jnp.square(diff)
    elif estimator == "k3":
        d = jnp.clip(ref_logp - logp, -K3_LOG_RATIO_CLAMP, K3_LOG_RATIO_CLAMP)
        kl = jnp.clip(jnp.exp(d) - d - 1.0, -K3_VALUE_CLAMP, K3_VALUE_CLAMP)
    else:
        raise ValueError(f"unknown KL estimator {estimator!r}; expected k1, abs, k2 or k3")
    if straight_through:
        k2 = 0.5 * jnp.square(diff)
        kl = k2 + jax.lax.stop_gradient(kl - k2)
    return kl
