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
`CheckpointError` naming the step, the item and the path, in one line.

Integrity. Every step carries `ppp_manifest.json`: the size and sha256 of every file of its five
items, computed by the primary process after orbax has written them and before the step is
renamed into place (orbax's post-finalization callback; right after the save with
`async_save=False`), so a finished step always has one. Restoring verifies the files against it
first (on the primary; the verdict is shared). `restore()` of the latest step walks back over
damaged steps (a changed, truncated or deleted file, a missing item, an empty step directory, a
step of this format without a manifest) to the newest intact one, logging one line that names
the damaged steps and items; `restore(step)` of a damaged step, or no intact step at all, raises
`CheckpointError`. `set_aside_skipped()` then moves the damaged steps newer than the restored one
to `<directory>-damaged/` (kept, never deleted), so training goes on from the restored step.
Steps saved before manifests existed (meta format 1) are restored unverified, with a warning; if
orbax cannot read one, it counts as damaged too.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from ppp_jax.config.checkpoint import CheckpointConfig
from ppp_jax.scale import distributed

log = logging.getLogger(__name__)

ITEMS = ("params", "opt_state", "rng", "data", "meta")
MANIFEST = "ppp_manifest.json"  # per-file sha256 of a step's items (see the module docstring)
_MANIFEST_FORMAT = "ppp_jax.checkpoint_manifest/1"


_EMPTY = {"empty": np.zeros((), np.int8)}  # stands in for a tree without leaves


# 2: the step carries MANIFEST; 1: saved before manifests (restored unverified, with a warning)
_FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or unreadable; the message names step, item and path."""


class DamagedCheckpoint(CheckpointError):
    """A step whose files do not match its manifest (or that cannot have one); `reason` names
    the item or file."""

    def __init__(self, step: int, reason: str, directory: Path):
        self.step = step
        self.reason = reason
        super().__init__(f"checkpoint step {step} at {directory / str(step)} is damaged: {reason}")


def _one_line(e: BaseException, limit: int = 300) -> str:
    """`Type: first line of the message` of the innermost cause (orbax wraps the tensorstore
    error that names the damage), without tensorstore's spec dump, cut to `limit` characters."""
    seen = {id(e)}
    while (inner := e.__cause__ or e.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        e = inner
    text = str(e).strip().splitlines()
    first = text[0].split(" See full TensorStore details")[0] if text else ""
    if len(first) > limit:
        first = first[:limit] + "..."
    return f"{type(e).__name__}: {first}"


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _item_files(step_dir: Path) -> list[str]:
    """Paths (relative, '/'-separated) of every file under the step's item directories."""
    out = []
    for item in ITEMS:
        root = step_dir / item
        if root.is_dir():
            out.extend(p.relative_to(step_dir).as_posix() for p in root.rglob("*") if p.is_file())
    return sorted(out)


def _digests(step_dir: Path, files: list[str]) -> list[str]:
    # hashlib releases the GIL on large buffers: files hash in parallel.
    workers = max(1, min(16, os.cpu_count() or 1, len(files)))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda rel: _sha256(step_dir / rel), files))


def write_manifest(step_dir: Path, step: int) -> None:
    """Writes `<step_dir>/ppp_manifest.json` (size and sha256 of every item file), atomically."""
    files = _item_files(step_dir)
    entries = {rel: {"size": (step_dir / rel).stat().st_size, "sha256": digest}
               for rel, digest in zip(files, _digests(step_dir, files))}
    manifest = {"format": _MANIFEST_FORMAT, "step": int(step), "items": list(ITEMS), "files": entries}
    tmp = step_dir / (MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, step_dir / MANIFEST)


# Steps this process has verified intact, by the stat of every file (a resume checks before it
# builds anything, then restores: the second check costs stats, not another read).
_VERIFIED: set[tuple] = set()


def _stat_key(step_dir: Path) -> tuple:
    files = [MANIFEST, *_item_files(step_dir)]
    stats = [(rel, (step_dir / rel).stat()) for rel in files]
    return (str(step_dir),) + tuple((rel, st.st_size, st.st_mtime_ns, st.st_ino) for rel, st in stats)


