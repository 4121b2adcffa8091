"""SWE-Func-Loc: localize the functions a GitHub issue's fix edits (SWE-bench Verified, SWE-Gym).

Data: rows with the SWE-bench fields (`repo`, `instance_id`, `base_commit`, `patch`, `test_patch`,
`problem_statement`, `hints_text`, `created_at`, `version`, `FAIL_TO_PASS`, `PASS_TO_PASS`,
`environment_setup_commit`; the two test lists are JSON strings). `load_swe_rows` reads them from
the Hugging Face hub when online (`princeton-nlp/SWE-bench_Verified` split `test`,
`SWE-Gym/SWE-Gym` split `train`) and from local `.jsonl` / `.json` / `.parquet` files offline.

Repositories: `RepoCache` materializes `repo@base_commit` once from a local clone into
`<cache>/<owner>__<name>@<commit>/`, made read-only and shared by every episode of that instance
(and every instance at that commit). The snapshot is exactly the commit's tree, read with
`git ls-tree` and `git cat-file --batch` (no checkout, no hooks, no shell, no filters): unlike
`git archive`, `.gitattributes` (`export-ignore`, `export-subst`) cannot change it. Entries that
cannot be written safely (symlinks pointing outside the tree, `.git` or `..` path components)
are left out and listed in `<snapshot>.omitted.json`, which the tools quote when the agent asks
for one of them.

Gold: `gold_functions` at the base commit (see that module); instances with no gold Python
function, a patch that does not apply or a commit missing from the clone are dropped and counted
(one warning), while a malformed row or a repository without a local clone refuses the whole set
with `file:line: field: reason` (`check_swe_rows`, `envs/domains/rows.py`). Prompts: the precise prompt is the issue text; the vague prompt
is the row's `vague_prompt` when present, else the rule vaguenizer's rewrite. The simulator's
hidden information is the gold file paths and `path.py:function` lines (the released simulator's
"Edit File Path" and "Edit Function Name").
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import posixpath
import shutil
import stat
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

from ppp_jax.envs.domains.base import Task
from ppp_jax.envs.domains.func_loc import FuncLocDomain, RepoToolsSection, ToolStyle
from ppp_jax.envs.domains.gold_functions import PatchError, gold_functions
from ppp_jax.envs.domains.registry import register_domain
from ppp_jax.envs.domains.repo_limits import BASH_WHITELISTS, Limits
from ppp_jax.envs.domains.repo_tools import omitted_entries_path
from ppp_jax.envs.domains.rows import (
    DATA_SUFFIXES,
    DataError,
    DropReport,
    Located,
    RowChecker,
    load_located_rows,
    locate,
    read_located_rows,
)

log = logging.getLogger(__name__)

DOMAIN = "swe_func_loc"
HF_DATASETS = {"verified": ("princeton-nlp/SWE-bench_Verified", "test"),
               "gym": ("SWE-Gym/SWE-Gym", "train")}
SWE_FIELDS = ("repo", "instance_id", "base_commit", "patch", "test_patch", "problem_statement",
              "hints_text", "created_at", "version", "FAIL_TO_PASS", "PASS_TO_PASS",
              "environment_setup_commit")
_REQUIRED = ("repo", "instance_id", "base_commit", "patch", "problem_statement")


def load_swe_rows(source: str, split: str | None = None) -> list[dict[str, Any]]:
    """Rows from a local `.jsonl`/`.json`/`.parquet` file, or a Hugging Face dataset name (or the
    aliases "verified" / "gym"), the latter needing the `datasets` package and network. Any
    fault (a missing file, a line that is not JSON, no `datasets`) is one `DataError` line."""
    return [row for _, row in load_located_swe_rows(source, split)]


def load_located_swe_rows(source: str, split: str | None = None) -> list[Located]:
    """`load_swe_rows` with where each row came from (`file:line`), for `build_swe_tasks`."""
    if source.endswith(DATA_SUFFIXES) or os.path.exists(source):
        return read_located_rows(source)
    name, default_split = HF_DATASETS.get(source, (source, "test"))
    return load_located_rows(name, split or default_split)


def parse_test_list(value: Any) -> list[str]:
    """FAIL_TO_PASS / PASS_TO_PASS: a JSON string in SWE-bench (a list in some re-exports).
    Raises ValueError saying what is wrong."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"not a JSON list of test ids ({e.msg}): {value[:80]!r}") from None
        if not isinstance(parsed, list):
            raise ValueError(f"expected a JSON list of test ids, got {value[:80]!r}")
        return [str(x) for x in parsed]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"expected a list of test ids (or its JSON text), got {type(value).__name__}")
    return [str(x) for x in value]


