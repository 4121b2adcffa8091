"""The outer training loop: data -> step -> metrics -> checkpoint, resuming automatically.

`run_loop` knows nothing about rollouts or losses. The trainer passes a `step_fn(state, batch)
-> (state, metrics)` that does one whole PPP step (rollouts, scoring, advantages, update, weight
sync); the loop feeds it batches from the data pipeline, writes its metrics, checkpoints the
state together with the data-iterator position, and on start continues from the latest
checkpoint if there is one. A run killed at any moment and restarted with the same arguments
produces the same metrics rows, step for step, as one that was never interrupted, provided
`step_fn` is a deterministic function of (state, batch): all randomness drawn from `state.rng`.

Order within step s (after s-1 updates):

    batch = next(data)   ->   state, m = step_fn(state, batch)   ->   write row s
      ->   if s % save_every == 0 or s == num_steps: save checkpoint s (async)

Rows written after the last finished checkpoint by a killed run are cut off on resume (kept aside,
see `MetricsWriter.start`), then written again by the resumed run.

Damaged checkpoints (see `ppp_jax.train.checkpointing`): the loop resumes from the newest intact
step and moves the damaged newer ones aside; if every step is damaged it refuses
(`CheckpointError`) and starts nothing. It never starts from scratch over existing checkpoints.
Run folders: `check_run_folder` refuses a folder with an earlier run's history but no checkpoint
(the trainer and `ppp sft` call it); `set_aside_run` moves such files into
`<run>/previous-<time>/` for a deliberate start over (`--restart`).

Stopping: SIGTERM and SIGINT (Ctrl+C) finish the current step, save a checkpoint and return; a
second signal raises KeyboardInterrupt at once (the last finished checkpoint stays).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import jax

from ppp_jax.scale import distributed
from ppp_jax.train.checkpointing import CheckpointManager, abstract_like
from ppp_jax.train.metrics import MetricsWriter, StepTimer, flatten
from ppp_jax.train.progress import ProgressBar

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoopState:
    """What the loop carries from step to step and checkpoints.

    Attributes:
      step: optimizer steps taken so far (a Python int; never traced).
      train: the trainer's state pytree; it holds the params under `params` (an attribute, as in
        `ppp_jax.rl.train_step.TrainState`, or a mapping key) and everything else the update needs
        (optimizer state, counters). Checkpoints store the params and the rest as two items, so
        params can be restored alone for evaluation or export.
      rng: the trainer's PRNG key; `step_fn` splits it and returns the carried half.
    """

    step: int
    train: Any
    rng: Any

    def replace(self, **changes: Any) -> LoopState:
        return dataclasses.replace(self, **changes)


def split_train(train: Any) -> tuple[Any, Any]:
    """(params, rest): the trainer state without its params, for the two checkpoint items."""
    if isinstance(train, Mapping):
        return train["params"], {k: v for k, v in train.items() if k != "params"}
    if dataclasses.is_dataclass(train) and hasattr(train, "params"):
        return train.params, dataclasses.replace(train, params=None)
    raise TypeError(
        f"the train state must be a mapping or dataclass with `params`, got {type(train).__name__}"
    )


def merge_train(params: Any, rest: Any) -> Any:
    """The inverse of `split_train`."""
    if isinstance(rest, Mapping):
        return {"params": params, **rest}
    return dataclasses.replace(rest, params=params)


class DataIterator(Protocol):
    """The data side the loop needs (`ppp_jax.train.data.BatchIterator` is one)."""

    def __next__(self) -> Any: ...

    def get_state(self) -> dict[str, Any]: ...

    def set_state(self, state: dict[str, Any]) -> None: ...


StepFn = Callable[[LoopState, Any], "tuple[LoopState, Mapping[str, Any]]"]


def restore_or_init(
    init: LoopState | Callable[[], LoopState],
    data_iter: DataIterator,
    ckpt: CheckpointManager | None,
    *,
    abstract_state: LoopState | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> LoopState:
    """The latest checkpoint's state (with `data_iter` moved to its position), or a fresh one.

    Args:
      init: the fresh state, or a function making it (called only when needed: when there is no
        checkpoint, or when no `abstract_state` was given to restore onto).
      abstract_state: restore targets (shapes, dtypes, shardings) for the train state; defaults
        to those of `init`.
      metadata: this run's metadata; a checkpoint saved with different metadata is still
        restored, with a warning naming the differing keys.
    """
    latest = ckpt.latest_step() if ckpt is not None else None
    if latest is None:
        return init() if callable(init) else init
    if abstract_state is None:
        abstract_state = init() if callable(init) else init
    abstract_params, abstract_rest = split_train(abstract_state.train)
    # The newest intact step (damaged ones are logged and passed over, then moved aside so
    # that saving goes on from the restored step); CheckpointError if none is intact: a run
    # never starts over on top of its checkpoints.
    restored = ckpt.restore(
        None,
        abstract_params=abstract_like(abstract_params),
        abstract_opt_state=abstract_like(abstract_rest),
        set_aside=True,
    )
    latest = restored.step
    if restored.data_state is None:
        raise ValueError(f"checkpoint step {latest} has no data-iterator state; cannot resume exactly")
    data_iter.set_state(restored.data_state)
    if metadata is not None and restored.metadata != dict(metadata):
        keys = sorted(
            k for k in set(restored.metadata) | set(metadata)
            if restored.metadata.get(k) != metadata.get(k)
        )
        log.warning("resuming from step %d saved with different metadata: keys %s", latest, keys)
    log.info("resumed from checkpoint step %d", latest)
    return LoopState(restored.step, merge_train(restored.params, restored.opt_state), restored.rng)


def run_loop(
    init: LoopState | Callable[[], LoopState],
    data_iter: DataIterator,
    step_fn: StepFn,
    *,
    num_steps: int,
    ckpt: CheckpointManager | None = None,
    writer: MetricsWriter | None = None,
    metadata: Mapping[str, Any] | None = None,
    abstract_state: LoopState | None = None,
    progress: bool = False,
    hooks: Sequence[Callable[[LoopState, Mapping[str, float]], None]] = (),
    stop_signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT),
    on_start: Callable[[int], None] | None = None,
) -> LoopState:
    """Trains until `num_steps` updates have been applied, resuming from `ckpt` if it has any.

    Args:
      init: the initial state (or a function making it); see `restore_or_init`.
      data_iter: the batch iterator; its position is checkpointed with the state.
      step_fn: `(state, batch) -> (new_state, metrics)`; metrics is a (nested) mapping of
        scalars. The loop sets `new_state.step` itself.
      num_steps: total updates of the run (not of this invocation).
      ckpt: saves every `ckpt.save_every` steps and at the end; None: no checkpoints.
      writer: receives `start(resumed_step)` once, then one row per step; closed at the end.
      metadata: JSON-able run metadata (config) stored in every checkpoint.
      abstract_state: restore targets; see `restore_or_init`.
      progress: show a tqdm bar.
      hooks: called after each step with (state, metrics), e.g. evaluation or weight sync.
      stop_signals: signals (default SIGTERM, what schedulers send before preempting, and
        SIGINT, Ctrl+C) that stop the run gracefully: the current step finishes, a checkpoint is
        saved, the loop returns. A second one raises KeyboardInterrupt at once (no save; the
        last finished checkpoint stays). Handlers are installed only when called from the main
        thread. With several processes a signal on any of them stops all of them after the
        same step (agreed every step).
      on_start: called once with the step training starts after (0, or the restored step).

    Returns:
      The final state (`state.step < num_steps` if stopped by a signal or the end of the data).
      Pending async checkpoint writes are finished before returning.
    """
    state = restore_or_init(init, data_iter, ckpt, abstract_state=abstract_state, metadata=metadata)
    start = state.step
    if on_start is not None:
        on_start(start)
    if writer is not None:
        writer.start(start)
    timer = StepTimer()
    bar = ProgressBar(num_steps, initial=start, enabled=progress)
    last_saved = start

    def save() -> None:
        params, rest = split_train(state.train)
        ckpt.save(
            state.step,
            params=params,
            opt_state=rest,
            rng=state.rng,
            data_state=data_iter.get_state(),
            metadata=dict(metadata or {}),
        )

    stop: list[int] = []
    previous = {}

    def on_signal(signum, frame):
        if stop:  # the second one: stop now, without saving
            raise KeyboardInterrupt(f"{signal.Signals(signum).name} received twice")
        stop.append(signum)
        log.warning("%s: stopping after the current step (step %d) with a checkpoint; send it "
                    "again to stop at once without saving", signal.Signals(signum).name,
                    state.step + 1)

    if threading.current_thread() is threading.main_thread():
        for sig in stop_signals:
            previous[sig] = signal.signal(sig, on_signal)
    try:
        for step in range(start + 1, num_steps + 1):
            with timer("data"):
                try:
                    batch = next(data_iter)
                except StopIteration:
                    log.warning("data exhausted after %d steps (of %d)", step - 1, num_steps)
                    break
            with timer("step_fn"):
                state, raw = step_fn(state, batch)
                jax.block_until_ready(state.train)
            state = state.replace(step=step)
            metrics = flatten(raw)
            metrics.update(timer.pop())
            if writer is not None:
                writer.write(step, metrics)
            if ckpt is not None and (ckpt.should_save(step) or step == num_steps):
                save()
                last_saved = step
            for hook in hooks:
                hook(state, metrics)
            bar.update(1, metrics)
            # Only the agreed value decides: a signal that lands after the all-gather is seen
            # by this process alone and waits for the next step's agreement, so no process
            # leaves the loop while another enters the next step's collectives.
            if jax.process_count() > 1:
                stopping = distributed.any_process(bool(stop))
                if stopping and not stop:
                    stop.append(0)  # another process got the signal: stop at the same step
            else:
                stopping = bool(stop)
            if stopping:  # said once already, when the signal came (the caller says the rest)
                log.info("stopped by a signal after step %d", step)
                break
        if ckpt is not None and state.step != last_saved:
            save()  # stopped early (signal, data exhausted) between save points: keep the progress
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        bar.close()
        if ckpt is not None:
            ckpt.wait()
        if writer is not None:
            writer.close()
    return state


# ------------------------------------------------------------------------------- run folders
# What a training run leaves in its folder besides checkpoints: its history.
RUN_HISTORY = ("metrics.jsonl", "tb", "policy")


class RunFolderError(RuntimeError):
    """A run folder holds an earlier run's history but no checkpoint to resume from."""


