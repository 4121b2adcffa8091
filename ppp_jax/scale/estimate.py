"""A cost model of one PPP step at scale: rollout, π_old pass, updates and weight sync.

Nothing here compiles or runs a model: each phase's time is a lower bound from published chip
figures (`chips.CHIPS`) and the model's analytic FLOPs (`flops.py`), divided by a stated
efficiency. The assumptions are fields of `StepAssumptions`, printed beside every figure:

  decode   memory-bound: every decode step of a replica reads the replica's weights and the K/V of
           its live slots once. Per chip: (weight bytes + live slots × mean context × K/V bytes per
           token) / tensor chips, at `decode_hbm_efficiency` of the HBM bandwidth. A replica serves
           its episodes in waves of `num_slots`; a wave lasts as many decode steps as one
           episode generates (turns × tokens per turn: its turns are sequential).
  prefill  compute-bound: the prompt and every observation are prefilled once (the generated
           tokens are already cached), 2·N FLOPs per token plus attention to the mean context, at
           `prefill_mfu`.
  π_old    one forward pass over every episode (2·N per token + causal attention) at
           `train_mfu`; only when rl.ppo_mini_batches × rl.ppo_epochs > 1.
  updates  6·N per token + attention over every episode once per epoch at `train_mfu` (MFU on
           model FLOPs: remat's recompute is inside the efficiency).
  sync     the new params cast to the engine dtype and resharded: each chip receives its
           replica's share of the weights over ICI at `ici_efficiency` of the chip's ICI bandwidth.
Tool calls and simulator replies are not modelled: with `rollout.concurrency` episodes in flight
their latency is assumed hidden behind other episodes' decoding.
"""

from __future__ import annotations

import dataclasses
import math

from ppp_jax.model.config import ModelConfig
from ppp_jax.scale.chips import ChipSpec
from ppp_jax.scale.flops import forward_model_flops, train_model_flops

# ICI bandwidth per chip, bytes/s, as published ("Interchip Interconnect BW"):
#   v5p https://cloud.google.com/tpu/docs/v5p "4,800 Gbps"; v6e https://cloud.google.com/tpu/docs/v6e
#   "3,584 Gbps"; v5e https://cloud.google.com/tpu/docs/v5e "1,600 Gbps".
ICI_BYTES_PER_S = {"v5p": 4800e9 / 8, "v6e": 3584e9 / 8, "v5e": 1600e9 / 8}


@dataclasses.dataclass(frozen=True)
class StepAssumptions:
    """What one PPP step's work looks like (means per episode) and how efficiently it runs."""

    prompt_tokens: int = 3000  # system prompt + tools + the task's first user message
    turns: int = 12  # agent turns per episode
    generated_per_turn: int = 400  # tokens the policy writes per turn (thinking + call)
    observation_per_turn: int = 600  # tool output / user answer appended per turn
    decode_hbm_efficiency: float = 0.7  # fraction of HBM bandwidth a decode step reaches
    prefill_mfu: float = 0.5
    train_mfu: float = 0.35
    ici_efficiency: float = 0.5

    def episode_tokens(self) -> int:
        return self.prompt_tokens + self.turns * (self.generated_per_turn + self.observation_per_turn)

    def mean_context(self) -> float:
        """Mean cached context while the episode decodes (it grows linearly over the turns)."""
        return self.prompt_tokens + self.turns * (self.generated_per_turn + self.observation_per_turn) / 2


@dataclasses.dataclass(frozen=True)
class Deployment:
    """Where a step runs: the slice and the engine replicas on it."""

    chip: ChipSpec
    chips: int  # chips in the slice
    replica_chips: int  # chips per engine replica (the engine mesh's tensor size)
    num_slots: int  # sequences one replica decodes together
    engine_bytes_per_param: int = 2  # bf16 engine weights
    kv_bytes_per_value: int = 2  # bf16 K/V

    @property
    def replicas(self) -> int:
        return self.chips // self.replica_chips


@dataclasses.dataclass(frozen=True)
class Phase:
    name: str
    seconds: float
    bound: str  # what bounds it, in words


@dataclasses.dataclass(frozen=True)
class StepEstimate:
    phases: tuple[Phase, ...]
    deployment: Deployment
    episodes: int
    updates: int

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.phases)

    @property
    def dominant(self) -> Phase:
        return max(self.phases, key=lambda p: p.seconds)

    def chip_hours(self, steps: int) -> float:
        return self.seconds * steps * self.deployment.chips / 3600.0


def num_params(cfg: ModelConfig) -> int:
    """All parameters (embeddings, norms and biases included)."""
    d, f, n, k, h, v, L = (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads,
                           cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size, cfg.num_layers)
    attn = d * n * h + 2 * d * k * h + n * h * d
    if cfg.attention_bias:
        attn += n * h + 2 * k * h
    layer = attn + 3 * d * f + 2 * d
    head = 0 if cfg.tie_word_embeddings else d * v
    return L * layer + v * d + head + d


