"""Train-state checkpoints: an orbax `CheckpointManager` wrapper with one fixed layout.

A checkpoint at step `s` is the directory `<root>/<s>/` with one orbax item per part:

    params/     the policy params pytree (e.g. an `nnx.State`), StandardSave (OCDBT, sharded)
    opt_state/  the optax state, or the whole trainer state minus its params, StandardSave
    rng/        the trainer's PRNG key as raw key data (uint32), StandardSave
    data/       the data-iterator state (`BatchIterator.get_state()`), JSON
    meta/       {"step", "rng_impl", "saved_at", "metadata": <run config / user JSON>}, JSON

Saves are asynchronous (orbax copies arrays to host, then writes in a background thread) and
atomic: orbax writes into `<s>.orbax-checkpoint-tmp/` and renames it to `<s>/` only after every
item is written, so a run killed mid-save leaves a tmp directory that is never listed as a step
(and is deleted when the next manager opens the directory). `keep` bounds how many finished
checkpoints stay on disk.

Several processes (multi-host): every process calls `save`/`restore`/`wait` at the same point
of the program. Orbax writes each array's shards from the process that holds them (one replica
each), JSON items and the tmp -> final rename from the primary process (0) only, after a barrier
that every process's writes have ended; old checkpoints beyond `keep` are deleted by the primary
only, and only finished ones. `wait()` ends with a barrier, so after it every process sees the
finalized step. The data-iterator state of every process is gathered into the `data` item
(`{"per_process": [state_0, ...]}`) and each process gets its own back on restore; a checkpoint
saved by another process count restores when the saved states are all equal (the data pipeline
counts global batches, so they are). The RNG key, and any array that lives on one process's
devices only, is saved from host memory (the primary's copy): every process must hold the same
value.

Restoring takes abstract targets (pytrees of `jax.ShapeDtypeStruct` carrying shardings, or
concrete arrays whose shapes/dtypes/shardings are copied), so a checkpoint written on one
topology restores onto another. A checkpoint that exists but cannot be read raises
`CheckpointError` naming the step, the item and the path.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from ppp_jax.config.checkpoint import CheckpointConfig
from ppp_jax.scale import distributed

ITEMS = ("params", "opt_state", "rng", "data", "meta")


_EMPTY = {"empty": np.zeros((), np.int8)}  # stands in for a tree without leaves


_FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or unreadable; the message names step, item and path."""


@dataclasses.dataclass
class TrainCheckpoint:
    """What one checkpoint holds, as restored.

    Attributes:
      step: the optimizer step the state is *after* (step s = s updates applied).
      params: the params pytree (structure of the abstract target, if one was given).
      opt_state: the optax state pytree (None if not requested).
      rng: the PRNG key (a typed key if one was saved, else raw uint32 data).
      data_state: the data-iterator state dict (None if none was saved).
      metadata: the JSON blob given to `save` (run config, versions, ...).
    """

    step: int
    params: Any
    opt_state: Any
    rng: Any
    data_state: dict[str, Any] | None
    metadata: dict[str, Any]


def abstract_like(tree: Any) -> Any:
    """Maps every array leaf to a `jax.ShapeDtypeStruct` with the same shape, dtype and sharding.

    Leaves that already are ShapeDtypeStructs pass through, so this accepts both concrete states
    and `nnx.eval_shape` outputs.
    """

    def one(x):
        if isinstance(x, jax.ShapeDtypeStruct):
            return x
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        if isinstance(x, (np.ndarray, np.generic)):
            return jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)
        return x

    return jax.tree.map(one, tree)


def _key_parts(rng: Any) -> tuple[Any, str | None]:
    """Splits a PRNG key into (raw uint32 data, impl name or None for a raw key)."""
    rng = jnp.asarray(rng) if not isinstance(rng, jax.Array) else rng
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(rng), str(jax.random.key_impl(rng))
    return rng, None


