"""Orbax checkpoints of the model parameters: sharded save, restore onto any mesh.

Layout of a checkpoint directory:

    DIR/model_config.json   the full ModelConfig (ours: param/compute dtype, remat, ...)
    DIR/params/             orbax StandardCheckpointer tree {"embed": {"embedding": [V, D]}, ...}

Each process writes only its own shards (orbax/tensorstore). Restoring takes the target shardings
from a mesh and a rules table, so a checkpoint saved on one mesh (say fsdp=8) restores onto another
(data=2, fsdp=2, tensor=2) with each device reading only its shard. Before any data is read the
stored tree is compared with the model's: a missing, extra or mis-shaped parameter fails naming it
and both shapes.

Saving is atomic: DIR is written under a temporary sibling name and renamed when complete.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from ppp_jax.model._fsutil import atomic_directory
from ppp_jax.model.config import ModelConfig
from ppp_jax.model.hf_io import build_model, fill_state, params_of
from ppp_jax.model.sharding import (
    FSDP_TP_RULES,
    Rule,
    path_name,
    state_shardings,
)

CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"


class CheckpointError(ValueError):
    """An orbax checkpoint directory is missing pieces or does not match the model."""


def _nested(flat: dict[str, object]) -> dict:
    out: dict = {}
    for name, value in flat.items():
        node = out
        *parents, leaf = name.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _flat(tree: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in tree.items():
        name = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(_flat(v, name))
        else:
            out[name] = v
    return out


def save_checkpoint(model_or_params, config: ModelConfig, path: str | Path, *,
                    overwrite: bool = False, extra: Callable[[Path], None] | None = None) -> Path:
    """Saves parameters (a SeedOssForCausalLM, its Param state, or {path: array}) and `config`.

    extra: writes more files (e.g. the tokenizer) into the directory before it appears.

    Arrays are saved as they are sharded; nothing is gathered onto one host.
    """
    params = params_of(model_or_params)
    path = Path(path).absolute()
    with atomic_directory(path, overwrite=overwrite) as tmp:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / PARAMS_DIR, _nested(params))
            ckptr.wait_until_finished()
        (tmp / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
        if extra is not None:
            extra(tmp)
    return path


def read_config(path: str | Path) -> ModelConfig:
    """The ModelConfig stored with a checkpoint."""
    file = Path(path) / CONFIG_FILE
    if not file.exists():
        raise CheckpointError(f"{path}: no {CONFIG_FILE}; not a ppp_jax orbax checkpoint")
    return ModelConfig.from_dict(json.loads(file.read_text()))


def stored_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """{param path: shape} as stored, read from orbax metadata (no array data)."""
    params_dir = Path(path).absolute() / PARAMS_DIR
    if not params_dir.exists():
        raise CheckpointError(f"{path}: no {PARAMS_DIR}/ directory; not a ppp_jax orbax checkpoint")
    with ocp.StandardCheckpointer() as ckptr:
        meta = ckptr.metadata(params_dir)
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    return {k: tuple(v.shape) for k, v in _flat(dict(tree)).items()}


def restore_params(
    path: str | Path,
    abstract_params: nnx.State,
    mesh: Mesh,
    rules: Sequence[Rule] = FSDP_TP_RULES,
) -> nnx.State:
    """Restores the Param state shaped like `abstract_params`, sharded on `mesh` by `rules`.

    The stored dtype is cast to the abstract state's dtype if they differ.
    """
    path = Path(path).absolute()
    shardings = state_shardings(abstract_params, mesh, rules)
    target = {}
    for (p, var), (_, sh) in zip(nnx.to_flat_state(abstract_params), nnx.to_flat_state(shardings)):
        value = var.get_value()
        target[path_name(p)] = jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sh.get_value())
    stored = stored_shapes(path)
    want = {k: tuple(v.shape) for k, v in target.items()}
    if stored != want:
        problems = [f"missing parameter {k} (model shape {list(want[k])})" for k in sorted(set(want) - set(stored))]
        problems += [f"unexpected parameter {k} (stored shape {list(stored[k])})" for k in sorted(set(stored) - set(want))]
        problems += [
            f"parameter {k}: stored shape {list(stored[k])} != model shape {list(want[k])}"
            for k in sorted(set(want) & set(stored)) if stored[k] != want[k]
        ]
        raise CheckpointError(f"{path} does not match the model:\n  " + "\n  ".join(problems))
    with ocp.StandardCheckpointer() as ckptr:
        restored = _flat(ckptr.restore(path / PARAMS_DIR, _nested(target)))
    return fill_state(abstract_params, restored)


def load_checkpoint(
    path: str | Path,
    *,
    mesh: Mesh | None = None,
    rules: Sequence[Rule] = FSDP_TP_RULES,
    param_dtype: str | None = None,
    dtype: str | None = None,
    **config_overrides,
):
    """Builds a SeedOssForCausalLM from an orbax checkpoint, sharded on `mesh`.

    mesh: default a 1x1x1 mesh on the first device. param_dtype / dtype / config_overrides
    replace the stored config's fields. Returns (model, config).
    """
    config = read_config(path)
    changes = dict(config_overrides)
    if param_dtype:
        changes["param_dtype"] = param_dtype
    if dtype:
        changes["dtype"] = dtype
    config = config.replace(**changes)
    model = build_model(config, mesh, lambda abstract, mesh: restore_params(path, abstract, mesh,
                                                                              rules))
    return model, config
