"""The sections `ppp compile` reads from a run config (`model`, `sharding`, `compile`, `engine`,
`rl`) and their loader; the trainer reads the same sections from the same YAML."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from ppp_jax.config.rl import RLConfig
from ppp_jax.model import sharding as shd
from ppp_jax.model.config import ModelConfig, seed_oss_36b, tiny

ModelPreset = Literal["seed_oss_36b", "tiny"]


StepName = Literal["train", "prefill", "decode"]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Which model to compile: a named preset plus the numerics knobs that change the program."""

    preset: ModelPreset = "seed_oss_36b"
    param_dtype: str = "float32"  # master weights (AdamW updates them in this dtype)
    dtype: str = "bfloat16"  # compute dtype
    remat: Literal["none", "full", "save_dots"] = "full"
    attention_impl: Literal["xla", "cudnn", "splash"] = "splash"  # splash: Pallas, TPU
    sizes: dict[str, int | bool] = dataclasses.field(default_factory=dict)  # e.g. {num_layers: 4}

    def build(self) -> ModelConfig:
        make = {"seed_oss_36b": seed_oss_36b, "tiny": tiny}[self.preset]
        return make(param_dtype=self.param_dtype, dtype=self.dtype, remat=self.remat,
                    attention_impl=self.attention_impl, **self.sizes)


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    """The paged rollout engine (`ppp_jax.sampling`) on the same chips: its compile-time shapes.

    The engine is one program per replica: weights in `dtype` sharded over `tensor` by
    `SAMPLING_RULES` (no FSDP), the K/V page pools' kv heads over `tensor`, slots not sharded.
    The `data` x `fsdp` devices of `mesh` are independent replicas, each running its own
    `batch / replicas` slots (see `ppp_jax.scale.compile_engine`). Sizes below are for the whole slice
    unless they say "per replica"; they map onto `sampling.EngineConfig` as noted.
    """

    batch: int = 128  # B_e, slots decoding together on the slice (num_slots = batch / replicas)
    prefill_batch: int = 16  # prompt rows prefilled together on the slice (prefill rows bucket
    #                          of a replica = prefill_batch / replicas)
    prefill_len: int = 2048  # T_p, prefill chunk (the largest prefill_chunks bucket)
    cache_len: int = 40960  # max_seq_len: context + generation of one sequence (8192 + 32768)
    dtype: str = "bfloat16"  # engine weights and KV pool (kv_dtype)
    mesh: shd.MeshConfig = shd.MeshConfig(shape=(-1, 1, 4))  # data x fsdp x tensor
    page_size: int = 64  # tokens per KV page (the 36B `sampler.page_size`)
    num_pages: int | None = None  # pool pages per replica, page 0 reserved; None: 1 + num_slots x
    #                               ceil(cache_len / page_size), every slot at full length
    decode_steps: int = 16  # decode steps per compiled decode block (one host round trip)
    block_pages: int = 16  # pages per step of the paged-attention loop (x page_size keys)


@dataclasses.dataclass(frozen=True)
class CompileSpec:
    """The shapes of the compiled steps and the target slice."""

    topology: str = "v5p:4x4x4"
    steps: tuple[StepName, ...] = ("train",)
    batch: int = 64  # B, sequences per optimizer update (split into rl.num_micro_batches)
    seq_len: int = 40960  # T, tokens per sequence (prompt 8192 + response 32768 for Func-Loc)


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
    `key.sub=value` overrides); unknown keys inside those sections are ConfigErrors."""
    from ppp_jax.config import loader as cfg

    data = cfg._read_yaml(Path(path))
    cfg.apply_overrides(data, list(overrides))
    picked = {k: v for k, v in data.items() if k in SECTIONS}
    try:
        return cfg.from_dict(CompileConfig, picked)
    except cfg.ConfigError as e:
        raise cfg.ConfigError(f"{path}: {e}") from None