class CheckpointManager:
    """Saves and restores train states under one directory (see the module docstring).

    Use as a context manager, or call `close()`: it waits for a pending async save.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        save_every: int = 1,
        keep: int | None = 3,
        keep_period: int | None = None,
        async_save: bool = True,
    ):
        self.directory = Path(directory).absolute()
        self.save_every = save_every
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=1,  # the decision is ours (`should_save`), not orbax's
            max_to_keep=keep,
            keep_period=keep_period,
            enable_async_checkpointing=async_save,
            # Deletes `<step>.orbax-checkpoint-tmp` directories left by a run killed mid-save.
            cleanup_tmp_directories=True,
            create=True,
        )
        self._mgr = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    @classmethod
    def from_config(cls, config: CheckpointConfig) -> CheckpointManager:
        if not config.directory:
            raise ValueError("CheckpointConfig.directory is empty")
        return cls(
            config.directory,
            save_every=config.save_every,
            keep=config.keep,
            keep_period=config.keep_period,
            async_save=config.async_save,
        )

    # ----------------------------------------------------------------------------- queries
    def all_steps(self) -> list[int]:
        """Steps of finished checkpoints, ascending (in-flight or killed saves excluded)."""
        return sorted(self._mgr.all_steps())

    def latest_step(self) -> int | None:
        return self._mgr.latest_step()

    def should_save(self, step: int) -> bool:
        return step % self.save_every == 0

    # ----------------------------------------------------------------------------- save
    def save(
        self,
        step: int,
        *,
        params: Any,
        opt_state: Any,
        rng: Any,
        data_state: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Starts saving the train state as checkpoint `step` (returns before the write ends).

        Args:
          step: the number of updates applied to `params`.
          params: the params pytree.
          opt_state: the optimizer state, or any pytree with the rest of the trainer's state
            (`ppp_jax.train.loop` passes the train state with `params=None`).
          rng: the trainer's PRNG key (typed or raw).
          data_state: `BatchIterator.get_state()` at this point (JSON-able).
          metadata: JSON-able run metadata (config, versions); stored verbatim.
        """
        if step in self._mgr.all_steps():
            raise CheckpointError(f"checkpoint step {step} already exists in {self.directory}")
        key_data, impl = _key_parts(rng)
        nproc = jax.process_count()
        if nproc > 1:
            # Every process holds the same key on its own device; a host copy is written once
            # (by the primary) instead of each process writing "its" single-device array.
            key_data = np.asarray(key_data)
            if data_state is not None:
                data_state = {"per_process": distributed.allgather_objects(data_state)}
            # Arrays on one process's devices only (e.g. an eagerly made optimizer counter)
            # are not global arrays; like the key they are saved from host memory, once.
            params, opt_state = jax.tree.map(_host_if_local, (params, opt_state))
        # Orbax refuses trees without leaves (e.g. the state of plain SGD, `(EmptyState(),)`);
        # such a tree is stored as a placeholder and given back as the restore target.
        empty = [name for name, tree in (("params", params), ("opt_state", opt_state))
                 if not jax.tree.leaves(tree)]
        meta = {
            "format_version": _FORMAT_VERSION,
            "step": int(step),
            "empty_items": empty,
            "rng_impl": impl,
            "rng_shape": list(np.shape(key_data)),
            "rng_dtype": str(key_data.dtype),
            "has_data_state": data_state is not None,
            "saved_at": time.time(),
            "metadata": metadata or {},
        }
        if nproc > 1:
            meta["process_count"] = nproc
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(_EMPTY if "params" in empty else params),
            opt_state=ocp.args.StandardSave(_EMPTY if "opt_state" in empty else opt_state),
            rng=ocp.args.StandardSave({"key_data": key_data}),
            data=ocp.args.JsonSave(data_state if data_state is not None else {}),
            meta=ocp.args.JsonSave(meta),
        )
        self._mgr.save(step, args=args, force=True)

    def wait(self) -> None:
        """Blocks until a pending async save has finished (and raises its error, if any)."""
        self._mgr.wait_until_finished()
        self._mgr.check_for_errors()
        self._barrier()

    def _barrier(self) -> None:
        if jax.process_count() > 1:
            # The primary finalizes (renames) after the others' writes end; without this a
            # non-primary process could return before the step is visible.
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("ppp_jax.train.checkpointing.wait")

    def close(self) -> None:
        self._mgr.wait_until_finished()
        self._barrier()
        self._mgr.close()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------------------- restore
    def restore(
        self,
        step: int | None = None,
        *,
        abstract_params: Any = None,
        abstract_opt_state: Any = None,
        restore_opt_state: bool = True,
    ) -> TrainCheckpoint:
        """Restores checkpoint `step` (default: the latest).

        Args:
          step: which checkpoint; None for the latest finished one.
          abstract_params, abstract_opt_state: targets giving structure, shapes, dtypes and
            shardings (ShapeDtypeStructs or concrete arrays; see `abstract_like`). Without a
            target the arrays come back as saved, with the saved structure (dicts/lists).
          restore_opt_state: False skips the optimizer state (evaluation, export).

        Raises:
          CheckpointError if there is no such checkpoint or it cannot be read.
        """
        self._mgr.reload()
        if step is None:
            step = self._mgr.latest_step()
            if step is None:
                raise CheckpointError(f"no finished checkpoint in {self.directory}")
        if step not in self._mgr.all_steps():
            raise CheckpointError(
                f"no checkpoint for step {step} in {self.directory} (have {self.all_steps()})"
            )
        step_dir = self.directory / str(step)
        missing = [name for name in ITEMS if not (step_dir / name).is_dir()]
        if missing:
            raise CheckpointError(f"checkpoint step {step} at {step_dir} is incomplete: missing {missing}")

        meta = self._restore_item(step, "meta", ocp.args.JsonRestore())
        if not isinstance(meta, dict) or meta.get("format_version") != _FORMAT_VERSION:
            raise CheckpointError(f"checkpoint step {step} at {step_dir}: unknown meta {meta!r}")

        def restore_tree(name, tree):
            if name in meta["empty_items"]:
                return tree  # a tree without leaves: the target is the value
            arg = ocp.args.StandardRestore(abstract_like(tree) if tree is not None else None)
            return self._restore_item(step, name, arg)

        params = restore_tree("params", abstract_params)
        opt_state = restore_tree("opt_state", abstract_opt_state) if restore_opt_state else None
        # Restored into host memory, whatever devices and processes saved it.
        if "rng_shape" in meta:
            key_target = np.zeros(meta["rng_shape"], meta["rng_dtype"])
        else:  # written before rng_shape was recorded
            key_target = np.asarray(jax.random.key_data(jax.random.key(0, impl=meta["rng_impl"]))
                                    if meta["rng_impl"] else jax.random.PRNGKey(0))
        key_data = self._restore_item(step, "rng", ocp.args.StandardRestore(
            {"key_data": key_target}))["key_data"]
        rng = jnp.asarray(key_data)
        if meta["rng_impl"] is not None:
            rng = jax.random.wrap_key_data(rng, impl=meta["rng_impl"])
        data_state = self._restore_item(step, "data", ocp.args.JsonRestore())
        if meta["has_data_state"]:
            data_state = _own_data_state(data_state, step_dir)
        return TrainCheckpoint(
            step=int(step),
            params=params,
            opt_state=opt_state,
            rng=rng,
            data_state=data_state if meta["has_data_state"] else None,
            metadata=meta["metadata"],
        )

    def restore_latest(self, **kwargs: Any) -> TrainCheckpoint | None:
        """`restore()` of the latest finished checkpoint, or None when there is none yet."""
        self._mgr.reload()
        if self._mgr.latest_step() is None:
            return None
        return self.restore(None, **kwargs)

    def _restore_item(self, step: int, name: str, arg: Any) -> Any:
        try:
            restored = self._mgr.restore(step, args=ocp.args.Composite(**{name: arg}))
        except Exception as e:  # orbax/tensorstore raise many types; one clear error out
            raise CheckpointError(
                f"checkpoint step {step}, item {name!r} at {self.directory / str(step) / name} "
                f"is corrupt or does not match the target: {type(e).__name__}: {e}"
            ) from e
        return restored[name]


