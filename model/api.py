"""The stable public entry point of `ppp_jax.model`: load a checkpoint, get logits and log-probs.

    import numpy as np
    from ppp_jax.model import api

    mesh = api.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})       # all devices on fsdp
    model = api.load_pretrained("path/to/Seed-OSS-36B-Instruct", mesh=mesh, param_dtype="bfloat16")
    tokens = np.array([[0, 1516, 318, 257, 1332]], np.int32)          # [B, T] token ids
    logits = api.logits(model, tokens)                                # [B, T, V]
    logp = api.next_token_logprobs(model, tokens)                     # [B, T-1], float32

Other tools and checks call these names; their signatures only grow keyword arguments.
`token_logprobs` (from `ppp_jax.model.logprobs`) is the lower-level, hidden-state-based form
used by the trainer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ppp_jax.model.checkpoint import CONFIG_FILE as ORBAX_CONFIG_FILE
from ppp_jax.model.checkpoint import load_checkpoint, save_checkpoint
from ppp_jax.model.config import ModelConfig
from ppp_jax.model.hf_io import load_hf, save_hf
from ppp_jax.model.logprobs import token_logprobs
from ppp_jax.model.sharding import (
    FSDP_TP_RULES,
    MeshConfig,
    Rule,
    ShardingError,
    activation_sharding,
    make_mesh,
)
from ppp_jax.model.transformer import SeedOssForCausalLM

__all__ = [
    "MeshConfig",
    "ModelConfig",
    "SeedOssForCausalLM",
    "load_pretrained",
    "logits",
    "make_mesh",
    "model_mesh",
    "next_token_logprobs",
    "save_checkpoint",
    "save_pretrained",
    "token_logprobs",
]


def load_pretrained(
    path: str | Path,
    *,
    mesh: Mesh | MeshConfig | Mapping[str, int] | Sequence[int] | None = None,
    dtype: str | None = None,
    param_dtype: str | None = None,
    rules: Sequence[Rule] | None = None,
    progress: bool = False,
    **config_overrides,
) -> SeedOssForCausalLM:
    """Loads a Seed-OSS model, its parameters sharded on `mesh`.

    path:        a Hugging Face directory (config.json + model.safetensors, or shards with
                 model.safetensors.index.json), or a ppp_jax orbax checkpoint (model_config.json +
                 params/, as written by `save_checkpoint` / `ppp convert hf2orbax`).
    mesh:        a Mesh, or what `make_mesh` takes (MeshConfig, {"fsdp": -1, ...}, (data, fsdp,
                 tensor)); default: a 1x1x1 mesh on the first device.
    param_dtype: parameter dtype ("float32", "bfloat16"); default: the checkpoint's.
    dtype:       compute dtype; default: param_dtype.
    rules:       logical-axis rules (default `sharding.FSDP_TP_RULES`).
    config_overrides: other ModelConfig fields, e.g. remat="full", attention_impl="cudnn".
    """
    if mesh is not None and not isinstance(mesh, Mesh):
        mesh = make_mesh(mesh)
    rules = FSDP_TP_RULES if rules is None else rules
    path = Path(path)
    if (path / ORBAX_CONFIG_FILE).exists():
        model, _ = load_checkpoint(path, mesh=mesh, rules=rules, param_dtype=param_dtype, dtype=dtype,
                                   **config_overrides)
    else:
        model, _ = load_hf(path, mesh=mesh, rules=rules, param_dtype=param_dtype, dtype=dtype,
                           progress=progress, **config_overrides)
    return model


def save_pretrained(model: SeedOssForCausalLM, path: str | Path, *, dtype: str | None = None,
                    max_shard_size: int | str = "5GB", overwrite: bool = False) -> Path:
    """Writes `model` as a Hugging Face Seed-OSS directory (`hf_io.save_hf`)."""
    return save_hf(model, model.config, path, dtype=dtype, max_shard_size=max_shard_size,
                   overwrite=overwrite)


def model_mesh(model: SeedOssForCausalLM) -> Mesh:
    """The mesh the model's parameters live on."""
    leaf = jax.tree.leaves(nnx.state(model, nnx.Param))[0]
    sharding = leaf.sharding
    if isinstance(sharding, NamedSharding):
        return sharding.mesh
    return make_mesh((1, 1, 1), devices=list(leaf.devices())[:1])


def _place(x, mesh: Mesh, rules: Sequence[Rule]) -> jax.Array:
    """An int [B, T] input on `mesh`, batch sharded by the "activation_batch" rule when it
    divides B, else replicated."""
    x = jnp.asarray(x, jnp.int32)
    try:
        sharding = activation_sharding(("activation_batch", None), x.shape, mesh, rules)
    except ShardingError:
        sharding = NamedSharding(mesh, PartitionSpec())
    return jax.device_put(x, sharding)


def _inputs(model, tokens, positions, segment_ids, rules):
    mesh = model_mesh(model)
    tokens = _place(tokens, mesh, rules)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be int [B, T], got shape {tokens.shape}")
    if positions is None:
        positions = np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape)
    positions = _place(positions, mesh, rules)
    segment_ids = None if segment_ids is None else _place(segment_ids, mesh, rules)
    return tokens, positions, segment_ids


@nnx.jit
def _logits(model, tokens, positions, segment_ids):
    return model(tokens, positions, segment_ids)


@nnx.jit(static_argnames=("temperature", "chunk_size"))
def _next_logprobs(model, tokens, positions, segment_ids, temperature, chunk_size):
    hidden, _ = model.hidden(tokens, positions, segment_ids)
    logp, _ = token_logprobs(model, hidden[:, :-1], tokens[:, 1:], temperature=temperature,
                             chunk_size=chunk_size)
    return logp


def logits(model: SeedOssForCausalLM, tokens, positions=None, segment_ids=None, *,
           rules: Sequence[Rule] | None = None) -> jax.Array:
    """Logits [B, T, V] (compute dtype) for int token ids [B, T].

    positions:   int [B, T] RoPE positions; default 0..T-1 in every row (pass your own for
                 left-padded rows, where real tokens start at 0).
    segment_ids: int [B, T]; 0 marks padding, equal nonzero ids attend to each other (packing);
                 default all ones.
    """
    rules = FSDP_TP_RULES if rules is None else rules
    return _logits(model, *_inputs(model, tokens, positions, segment_ids, rules))


def next_token_logprobs(model: SeedOssForCausalLM, tokens, positions=None, segment_ids=None, *,
                        temperature: float = 1.0, chunk_size: int = 512,
                        rules: Sequence[Rule] | None = None) -> jax.Array:
    """float32 [B, T-1]: out[b, t] = log p(tokens[b, t+1] | tokens[b, :t+1]) at `temperature`.

    Computed in chunks of `chunk_size` positions, so `[B, T, V]` logits are never materialized.
    Positions where the target is padding are meaningless; mask them with segment_ids[:, 1:] > 0.
    """
    rules = FSDP_TP_RULES if rules is None else rules
    return _next_logprobs(model, *_inputs(model, tokens, positions, segment_ids, rules),
                          float(temperature), int(chunk_size))