def _git(repo: str | os.PathLike, *args: str, binary: bool = False, timeout: float = 300):
    """Runs git with an argv list (no shell); returns stdout (bytes or text)."""
    proc = subprocess.run(["git", "-C", os.fspath(repo), *args], capture_output=True,
                          timeout=timeout, check=False,
                          env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args[:2])} failed: {proc.stderr.decode()[:300]}")
    return proc.stdout if binary else proc.stdout.decode("utf-8", errors="replace")


class RepoCache:
    """Materializes repositories at commits from local clones, once, read-only.

    Args:
      cache_dir: where snapshots go.
      clones: repo name ("owner/name") -> path of a local clone; or use `clone_root`.
      clone_root: directory holding clones named `owner__name` (or `name`).
    """

    def __init__(self, cache_dir: str | os.PathLike, clones: Mapping[str, str] | None = None,
                 clone_root: str | os.PathLike | None = None):
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.clones = dict(clones or {})
        self.clone_root = Path(clone_root) if clone_root else None
        self._locks: dict[str, threading.Lock] = {}
        self._warned: set[str] = set()
        self._guard = threading.Lock()

    def clone_of(self, repo: str) -> Path:
        if repo in self.clones:
            return Path(self.clones[repo])
        names = (repo.replace("/", "__"), repo.split("/")[-1])
        if self.clone_root is not None:
            for name in names:
                if (self.clone_root / name).exists():
                    return self.clone_root / name
            raise FileNotFoundError(f"no local clone of {repo!r}: neither "
                                    f"{' nor '.join(str(self.clone_root / n) for n in names)} exists")
        raise FileNotFoundError(f"no local clone of {repo!r} (give `clones` or `clone_root`)")

    def has_commit(self, repo: str, commit: str) -> bool:
        """Whether the local clone of `repo` holds `commit`."""
        try:
            _git(self.clone_of(repo), "cat-file", "-e", f"{commit}^{{commit}}", timeout=60)
        except (RuntimeError, FileNotFoundError):
            return False
        return True

    def read_file(self, repo: str, commit: str, path: str) -> str | None:
        """A file's text at a commit, None if it does not exist there."""
        try:
            return _git(self.clone_of(repo), "show", f"{commit}:{path}")
        except RuntimeError:
            return None

    def path_for(self, repo: str, commit: str) -> Path:
        return self.cache_dir / f"{repo.replace('/', '__')}@{commit}"

    def materialize(self, repo: str, commit: str) -> Path:
        """The snapshot directory of `repo` at `commit`, created on first use (thread-safe)."""
        target = self.path_for(repo, commit)
        if target.is_dir():
            self._warn_if_stale(target)
            return target
        with self._guard:
            lock = self._locks.setdefault(str(target), threading.Lock())
        with lock:
            if target.is_dir():
                return target
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.cache_dir))
            try:
                omitted = write_tree(self.clone_of(repo), commit, tmp)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            if omitted:
                log.warning("%s@%s: %d tree entries left out of the snapshot: %s", repo, commit,
                            len(omitted), dict(list(omitted.items())[:5]))
            # The list sits beside the snapshot (not in it), so the tree stays the commit's tree.
            with open(omitted_entries_path(tmp), "w", encoding="utf-8") as f:
                json.dump(omitted, f, indent=1, sort_keys=True)
            _make_read_only(tmp)
            os.chmod(tmp, 0o555)
            try:
                os.replace(omitted_entries_path(tmp), omitted_entries_path(target))
                os.rename(tmp, target)
            except OSError:  # another process won the race
                if not target.is_dir():
                    raise
        return target

    def omitted(self, repo: str, commit: str) -> dict[str, str]:
        """Entries of the commit's tree left out of its snapshot: path -> why."""
        path = omitted_entries_path(self.materialize(repo, commit))
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:  # a snapshot from before the list existed
            return {}

    def _warn_if_stale(self, target: Path) -> None:
        """Snapshots made before exact-tree snapshots (by `git archive`, which applies
        `.gitattributes` export rules) have no list of omitted entries; say so once. They are not
        replaced in place, since running episodes may be reading them."""
        if str(target) in self._warned or os.path.exists(omitted_entries_path(target)):
            return
        self._warned.add(str(target))
        log.warning("%s was made by an older version (git archive: .gitattributes export rules "
                    "may have changed it); delete it to rebuild it as the exact commit tree",
                    target)