def _has_content(path: Path) -> bool:
    if path.is_dir():
        return any(path.iterdir())
    return path.exists() and path.stat().st_size > 0


def check_run_folder(run_dir: str | Path, ckpt: CheckpointManager | None,
                     history: Sequence[str] = RUN_HISTORY) -> None:
    """Refuses (`RunFolderError`) a run folder with history (`history` entries of `run_dir`
    that are not empty) but no checkpoint step (`ckpt` None: its checkpoint folder does not
    exist): training would start at step 0 and replace it."""
    run_dir = Path(run_dir)
    if ckpt is not None and ckpt.all_steps():
        return
    where = ckpt.directory if ckpt is not None else run_dir / "checkpoints"
    found = [name for name in history if _has_content(run_dir / name)]
    if found:
        raise RunFolderError(
            f"{run_dir} holds {', '.join(found)} from an earlier run but {where} has no "
            f"checkpoint to resume from; start over with --restart (moves the earlier run's "
            f"files into a previous-<time>/ folder, nothing deleted) or put the checkpoints back")


def set_aside_run(run_dir: str | Path, names: Sequence[str]) -> Path | None:
    """Moves the entries `names` of `run_dir` that exist into `<run_dir>/previous-<time>/`
    (never deletes or overwrites); returns that folder, or None if there was nothing to move.
    With several processes only the primary moves."""
    run_dir = Path(run_dir)
    present = [name for name in names if (run_dir / name).exists()]
    aside = None
    if present and jax.process_index() == 0:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = run_dir / f"previous-{stamp}"
        n = 1
        while aside.exists():
            n += 1
            aside = run_dir / f"previous-{stamp}-{n}"
        aside.mkdir(parents=True)
        for name in present:
            shutil.move(str(run_dir / name), str(aside / name))
        log.warning("moved %s of the earlier run into %s", ", ".join(present), aside)
    if jax.process_count() > 1:  # nobody opens the folder before the primary has moved it
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("ppp_jax.train.loop.set_aside_run")
    return aside
