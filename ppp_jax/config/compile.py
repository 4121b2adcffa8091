"""The sections `ppp compile` reads from a run config (`model`, `sharding`, `compile`, `engine`,
`rl`) and their loader; the trainer reads the same sections from the same YAML."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

from ppp_jax.config import loader as cfg
from ppp_jax.config.rl import RLConfig
from ppp_jax.config.rules import (
    DROPOUT,
    DTYPE,
    GT_ZERO,
    NON_NEGATIVE,
    POSITIVE,
    Range,
    register_rules,
)
from ppp_jax.model import sharding as shd
from ppp_jax.model.config import ModelConfig, seed_oss_36b, tiny
from ppp_jax.sampling.config import EngineConfig

ModelPreset = Literal["seed_oss_36b", "tiny"]
StepName = Literal["train", "logprob", "prefill", "decode"]


@dataclasses.dataclass(frozen=True)
class ModelSizes:
    """Architecture sizes that replace the preset's; None keeps the preset's value."""

    vocab_size: int | None = None
    hidden_size: int | None = None
    intermediate_size: int | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    num_kv_heads: int | None = None
    head_dim: int | None = None
    rope_theta: float | None = None
    rms_norm_eps: float | None = None
    attention_bias: bool | None = None
    attention_out_bias: bool | None = None
    mlp_bias: bool | None = None
    tie_word_embeddings: bool | None = None
    attention_dropout: float | None = None
    residual_dropout: float | None = None
    max_position_embeddings: int | None = None
    bos_token_id: int | None = None
    pad_token_id: int | None = None
    eos_token_id: int | None = None

    def given(self) -> dict[str, int | float | bool]:
        """The sizes set in the config (the preset keeps the others)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Which model to compile: a named preset plus the numerics knobs that change the program."""

    preset: ModelPreset = "seed_oss_36b"
    param_dtype: str = "float32"  # master weights (AdamW updates them in this dtype)
    dtype: str = "bfloat16"  # compute dtype
    remat: Literal["none", "full", "save_dots"] = "full"
    attention_impl: Literal["xla", "cudnn", "splash"] = "splash"  # splash: Pallas, TPU
    sizes: ModelSizes = ModelSizes()  # e.g. {num_layers: 4}
    # Decoder projections summed over slices of this many input features (0 = one dot): float32
    # CPU parity with transformers (docs/model_io.md); costs up to ~15% CPU time at 128.
    dot_chunk: int = 0

    def build(self) -> ModelConfig:
        make = {"seed_oss_36b": seed_oss_36b, "tiny": tiny}[self.preset]
        return make(param_dtype=self.param_dtype, dtype=self.dtype, remat=self.remat,
                    attention_impl=self.attention_impl, dot_chunk=self.dot_chunk,
                    **self.sizes.given())


@dataclasses.dataclass(frozen=True)
class EngineSpec(EngineConfig):
    """The rollout engine, one section for `ppp train` and `ppp compile`: the shape of one engine
    replica (every `sampling.EngineConfig` field: slots, KV pages, buckets) plus where replicas
    live.

    An engine replica is one program: weights in `dtype` sharded over `tensor` by
    `SAMPLING_RULES` (no FSDP), the K/V page pools' kv heads over `tensor`, slots not sharded.
    The `data` x `fsdp` devices of `mesh` are independent replicas with this same shape, so the
    slice decodes `num_slots x replicas` sequences (see `ppp_jax.scale.compile_engine`, which
    compiles the largest prefill buckets). `dtype` and `mesh` apply to the trainer's
    `rollout.engine_layout: sampling` and to `ppp compile`; the default layout ("training") runs
    one replica of this shape on the training mesh in the training dtype.
    """

    dtype: str = "bfloat16"  # engine weights (and the KV pool unless kv_dtype says otherwise)
    mesh: shd.MeshConfig = shd.MeshConfig(shape=(-1, 1, 4))  # data x fsdp x tensor

    def replica_config(self) -> EngineConfig:
        """The `sampling.EngineConfig` of one replica: this section less `dtype` and `mesh`."""
        return EngineConfig(**{f.name: getattr(self, f.name)
                               for f in dataclasses.fields(EngineConfig)})


@dataclasses.dataclass(frozen=True)
class CompileSpec:
    """The shapes of the compiled steps and the target slice."""

    topology: str = "v5p:4x4x4"
    steps: tuple[StepName, ...] = ("train",)
    # B, sequences per optimizer update (split into rl.num_micro_batches), and T, tokens per
    # sequence. 0: derived from the trainer's sections (data, rl, rollout) of a run config, so
    # that what is compiled is what `ppp train` runs (ppp_jax/scale/iteration.py); a value that
    # disagrees makes the compile a per-program study and the iteration is not checked.
    batch: int = 0
    seq_len: int = 0


@dataclasses.dataclass(frozen=True)
class CompileConfig:
    """What `ppp compile` reads from a run config: the sections `model`, `sharding`, `compile`,
    `engine` and `rl`. Other top-level sections of the same YAML are ignored."""

    model: ModelSpec = ModelSpec()
    sharding: shd.ShardingConfig = shd.ShardingConfig()
    compile: CompileSpec = CompileSpec()
    engine: EngineSpec = EngineSpec()
    rl: RLConfig = RLConfig()  # the trainer's section: micro-batches, log-prob chunk, optimizer


SECTIONS = tuple(f.name for f in dataclasses.fields(CompileConfig))


def load_compile_config(path: str, overrides: Sequence[str] = ()) -> CompileConfig:
    """Reads the `CompileConfig` sections of a YAML run config (with `base:` files and
    `key.sub=value` overrides); unknown keys inside those sections and values out of range are
    ConfigErrors naming the dotted key and its file:line or override."""
    return cfg.load_config(path, CompileConfig, list(overrides), only_sections=SECTIONS)


register_rules(ModelSpec, {"param_dtype": DTYPE, "dtype": DTYPE, "dot_chunk": NON_NEGATIVE})
register_rules(ModelSizes, {
    "vocab_size": POSITIVE, "hidden_size": POSITIVE, "intermediate_size": POSITIVE,
    "num_layers": POSITIVE, "num_heads": POSITIVE, "num_kv_heads": POSITIVE, "head_dim": POSITIVE,
    "rope_theta": GT_ZERO, "rms_norm_eps": GT_ZERO, "attention_dropout": DROPOUT,
    "residual_dropout": DROPOUT, "max_position_embeddings": POSITIVE,
    "bos_token_id": NON_NEGATIVE, "pad_token_id": NON_NEGATIVE, "eos_token_id": NON_NEGATIVE})
register_rules(CompileSpec, {"batch": NON_NEGATIVE, "seq_len": NON_NEGATIVE})
# the sampling layer's EngineConfig cannot import the config layer: its rules are given here
register_rules(EngineConfig, {
    "num_slots": POSITIVE, "decode_rows": POSITIVE, "page_size": POSITIVE, "num_pages": Range(2),
    "max_seq_len": POSITIVE, "decode_steps": POSITIVE, "prefill_chunks": POSITIVE,
    "prefill_rows": POSITIVE, "block_pages": POSITIVE, "max_stop_tokens": POSITIVE,
    "kv_dtype": DTYPE})
register_rules(EngineSpec, {"dtype": DTYPE})
