"""`ppp data swe`: SWE-bench / SWE-Gym rows and repository clones -> a prepared data set folder.

    rows (local .jsonl/.json/.parquet, or the Hugging Face hub when online)
      -> every row checked (`swe_func_loc.check_swe_rows`: a malformed row refuses the set)
      -> a clone per repository under `clone_root` (`owner__name`; cloned bare on demand with
         `clone_missing: true` when online, else refused naming the repository)
      -> the snapshot check (the base commit is in the clone and its tree can be listed; with
         `snapshot_dir`, the read-only snapshot the episodes read is also built) and the gold
         check (the gold patch edits a Python function at the base commit): failures dropped and
         counted by reason
      -> vague prompts (`envs.prepare.vaguenize_rows`: the LLM vaguenizer or the rule one)
      -> the train/test split -> `<output>/` (rows.jsonl, train.jsonl, test.jsonl, dropped.json,
         manifest.json), written whole or not at all.

Each kept row is the input row plus `vague_prompt` (what the vague episodes show the agent),
`vague_source` ("row", "rule" or "llm"), `gold_functions` (`path.py:Qual.name` lines) and
`split`. `domain.swe_rows: <output>/train.jsonl` (or `test.jsonl`) makes a run use it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from ppp_jax.envs.domains.rows import DataError
from ppp_jax.envs.domains.swe_func_loc import (
    RepoCache,
    _git,
    build_swe_tasks,
    check_swe_rows,
    load_located_swe_rows,
)
from ppp_jax.envs.prepare import (
    BarFactory,
    NullBar,
    PreparedFolder,
    SplitSpec,
    VaguenizerSpec,
    drops_record,
    file_sha256,
    split_counts,
    vaguenize_and_split,
    vaguenizer_record,
)

log = logging.getLogger(__name__)

SNAPSHOT_FAILED = "snapshot of base_commit failed"


@dataclasses.dataclass(frozen=True)
class SweSource:
    """The `swe:` section of a data config.

    rows: SWE-bench-format rows: a local .jsonl/.json/.parquet file, or a Hugging Face dataset
      name or alias ("gym" = SWE-Gym/SWE-Gym train, "verified" = princeton-nlp/SWE-bench_Verified
      test; needs `datasets` and network).
    hf_split: the hub split ("" = the alias's, else "test").
    clone_root: a folder of git clones named owner__name (or name).
    clone_missing: clone a missing repository (bare, from `clone_url`) instead of refusing.
    clone_url: where a repository is cloned from; {repo} is owner/name.
    snapshot_dir: also build each base commit's read-only snapshot here (the folder a run's
      `domain.swe_cache_dir` names), dropping rows whose snapshot fails; "" = only check that
      the commit's tree can be listed.
    limit: keep only the first N rows (0 = all).
    """

    rows: str = ""
    hf_split: str = ""
    clone_root: str = ""
    clone_missing: bool = False
    clone_url: str = "https://github.com/{repo}.git"
    snapshot_dir: str = ""
    limit: int = 0


class _Unchanged:
    """The vaguenizer slot of `build_swe_tasks` while preparing: vague prompts come later."""

    def vaguenize(self, precise: str) -> str:
        return precise


def clone_repo(repo: str, clone_root: Path, url_template: str, timeout_s: float = 3600) -> Path:
    """A bare clone of `repo` into `clone_root/owner__name` (atomic: cloned into a temporary
    folder, renamed when complete). DataError naming the repository when git fails."""
    dest = clone_root / repo.replace("/", "__")
    tmp = Path(tempfile.mkdtemp(prefix=f".clone-{dest.name}-", dir=clone_root))
    url = url_template.format(repo=repo)
    try:
        proc = subprocess.run(["git", "clone", "--bare", "--quiet", url, str(tmp / "repo")],
                              capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})
        if proc.returncode != 0:
            raise DataError(repo, "repo", f"git clone {url} failed: "
                            f"{' '.join(proc.stderr.split())[:300]}")
        os.rename(tmp / "repo", dest)
    except subprocess.TimeoutExpired:
        raise DataError(repo, "repo", f"git clone {url} took over {timeout_s:.0f} s") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _ensure_clones(located: list, src: SweSource, repos: RepoCache) -> list[str]:
    """Clones the missing repositories when allowed; returns the ones cloned."""
    cloned = []
    wanted = sorted({row["repo"] for _, row in located
                     if isinstance(row, dict) and isinstance(row.get("repo"), str)})
    for repo in wanted:
        try:
            repos.clone_of(repo)
        except FileNotFoundError:
            if src.clone_missing:
                log.warning("cloning %s into %s", repo, src.clone_root)
                clone_repo(repo, Path(src.clone_root), src.clone_url)
                cloned.append(repo)
    return cloned


def prepare_swe(src: SweSource, vague: VaguenizerSpec, split: SplitSpec, output: str,
                *, overwrite: bool = False, bar: BarFactory = NullBar,
                config: dict[str, Any] | None = None, client: Any = None) -> dict[str, Any]:
    """Prepares `output` (see the module docstring) and returns its manifest.

    Raises DataError (one line: where, field, reason) for a malformed row, a missing clone
    (without `clone_missing`), a failed clone, no row left, or too many failed rewrites;
    FileExistsError when `output` exists and `overwrite` is off. Nothing is written then.
    `bar(total, desc)` makes the progress bars (row checks, rewrites).
    """
    if not (src.rows and src.clone_root):
        raise DataError("swe", "rows" if not src.rows else "clone_root",
                        "empty; `ppp data swe` needs swe.rows and swe.clone_root")
    clone_root = Path(src.clone_root)
    if not clone_root.is_dir():
        if not src.clone_missing:
            raise DataError(src.clone_root, "swe.clone_root", "not a directory of git clones")
        clone_root.mkdir(parents=True)
    located = load_located_swe_rows(src.rows, src.hf_split or None)
    if src.limit:
        located = located[: src.limit]
    if not located:
        raise DataError(src.rows, "", "no rows (swe.rows)")
    snapshots = Path(src.snapshot_dir) if src.snapshot_dir else Path(tempfile.mkdtemp())
    try:
        repos = RepoCache(snapshots, clone_root=clone_root)
        cloned = _ensure_clones(located, src, repos)
        try:
            check_swe_rows(located, repos, what=src.rows)
        except DataError as e:
            if "no local clone" in e.reason and not src.clone_missing:
                raise DataError(e.where, e.field, e.reason + "; clone it there, or set "
                                "swe.clone_missing=true to clone on demand (needs network)") \
                    from None
            raise
        with bar(len(located), "check rows") as progress:
            tasks, report = build_swe_tasks(located, repos, split="train",
                                            vaguenizer=_Unchanged(), what=src.rows,
                                            on_row=progress.update)
        drops = report.drops
        tasks = _snapshot_check(tasks, repos, bool(src.snapshot_dir), drops)
    finally:
        if not src.snapshot_dir:
            _remove_read_only(snapshots)
    rows_by_id = {row["instance_id"]: row for _, row in located}
    done = vaguenize_and_split(
        [(t.task_id, t.precise_prompt, rows_by_id[t.task_id].get("vague_prompt")) for t in tasks],
        vague, split, output, drops, src.rows, bar=bar, client=client)
    outcome = done.outcome
    gold = {t.task_id: t.gold for t in tasks}
    out_rows = []
    for tid in done.kept:
        row = dict(rows_by_id[tid])
        row.update(vague_prompt=outcome.vague[tid], vague_source=outcome.source[tid],
                   gold_functions=list(gold[tid]), split=done.sides[tid])
        out_rows.append(row)
    counts = split_counts(out_rows, drops)
    source = {"rows": src.rows, "hf_split": src.hf_split, "clone_root": src.clone_root,
              "cloned": cloned, "repos": sorted({r["repo"] for r in out_rows})}
    if os.path.isfile(src.rows):
        source["sha256"] = file_sha256(src.rows)
    manifest = {"kind": "swe", "counts": counts, "source": source,
                "vaguenizer": vaguenizer_record(vague, outcome, done.cache_path),
                "split": dataclasses.asdict(split), "config": config or {},
                "snapshot_dir": src.snapshot_dir}
    with PreparedFolder(output, overwrite=overwrite) as folder:
        folder.write_splits("rows.jsonl", out_rows)
        folder.write_json("dropped.json", drops_record(drops))
        folder.commit(manifest)
    log.warning("%s", drops.summary())
    return manifest


def _snapshot_check(tasks: list, repos: RepoCache, build: bool, drops) -> list:
    """Tasks whose base commit's tree can be listed (and, with `build`, materialized)."""
    ok: dict[tuple[str, str], bool] = {}
    kept = []
    for t in tasks:
        at = (t.metadata["repo"], t.metadata["base_commit"])
        if at not in ok:
            try:
                if build:
                    repos.materialize(*at)
                else:
                    _git(repos.clone_of(at[0]), "ls-tree", "-r", "--name-only", at[1], timeout=300)
                ok[at] = True
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
                log.warning("%s@%s: snapshot failed: %s", *at, e)
                ok[at] = False
        if ok[at]:
            kept.append(t)
        else:
            drops.drop(SNAPSHOT_FAILED, t.task_id)
    return kept


def _remove_read_only(root: Path) -> None:
    for d, dirs, _ in os.walk(root):
        os.chmod(d, 0o755)
    shutil.rmtree(root, ignore_errors=True)
