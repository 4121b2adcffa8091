"""Typed configs of the RL algorithm (GRPO / Dr.GRPO / RLOO, DAPO) and of the optimizer.

Every field is named after the knob it turns and commented with the paper symbol it stands for.
Defaults are the PPP paper's settings (arXiv 2511.02208 §5.2 + its released verl config) where
those are stated, and DAPO's clip-higher values (ε_low 0.2, ε_high 0.28) where the issue asks for
them. A YAML run config embeds `RLConfig` as one section; `ppp_jax.config.loader.from_dict(RLConfig, d)`
checks keys and types.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from ppp_jax.config.rules import (
    GT_ZERO,
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    Range,
    register_rules,
)

AdvantageEstimator = Literal["grpo", "drgrpo", "rloo"]
LossAggMode = Literal[
    "token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"
]
KLEstimator = Literal["k1", "abs", "k2", "k3"]
Schedule = Literal["constant", "cosine", "linear"]
OldLogprobSource = Literal["recompute", "sampler"]


@dataclasses.dataclass(frozen=True)
class AdvantageConfig:
    """How per-episode rewards R_i become advantages A_i (one scalar per episode)."""

    estimator: AdvantageEstimator = "grpo"  # grpo: (R−μ_g)/(σ_g+ε); drgrpo: R−μ_g; rloo
    group_size: int = 8  # G, episodes per prompt (the paper's rollout.n = 8)
    eps: float = 1e-6  # ε in the GRPO denominator σ_g + ε
    clip_reward_01: bool = True  # R_i ← clip(R_i, 0, 1) before normalization (paper §5.2)

    def __post_init__(self):
        if self.group_size < 1:
            raise ValueError(f"AdvantageConfig.group_size must be >= 1, got {self.group_size}")
        if self.eps < 0:
            raise ValueError(f"AdvantageConfig.eps must be >= 0, got {self.eps}")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """The per-token policy objective and its aggregation (see `ppp_jax.rl.losses`)."""

    clip_ratio_low: float = 0.2  # ε_low: r is clipped below at 1 − ε_low
    clip_ratio_high: float = 0.28  # ε_high: r is clipped above at 1 + ε_high (DAPO clip-higher)
    clip_ratio_c: float | None = 3.0  # c: dual-clip bound for A < 0 (None = off); must be > 1
    log_ratio_clamp: float = 20.0  # |log r| clamped to this before exp (verl: 20)
    agg_mode: LossAggMode = "token-mean"  # the paper: token-level loss, 1/Σ|τ_i|
    loss_scale_factor: int | None = None  # L_norm of seq-mean-token-sum-norm; None = row length T
    kl_coef: float = 0.0  # β; 0 means no reference policy is held or run (the paper: no KL)
    kl_estimator: KLEstimator = "k3"  # k1 = logπ−logπ_ref, abs, k2 = ½(·)², k3 = e^d−d−1
    kl_straight_through: bool = False  # "k3+": value of the estimator, gradient of k2
    entropy_coef: float = 0.0  # c_H: loss −= c_H · agg(entropy) (the paper: 0)
    tis_cap: float | None = None  # C: truncated IS weight min(π_old/π_sampler, C); None = off
    temperature: float = 1.0  # τ: log-probs are of softmax(logits / τ), τ = sampling temperature

    def __post_init__(self):
        if not 0 <= self.clip_ratio_low < 1:
            raise ValueError(f"LossConfig.clip_ratio_low must be in [0, 1), got {self.clip_ratio_low}")
        if self.clip_ratio_high < 0:
            raise ValueError(f"LossConfig.clip_ratio_high must be >= 0, got {self.clip_ratio_high}")
        if self.clip_ratio_c is not None and self.clip_ratio_c <= 1.0:
            raise ValueError(f"LossConfig.clip_ratio_c must be > 1 (or null), got {self.clip_ratio_c}")
        if self.kl_coef < 0:
            raise ValueError(f"LossConfig.kl_coef must be >= 0, got {self.kl_coef}")
        if self.tis_cap is not None and self.tis_cap <= 0:
            raise ValueError(f"LossConfig.tis_cap must be > 0 (or null), got {self.tis_cap}")
        if self.temperature <= 0:
            raise ValueError(f"LossConfig.temperature must be > 0, got {self.temperature}")
        if self.loss_scale_factor is not None and self.loss_scale_factor <= 0:
            raise ValueError(f"LossConfig.loss_scale_factor must be > 0, got {self.loss_scale_factor}")

    @property
    def use_reference(self) -> bool:
        """True iff the objective has a KL term, i.e. a reference policy must be run."""
        return self.kl_coef > 0.0


@dataclasses.dataclass(frozen=True)
class DapoConfig:
    """DAPO's two reward-side tricks (both off by default, as in the paper's released config)."""

    dynamic_sampling: bool = False  # drop groups whose rewards have zero spread, refill the batch
    max_gen_batches: int = 10  # give up (error) after this many generation rounds; 0 = unlimited
    overlong_buffer_len: int | None = None  # L_buf in tokens; None = no overlong shaping
    overlong_penalty_factor: float = 1.0  # κ: penalty slope multiplier
    max_response_len: int = 32768  # L_max in tokens (the paper's Func-Loc max output length)

    def __post_init__(self):
        if self.max_gen_batches < 0:
            raise ValueError(f"DapoConfig.max_gen_batches must be >= 0, got {self.max_gen_batches}")
        if self.overlong_buffer_len is not None and not 0 < self.overlong_buffer_len <= self.max_response_len:
            raise ValueError(
                f"DapoConfig.overlong_buffer_len must be in (0, max_response_len={self.max_response_len}], "
                f"got {self.overlong_buffer_len}"
            )


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """optax AdamW with warmup + schedule and global-norm clipping (see `ppp_jax.rl.optim`)."""

    learning_rate: float = 1e-6  # η, the paper's 1e-6
    weight_decay: float = 0.01  # λ, decoupled (AdamW), the paper's 0.01
    b1: float = 0.9  # β₁
    b2: float = 0.999  # β₂
    eps: float = 1e-8  # ε_Adam
    warmup_steps: int = 0  # linear warmup 0 → η over this many updates (the paper: 0)
    schedule: Schedule = "constant"  # after warmup: constant, cosine or linear decay to η·final_lr_ratio
    total_steps: int = 200  # updates the schedule spans (the paper: 200 steps)
    final_lr_ratio: float = 0.0  # η_end / η for cosine/linear
    max_grad_norm: float | None = 1.0  # global-norm clip; None = off

    def __post_init__(self):
        if self.learning_rate < 0 or self.weight_decay < 0:
            raise ValueError("OptimConfig.learning_rate and weight_decay must be >= 0")
        if self.warmup_steps < 0 or self.total_steps < 1:
            raise ValueError("OptimConfig.warmup_steps must be >= 0 and total_steps >= 1")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"OptimConfig.max_grad_norm must be > 0 (or null), got {self.max_grad_norm}")


@dataclasses.dataclass(frozen=True)
class FreezeConfig:
    """Parameters the updates leave untouched: training only the top of a pretrained model.

    With `bottom_layers` = K the embedding and decoder layers 0..K-1 run outside autodiff
    (`model.hidden(frozen_layers=K)`), so a train step does the backward work of the top L-K
    layers only; their optimizer moments stay zero and their values bit-identical.
    """

    bottom_layers: int = 0  # K: decoder layers 0..K-1 frozen (0 = train every layer)
    embeddings: bool = False  # also freeze the embedding table (tied head) and an untied lm_head

    @property
    def active(self) -> bool:
        return self.bottom_layers > 0 or self.embeddings


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """The whole algorithm section of a run config."""

    advantage: AdvantageConfig = AdvantageConfig()
    loss: LossConfig = LossConfig()
    dapo: DapoConfig = DapoConfig()
    optim: OptimConfig = OptimConfig()
    freeze: FreezeConfig = FreezeConfig()
    num_micro_batches: int = 1  # M: gradient accumulation steps per update (lax.scan)
    logprob_chunk_size: int = 1024  # tokens per chunk of the vocab projection in token_logprobs
    # PPO updates per rollout batch (verl: train_batch_size / ppo_mini_batch_size, ppo_epochs).
    # Each epoch splits the batch's rows into `ppo_mini_batches` mini-batches, one optimizer
    # update each; with 1 × 1 the update is on-policy (ratio ≡ 1) and π_old is never computed.
    ppo_mini_batches: int = 1  # K: optimizer updates per epoch over the rollout batch
    ppo_epochs: int = 1  # E: passes over the rollout batch (K·E updates per PPP step)
    ppo_shuffle: bool = True  # permute the rows (seeded by the step) before each epoch's split
    # π_old when K·E > 1: "recompute" = log-probs of the weights that sampled, computed by the
    # trainer once before the first update; "sampler" = the rollout engine's returned log-probs
    # (no extra forward pass; the sampler/trainer gap is logged as train/logp_abs_diff*).
    old_logprobs: OldLogprobSource = "recompute"
    # Episodes cut off by the token budget (finish_reason "token_limit") get loss mask 0 on every
    # token, so they contribute no gradient; they still count in their group's advantage
    # statistics (the released verl overlay's `algorithm.mask_overlong`; the paper is silent).
    mask_overlong: bool = False

    def __post_init__(self):
        if self.num_micro_batches < 1:
            raise ValueError(f"RLConfig.num_micro_batches must be >= 1, got {self.num_micro_batches}")
        if self.ppo_mini_batches < 1:
            raise ValueError(f"RLConfig.ppo_mini_batches must be >= 1, got {self.ppo_mini_batches}")
        if self.ppo_epochs < 1:
            raise ValueError(f"RLConfig.ppo_epochs must be >= 1, got {self.ppo_epochs}")

    @property
    def updates_per_step(self) -> int:
        """Optimizer updates per PPP step: ppo_mini_batches × ppo_epochs."""
        return self.ppo_mini_batches * self.ppo_epochs


register_rules(AdvantageConfig, {"group_size": POSITIVE, "eps": NON_NEGATIVE})
register_rules(LossConfig, {
    "clip_ratio_low": Range(0, 1, high_open=True), "clip_ratio_high": NON_NEGATIVE,
    "clip_ratio_c": Range(1, low_open=True), "log_ratio_clamp": GT_ZERO,
    "loss_scale_factor": POSITIVE, "kl_coef": NON_NEGATIVE, "tis_cap": GT_ZERO,
    "temperature": GT_ZERO})
register_rules(FreezeConfig, {"bottom_layers": NON_NEGATIVE})
register_rules(DapoConfig, {"max_gen_batches": NON_NEGATIVE, "overlong_buffer_len": POSITIVE,
                            "overlong_penalty_factor": NON_NEGATIVE, "max_response_len": POSITIVE})
register_rules(OptimConfig, {
    "learning_rate": NON_NEGATIVE, "weight_decay": NON_NEGATIVE,
    "b1": Range(0, 1, high_open=True), "b2": Range(0, 1, high_open=True), "eps": NON_NEGATIVE,
    "warmup_steps": NON_NEGATIVE, "total_steps": POSITIVE, "final_lr_ratio": PROBABILITY,
    "max_grad_norm": GT_ZERO})
register_rules(RLConfig, {"num_micro_batches": POSITIVE, "logprob_chunk_size": POSITIVE,
                           "ppo_mini_batches": POSITIVE, "ppo_epochs": POSITIVE})
