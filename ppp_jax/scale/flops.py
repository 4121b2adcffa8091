"""Analytic model FLOPs of a train step and of an engine forward (the MFU numerators)."""

from __future__ import annotations

from ppp_jax.model.config import ModelConfig


def train_model_flops(cfg: ModelConfig, batch: int, seq_len: int, devices: int) -> float:
    """Analytic FLOPs per device of one train update (MaxText's convention, no remat recompute):
    6·N_matmul·tokens for the weight matmuls (forward 2, backward 4), plus causal attention
    6·2·L·N·H·T²/2 per sequence (QKᵀ and PV, half the square under the causal mask)."""
    d, f, n, k, h, v, L = (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads,
                           cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size, cfg.num_layers)
    matmul_params = L * (d * n * h + 2 * d * k * h + n * h * d + 3 * d * f) + d * v  # lm_head
    tokens = batch * seq_len
    dense = 6.0 * matmul_params * tokens
    attn = 6.0 * 2 * L * n * h * seq_len * seq_len / 2 * batch
    return (dense + attn) / devices


def forward_model_flops(cfg: ModelConfig, batch: int, new_tokens: int, context: int,
                        devices: int) -> float:
    """Analytic forward FLOPs per device for `new_tokens` per sequence attending to `context`
    cached positions on average (prefill: context ≈ T/2; decode: context = cache fill)."""
    d, f, n, k, h, v, L = (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads,
                           cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size, cfg.num_layers)
    matmul_params = L * (d * n * h + 2 * d * k * h + n * h * d + 3 * d * f) + d * v
    tokens = batch * new_tokens
    return (2.0 * matmul_params * tokens + 2 * 2 * L * n * h * context * tokens) / devices