def write_tree(clone: str | os.PathLike, commit: str, dest: Path) -> dict[str, str]:
    """Writes exactly the tree of `commit` into the empty directory `dest`; returns the entries
    left out (path -> reason).

    Regular and executable files get their blob bytes (no filters, no `.gitattributes`);
    symlinks are created only when their target stays inside the tree (checked on the path,
    after all files are written); submodules become empty directories (as `git archive` makes
    them); paths with a `.git`, `.` or `..` component are refused.
    """
    listing = _git(clone, "ls-tree", "-r", "-z", "--full-tree", commit, binary=True)
    files: list[tuple[str, str, str]] = []  # (mode, object id, path)
    links: list[tuple[str, str]] = []  # (object id, path)
    omitted: dict[str, str] = {}
    for record in listing.split(b"\0"):
        if not record:
            continue
        meta, _, raw_path = record.partition(b"\t")
        mode, kind, oid = meta.decode().split()
        path = os.fsdecode(raw_path)
        parts = path.split("/")
        if any(p in ("", ".", "..") or p.lower() == ".git" for p in parts):
            omitted[path] = "unsafe path component"
        elif kind == "commit":
            (dest / path).mkdir(parents=True, exist_ok=True)  # a submodule: not part of this tree
        elif mode == "120000":
            links.append((oid, path))
        else:
            files.append((mode, oid, path))
    blobs = _read_blobs(clone, [oid for _, oid, _ in files] + [oid for oid, _ in links])
    for mode, oid, path in files:
        target = dest / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(blobs[oid])
        os.chmod(target, 0o755 if mode == "100755" else 0o644)
    for oid, path in links:
        link_target = os.fsdecode(blobs[oid])
        inside = posixpath.normpath(posixpath.join(posixpath.dirname(path), link_target))
        if (posixpath.isabs(link_target) or "\0" in link_target or inside == ".."
                or inside.startswith("../")):
            omitted[path] = f"symbolic link to {link_target!r}, outside the repository"
            continue
        (dest / path).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(link_target, dest / path)
    # A path check cannot see through links to links (`a -> .` then `b -> a/..`): resolve each
    # created link and drop those that end outside, until none does.
    root = os.path.realpath(dest)
    escaping = True
    while escaping:
        escaping = False
        for oid, path in links:
            link = dest / path
            if path in omitted or not os.path.islink(link):
                continue
            real = os.path.realpath(link)
            if real != root and not real.startswith(root + os.sep):
                os.unlink(link)
                omitted[path] = (f"symbolic link to {os.fsdecode(blobs[oid])!r}, which resolves "
                                 "outside the repository")
                escaping = True
    return omitted


def _read_blobs(clone: str | os.PathLike, oids: list[str]) -> dict[str, bytes]:
    """The raw contents of `oids`, read with one `git cat-file --batch` (no filters)."""
    wanted = sorted(set(oids))
    if not wanted:
        return {}
    proc = subprocess.Popen(["git", "-C", os.fspath(clone), "cat-file", "--batch"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL,
                            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})

    def feed() -> None:  # a separate writer, so a full stdout pipe cannot deadlock us
        try:
            proc.stdin.write("".join(f"{oid}\n" for oid in wanted).encode())
        finally:
            proc.stdin.close()

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    blobs: dict[str, bytes] = {}
    try:
        for oid in wanted:
            header = proc.stdout.readline().decode().split()
            if len(header) != 3 or header[0] != oid:
                raise RuntimeError(f"git cat-file: unexpected reply {header!r} for {oid}")
            size = int(header[2])
            data = proc.stdout.read(size)
            proc.stdout.read(1)  # the newline after each object
            if len(data) != size:
                raise RuntimeError(f"git cat-file: short read of {oid}")
            blobs[oid] = data
    finally:
        writer.join()
        proc.stdout.close()
        proc.wait()
    return blobs