def kv_bytes_per_token(cfg: ModelConfig, bytes_per_value: int) -> int:
    """K and V of one token over every layer."""
    return cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * bytes_per_value


def estimate_step(cfg: ModelConfig, dep: Deployment, *, episodes: int, ppo_mini_batches: int = 1,
                  ppo_epochs: int = 1, a: StepAssumptions = StepAssumptions()) -> StepEstimate:
    """The lower-bound time of each phase of one PPP step (module docstring for the model)."""
    chip = dep.chip
    seq = a.episode_tokens()
    # -- rollout: decode
    per_replica = math.ceil(episodes / dep.replicas)
    waves = math.ceil(per_replica / dep.num_slots)
    live = min(dep.num_slots, per_replica)
    weight_bytes = num_params(cfg) * dep.engine_bytes_per_param
    kv_bytes = live * a.mean_context() * kv_bytes_per_token(cfg, dep.kv_bytes_per_value)
    per_step = (weight_bytes + kv_bytes) / dep.replica_chips / (chip.hbm_bytes_per_s *
                                                                a.decode_hbm_efficiency)
    decode_steps = waves * a.turns * a.generated_per_turn
    decode = Phase("rollout decode", decode_steps * per_step,
                   f"HBM: {decode_steps} steps x {per_step * 1e3:.1f} ms ({waves} waves of "
                   f"{live} slots; weights {weight_bytes / 2**30:.0f} GiB + K/V "
                   f"{kv_bytes / 2**30:.0f} GiB per replica of {dep.replica_chips} chips)")
    # -- rollout: prefill of prompts and observations
    new_tokens = a.prompt_tokens + a.turns * a.observation_per_turn
    prefill_flops = episodes * forward_model_flops(cfg, 1, new_tokens, int(a.mean_context() / 2 +
                                                                           a.prompt_tokens / 2), 1)
    prefill = Phase("rollout prefill", prefill_flops / (dep.chips * chip.peak_bf16_flops *
                                                        a.prefill_mfu),
                    f"FLOPs: {new_tokens} new tokens per episode at {a.prefill_mfu:.0%} MFU")
    # -- training
    train_flops = train_model_flops(cfg, episodes, seq, 1)  # one pass over every episode
    updates = ppo_mini_batches * ppo_epochs
    peak = dep.chips * chip.peak_bf16_flops * a.train_mfu
    phases = [decode, prefill]
    if updates > 1:
        phases.append(Phase("pi_old pass", train_flops / 3 / peak,
                            f"FLOPs: forward of {episodes} x {seq} tokens at {a.train_mfu:.0%} MFU"))
    phases.append(Phase(f"updates ({updates})", ppo_epochs * train_flops / peak,
                        f"FLOPs: {ppo_epochs} epoch(s) of {episodes} x {seq} tokens at "
                        f"{a.train_mfu:.0%} MFU"))
    ici = ICI_BYTES_PER_S.get(chip.name)
    if ici is not None:
        phases.append(Phase("weight sync", weight_bytes / dep.replica_chips / (ici * a.ici_efficiency),
                            f"ICI: {weight_bytes / dep.replica_chips / 2**30:.1f} GiB per chip at "
                            f"{a.ici_efficiency:.0%} of {ici * 8 / 1e9:.0f} Gbps"))
    return StepEstimate(tuple(phases), dep, episodes, updates)


def estimate_table(est: StepEstimate, steps: int, a: StepAssumptions) -> str:
    """Markdown: each phase with its bound, the total, and the run's chip-hours."""
    dep = est.deployment
    lines = [f"PPP step estimate: {est.episodes} episodes on {dep.chips} {dep.chip.name} chips "
             f"({dep.replicas} replicas x {dep.replica_chips} chips, {dep.num_slots} slots each), "
             f"{est.updates} update(s)",
             f"assumptions: {a.prompt_tokens} prompt tokens, {a.turns} turns x "
             f"({a.generated_per_turn} generated + {a.observation_per_turn} observed) tokens per "
             f"episode; decode at {a.decode_hbm_efficiency:.0%} of HBM bandwidth; tool and "
             "simulator latency hidden by concurrency", "",
             "| phase | seconds | share | bound |", "|---|---|---|---|"]
    for p in est.phases:
        lines.append(f"| {p.name} | {p.seconds:.0f} | {p.seconds / est.seconds:.0%} | {p.bound} |")
    lines.append(f"| **step** | **{est.seconds:.0f}** | | dominant: {est.dominant.name} |")
    lines.append("")
    lines.append(f"{steps} steps: {est.seconds * steps / 3600:.1f} h wall, "
                 f"{est.chip_hours(steps):,.0f} chip-hours")
    return "\n".join(lines)
