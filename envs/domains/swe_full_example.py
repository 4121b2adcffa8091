"""A small real SWE-Full data set built offline: simplejson with planted bugs.

simplejson ships its unit tests inside its wheel and is installed wherever ppp-jax is (orbax
depends on it), so it gives a real Python project with a real test suite on any machine, with no
network. `build_example(dest)` writes, under `dest`:

- `clones/simplejson__simplejson/`: a git repository whose first commit is the installed
  simplejson source (its C speedups left out, so the pure-Python code paths run) and whose
  following commits each plant one bug: the instance's `base_commit`;
- `rows.jsonl`: one SWE-bench-format row per bug: the gold `patch` (the fix), a `test_patch`
  adding a test that pins the bug, and FAIL_TO_PASS / PASS_TO_PASS derived the way SWE-bench
  derives them: by running the tests at the base commit and with the gold patch, both with the
  test patch applied.

Used by the SWE-Full tests and by `configs/tiny_cpu_swefull.yaml` (`domain.swe_full_example`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = "simplejson/simplejson"
CLONE_NAME = "simplejson__simplejson"


@dataclasses.dataclass(frozen=True)
class PlantedBug:
    """One instance: a one-line bug in `path`, the issue a user would file, and the test the
    maintainers would add with the fix."""

    name: str
    path: str
    fixed: str
    buggy: str
    problem_statement: str
    vague_prompt: str
    test_name: str
    test_code: str
    other_test_files: tuple[str, ...]


BUGS = (
    PlantedBug(
        name="sort-keys",
        path="simplejson/encoder.py",
        fixed="_item_sort_key = itemgetter(0)",
        buggy="_item_sort_key = itemgetter(1)",
        problem_statement=(
            "dumps(sort_keys=True) sorts by value instead of by key\n\n"
            "`simplejson.dumps({'b': 1, 'a': 2}, sort_keys=True)` returns "
            "`'{\"b\": 1, \"a\": 2}'`; the keys should come out in order: "
            "`'{\"a\": 2, \"b\": 1}'`. With values of different types it even raises "
            "`TypeError: '<' not supported between instances of 'str' and 'int'`. The default "
            "item sort key set up in `_make_iterencode` (simplejson/encoder.py) picks the wrong "
            "element of the (key, value) pair."),
        vague_prompt="Sorting keys when dumping JSON doesn't work right. Please fix it.",
        test_name="simplejson/tests/test_sort_keys_order.py",
        test_code=(
            "from unittest import TestCase\n\nimport simplejson as json\n\n\n"
            "class TestSortKeysOrder(TestCase):\n"
            "    def test_orders_by_key(self):\n"
            "        self.assertEqual(json.dumps({'b': 1, 'a': 2}, sort_keys=True),\n"
            "                         '{\"a\": 2, \"b\": 1}')\n\n"
            "    def test_mixed_value_types(self):\n"
            "        self.assertEqual(json.dumps({'b': 'x', 'a': 2}, sort_keys=True),\n"
            "                         '{\"a\": 2, \"b\": \"x\"}')\n"),
        other_test_files=("simplejson/tests/test_dump.py", "simplejson/tests/test_separators.py"),
    ),
    PlantedBug(
        name="ascii-escape",
        path="simplejson/encoder.py",
        fixed="return '\\\\u%04x' % (n,)",
        buggy="return '\\\\u%04X' % (n,)",
        problem_statement=(
            "ensure_ascii output uses upper-case hex escapes\n\n"
            "`simplejson.dumps('\\u00e9')` returns `'\"\\\\u00E9\"'` where every other JSON "
            "encoder (and earlier simplejson) writes lower-case hex: `'\"\\\\u00e9\"'`. The "
            "pure-Python `py_encode_basestring_ascii` in simplejson/encoder.py formats the "
            "code point with the wrong case."),
        vague_prompt="The escaped characters in JSON output look different than before. Fix it.",
        test_name="simplejson/tests/test_ascii_hex_case.py",
        test_code=(
            "from unittest import TestCase\n\nimport simplejson as json\n\n\n"
            "class TestAsciiHexCase(TestCase):\n"
            "    def test_lower_case_hex(self):\n"
            "        self.assertEqual(json.dumps(u'\\u00e9'), '\"\\\\u00e9\"')\n"),
        other_test_files=("simplejson/tests/test_encode_basestring_ascii.py",
                          "simplejson/tests/test_unicode.py"),
    ),
)


def _git(cwd: Path, *args: str, input: str | None = None) -> str:
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
           "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z"}
    proc = subprocess.run(["git", "-c", "user.name=ppp", "-c", "user.email=ppp@localhost",
                           "-c", "commit.gpgsign=false", *args], cwd=cwd, input=input,
                          capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args[:2])} in {cwd}: {proc.stderr.strip()[:300]}")
    return proc.stdout


def simplejson_source() -> Path:
    """The installed simplejson package directory (it must be the pure-Python-capable source)."""
    import simplejson  # noqa: PLC0415

    return Path(simplejson.__file__).parent


def _run_tests(tree: Path, files: list[str]) -> dict[str, str]:
    from ppp_jax.envs.domains.swe_grading import parse_pytest_summary  # noqa: PLC0415

    proc = subprocess.run([sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider",
                           "-o", "addopts=", "-q", *files], cwd=tree, capture_output=True,
                          text=True, timeout=600, check=False,
                          env={**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"})
    return parse_pytest_summary(proc.stdout)


def build_example(dest: str | os.PathLike, bugs: tuple[PlantedBug, ...] = BUGS) -> Path:
    """Writes the example data set under `dest` (module docstring); returns `dest/rows.jsonl`.
    Idempotent: an existing complete data set is reused."""
    dest = Path(dest)
    rows_path = dest / "rows.jsonl"
    if rows_path.exists():
        return rows_path
    clone = dest / "clones" / CLONE_NAME
    if clone.exists():
        shutil.rmtree(clone)
    clone.mkdir(parents=True)
    shutil.copytree(simplejson_source(), clone / "simplejson",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd", "_cibw_runner.py"))
    (clone / "README.md").write_text("simplejson (pure-Python copy, for the ppp-jax SWE-Full example)\n")
    _git(clone, "init", "-q")
    _git(clone, "add", "-A")
    _git(clone, "commit", "-q", "-m", "simplejson as installed")
    upstream = _git(clone, "rev-parse", "HEAD").strip()
    rows: list[dict[str, Any]] = []
    for i, bug in enumerate(bugs, 1):
        _git(clone, "checkout", "-q", upstream)
        target = clone / bug.path
        text = target.read_text()
        if text.count(bug.fixed) != 1:
            raise RuntimeError(f"{bug.name}: the installed simplejson's {bug.path} does not contain "
                               f"{bug.fixed!r} exactly once (simplejson changed?)")
        target.write_text(text.replace(bug.fixed, bug.buggy))
        _git(clone, "commit", "-q", "-am", f"plant bug: {bug.name}")
        base = _git(clone, "rev-parse", "HEAD").strip()
        _git(clone, "branch", "-f", f"bug-{bug.name}", base)
        target.write_text(text)
        gold = _git(clone, "diff", base)
        _git(clone, "checkout", "-q", "--", bug.path)
        (clone / bug.test_name).write_text(bug.test_code)
        _git(clone, "add", "-N", bug.test_name)
        test_patch = _git(clone, "diff", base)
        f2p, p2p = _derive_tests(clone, base, gold, test_patch, [bug.test_name, *bug.other_test_files])
        (clone / bug.test_name).unlink()
        _git(clone, "reset", "-q", "--hard", base)
        rows.append({
            "instance_id": f"simplejson__simplejson-{i}", "repo": REPO, "base_commit": base,
            "patch": gold, "test_patch": test_patch, "problem_statement": bug.problem_statement,
            "vague_prompt": bug.vague_prompt, "hints_text": "", "created_at": "2026-01-01T00:00:00Z",
            "version": "example", "environment_setup_commit": upstream,
            "FAIL_TO_PASS": json.dumps(f2p), "PASS_TO_PASS": json.dumps(p2p)})
    _git(clone, "checkout", "-q", upstream)
    tmp = rows_path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(rows_path)
    return rows_path


def _derive_tests(clone: Path, base: str, gold: str, test_patch: str, files: list[str]
                  ) -> tuple[list[str], list[str]]:
    """FAIL_TO_PASS (fail at base, pass with gold) and PASS_TO_PASS (pass at both), with the
    test patch applied on both sides, as SWE-bench defines them."""
    results = []
    for patches in ((test_patch,), (test_patch, gold)):
        with tempfile.TemporaryDirectory() as tmp:
            tree = Path(tmp) / "tree"
            _git(clone, "worktree", "add", "-q", "--detach", str(tree), base)
            try:
                for patch in patches:
                    _git(tree, "apply", "-", input=patch)
                results.append(_run_tests(tree, files))
            finally:
                _git(clone, "worktree", "remove", "--force", str(tree))
    before, after = results
    f2p = sorted(t for t, s in after.items() if s == "PASSED" and before.get(t) != "PASSED")
    p2p = sorted(t for t, s in after.items() if s == "PASSED" and before.get(t) == "PASSED")
    if not f2p:
        raise RuntimeError(f"no FAIL_TO_PASS test for the planted bug at {base[:8]}")
    return f2p, p2p
