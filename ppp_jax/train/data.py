"""The training data pipeline: task records -> (preference, prompt kind) prompts -> batches.

A *task record* is one task instance (a SWE function-localization issue, a deep-research query,
...) with both prompt variants and what the user simulator and the scorer need:

    {"task_id": ..., "domain": ..., "precise_prompt": ..., "vague_prompt": ...,
     "hidden_info": ..., "gold": ..., <any other keys, kept in `extra`>}

The paper (§5.2, `train_12n1.parquet` in the released code) expands every training instance
13 times: once per training preference (12) with the vague prompt, plus once with the precise
prompt. Which simulated user goes with the precise copy is not stated; we default to
`no_preference` and make it configurable (see `DataConfig.precise_preference`).

The pipeline is a grain `MapDataset`:

    source(expanded prompts) -> shuffle(seed, reshuffled per epoch) -> repeat(num_epochs)
      -> batch(batch_size, list) -> this process's contiguous slice [i*b, (i+1)*b), b = B / P

Global step k therefore consumes the global indices [k*B, (k+1)*B) of the shuffled stream, and
process i gets the i-th contiguous block of them, so adding processes never changes which prompts
a step sees, and the processes' prompts concatenated in process order are the single-process
batch in its order (the trainer relies on this to assemble global metrics and batches). Batches
run across epoch boundaries (every batch is full; with a finite `num_epochs` the tail that does not
fill a batch is dropped). The iterator state (`get_state`/`set_state`) is a small JSON-able dict
that also carries a fingerprint of the data and settings, so resuming on different data fails
loudly instead of silently continuing on another trajectory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Sequence

import grain

from ppp_jax.config.data import DataConfig
from ppp_jax.envs.domains.rows import DataError

log = logging.getLogger(__name__)


PromptKind = Literal["vague", "precise"]


# Fields every task record must have, with the type each must be.
_REQUIRED_STR_FIELDS = ("task_id", "domain", "precise_prompt", "vague_prompt")


_KNOWN_FIELDS = frozenset(_REQUIRED_STR_FIELDS + ("hidden_info", "gold"))


class MalformedRecordError(ValueError):
    """A task record is missing a field or has one of the wrong type.

    Attributes:
      where: which row (file and line, or list index).
      field: the offending field name ("" when the row itself is not a mapping).
    """

    def __init__(self, where: str, field: str, reason: str):
        self.where = where
        self.field = field
        self.reason = reason
        what = f"field {field!r}: " if field else ""
        super().__init__(f"malformed task record at {where}: {what}{reason}")


@dataclasses.dataclass(frozen=True)
class TaskRecord:
    """One task instance with both prompt variants.

    Attributes:
      task_id: unique id of the instance (e.g. a SWE-bench instance id).
      domain: the task domain name (e.g. "swe_func_loc", "browsecomp_plus").
      precise_prompt: the original, fully specified task statement.
      vague_prompt: the vaguenized statement (key details removed).
      hidden_info: what the simulated user knows and the vague prompt lacks (str or mapping).
      gold: the task's gold answer in the domain's format (list of functions, answer string, ...).
      extra: every other key of the row, untouched (repo, base_commit, evidence docs, ...).
    """

    task_id: str
    domain: str
    precise_prompt: str
    vague_prompt: str
    hidden_info: Any
    gold: Any
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_row(cls, row: Any, where: str = "<row>") -> TaskRecord:
        """Validates one raw row (a mapping) and builds the record.

        Raises:
          MalformedRecordError naming `where` and the first bad field.
        """
        if isinstance(row, TaskRecord):
            return row
        if not isinstance(row, dict):
            raise MalformedRecordError(where, "", f"expected a JSON object, got {type(row).__name__}")
        for name in _REQUIRED_STR_FIELDS:
            if name not in row:
                raise MalformedRecordError(where, name, "missing")
            value = row[name]
            if not isinstance(value, str):
                raise MalformedRecordError(where, name, f"expected a string, got {type(value).__name__}")
            if not value.strip():
                raise MalformedRecordError(where, name, "empty")
        for name in ("hidden_info", "gold"):
            if name not in row:
                raise MalformedRecordError(where, name, "missing")
            if row[name] is None:
                raise MalformedRecordError(where, name, "is null")
        hidden = row["hidden_info"]
        if not isinstance(hidden, (str, dict)):
            raise MalformedRecordError(
                where, "hidden_info", f"expected a string or object, got {type(hidden).__name__}"
            )
        return cls(
            task_id=row["task_id"],
            domain=row["domain"],
            precise_prompt=row["precise_prompt"],
            vague_prompt=row["vague_prompt"],
            hidden_info=hidden,
            gold=row["gold"],
            extra={k: v for k, v in row.items() if k not in _KNOWN_FIELDS},
        )


@dataclasses.dataclass(frozen=True)
class PromptItem:
    """One training prompt: a task instance seen by one simulated user through one prompt kind.

    A batch is a `list[PromptItem]`; the rollout orchestrator runs G episodes per item, and `uid`
    names the GRPO group.
    """

    task: TaskRecord
    preference_id: str
    prompt_kind: PromptKind
    copy: int = 0  # which copy, when a prompt is repeated (vague_copies / precise_copies > 1)

    @property
    def prompt(self) -> str:
        """The task statement the agent sees."""
        return self.task.vague_prompt if self.prompt_kind == "vague" else self.task.precise_prompt

    @property
    def uid(self) -> str:
        """A unique id of this prompt in the expanded dataset."""
        return f"{self.task.task_id}|{self.preference_id}|{self.prompt_kind}|{self.copy}"


@dataclasses.dataclass
class DataStats:
    """Counters from loading and expanding the data; nothing is dropped without a count here.

    Attributes:
      rows_read: raw rows seen.
      rows_dropped: rows skipped as malformed (only with on_malformed="skip").
      drop_reasons: one message per dropped row (row and field named).
      records: valid task records kept.
      prompts: expanded prompts (records × preferences and kinds).
    """

    rows_read: int = 0
    rows_dropped: int = 0
    drop_reasons: list[str] = dataclasses.field(default_factory=list)
    records: int = 0
    prompts: int = 0


def training_preferences() -> tuple[str, ...]:
    """The registry's training ("seen") preference ids, in registry order.

    Raises:
      ImportError if `ppp_jax.envs.preferences` is not available; pass
      `DataConfig.vague_preferences` explicitly then.
    """
    from ppp_jax.envs import preferences  # UserVille's registry; imported lazily on purpose

    return tuple(preferences.TRAIN_IDS)


def _resolve_preferences(config: DataConfig) -> tuple[str, ...]:
    if config.vague_preferences:
        prefs = config.vague_preferences
    else:
        try:
            prefs = training_preferences()
        except ImportError as e:
            raise ValueError(
                "DataConfig.vague_preferences is empty and the preference registry is unavailable "
                f"({e}); list the training preference ids in the config"
            ) from None
    if len(set(prefs)) != len(prefs):
        raise ValueError(f"duplicate preference ids in {list(prefs)}")
    return tuple(prefs)


def read_rows(path: str | Path) -> Iterator[tuple[str, Any]]:
    """Yields (where, raw row) from a `.jsonl` file (one object a line) or a `.json` list.

    A line that is not valid JSON is yielded as a `MalformedRecordError` instance in place of the
    row, so the caller's error/skip policy applies to it too. Blank lines are ignored. A file
    that is missing, not UTF-8, of another suffix, or a `.json` file that is not a JSON list
    raises `DataError` naming it (and the line) at once: no policy makes such a file usable.
    """
    path = Path(path)
    if path.suffix not in (".jsonl", ".json"):
        raise DataError(str(path), "", "unsupported task-record file (expected .jsonl or .json)")
    if not path.is_file():
        raise DataError(str(path), "", "no such file" if not path.exists() else "not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}", "", f"not UTF-8 text ({e.reason})") from None
    if path.suffix == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}", "", f"not valid JSON ({e.msg} at column "
                            f"{e.colno})") from None
        if not isinstance(rows, list):
            raise DataError(str(path), "", "a .json data file must hold a list of records")
        for i, row in enumerate(rows):
            yield f"{path}[{i}]", row
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as e:
            yield where, MalformedRecordError(where, "", f"not valid JSON ({e.msg} at column {e.colno})")


def parse_records(
    rows: Iterable[Any] | Iterable[tuple[str, Any]],
    on_malformed: Literal["error", "skip"] = "error",
    stats: DataStats | None = None,
) -> tuple[list[TaskRecord], DataStats]:
    """Validates raw rows into task records, applying the malformed-row policy.

    Args:
      rows: raw rows (dicts or TaskRecords), or (where, row) pairs as `read_rows` yields.
      on_malformed: "error" raises on the first bad row; "skip" drops it and counts it.
      stats: counters to add to (a fresh `DataStats` if None).

    Returns:
      (records, stats). Duplicate task ids count as malformed (the later row is the bad one).
    """
    stats = stats if stats is not None else DataStats()
    records: list[TaskRecord] = []
    seen: dict[str, str] = {}
    for i, item in enumerate(rows):
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            where, row = item
        else:
            where, row = f"row {i}", item
        stats.rows_read += 1
        try:
            if isinstance(row, MalformedRecordError):
                raise row
            record = TaskRecord.from_row(row, where)
            if record.task_id in seen:
                raise MalformedRecordError(
                    where, "task_id", f"duplicate id {record.task_id!r} (first at {seen[record.task_id]})"
                )
        except MalformedRecordError as e:
            if on_malformed == "error":
                raise
            stats.rows_dropped += 1
            stats.drop_reasons.append(str(e))
            log.warning("dropping %s", e)
            continue
        seen[record.task_id] = where
        records.append(record)
    stats.records += len(records)
    return records, stats


def expand_records(records: Sequence[TaskRecord], config: DataConfig) -> list[PromptItem]:
    """Expands each instance into its training prompts, in a fixed (unshuffled) order.

    Per instance: every preference of `vague_preferences` (or the registry's training split) with
    the vague prompt (`vague_copies` times each), then the precise prompt with
    `precise_preference` (`precise_copies` times) when `include_precise`.
    """
    prefs = _resolve_preferences(config)
    items: list[PromptItem] = []
    for n, record in enumerate(records):
        for pref in prefs:
            for c in range(config.vague_copies):
                items.append(PromptItem(record, pref, "vague", c))
        if config.include_precise and config.precise_copies:
            if config.precise_preference == "random":
                if not prefs:
                    raise ValueError("precise_preference='random' needs vague_preferences")
                # A per-instance draw that depends only on (seed, task_id): stable for the run and
                # independent of record order.
                h = hashlib.sha256(f"{config.seed}|{record.task_id}".encode()).digest()
                pref = prefs[int.from_bytes(h[:8], "little") % len(prefs)]
            else:
                pref = config.precise_preference
            for c in range(config.precise_copies):
                items.append(PromptItem(record, pref, "precise", c))
    return items


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    """Which slice of the data this process reads. Defaults come from jax."""

    index: int
    count: int

    @classmethod
    def from_jax(cls) -> ShardInfo:
        import jax

        return cls(jax.process_index(), jax.process_count())


@dataclasses.dataclass(frozen=True)
class _Slice:
    """`batch[start:stop]`: one process's block of a global batch (a picklable map function)."""

    start: int
    stop: int

    def __call__(self, batch: list[PromptItem]) -> list[PromptItem]:
        return batch[self.start : self.stop]


class BatchIterator:
    """An iterator of `list[PromptItem]` batches with checkpointable state.

    `get_state()` returns a JSON-able dict; `set_state(state)` on an iterator of the same dataset
    (same records, settings and shard) continues exactly where the saved one stopped.
    """

    def __init__(self, dataset: TaskDataset):
        self._dataset = dataset
        self._it = iter(dataset.grain_dataset.to_iter_dataset(
            # The items are small Python objects already in memory: reading them in threads
            # would only add overhead and make the state harder to reason about.
            grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
        ))
        self._batches = 0

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> list[PromptItem]:
        batch = next(self._it)
        self._batches += 1
        return batch

    @property
    def batches_yielded(self) -> int:
        """Batches yielded since the start of training (restored by `set_state`)."""
        return self._batches

    @property
    def epoch(self) -> float:
        """Fractional epochs of the expanded prompts consumed so far (global, over processes)."""
        return self._batches * self._dataset.config.batch_size / len(self._dataset.items)

    def get_state(self) -> dict[str, Any]:
        """The iterator position, JSON-able, with a fingerprint of what it iterates."""
        return {
            "grain": self._it.get_state(),
            "batches": self._batches,
            "fingerprint": self._dataset.fingerprint,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Moves this iterator to a saved position.

        Raises:
          ValueError if the state is malformed or was saved for different data or settings.
        """
        if not isinstance(state, dict) or not {"grain", "batches", "fingerprint"} <= set(state):
            raise ValueError(f"not a data-iterator state (expected grain/batches/fingerprint): {state!r}")
        if state["fingerprint"] not in (self._dataset.fingerprint, self._dataset.legacy_fingerprint):
            raise ValueError(
                "data-iterator state was saved for different data or settings: fingerprint "
                f"{state['fingerprint']} != {self._dataset.fingerprint} (records, preferences, "
                "seed or batch size changed, or the state was saved by a multi-process run of "
                "an older version, which assigned prompts to processes differently)"
            )
        self._it.set_state(state["grain"])
        self._batches = int(state["batches"])


class TaskDataset:
    """The expanded, shuffled, repeated, sharded and batched training prompts.

    Attributes:
      config: the DataConfig.
      items: all expanded prompts, unshuffled (global, before sharding).
      shard: this process's shard.
      stats: load/expansion counters.
      grain_dataset: the underlying `grain.MapDataset` of batches.
    """

    def __init__(
        self,
        records: Sequence[TaskRecord],
        config: DataConfig,
        *,
        shard: ShardInfo | None = None,
        stats: DataStats | None = None,
    ):
        self.config = config
        self.shard = shard or ShardInfo.from_jax()
        if not 0 <= self.shard.index < self.shard.count:
            raise ValueError(f"bad shard {self.shard}")
        if config.batch_size % self.shard.count:
            raise ValueError(
                f"batch_size {config.batch_size} is not divisible by the process count {self.shard.count}"
            )
        self.stats = stats or DataStats(records=len(records))
        self.items = expand_records(records, config)
        self.stats.prompts = len(self.items)
        if not self.items:
            if self.stats.rows_dropped:
                reasons = "; ".join(self.stats.drop_reasons[:3])
                raise ValueError(
                    f"no training prompts: all {self.stats.rows_dropped} task rows were dropped "
                    f"as malformed (on_malformed=skip): {reasons}")
            if not records:
                raise ValueError("no training prompts: there are no task records (the data "
                                 "source or the domain gave none)")
            raise ValueError(
                f"no training prompts: {len(records)} task records expand to none "
                f"(vague_copies={config.vague_copies}, include_precise={config.include_precise}, "
                f"precise_copies={config.precise_copies})")
        ds = grain.MapDataset.source(self.items).shuffle(seed=config.seed).repeat(config.num_epochs)
        self.per_process_batch = b = config.batch_size // self.shard.count
        ds = ds.batch(config.batch_size, drop_remainder=True, batch_fn=list)
        if self.shard.count > 1:
            ds = ds.map(_Slice(self.shard.index * b, (self.shard.index + 1) * b))
        self.grain_dataset = ds
        # The fingerprint leaves out the shard on purpose: the iterator position counts global
        # batches, so a state saved by any process of a run with any process count is valid on
        # every process of a run with any other (a 2-process checkpoint resumes on 1 process).
        self.fingerprint = self._fingerprint([config.seed, config.batch_size, config.num_epochs])
        # States saved before the shard left the fingerprint hashed the process count too; a
        # single-process one of those iterates exactly as now, so it stays resumable.
        self.legacy_fingerprint = self._fingerprint(
            [config.seed, config.batch_size, config.num_epochs, 1])

    def _fingerprint(self, settings: list) -> str:
        h = hashlib.sha256()
        h.update(json.dumps(settings).encode())
        for item in self.items:
            h.update(item.uid.encode() + b"\0")
        return h.hexdigest()[:16]

    @property
    def steps_per_epoch(self) -> float:
        """Optimizer steps per pass over the expanded prompts."""
        return len(self.items) / self.config.batch_size

    def __len__(self) -> int:
        """Batches this process will yield (huge when num_epochs is None)."""
        return len(self.grain_dataset)

    def iterator(self) -> BatchIterator:
        """A fresh iterator from the first batch; call `set_state` to resume."""
        return BatchIterator(self)


def make_dataset(
    config: DataConfig,
    records: Iterable[Any] | None = None,
    *,
    shard: ShardInfo | None = None,
) -> TaskDataset:
    """Builds the training dataset from `records` (raw dicts or TaskRecords) or `config.train_path`.

    Raises:
      DataError for a file that is missing, unreadable or empty;
      MalformedRecordError (on_malformed="error") naming the bad row and field;
      ValueError if nothing usable remains or the settings do not fit.
    """
    if records is None:
        if not config.train_path:
            raise ValueError("DataConfig.train_path is empty and no records were given")
        rows: Iterable[Any] = read_rows(config.train_path)
    else:
        rows = records
    parsed, stats = parse_records(rows, config.on_malformed)
    if records is None and stats.rows_read == 0:
        raise DataError(config.train_path, "", "no rows")
    if stats.rows_dropped:
        log.warning("dropped %d of %d malformed task rows: %s%s", stats.rows_dropped,
                    stats.rows_read, "; ".join(stats.drop_reasons[:3]),
                    "; ..." if stats.rows_dropped > 3 else "")
    return TaskDataset(parsed, config, shard=shard, stats=stats)