def _host_if_local(x: Any) -> Any:
    if isinstance(x, jax.Array) and x.is_fully_addressable:
        return np.asarray(x)
    return x


def _own_data_state(saved: Any, step_dir: Path) -> dict[str, Any]:
    """This process's data-iterator state from a `data` item (see the module docstring)."""
    if not (isinstance(saved, dict) and set(saved) == {"per_process"}):
        return saved  # saved by a single process: one state for all
    states = saved["per_process"]
    if len(states) == jax.process_count():
        return states[jax.process_index()]
    if all(st == states[0] for st in states):
        return states[0]
    raise CheckpointError(
        f"checkpoint {step_dir}: data-iterator states of {len(states)} processes differ and this "
        f"run has {jax.process_count()} processes; resume with {len(states)} processes")


def export_hf(
    checkpoint: TrainCheckpoint,
    out_dir: str | Path,
    *,
    model_config: Any,
    exporter: Callable[..., Any] | None = None,
) -> Path:
    """Writes the checkpoint's policy params as a Hugging Face checkpoint.

    Delegates to `ppp_jax.model.hf_io.save_hf(params, config, out_dir)`, or to `exporter` when
    given (same signature).

    Raises:
      NotImplementedError if no exporter is available.
    """
    if exporter is None:
        try:
            from ppp_jax.model import hf_io
        except ImportError as e:
            raise NotImplementedError(f"HF export needs ppp_jax.model.hf_io ({e})") from None
        exporter = hf_io.save_hf
    out_dir = Path(out_dir)
    exporter(checkpoint.params, model_config, out_dir)
    return out_dir
