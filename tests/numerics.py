"""Float32 error bounds for the suite's numeric assertions (the rule: docs/testing.md).

Every tolerance in the suite that compares float32 results computed in different orders, programs,
shapes or libraries is derived here from the size of the computation, never picked from what one
machine happened to produce: XLA's CPU backend chooses its kernels (and so its summation orders)
by problem size, device count, thread count and the processor's vector features.

The model of float32 arithmetic (IEEE 754, round to nearest): every basic operation returns the
exact result times (1 + δ) with |δ| ≤ u = 2**-24 (the unit roundoff, half the spacing of float32
numbers at 1.0). Transcendental functions (exp, log, pow, sin, cos, rsqrt, tanh) are not correctly
rounded in XLA, torch or numpy; each is counted as `TRANSCENDENTAL` = 4 roundings (an error of
up to 2 ulps).

The one bound everything rests on (Higham, "Accuracy and Stability of Numerical Algorithms",
2nd ed., §4.2, eq. (4.4)): a float32 sum of n terms, in ANY order or tree (sequential, pairwise,
blocked, split over threads, devices or micro-batches), satisfies

    |fl(Σ x_i) − Σ x_i| ≤ γ_{n−1} · Σ |x_i|,   γ_k = k·u / (1 − k·u),

because each term passes through at most n − 1 additions. Two evaluations of the same sum in two
orders are therefore within 2·γ_{n−1}·Σ|x_i| of each other. Adding an exact zero is exact, so n may
count only the terms that can be non-zero (masked tokens contribute nothing). This is a worst case:
measured differences are usually ~sqrt(n) times smaller, which is why the tests that matter also
show that a real bug makes an error far above the bound (test_losses.py's broken aggregations).

For whole forward passes of the tiny transformers the same bound is applied to the longest chain
of dependent reductions (`transformer_path_length`): first-order error analysis adds the γ of the
reductions a value passes through. It assumes what model/testing.py arranges: activations O(1)
and RMS-normalized at every layer, weights ~N(0, 1/fan_in), so each reduction's Σ|terms| is within
a small factor of the largest output magnitude, which stands in for it (`scale`).
"""

from __future__ import annotations

import math

U32 = 2.0 ** -24  # float32 unit roundoff
U64 = 2.0 ** -53  # float64 unit roundoff
TRANSCENDENTAL = 4  # roundings counted for one exp/log/pow/sin/cos/rsqrt (<= 2 ulps)


def gamma(k: float, u: float = U32) -> float:
    """γ_k = k·u / (1 − k·u): the relative error bound of k chained roundings (Higham §3.1)."""
    k = max(float(k), 0.0)
    if k * u >= 1.0:
        raise ValueError(f"gamma({k}) undefined for u={u}: k·u >= 1")
    return k * u / (1.0 - k * u)


def f32_sum_atol(abs_sum: float, n: int, term_roundings: int = 0, u: float = U32) -> float:
    """Bound on |fl(Σx) − Σx| for ONE float32 evaluation of a sum of `n` terms, any order.

    abs_sum: Σ|x_i| (from a float64 reference of the terms). term_roundings: roundings each term
    itself carries before it is summed (a product: 1; an exp: TRANSCENDENTAL), which adds to the
    n − 1 of the summation: γ_{n−1+k}·Σ|x_i| (first order).
    """
    return gamma(max(int(n) - 1, 0) + term_roundings, u) * float(abs_sum)


def f32_reorder_atol(abs_sum: float, n: int, term_roundings: int = 0, u: float = U32) -> float:
    """Bound on the difference of TWO float32 evaluations of the same sum in different orders
    (other kernels, shapes, micro-batches, devices): each is within `f32_sum_atol` of the exact
    sum, so they are within twice that of each other."""
    return 2.0 * f32_sum_atol(abs_sum, n, term_roundings, u)


def f32_chain_rtol(roundings: int, u: float = U32) -> float:
    """Relative bound on the difference of two evaluations of the same elementwise chain of
    `roundings` float32 operations (no reduction): 2·γ_k."""
    return 2.0 * gamma(roundings, u)


def transformer_path_length(cfg, seq_len: int, layers: int | None = None,
                            logits: bool = True) -> int:
    """Σ of the reduction lengths on the longest dependency chain of one forward pass.

    Per layer: RMSNorm (D), q/k/v projection (D), q·k (H), softmax denominator (T), p·v (T),
    o_proj (N·H), RMSNorm (D), gate/up (D), down (F); then the final norm (D) and the LM head (D)
    when `logits`. `cfg` needs hidden_size, intermediate_size, num_heads, head_dim, num_layers.
    `layers` limits the count to the first layers (per-layer hidden states).
    """
    d, f, n, h = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.head_dim
    per_layer = d + d + h + seq_len + seq_len + n * h + d + d + f
    num = cfg.num_layers if layers is None else layers
    return num * per_layer + (2 * d if logits else 0)


def f32_forward_atol(path: int, scale: float, extra_roundings: int = 0, u: float = U32) -> float:
    """Two float32 evaluations of a forward pass (other programs, shapes, library): 2·γ_N·scale,
    N = `path` (+ `extra_roundings`), scale = the largest magnitude of the compared values."""
    return 2.0 * gamma(path + extra_roundings, u) * float(scale)


def f32_logprob_atol(path: int, vocab: int, logit_scale: float, logp_scale: float,
                     u: float = U32) -> float:
    """Two float32 evaluations of log_softmax(logits)[token] (and of top-k values, entropies).

    One evaluation: logp = z − m − log Σ_j exp(z_j − m). The logits' error δz enters twice
    (z, and the log-sum-exp, which is 1-Lipschitz in max-norm): 2·γ_path·logit_scale. The sum of
    V positive terms, each carrying a subtraction and an exp, has relative error γ_{V−1+1+4},
    which the log turns into the same absolute error; the log and the final subtraction round
    once each relative to |logp|. Two evaluations: twice that.
    """
    one = (2.0 * gamma(path, u) * logit_scale + gamma(vocab + TRANSCENDENTAL, u)
           + gamma(2 + TRANSCENDENTAL, u) * logp_scale)
    return 2.0 * one


def f32_grad_atol(path: int, vocab: int, positions: int, grad_scale: float,
                  u: float = U32) -> float:
    """Two float32 evaluations of a parameter gradient of a log-prob objective.

    The backward pass runs the forward chain back again (another `path`), through the softmax
    (V), and a parameter's gradient sums its contributions over all `positions` tokens:
    2·γ_{2·path + V + positions}·grad_scale, grad_scale = the leaf's largest |gradient|.
    """
    return 2.0 * gamma(2 * path + vocab + positions, u) * float(grad_scale)


def ulps32(x: float) -> float:
    """The float32 spacing at |x| (for stating bounds in ulps)."""
    x = abs(float(x))
    if x == 0.0:
        return 2.0 ** -149
    return 2.0 ** (math.floor(math.log2(x)) - 23)
