"""Per-step metrics: aggregation into a flat `{name: float}` dict, writers, and a step timer.

Names are `group/name`, so TensorBoard groups them:

    rollout/*   from EpisodeRecords (ask ratio, questions by effort, lengths, finish reasons, ...)
    score/*     the three PPP scores and the reward with its components, from per-episode scores
    pref/<id>/* per-preference compliance and personalization
    train/*     whatever the train step returns (loss, clip fractions, KL, entropy, grad norm,
                sampler/trainer log-prob gap, ...), passed through as floats
    time/*      seconds per phase (rollout, simulator, train, sync) and per step
    perf/*      throughput (tokens/s)

Writers append one row per step and flush it. They are resume-safe: `start(step)` is called with
the step training resumes after (0 for a fresh run) and sets every row beyond it aside (jsonl:
into `metrics.discarded.jsonl`; TensorBoard: purged from view), so rows written after the last
checkpoint by a killed run are replaced, not duplicated, and the rows before stay byte for byte.
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Protocol

import numpy as np


def flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Flattens nested metric dicts of scalars (Python, numpy or jax) into `{prefix+path: float}`.

    One device->host transfer for all jax values. Non-scalar values raise ValueError naming them.
    """
    import jax

    flat: dict[str, Any] = {}

    def walk(m: Mapping[str, Any], path: str) -> None:
        for k, v in m.items():
            name = f"{path}{k}"
            if isinstance(v, Mapping):
                walk(v, name + "/")
            else:
                flat[name] = v

    walk(metrics, prefix)
    host = jax.device_get(flat)
    out = {}
    for k, v in host.items():
        a = np.asarray(v)
        if a.size != 1:
            raise ValueError(f"metric {k!r} is not a scalar (shape {a.shape})")
        out[k] = float(a.reshape(()))
    return out


def throughput(tokens: float, seconds: float, num_devices: int = 1) -> dict[str, float]:
    """Tokens per second, overall and per device."""
    if seconds <= 0:
        return {}
    return {"perf/tokens_per_s": tokens / seconds, "perf/tokens_per_s_per_device": tokens / seconds / num_devices}


class StepTimer:
    """Accumulates wall time per named phase within a step.

        timer = StepTimer()
        with timer("rollout"):
            ...
        metrics.update(timer.pop())   # {"time/rollout": s, ..., "time/step": total since last pop}

    JAX dispatches asynchronously: block on a phase's outputs inside its `with` block (e.g.
    `jax.block_until_ready`) or the time lands in whichever phase next waits on them. Phases may
    nest or repeat; repeated phases add up.
    """

    def __init__(self, clock=time.perf_counter):
        self._clock = clock
        self._acc: dict[str, float] = collections.defaultdict(float)
        self._start = clock()

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = self._clock()
        try:
            yield
        finally:
            self._acc[name] += self._clock() - t0

    def add(self, name: str, seconds: float) -> None:
        """Adds time measured elsewhere (e.g. simulator time reported by the orchestrator)."""
        self._acc[name] += seconds

    def pop(self) -> dict[str, float]:
        """Returns the accumulated `time/*` metrics and restarts the step clock."""
        now = self._clock()
        out = {f"time/{k}": v for k, v in sorted(self._acc.items())}
        out["time/step"] = now - self._start
        self._acc.clear()
        self._start = now
        return out


