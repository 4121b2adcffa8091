"""Reading and checking the data files of the task domains: one rule for every fault.

Rows come from local `.jsonl` (one JSON object a line), `.json` (a list of objects, or
{"rows": [...]}) or `.parquet` files; each row carries where it came from: `file:line` for
JSON lines, `file[i]` for a JSON list, `file:row N` for Parquet (1-based).

What happens to each fault (the same in every domain; `docs/reliability.md`):

* refused, with one line `where: field: reason` (`DataError`): a missing, unreadable or empty
  file, an unsupported suffix, a line that is not JSON or not an object, a row missing a field
  its domain requires or holding one of the wrong type, a duplicate id. These are mistakes in
  preparing the data; training on what is left would silently change the experiment. All of a
  file's bad rows are found before refusing, and the line names the first and counts the rest.
* dropped and counted (`DropReport`, logged as one warning with the count per reason and the
  first ids): a well-formed row that the task definition itself filters out (a SWE patch that
  edits no Python function, or does not apply at its base commit). If nothing is left, that is
  refused too, with the same counts.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
_SHOWN = 3  # bad rows or dropped ids named in one message


class DataError(ValueError):
    """A data file or row that cannot be used.

    Attributes:
      where: the file, or `file:line` of the row.
      field: the offending field ("" for the row or file as a whole).
      reason: what is wrong.
    """

    def __init__(self, where: str, field: str, reason: str):
        self.where, self.field, self.reason = where, field, reason
        super().__init__(f"{where}: {field}: {reason}" if field else f"{where}: {reason}")


Located = tuple[str, dict[str, Any]]


def read_located_rows(path: str | os.PathLike) -> list[Located]:
    """(where, row) for every row of a local data file; DataError for any fault of the file or
    of a line's JSON (see the module docstring). Blank lines of a `.jsonl` file are skipped."""
    p = Path(path)
    if p.suffix not in DATA_SUFFIXES:
        raise DataError(str(p), "", f"unsupported data file (expected {', '.join(DATA_SUFFIXES)})")
    if not p.exists():
        raise DataError(str(p), "", "no such file")
    if not p.is_file():
        raise DataError(str(p), "", "not a file")
    if p.suffix == ".parquet":
        return _parquet_rows(p)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = p.read_bytes()[: e.start].count(b"\n") + 1
        raise DataError(f"{p}:{line}", "", f"not UTF-8 text ({e.reason})") from None
    except OSError as e:
        raise DataError(str(p), "", f"cannot be read ({e.strerror})") from None
    if p.suffix == ".jsonl":
        rows: list[Located] = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            where = f"{p}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(where, "", f"not valid JSON ({e.msg} at column {e.colno})") from None
            rows.append((where, _object(where, row)))
        return rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{p}:{e.lineno}", "", f"not valid JSON ({e.msg} at column {e.colno})") \
            from None
    if isinstance(data, dict) and isinstance(data.get("rows"), list):
        data = data["rows"]
    if not isinstance(data, list):
        if isinstance(data, dict) and "rows" in data:
            got = f"an object whose 'rows' is {type(data['rows']).__name__}"
        elif isinstance(data, dict):
            got = f"an object without 'rows' (keys: {sorted(data)[:8]})"
        else:
            got = type(data).__name__
        raise DataError(str(p), "", "a .json data file must hold a list of rows or an object "
                        f"with a 'rows' list, not {got}")
    return [(f"{p}[{i}]", _object(f"{p}[{i}]", row)) for i, row in enumerate(data)]


def load_located_rows(source: str, split: str) -> list[Located]:
    """(where, row) from a local data file (anything with a data suffix, or an existing path),
    else from the Hugging Face dataset named `source` (needs the `datasets` package and network;
    rows are named `source[split] row N`). DataError for a missing file, a missing `datasets`
    package or a failed download, never an ImportError or a library traceback."""
    if source.endswith(DATA_SUFFIXES) or os.path.exists(source):
        return read_located_rows(source)
    try:
        import datasets  # an optional dependency, for online use only
    except ImportError:
        raise DataError(source, "", "not a local file, and reading it as a Hugging Face dataset "
                        "needs `pip install datasets` (and network); give a local .jsonl, .json "
                        "or .parquet file instead") from None
    try:
        loaded = datasets.load_dataset(source, split=split)
    except Exception as e:  # noqa: BLE001 -- the hub client raises many types
        raise DataError(source, "", f"could not be loaded from the Hugging Face hub "
                        f"({type(e).__name__}: {str(e)[:200]})") from None
    return [(f"{source}[{split}] row {i + 1}", dict(r)) for i, r in enumerate(loaded)]