def _make_read_only(root: Path) -> None:
    for d, dirs, files in os.walk(root, topdown=False):
        for f in files:
            p = os.path.join(d, f)
            if not os.path.islink(p):
                os.chmod(p, stat.S_IMODE(os.lstat(p).st_mode) & ~0o222)
        for sub in dirs:
            p = os.path.join(d, sub)
            if not os.path.islink(p):
                os.chmod(p, 0o555)


@dataclasses.dataclass
class BuildReport:
    """Counts from building tasks (the paper's 500 -> 488 filter shows up here).

    `drops` has every dropped instance id by reason (`rows.DropReport`); the lists below are the
    same ids for the two reasons callers look at."""

    rows: int = 0
    tasks: int = 0
    dropped_no_function: list[str] = dataclasses.field(default_factory=list)
    dropped_patch_error: list[str] = dataclasses.field(default_factory=list)
    non_python_files: int = 0
    drops: DropReport = dataclasses.field(default_factory=lambda: DropReport("swe rows"))


NO_FUNCTION = "edits no Python function"
PATCH_ERROR = "patch does not apply at base_commit"
NO_COMMIT = "base_commit not in the local clone"


def check_swe_rows(rows: Iterable[Any], repos: RepoCache | None = None,
                   what: str = "swe rows") -> list[Located]:
    """The rows as (where, row) pairs, every one checked: the SWE-bench fields the task needs
    (`repo`, `instance_id`, `base_commit`, `patch`, `problem_statement`) non-empty strings,
    `vague_prompt`/`hints_text` strings if given, the test lists JSON lists, instance ids
    unique, and (with `repos`) a local clone for every repository. Raises DataError (`where:
    field: reason`, and how many more) for any fault; nothing is dropped here."""
    located = locate(rows)
    check = RowChecker(what)
    for where, row in located:
        if not check.row_ok(where, row):
            continue
        ok = all([check.text(where, row, k) for k in _REQUIRED])
        for key in ("vague_prompt", "hints_text"):
            check.text(where, row, key, required=False)
        for key in ("FAIL_TO_PASS", "PASS_TO_PASS"):
            try:
                parse_test_list(row.get(key))
            except ValueError as e:
                check.fail(where, key, str(e))
        if ok and check.unique(where, "instance_id", row["instance_id"]) and repos is not None:
            try:
                repos.clone_of(row["repo"])
            except FileNotFoundError as e:
                check.fail(where, "repo", str(e))
    check.raise_if_any()
    return located


