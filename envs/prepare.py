"""What every `ppp data` preparation shares: the vaguenizer step, the train/test split and the
prepared folder (written whole or not at all, with a manifest).

A prepared folder holds JSON-lines files of rows (`rows.jsonl` all kept rows, `train.jsonl`,
`test.jsonl`), `dropped.json` (every dropped row id by reason, with counts) and `manifest.json`
(counts, the sha256 of every file, the command and config that made it, the vaguenizer's backend,
model, endpoint and full prompt). It is written into `<output>.partial-<pid>/` and renamed into
place only when complete, so a crash, a refusal or Ctrl+C never leaves a half-written data set
under `<output>`.

The vaguenizer step (`vaguenize_rows`): a row's own vague prompt is kept when it has one
(`keep_row_vague`); the others go to the rule vaguenizer (offline) or to the LLM vaguenizer over
any OpenAI-compatible endpoint, with a disk cache (`<output>.vague_cache.jsonl` by default: beside
the output, so it survives a crash and a rerun re-asks nothing already answered), bounded
concurrency, the client's retries and a progress bar. A row whose rewrite fails (endpoint errors
after the retries, or a reply `vaguenize.check_rewrite` refuses) is dropped and counted with the
reason; more than `max_failed_fraction` of them refuses the whole set (nothing is written; the
cache keeps what finished, so the rerun resumes).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from ppp_jax.envs.domains.rows import DataError, DropReport
from ppp_jax.envs.llm_client import LLMClient, LLMClientConfig, LLMRequestError
from ppp_jax.envs.vaguenize import LLMVaguenizer, RuleVaguenizer, RewriteRejected, prompt_record

log = logging.getLogger(__name__)

SPLITS = ("train", "test")


class NullBar:
    """A progress bar that draws nothing (the default of every `bar=` argument here). The
    commands pass `ppp_jax.train.progress.ProgressBar`-making factories instead."""

    def __init__(self, total: int = 0, desc: str = ""):
        self.total, self.desc = total, desc

    def update(self, n: int = 1) -> None:
        pass

    def __enter__(self) -> NullBar:
        return self

    def __exit__(self, *exc) -> None:
        pass


BarFactory = Callable[[int, str], Any]  # (total, description) -> a context manager with update(n)
VAGUE_FAILED = "vaguenizer failed"


@dataclasses.dataclass(frozen=True)
class VaguenizerSpec:
    """How vague prompts are made (the `vaguenizer:` section of a data config).

    backend: "llm" (the paper's method: any OpenAI-compatible endpoint), "rule" (offline,
      `vaguenize.RuleVaguenizer` in the paper's style: the title and the exact error line).
    keep_row_vague: a row that already has a vague prompt keeps it.
    model, base_url, api_key_env: the endpoint (the key is read from that variable, never stored).
    timeout_s, max_retries, max_concurrency: per request, retries after the first try, requests
      in flight.
    temperature, max_tokens: sampling of the rewrite.
    cache: the JSON-lines cache of finished rewrites; "" = `<output>.vague_cache.jsonl`.
    max_failed_fraction: the share of rows whose rewrite may fail (dropped and counted) before
      the whole set is refused.
    rewrite_tries: replies `vaguenize.check_rewrite` refuses are asked again (at temperature
      1.0) up to this many tries in all, before the row is dropped.
    """

    backend: Literal["rule", "llm"] = "rule"
    keep_row_vague: bool = True
    # the endpoint: `LLMClientConfig`'s fields, with its defaults
    model: str = LLMClientConfig.model
    base_url: str | None = LLMClientConfig.base_url
    api_key_env: str = LLMClientConfig.api_key_env
    timeout_s: float = LLMClientConfig.timeout_s
    max_retries: int = LLMClientConfig.max_retries
    max_concurrency: int = 8
    temperature: float | None = 0.0
    max_tokens: int | None = 256
    cache: str = ""
    max_failed_fraction: float = 0.05
    rewrite_tries: int = 2

    def __post_init__(self):
        if self.backend not in ("rule", "llm"):  # anything else would silently be the LLM
            raise ValueError(f"vaguenizer.backend must be 'rule' or 'llm', got {self.backend!r}")
        if not 0.0 <= self.max_failed_fraction <= 1.0:
            raise ValueError("vaguenizer.max_failed_fraction must be in [0, 1], got "
                             f"{self.max_failed_fraction}")
        if self.max_concurrency < 1 or self.max_retries < 0 or self.rewrite_tries < 1:
            raise ValueError("vaguenizer needs max_concurrency >= 1, max_retries >= 0 and "
                             "rewrite_tries >= 1")

    def client_config(self) -> LLMClientConfig:
        return LLMClientConfig(model=self.model, base_url=self.base_url,
                               api_key_env=self.api_key_env, timeout_s=self.timeout_s,
                               max_retries=self.max_retries, max_concurrency=self.max_concurrency,
                               temperature=self.temperature, max_tokens=self.max_tokens,
                               backoff_base_s=0.5)


@dataclasses.dataclass(frozen=True)
class SplitSpec:
    """The train/test split (the `split:` section).

    test_size: rows in the test split (the paper's BrowseComp-Plus split is 450/100); 0 = use
      `test_fraction`.
    test_fraction: share of rows in the test split when `test_size` is 0 (0 = all rows train;
      1 = all test, e.g. SWE-bench Verified, which is only evaluated on).
    seed: the split is the rows ordered by sha256(seed, id): stable, and a row keeps its side
      when others are added or dropped.
    """

    test_size: int = 0
    test_fraction: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if self.test_size < 0 or not 0.0 <= self.test_fraction <= 1.0:
            raise ValueError("split needs test_size >= 0 and test_fraction in [0, 1]")


def assign_splits(ids: Sequence[str], spec: SplitSpec) -> dict[str, str]:
    """id -> "train" | "test". The `n_test` ids with the smallest sha256(seed:id) go to test,
    where n_test = test_size (capped at len(ids)) or round(test_fraction * len(ids))."""
    n = len(ids)
    n_test = min(spec.test_size, n) if spec.test_size else round(spec.test_fraction * n)
    order = sorted(ids, key=lambda i: hashlib.sha256(f"{spec.seed}:{i}".encode()).hexdigest())
    test = set(order[:n_test])
    return {i: "test" if i in test else "train" for i in ids}


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def default_cache_path(output: str | os.PathLike) -> Path:
    out = Path(output)
    return out.parent / f"{out.name}.vague_cache.jsonl"


@dataclasses.dataclass
class VagueOutcome:
    """The vaguenizer step's result: vague text by row id, failures by row id, and counts."""

    vague: dict[str, str]
    source: dict[str, str]  # row id -> "row", "rule" or "llm"
    failed: dict[str, str]  # row id -> reason
    stats: dict[str, int]


def vaguenize_rows(items: Sequence[tuple[str, str, str | None]], spec: VaguenizerSpec,
                   cache_path: str | os.PathLike, *, bar: BarFactory = NullBar,
                   client: LLMClient | None = None) -> VagueOutcome:
    """Vague prompts for `items` = (row id, precise text, the row's own vague text or None).

    Rows with their own vague text keep it (with `keep_row_vague`); the rule backend never
    fails; the LLM backend asks the endpoint for what the cache does not hold, at most
    `max_concurrency` at a time, and records each failure (after the client's retries) as the
    row's reason instead of raising. `stats`: rows, from_row, rule, cache_hits, asked (rows sent
    to the endpoint), rejected (replies refused), rewrite_retries, failed, plus the client's counters
    (requests, retries, ...) prefixed `client_`. `bar(total, desc)` makes the progress bar.
    """
    vague: dict[str, str] = {}
    source: dict[str, str] = {}
    failed: dict[str, str] = {}
    todo: list[tuple[str, str]] = []
    for rid, precise, own in items:
        if own and spec.keep_row_vague:
            vague[rid], source[rid] = own, "row"
        else:
            todo.append((rid, precise))
    stats = {"rows": len(items), "from_row": len(items) - len(todo), "rule": 0, "cache_hits": 0,
             "asked": 0, "rejected": 0, "rewrite_retries": 0, "failed": 0}
    if spec.backend == "rule":
        rule = RuleVaguenizer(style="paper")
        for rid, precise in todo:
            vague[rid], source[rid] = rule.vaguenize(precise), "rule"
        stats["rule"] = len(todo)
        return VagueOutcome(vague, source, failed, stats)

    own_client = client is None
    client = client or LLMClient(spec.client_config())
    vaguenizer = LLMVaguenizer(client, cache_path, tries=spec.rewrite_tries)

    async def run_all() -> None:
        with (bar(len(todo), "vaguenize") if todo else NullBar()) as progress:
            async def one(rid: str, precise: str) -> None:
                try:
                    vague[rid] = await vaguenizer.vaguenize(precise)
                    source[rid] = "llm"
                except RewriteRejected as e:
                    failed[rid] = f"{VAGUE_FAILED}: unusable reply ({e.why})"
                except LLMRequestError as e:
                    failed[rid] = f"{VAGUE_FAILED}: endpoint error ({_short(e)})"
                progress.update(1)

            try:
                await asyncio.gather(*(one(rid, p) for rid, p in todo))
            finally:
                if own_client:
                    await client.close()

    asyncio.run(run_all())
    stats.update(cache_hits=vaguenizer.stats["hits"], asked=vaguenizer.stats["misses"],
                 rejected=vaguenizer.stats["rejected"], rewrite_retries=vaguenizer.stats["retried"],
                 failed=len(failed))
    stats.update({f"client_{k}": v for k, v in client.stats.items() if k != "loop_rebinds"})
    return VagueOutcome(vague, source, failed, stats)


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:160] + ("..." if len(text) > 160 else "")


def check_failures(outcome: VagueOutcome, spec: VaguenizerSpec, drops: DropReport,
                   what: str) -> None:
    """Adds the vaguenizer's failures to `drops` (reason "vaguenizer failed: endpoint error" or
    "... unusable reply") and refuses (DataError) when they exceed `max_failed_fraction`."""
    for rid, reason in outcome.failed.items():
        drops.drop(reason.split(" (")[0], rid)
    n = max(outcome.stats["rows"], 1)
    if outcome.failed and len(outcome.failed) / n > spec.max_failed_fraction:
        first = next(iter(outcome.failed.items()))
        raise DataError(what, "vaguenizer", (
            f"{len(outcome.failed)} of {outcome.stats['rows']} rewrites failed (more than "
            f"vaguenizer.max_failed_fraction={spec.max_failed_fraction}); first: {first[0]}: "
            f"{first[1]}. Nothing was written; finished rewrites are cached, so a rerun asks "
            "only for the others"))


@dataclasses.dataclass
class VagueSplit:
    """`vaguenize_and_split`'s result."""

    outcome: VagueOutcome
    cache_path: Path  # the vaguenizer's cache (for `vaguenizer_record`)
    kept: list[str]  # the ids that got a vague prompt, in the items' order
    sides: dict[str, str]  # kept id -> "train" | "test"


def vaguenize_and_split(items: Sequence[tuple[str, str, str | None]], spec: VaguenizerSpec,
                        split: SplitSpec, output: str | os.PathLike, drops: DropReport, what: str,
                        *, bar: BarFactory = NullBar, client: LLMClient | None = None
                        ) -> VagueSplit:
    """The steps every preparation ends with: vague prompts for `items` (`vaguenize_rows`, cached
    at `spec.cache` or beside `output`), the failures counted in `drops` (`check_failures`),
    `drops.kept` set, and the kept ids split (`assign_splits`). DataError naming `what` when
    the failures are too many or no row is left."""
    cache_path = Path(spec.cache) if spec.cache else default_cache_path(output)
    outcome = vaguenize_rows(items, spec, cache_path, bar=bar, client=client)
    check_failures(outcome, spec, drops, what)
    kept = [rid for rid, _, _ in items if rid in outcome.vague]
    drops.kept = len(kept)
    if not kept:
        raise DataError(what, "", "no usable rows: " + drops.summary())
    return VagueSplit(outcome, cache_path, kept, assign_splits(kept, split))


def split_counts(out_rows: Sequence[Mapping[str, Any]], drops: DropReport) -> dict[str, Any]:
    """The manifest's `counts`: rows read, kept, dropped (also by reason), train and test."""
    return {"rows": drops.rows, "kept": drops.kept, "dropped": drops.num_dropped,
            "train": sum(1 for r in out_rows if r["split"] == "train"),
            "test": sum(1 for r in out_rows if r["split"] == "test"),
            "dropped_by_reason": {r: len(ids) for r, ids in drops.dropped.items()}}


def vaguenizer_record(spec: VaguenizerSpec, outcome: VagueOutcome, cache_path: Path) -> dict:
    """What made the vague prompts, for the manifest (never the API key)."""
    rec: dict[str, Any] = {"backend": spec.backend, "keep_row_vague": spec.keep_row_vague,
                           "stats": outcome.stats, "failures": dict(sorted(outcome.failed.items())),
                           "sources": {s: sum(1 for v in outcome.source.values() if v == s)
                                       for s in sorted(set(outcome.source.values()))}}
    if spec.backend == "llm":
        rec.update(model=spec.model, base_url=spec.base_url, temperature=spec.temperature,
                   max_tokens=spec.max_tokens, cache=str(cache_path), prompt=prompt_record())
    else:
        rec.update(rule="RuleVaguenizer(style='paper')")
    return rec


class PreparedFolder:
    """Writes a prepared data set into `<output>.partial-<pid>` and moves it to `output` on
    `commit()`; anything else (an exception, Ctrl+C) removes the partial folder.

        with PreparedFolder(out, overwrite=False) as folder:
            folder.write_jsonl("train.jsonl", rows)
            folder.commit(manifest)
    """

    def __init__(self, output: str | os.PathLike, overwrite: bool = False):
        self.output = Path(output)
        if self.output.exists() and not overwrite:
            raise FileExistsError(f"{self.output} already exists; give overwrite=true to replace "
                                  "it (it is replaced only once the new one is complete)")
        if self.output.exists() and not (self.output / "manifest.json").is_file():
            raise FileExistsError(f"{self.output} exists and is not a prepared data set (no "
                                  "manifest.json); refusing to replace it")
        self.path = self.output.parent / f"{self.output.name}.partial-{os.getpid()}"
        self.files: dict[str, dict[str, Any]] = {}
        self._remove_stale()

    def _remove_stale(self) -> None:
        """Removes partial folders a killed run left (their process is gone)."""
        for p in self.output.parent.glob(f"{self.output.name}.partial-*"):
            pid = p.name.rsplit("-", 1)[-1]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                shutil.rmtree(p, ignore_errors=True)

    def __enter__(self) -> PreparedFolder:
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir(parents=True)
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def write_jsonl(self, name: str, rows: Sequence[Mapping[str, Any]]) -> Path:
        p = self.path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(dict(r), ensure_ascii=False, sort_keys=True) + "\n")
        self.files[name] = {"rows": len(rows)}
        return p

    def write_splits(self, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """`name` with every row, and `train.jsonl` / `test.jsonl` with the rows of each split."""
        self.write_jsonl(name, rows)
        for side in SPLITS:
            self.write_jsonl(f"{side}.jsonl", [r for r in rows if r["split"] == side])

    def write_json(self, name: str, data: Any) -> Path:
        p = self.path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(data, indent=1, ensure_ascii=False, sort_keys=True) + "\n",
                     encoding="utf-8")
        self.files.setdefault(name, {})
        return p

    def add_file(self, name: str, **info: Any) -> None:
        """Registers a file written into `self.path` by other code (its hash goes in the
        manifest)."""
        self.files[name] = dict(info)

    def commit(self, manifest: dict[str, Any]) -> Path:
        """Writes manifest.json (with every file's sha256 and size) and moves the folder into
        place, replacing an older prepared set only now."""
        for name, info in self.files.items():
            p = self.path / name
            info.update(sha256=file_sha256(p), bytes=p.stat().st_size)
        manifest = {**manifest, "files": self.files,
                    "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
                        timespec="seconds")}
        (self.path / "manifest.json").write_text(
            json.dumps(manifest, indent=1, ensure_ascii=False, sort_keys=True) + "\n",
            encoding="utf-8")
        old = None
        if self.output.exists():
            old = self.output.parent / f"{self.output.name}.old-{os.getpid()}"
            os.rename(self.output, old)
        os.rename(self.path, self.output)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.output


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def verify_prepared(folder: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a prepared folder after checking every listed file's sha256; DataError
    naming the file that is missing or changed."""
    folder = Path(folder)
    mpath = folder / "manifest.json"
    if not mpath.is_file():
        raise DataError(str(folder), "", "not a prepared data set (no manifest.json; `ppp data` "
                        "writes one)")
    manifest = json.loads(mpath.read_text(encoding="utf-8"))
    for name, info in manifest.get("files", {}).items():
        p = folder / name
        if not p.is_file():
            raise DataError(str(p), "", "listed in manifest.json but missing")
        if file_sha256(p) != info.get("sha256"):
            raise DataError(str(p), "", "changed since `ppp data` wrote it (sha256 differs from "
                            "manifest.json); prepare the data set again")
    return manifest


def drops_record(drops: DropReport) -> dict[str, Any]:
    """`dropped.json`: rows read, kept, and per reason the count and every id."""
    return {"rows": drops.rows, "kept": drops.kept, "dropped": drops.num_dropped,
            "by_reason": {r: {"count": len(ids), "ids": ids} for r, ids in drops.dropped.items()}}
