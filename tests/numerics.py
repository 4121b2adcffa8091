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


# Elementwise roundings per layer on the same chain: two RMSNorm rsqrt, the softmax exp and the
# SiLU's exp (TRANSCENDENTAL each), and ~12 plain ones (norm scales, RoPE, residual adds, biases,
# the score scale, the gate product, the softmax division).
ELEMENTWISE_PER_LAYER = 4 * TRANSCENDENTAL + 12


def transformer_path_length(cfg, seq_len: int, layers: int | None = None,
                            logits: bool = True) -> int:
    """Σ of the rounding counts on the longest dependency chain of one forward pass.

    Per layer, the reductions: RMSNorm (D), q/k/v projection (D), q·k (H), softmax denominator
    (T), p·v (T), o_proj (N·H), RMSNorm (D), gate/up (D), down (F); plus ELEMENTWISE_PER_LAYER.
    Then the final norm (D) and the LM head (D) when `logits`. `cfg` needs hidden_size,
    intermediate_size, num_heads, head_dim and num_layers; `seq_len` is the number of keys
    attended (masked keys add exact zeros and need not be counted). `layers` limits the count to
    the first layers (per-layer hidden states).
    """
    d, f, n, h = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.head_dim
    per_layer = d + d + h + seq_len + seq_len + n * h + d + d + f + ELEMENTWISE_PER_LAYER
    num = cfg.num_layers if layers is None else layers
    return num * per_layer + (2 * d + TRANSCENDENTAL if logits else 0)


def f32_forward_atol(path: int, scale: float, extra_roundings: int = 0, evaluations: int = 2,
                     u: float = U32) -> float:
    """Float32 evaluations of a forward pass (other programs, shapes, library): γ_N·scale each,
    N = `path` (+ `extra_roundings`), scale = the largest magnitude of the compared values;
    evaluations=2 (default) for two float32 evaluations compared with each other."""
    return evaluations * gamma(path + extra_roundings, u) * float(scale)


def f32_logprob_atol(path: int, vocab: int, logit_scale: float, value_scale: float,
                     evaluations: int = 2, u: float = U32) -> float:
    """Float32 evaluations of log_softmax(z / T)[token] (also top-k values and entropies).

    One evaluation: logp = z/T − m − log Σ_j exp(z_j/T − m). The logits' error (a forward pass
    of `path`, γ_path·logit_scale) enters twice: in z and in the log-sum-exp, which is 1-Lipschitz
    in the max-norm. The sum of V positive terms, each carrying a division by T, a subtraction and
    an exp, has relative error γ_{V−1+2+4}, which the log turns into that absolute error. The
    division, the log and the two subtractions round relative to the values involved
    (value_scale: the largest |z/T|, |logp| or log-sum-exp). evaluations=2 (default): two float32
    evaluations compared with each other; 1: one against a float64 reference of the same logits.
    """
    one = (2.0 * gamma(path, u) * logit_scale + gamma(vocab + 1 + TRANSCENDENTAL, u)
           + gamma(3 + TRANSCENDENTAL, u) * value_scale)
    return evaluations * one


def f32_entropy_atol(path: int, vocab: int, logit_scale: float, logp_scale: float,
                     evaluations: int = 2, u: float = U32) -> float:
    """Float32 evaluations of the entropy H = −Σ_j p_j·logp_j of softmax(z / T).

    Every logp_j carries the error δ of `f32_logprob_atol` (logp_scale: the largest |logp_j|,
    |z/T| or log-sum-exp), which moves p_j = exp(logp_j) by δ relative and logp_j by δ: in all
    ≤ δ·Σ_j p_j·(1 + |logp_j|) = δ·(1 + H) ≤ δ·(1 + log V). The sum over V terms adds
    γ_{V+2}·Σ_j p_j·|logp_j| ≤ γ_{V+2}·log V.
    """
    d = f32_logprob_atol(path, vocab, logit_scale, logp_scale, evaluations=1, u=u)
    log_v = math.log(vocab)
    return evaluations * (d * (1.0 + log_v) + gamma(vocab + 2, u) * log_v)