def build_swe_tasks(rows: Iterable[Any], repos: RepoCache, split: str = "test",
                    vaguenizer: Any = None, what: str = "swe rows",
                    on_row: Callable[[], None] | None = None
                    ) -> tuple[list[Task], BuildReport]:
    """Tasks from SWE rows (dicts, or (where, row) pairs as `load_located_swe_rows` gives):
    gold functions at the base commit, prompts, hidden information.

    A malformed row, or one whose repository has no local clone, refuses the whole set
    (`check_swe_rows`: DataError naming `where: field: reason`). Well-formed rows the task
    definition filters out (no Python function edited, the patch does not apply, the commit is
    not in the clone) are dropped, counted by reason in the report and logged as one warning;
    no task left at all is a DataError with those counts. `on_row()` is called after each row
    (a progress bar)."""
    if vaguenizer is None:
        from ppp_jax.envs.vaguenize import RuleVaguenizer  # noqa: PLC0415

        vaguenizer = RuleVaguenizer()
    located = check_swe_rows(rows, repos, what)
    report = BuildReport(drops=DropReport(what))
    tasks = []
    commits: dict[tuple[str, str], bool] = {}
    for _, row in located:
        if on_row is not None and report.rows:
            on_row()
        report.rows += 1
        iid = row["instance_id"]
        at = (row["repo"], row["base_commit"])
        if at not in commits:
            commits[at] = repos.has_commit(*at)
        if not commits[at]:
            report.drops.drop(NO_COMMIT, iid)
            continue
        try:
            gold = gold_functions(row["patch"], lambda p, row=row: repos.read_file(
                row["repo"], row["base_commit"], p))
        except (PatchError, FileNotFoundError, RuntimeError):
            report.dropped_patch_error.append(iid)
            report.drops.drop(PATCH_ERROR, iid)
            continue
        report.non_python_files += len(gold.dropped_files)
        if not gold.functions:
            report.dropped_no_function.append(iid)
            report.drops.drop(NO_FUNCTION, iid)
            continue
        files = sorted({g.split(":")[0] for g in gold.functions})
        precise = str(row["problem_statement"])
        vague = str(row.get("vague_prompt") or vaguenizer.vaguenize(precise))
        meta = {
            "repo": row["repo"], "base_commit": row["base_commit"], "instance_id": iid,
            "FAIL_TO_PASS": parse_test_list(row.get("FAIL_TO_PASS")),
            "PASS_TO_PASS": parse_test_list(row.get("PASS_TO_PASS")),
            "hints_text": row.get("hints_text") or "", "version": row.get("version"),
            "module_level": list(gold.module_level), "added_functions": list(gold.added),
        }
        tasks.append(Task(iid, DOMAIN, precise, vague, "\n".join(files + list(gold.functions)),
                          tuple(gold.functions), split, meta))
    if on_row is not None and report.rows:
        on_row()
    report.tasks = report.drops.kept = len(tasks)
    report.drops.rows = report.rows
    report.drops.report()
    return tasks, report


def make_domain(repos: RepoCache, tool_style: ToolStyle = "openhands",
                shell_whitelist: str = "paper") -> FuncLocDomain:
    """The SWE-Func-Loc domain: each task reads its repository snapshot at the base commit."""
    return FuncLocDomain(DOMAIN, lambda t: str(repos.materialize(t.metadata["repo"],
                                                                  t.metadata["base_commit"])),
                         tool_style, Limits(bash_commands=BASH_WHITELISTS[shell_whitelist]))


def rows_to_jsonl(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> None:
    """Writes rows as JSON lines (e.g. to cache a hub download for offline use)."""
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(dict(r), ensure_ascii=False) + "\n")


@dataclasses.dataclass(frozen=True)
class SweFuncLocSection(RepoToolsSection):
    """The `domain:` config keys of swe_func_loc (needs task rows and local repository clones).

    swe_rows: SWE-bench rows (.jsonl/.json/.parquet).
    swe_split: the split those rows form ("train": SWE-Gym for training; "test": SWE-bench
      Verified for evaluation).
    swe_clone_root: directory of local clones named owner__name.
    swe_cache_dir: where repository snapshots are materialized.
    tool_style: the repository tools (`RepoToolsSection`).
    """

    swe_rows: str = ""
    swe_split: Literal["train", "test"] = "train"
    swe_clone_root: str = ""
    swe_cache_dir: str = ""


def build_domain(section: SweFuncLocSection) -> tuple[list[Task], FuncLocDomain]:
    """(tasks, domain) of a `SweFuncLocSection` (the registered builder)."""
    if not (section.swe_rows and section.swe_clone_root and section.swe_cache_dir):
        raise ValueError("domain swe_func_loc needs domain.swe_rows, domain.swe_clone_root and "
                         "domain.swe_cache_dir (SWE-bench rows and local repository clones)")
    repos = RepoCache(section.swe_cache_dir, clone_root=section.swe_clone_root)
    rows = load_located_swe_rows(section.swe_rows)
    if not rows:
        raise DataError(section.swe_rows, "", "no rows (domain.swe_rows)")
    tasks, report = build_swe_tasks(rows, repos, split=section.swe_split, what=section.swe_rows)
    log.info("swe_func_loc: %d tasks from %d rows", report.tasks, report.rows)
    return tasks, make_domain(repos, section.tool_style, section.shell_whitelist)


register_domain(DOMAIN, SweFuncLocSection, build_domain)