def _object(where: str, row: Any) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise DataError(where, "", f"expected a JSON object, got {type(row).__name__}")
    return row


def _parquet_rows(p: Path) -> list[Located]:
    try:
        import pyarrow.parquet as pq  # an optional dependency
    except ImportError:
        raise DataError(str(p), "", "reading .parquet files needs `pip install pyarrow` (or "
                        "convert the file to .jsonl)") from None
    try:
        table = pq.read_table(p)
    except Exception as e:  # noqa: BLE001 -- pyarrow raises several types for a damaged file
        raise DataError(str(p), "", f"not a readable Parquet file ({type(e).__name__}: "
                        f"{str(e)[:200]})") from None
    return [(f"{p}:row {i + 1}", row) for i, row in enumerate(table.to_pylist())]


def locate(rows: Iterable[Any], name: str = "row") -> list[Located]:
    """Rows as (where, row) pairs: pairs from `read_located_rows` pass through, plain rows
    (built in code) are named `row i`."""
    out = []
    for i, item in enumerate(rows):
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            out.append((item[0], item[1]))
        else:
            out.append((f"{name} {i}", item))
    return out


class RowChecker:
    """Collects the faults of a file's rows, so one refusal names the first and counts the rest.

        check = RowChecker("domain.swe_rows")
        for where, row in rows:
            if check.require_str(where, row, "patch") ...
        check.raise_if_any()
    """

    def __init__(self, what: str):
        self.what = what
        self.errors: list[DataError] = []
        self._ids: dict[str, str] = {}

    def fail(self, where: str, field: str, reason: str) -> None:
        self.errors.append(DataError(where, field, reason))

    def row_ok(self, where: str, row: Any) -> bool:
        if not isinstance(row, Mapping):
            self.fail(where, "", f"expected a JSON object, got {type(row).__name__}")
            return False
        return True

    def text(self, where: str, row: Mapping[str, Any], field: str, *, required: bool = True,
             allow_number: bool = False) -> bool:
        """The field is a non-empty string (or, with `allow_number`, a number); a missing or
        null optional field is fine."""
        if field not in row or row[field] is None:
            if required:
                self.fail(where, field, "missing" if field not in row else "is null")
            return not required
        value = row[field]
        if allow_number and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if not isinstance(value, str):
            kind = "a string or number" if allow_number else "a string"
            self.fail(where, field, f"expected {kind}, got {type(value).__name__}")
            return False
        if required and not value.strip():
            self.fail(where, field, "empty")
            return False
        return True

    def unique(self, where: str, field: str, value: str) -> bool:
        first = self._ids.get(value)
        if first is not None:
            self.fail(where, field, f"duplicate id {value!r} (first at {first})")
            return False
        self._ids[value] = where
        return True

    def raise_if_any(self) -> None:
        """Refuses with one line: the first fault, and how many more (with where they are)."""
        if not self.errors:
            return
        first, rest = self.errors[0], self.errors[1:]
        more = ""
        if rest:
            shown = "; ".join(f"{e.where}: {e.field or 'row'}" for e in rest[:_SHOWN])
            more = (f" (and {len(rest)} more bad row(s) in {self.what}: {shown}"
                    f"{'; ...' if len(rest) > _SHOWN else ''})")
        raise DataError(first.where, first.field, first.reason + more)


@dataclasses.dataclass
class DropReport:
    """Well-formed rows left out by the task definition, with why (see the module docstring)."""

    what: str
    rows: int = 0
    kept: int = 0
    dropped: dict[str, list[str]] = dataclasses.field(
        default_factory=lambda: collections.defaultdict(list))

    def drop(self, reason: str, row_id: str) -> None:
        self.dropped[reason].append(row_id)

    @property
    def num_dropped(self) -> int:
        return sum(len(v) for v in self.dropped.values())

    def summary(self) -> str:
        """One line: rows read, kept, and per reason the count and the first ids."""
        parts = [f"{reason}: {len(ids)} ({', '.join(ids[:_SHOWN])}{', ...' if len(ids) > _SHOWN else ''})"
                 for reason, ids in self.dropped.items()]
        return (f"{self.what}: {self.rows} rows, {self.kept} kept, {self.num_dropped} dropped"
                + (f" ({'; '.join(parts)})" if parts else ""))

    def report(self) -> None:
        """Logs the drops (a warning, so it is seen without --verbose); refuses when no row is
        left."""
        if self.rows == 0:
            raise DataError(self.what, "", "no rows")
        if self.kept == 0:
            raise DataError(self.what, "", "no usable rows: " + self.summary())
        if self.num_dropped:
            log.warning("%s", self.summary())
        else:
            log.info("%s", self.summary())