def f32_attention_atol(head_dim: int, keys: int, score_abs: float, v_abs: float,
                       evaluations: int = 1, u: float = U32) -> float:
    """Float32 softmax attention out = Σ_j p_j v_j with s_j = q·k_j / sqrt(H), p = softmax(s).

    score_abs: the largest Σ_i |q_i k_ji| / sqrt(H) (the dot products' Σ|terms|); v_abs: max |v|.
    Each score errs by γ_{H+1}·score_abs; p_j's relative error is twice that (its own score and
    the normalizer) plus the subtraction, exp, the normalizer's sum over `keys` and the division;
    Σ_j p_j|v_j| ≤ max|v| bounds both that error's effect and the final sum's γ_keys.
    """
    rel_p = 2.0 * gamma(head_dim + 1, u) * score_abs + gamma(keys + TRANSCENDENTAL + 2, u)
    return evaluations * v_abs * (rel_p + gamma(keys, u))


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


def f32_mean_atol(terms, denominator: float, term_roundings: int = 0, term_errors=0.0,
                  evaluations: int = 1, u: float = U32) -> float:
    """Bound for fl(Σ terms) / D, the form of every loss aggregation and metric in the suite.

    terms: the float64 reference values of the summed terms (zeros are exact and not counted).
    term_roundings: roundings each term carries, relative to itself (see f32_sum_atol).
    term_errors: absolute errors of the terms not relative to them (scalar or array, summed), e.g.
      from rounding the inputs of a difference to float32: u·(|x| + |y|) for x − y.
    evaluations=1: one float32 evaluation against the exact (float64) value; 2: two float32
    evaluations against each other. Each evaluation: the sum's bound / |D| plus one rounding of
    the division (u·|Σ/D|). D itself must be exact (an integer count below 2**24 is).
    """
    import numpy as np

    t = np.asarray(terms, np.float64)
    n = int(np.count_nonzero(t))
    value = abs(float(t.sum()) / float(denominator))
    err = f32_sum_atol(float(np.abs(t).sum()), n, term_roundings, u) + float(np.sum(term_errors))
    return evaluations * (err / abs(float(denominator)) + u * value)


def f32_pearson_atol(x, y, input_atol: float = 0.0, evaluations: int = 2,
                     u: float = U32) -> float:
    """Float32 evaluations of Pearson's r from the five moment sums Σx, Σy, Σx², Σy², Σxy over n
    tokens (ppp_jax.rl.losses.finalize_metrics), x, y the float64 values as summed (after any
    shift), `input_atol` the bound on each x_i, y_i's own difference between the evaluations.

    Each moment's sum errs by γ_{n+2}·Σ|terms| (tests/numerics.py's rule); cov = E[xy] − E[x]E[y]
    and the variances cancel, so their errors are relative to E[x²]-sized sums, not to the
    (smaller) variances: δr/|r| ≤ δcov/|cov| + δvx/(2vx) + δvy/(2vy) + 4u. A change of the inputs
    by δ moves r by at most ~2δ/σ per variable.
    """
    import numpy as np

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = x.size
    g = gamma(n + 2, u)
    ex, ey = x.mean(), y.mean()
    e_x, e_y = g * np.abs(x).mean(), g * np.abs(y).mean()
    cov = (x * y).mean() - ex * ey
    vx, vy = (x * x).mean() - ex ** 2, (y * y).mean() - ey ** 2
    d_cov = g * np.abs(x * y).mean() + abs(ey) * e_x + abs(ex) * e_y + 2 * u * abs(ex * ey)
    d_vx = g * (x * x).mean() + 2 * abs(ex) * e_x + 2 * u * ex ** 2
    d_vy = g * (y * y).mean() + 2 * abs(ey) * e_y + 2 * u * ey ** 2
    r = cov / np.sqrt(vx * vy)
    one = abs(r) * (d_cov / abs(cov) + d_vx / (2 * vx) + d_vy / (2 * vy) + 4 * u)
    inputs = 2 * input_atol * (1 / np.sqrt(vx) + 1 / np.sqrt(vy))
    return float(evaluations * one + inputs)