def verify_manifest(step_dir: Path) -> str | None:
    """None if every file the step's manifest lists is there with its size and sha256, else
    what is wrong ("params/d/1a2b: truncated (120 of 202 bytes)", "item 'rng' missing", ...).
    The step must have a manifest (see `_verdict`)."""
    try:
        manifest = json.loads((step_dir / MANIFEST).read_text())
        files = manifest["files"]
        items = manifest["items"]
        if manifest.get("format") != _MANIFEST_FORMAT or not isinstance(files, dict):
            return f"{MANIFEST}: unknown format {manifest.get('format')!r}"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{MANIFEST}: unreadable ({_one_line(e)})"
    for item in items:
        if not (step_dir / item).is_dir():
            return f"item {item!r} missing"
    present = []
    for rel, want in sorted(files.items()):
        path = step_dir / rel
        if not path.is_file():
            return f"{rel}: missing"
        size = path.stat().st_size
        if size != want["size"]:
            return f"{rel}: size {size} bytes, saved {want['size']} (truncated or overwritten)"
        present.append(rel)
    for rel, digest in zip(present, _digests(step_dir, present)):
        if digest != files[rel]["sha256"]:
            return f"{rel}: contents changed since the save (sha256 mismatch)"
    return None


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
        self.async_save = async_save
        self._saving_step: int | None = None  # the step whose manifest the callback writes
        self.skipped: list[tuple[int, str]] = []  # damaged steps passed over by the last restore
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=1,  # the decision is ours (`should_save`), not orbax's
            max_to_keep=keep,
            keep_period=keep_period,
            enable_async_checkpointing=async_save,
            # Deletes `<step>.orbax-checkpoint-tmp` directories left by a run killed mid-save.
            cleanup_tmp_directories=True,
            create=True,
            # Runs after every item is written, before the tmp directory becomes `<step>/`:
            # the manifest is part of the atomically published step.
            async_options=(ocp.AsyncOptions(post_finalization_callback=self._write_saving_manifest)
                           if async_save else None),
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

    # ----------------------------------------------------------------------------- integrity
    def _write_saving_manifest(self) -> None:
        """The manifest of the step being saved, into its tmp directory (or the step directory
        where orbax writes in place), on the primary process."""
        step = self._saving_step
        if step is None or jax.process_index() != 0:
            return
        tmp = sorted(self.directory.glob(f"{step}.orbax-checkpoint-tmp*"))
        step_dir = tmp[-1] if tmp else self.directory / str(step)
        write_manifest(step_dir, step)

    def _verdict(self, step: int) -> tuple[str, str]:
        """("ok" | "legacy" | "damaged", detail) for a finished step, decided on the primary
        process and shared (every process restores the same step)."""

        def decide() -> tuple[str, str]:
            step_dir = self.directory / str(step)
            if (step_dir / MANIFEST).is_file():
                try:
                    key = _stat_key(step_dir)
                except OSError:
                    key = None
                if key is not None and key in _VERIFIED:
                    return "ok", ""
                problem = verify_manifest(step_dir)
                if problem is None and key is not None:
                    _VERIFIED.add(key)
                return ("damaged", problem) if problem else ("ok", "")
            if not step_dir.is_dir() or not any(step_dir.iterdir()):
                return "damaged", "empty step directory"
            missing = [name for name in ITEMS if not (step_dir / name).is_dir()]
            if missing:
                return "damaged", f"incomplete: missing {missing}"
            try:
                meta = self._restore_item(step, "meta", ocp.args.JsonRestore())
            except CheckpointError as e:
                return "damaged", f"item 'meta' unreadable ({_one_line(e.__cause__ or e)})"
            version = meta.get("format_version") if isinstance(meta, dict) else None
            if version == 1:
                return "legacy", "saved before integrity manifests"
            return "damaged", f"no {MANIFEST} (the save did not finish or the file was removed)"

        if jax.process_count() == 1:
            return decide()
        verdict = decide() if jax.process_index() == 0 else None
        return tuple(distributed.allgather_objects(verdict)[0])

    def newest_intact_step(self) -> int | None:
        """The newest step that passes verification, without restoring it (None when there is
        no step); CheckpointError, in one line, when there are steps and none is intact."""
        self._mgr.reload()
        bad = []
        for step in reversed(self.all_steps()):
            status, detail = self._verdict(step)
            if status != "damaged":
                return step
            bad.append((step, detail))
        if bad:
            raise self._none_intact(bad)
        return None

    def _none_intact(self, bad: list[tuple[int, str]]) -> CheckpointError:
        return CheckpointError(
            f"no intact checkpoint in {self.directory}: "
            + "; ".join(f"step {s}: {why}" for s, why in bad)
            + " (nothing restored; the files are left as they are)")

    @property
    def damaged_directory(self) -> Path:
        """Where `set_aside_skipped` moves damaged steps: `<directory>-damaged`."""
        return self.directory.parent / f"{self.directory.name}-damaged"

    def set_aside_skipped(self) -> list[Path]:
        """Moves the damaged steps the last `restore()` passed over (all newer than the step it
        restored) to `<directory>-damaged/step-<s>-<time>/`, so that saving goes on from the
        restored step; returns where they went. Nothing is deleted."""
        moved = []
        if self.skipped and jax.process_index() == 0:
            aside = self.damaged_directory
            aside.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for step, _ in self.skipped:
                src = self.directory / str(step)
                if src.exists():
                    dst = aside / f"step-{step}-{stamp}"
                    shutil.move(str(src), str(dst))
                    moved.append(dst)
        self._barrier()
        self.skipped = []
        self._mgr.reload()
        return moved

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
        # The previous async save (and its manifest callback) ends first; orbax would wait too.
        self._mgr.wait_until_finished()
        self._saving_step = int(step)
        self._mgr.save(step, args=args, force=True)
        if not self.async_save:
            # Written and renamed already: the manifest follows at once (a kill in between
            # leaves a step without one, which restore passes over as damaged).
            if jax.process_index() == 0:
                write_manifest(self.directory / str(step), step)
            self._barrier()

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
        set_aside: bool = False,
    ) -> TrainCheckpoint:
        """Restores checkpoint `step`, or the newest intact one (verified against its manifest).

        Args:
          step: which checkpoint; None for the newest intact one: damaged newer steps are passed
            over (listed in `self.skipped`, logged in one line; see `set_aside_skipped`).
          abstract_params, abstract_opt_state: targets giving structure, shapes, dtypes and
            shardings (ShapeDtypeStructs or concrete arrays; see `abstract_like`). Without a
            target the arrays come back as saved, with the saved structure (dicts/lists).
          restore_opt_state: False skips the optimizer state (evaluation, export).
          set_aside: with `step=None`, move the damaged steps passed over out of the directory
            (`set_aside_skipped`) before returning, so that training can save after the
            restored step; the one log line says where they went.

        Raises:
          CheckpointError if there is no such checkpoint, it is damaged (`DamagedCheckpoint`;
          with `step=None`: every step is), or it does not match the targets.
        """
        self._mgr.reload()
        self.skipped = []
        kwargs = dict(abstract_params=abstract_params, abstract_opt_state=abstract_opt_state,
                      restore_opt_state=restore_opt_state)
        if step is not None:
            if step not in self._mgr.all_steps():
                raise CheckpointError(
                    f"no checkpoint for step {step} in {self.directory} (have {self.all_steps()})")
            return self._restore_step(step, **kwargs)
        steps = self.all_steps()
        if not steps:
            raise CheckpointError(f"no finished checkpoint in {self.directory}")
        for candidate in reversed(steps):
            try:
                got = self._restore_step(candidate, **kwargs)
            except DamagedCheckpoint as e:
                self.skipped.append((candidate, e.reason))
                continue
            if self.skipped:
                damaged = "; ".join(f"step {s}: {why}" for s, why in self.skipped)
                many = len(self.skipped) > 1
                moved = ""
                if set_aside:
                    self.set_aside_skipped()
                    moved = f" (damaged steps moved to {self.damaged_directory}/)"
                log.warning("checkpoint %s damaged: %s; restored step %d instead%s",
                            "steps" if many else "step", damaged, candidate,
                            moved)
            return got
        raise self._none_intact(self.skipped)

    def restore_latest(self, **kwargs: Any) -> TrainCheckpoint | None:
        """`restore()` of the newest intact checkpoint, or None when there is no step at all."""
        self._mgr.reload()
        if self._mgr.latest_step() is None:
            return None
        return self.restore(None, **kwargs)

    def _restore_step(self, step: int, *, abstract_params: Any, abstract_opt_state: Any,
                      restore_opt_state: bool) -> TrainCheckpoint:
        step_dir = self.directory / str(step)
        status, detail = self._verdict(step)
        if status == "damaged":
            raise DamagedCheckpoint(step, detail, self.directory)
        legacy = status == "legacy"
        if legacy:
            log.warning("checkpoint step %d at %s has no %s (saved by an older version): "
                        "restored without verification", step, step_dir, MANIFEST)

        def item(name: str, arg: Any) -> Any:
            try:
                return self._restore_item(step, name, arg)
            except CheckpointError as e:
                if legacy:  # unverified and unreadable: as damaged as a failed digest
                    raise DamagedCheckpoint(step, f"item {name!r} unreadable "
                                                  f"({_one_line(e.__cause__ or e)})",
                                            self.directory) from None
                raise

        meta = item("meta", ocp.args.JsonRestore())
        if not isinstance(meta, dict) or meta.get("format_version") not in _READABLE_VERSIONS:
            raise DamagedCheckpoint(step, f"item 'meta' unknown: {str(meta)[:200]}", self.directory)

        def restore_tree(name, tree):
            if name in meta["empty_items"]:
                return tree  # a tree without leaves: the target is the value
            arg = ocp.args.StandardRestore(abstract_like(tree) if tree is not None else None)
            return item(name, arg)

        params = restore_tree("params", abstract_params)
        opt_state = restore_tree("opt_state", abstract_opt_state) if restore_opt_state else None
        # Restored into host memory, whatever devices and processes saved it.
        if "rng_shape" in meta:
            key_target = np.zeros(meta["rng_shape"], meta["rng_dtype"])
        else:  # written before rng_shape was recorded
            key_target = np.asarray(jax.random.key_data(jax.random.key(0, impl=meta["rng_impl"]))
                                    if meta["rng_impl"] else jax.random.PRNGKey(0))
        key_data = item("rng", ocp.args.StandardRestore({"key_data": key_target}))["key_data"]
        rng = jnp.asarray(key_data)
        if meta["rng_impl"] is not None:
            rng = jax.random.wrap_key_data(rng, impl=meta["rng_impl"])
        data_state = item("data", ocp.args.JsonRestore())
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

    def _restore_item(self, step: int, name: str, arg: Any) -> Any:
        try:
            restored = self._mgr.restore(step, args=ocp.args.Composite(**{name: arg}))
        except Exception as e:  # orbax/tensorstore raise many types; one clear line out
            raise CheckpointError(
                f"checkpoint step {step}, item {name!r} at {self.directory / str(step) / name} "
                f"is corrupt or does not match the target: {_one_line(e)}"
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