# --------------------------------------------------------------------------------------- writers
class MetricsWriter(Protocol):
    """What the training loop writes metrics through."""

    def start(self, step: int) -> None:
        """Called once before writing: training resumes after `step` (0 = fresh run)."""

    def write(self, step: int, metrics: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Reads a metrics jsonl file; a final line cut off by a kill is ignored."""
    rows = []
    path = Path(path)
    if not path.exists():
        return rows
    lines = path.read_text().split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # unterminated last line: a write cut short
                break
            raise ValueError(f"{path}:{i + 1}: not valid JSON") from None
    return rows


class JsonlWriter:
    """One JSON object per step (`{"step": s, name: value, ...}`), appended and flushed.

    `start(step)` keeps the file's bytes up to the last row with `step <= step` exactly as they
    are and cuts off the rest (rows a killed run wrote after its last checkpoint, or a line cut
    short), after appending that tail to `<stem>.discarded.jsonl` beside it: the file is never
    rewritten, and no row is lost. A resumed run then appends its own rows for those steps.
    """

    def __init__(self, path: str | Path, *, fsync: bool = False):
        self.path = Path(path)
        self.fsync = fsync
        self._f = None
        self.dropped_rows = 0  # rows start() cut off: written after the restored checkpoint

    @property
    def discarded_path(self) -> Path:
        """Where `start` keeps the rows it cuts off."""
        return self.path.with_name(self.path.stem + ".discarded.jsonl")

    def _keep_bytes(self, data: bytes, step: int) -> int:
        """Length of the prefix of `data` made of whole rows with `row.step <= step`."""
        keep = 0
        lines = data.split(b"\n")
        for i, line in enumerate(lines[:-1]):  # the last piece has no newline: a cut write
            if line.strip():
                try:
                    row_step = int(json.loads(line)["step"])
                except (ValueError, KeyError, TypeError):
                    raise ValueError(f"{self.path}:{i + 1}: not a metrics row") from None
                if row_step > step:
                    break
            keep += len(line) + 1
        return keep

    def start(self, step: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = self.path.read_bytes() if self.path.exists() else b""
        keep = self._keep_bytes(data, step)
        tail = data[keep:]
        self.dropped_rows = sum(1 for line in tail.split(b"\n") if line.strip())
        if tail:
            with self.discarded_path.open("ab") as f:
                f.write(tail if tail.endswith(b"\n") else tail + b"\n")
                f.flush()
                os.fsync(f.fileno())
            os.truncate(self.path, keep)
        self._f = self.path.open("a")

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if self._f is None:
            self.start(step - 1)  # not started explicitly: keep the rows before this step
        row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        if self.fsync:
            os.fsync(self._f.fileno())

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


class TensorBoardWriter:
    """Scalars to TensorBoard via tensorboardX; on resume, events beyond the step are purged."""

    def __init__(self, logdir: str | Path):
        self.logdir = str(logdir)
        self._w = None

    def start(self, step: int) -> None:
        from tensorboardX import SummaryWriter

        # purge_step makes TensorBoard hide events with step >= purge_step written earlier.
        self._w = SummaryWriter(self.logdir, purge_step=step + 1 if step > 0 else None)

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if self._w is None:
            self.start(step - 1)
        for k, v in metrics.items():
            if math.isfinite(v):
                self._w.add_scalar(k, v, global_step=step)
        self._w.flush()

    def close(self) -> None:
        if self._w is not None:
            self._w.close()
            self._w = None


class MultiWriter:
    """Fans each call out to several writers."""

    def __init__(self, writers: Iterable[MetricsWriter]):
        self.writers = list(writers)

    def start(self, step: int) -> None:
        for w in self.writers:
            w.start(step)

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        for w in self.writers:
            w.write(step, metrics)

    def close(self) -> None:
        for w in self.writers:
            w.close()


def make_writer(run_dir: str | Path, *, tensorboard: bool = True, primary: bool | None = None) -> MultiWriter:
    """The standard writers: `<run_dir>/metrics.jsonl` and TensorBoard events in `<run_dir>/tb`.

    Only the primary process writes (`primary` defaults to `jax.process_index() == 0`); on the
    others this returns a writer that does nothing, so every process can call the same code.
    """
    if primary is None:
        import jax

        primary = jax.process_index() == 0
    if not primary:
        return MultiWriter([])
    run_dir = Path(run_dir)
    writers: list[MetricsWriter] = [JsonlWriter(run_dir / "metrics.jsonl")]
    if tensorboard:
        writers.append(TensorBoardWriter(run_dir / "tb"))
    return MultiWriter(writers)
