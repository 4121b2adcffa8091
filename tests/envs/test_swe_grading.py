"""SWE-Full grading on a real project: simplejson with planted bugs (envs/domains/swe_full_example).

The gold patch must grade resolved; an empty patch, a wrong patch, a patch breaking a
PASS_TO_PASS test, a patch editing the tests, a malformed patch and a test run that hangs must
not, each with its reason.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from ppp_jax.envs.domains.swe_full_example import CLONE_NAME, REPO, build_example
from ppp_jax.envs.domains.swe_func_loc import RepoCache
from ppp_jax.envs.domains.swe_grading import (
    grade_patch,
    parse_pytest_summary,
    files_of_tests,
)
from ppp_jax.envs.sandbox.base import SandboxLimits, is_test_path
from ppp_jax.envs.sandbox.environment import EnvironmentCache, EnvironmentSettings
from tests.envs.bwrap import needs_bwrap


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    root = tmp_path_factory.mktemp("swefull")
    rows = [json.loads(line) for line in build_example(root / "data").read_text().splitlines()]
    repos = RepoCache(root / "snapshots", clone_root=root / "data" / "clones")
    envs = EnvironmentCache(root / "envs")
    return root, rows, repos, envs


def make_patch(example, row, edits, with_gold=True):
    """A real `git diff` against the row's base commit: the gold patch (optionally) plus
    `edits` {path: (old, new)} made in a worktree of the example clone."""
    root = example[0]
    clone = root / "data" / "clones" / CLONE_NAME
    tree = root / f"patch-{len(list(root.iterdir()))}"
    run = lambda *a, **k: subprocess.run(a, cwd=k.pop("cwd", clone), check=True,  # noqa: E731
                                         capture_output=True, text=True, **k)
    run("git", "worktree", "add", "-q", "--detach", str(tree), row["base_commit"])
    try:
        if with_gold:
            run("git", "apply", "-", cwd=tree, input=row["patch"])
        for path, (old, new) in edits.items():
            text = (tree / path).read_text()
            assert old in text, (path, old)
            (tree / path).write_text(text.replace(old, new, 1))
        return run("git", "diff", row["base_commit"], cwd=tree).stdout
    finally:
        run("git", "worktree", "remove", "--force", str(tree))


def grade(example, row, patch, **kw):
    root, _, repos, envs = example
    snap = repos.materialize(row["repo"], row["base_commit"])
    env = envs.get(row["repo"], row["environment_setup_commit"], snap)
    return grade_patch(patch, snapshot=snap, work_root=root / "work", test_patch=row["test_patch"],
                       fail_to_pass=json.loads(row["FAIL_TO_PASS"]),
                       pass_to_pass=json.loads(row["PASS_TO_PASS"]), environment=env, **kw)


def test_example_rows_are_real_swe_bench_rows(example):
    _, rows, _, _ = example
    assert [r["repo"] for r in rows] == [REPO, REPO]
    for r in rows:
        f2p, p2p = json.loads(r["FAIL_TO_PASS"]), json.loads(r["PASS_TO_PASS"])
        assert f2p and p2p and not set(f2p) & set(p2p)
        assert r["patch"].startswith("diff --git a/simplejson/encoder.py")
        assert "new file mode" in r["test_patch"]
        assert all(is_test_path(f) for f in files_of_tests(f2p + p2p))


def test_pytest_summary_parsing():
    out = ("PASSED a/test_x.py::T::test_a\nFAILED a/test_x.py::test_b - AssertionError: x - y\n"
           "ERROR a/test_x.py::test_c - RuntimeError\nXFAIL a/test_x.py::test_d - reason\n"
           "SKIPPED [1] a/test_x.py:3: no\nnoise PASSED\n")
    assert parse_pytest_summary(out) == {"a/test_x.py::T::test_a": "PASSED",
                                         "a/test_x.py::test_b": "FAILED",
                                         "a/test_x.py::test_c": "ERROR",
                                         "a/test_x.py::test_d": "XFAIL"}
    assert files_of_tests(["a.py::x", "a.py::y[1]", "b.py::z"]) == ["a.py", "b.py"]
    assert is_test_path("pkg/tests/test_a.py") and is_test_path("test_b.py")
    assert is_test_path("conftest.py") and not is_test_path("pkg/testing_utils.py")
    assert not is_test_path("pkg/core.py")


@needs_bwrap
def test_gold_patch_is_resolved(example):
    _, rows, _, envs = example
    for row in rows:
        g = grade(example, row, row["patch"])
        assert g.resolved, g.reason
        assert g.fail_to_pass_share == 1.0 and all(g.pass_to_pass.values())
    assert envs.builds == 1  # both instances share simplejson's environment


@needs_bwrap
def test_unresolved_patches_say_why(example):
    _, rows, _, _ = example
    row = rows[0]
    g = grade(example, row, "")
    assert not g.resolved and g.reason == "empty patch"
    # wrong fix: sorts by key, descending
    wrong = row["patch"].replace("+        _item_sort_key = itemgetter(0)",
                                 "+        _item_sort_key = lambda kv: tuple(-ord(c) for c in kv[0])")
    assert wrong != row["patch"]
    g = grade(example, row, wrong)
    assert not g.resolved and "FAIL_TO_PASS failing" in g.reason
    assert 0 <= g.fail_to_pass_share < 1
    # the gold fix plus a change that breaks a PASS_TO_PASS test (the default separators)
    breaking = make_patch(example, row, {"simplejson/encoder.py": ("yield '[]'", "yield '[ ]'")})
    g = grade(example, row, breaking)
    assert not g.resolved and "PASS_TO_PASS failing" in g.reason, g.reason
    # a patch that edits the tests
    cheat = make_patch(example, row, {"simplejson/tests/test_dump.py": ("\n", "\nimport sys\n")})
    g = grade(example, row, cheat)
    assert not g.resolved and g.reason.startswith("edits test files: simplejson/tests/test_dump.py")
    g = grade(example, row, "this is not a diff\n")
    assert not g.resolved and (g.reason.startswith("malformed patch") or "does not apply" in g.reason)
    g = grade(example, row, row["patch"].replace("itemgetter(1)", "itemgetter(7)"))
    assert not g.resolved and "does not apply" in g.reason


@needs_bwrap
def test_hanging_test_run_is_cut_and_scored_zero(example):
    _, rows, _, _ = example
    row = rows[0]
    hang = make_patch(example, row, {"simplejson/__init__.py": (
        "__version__ = ", "import time; time.sleep(600)\n__version__ = ")})
    g = grade(example, row, hang, limits=SandboxLimits(wall_s=4.0))
    assert not g.resolved and g.reason == "test run timed out after 4 s"


@needs_bwrap
def test_grading_runs_the_patch_inside_the_sandbox(example, tmp_path):
    """A patch whose code runs at import (during the test run) and tries to write on the host."""
    _, rows, _, _ = example
    row = rows[0]
    target = tmp_path / "pwned"
    evil = make_patch(example, row, {"simplejson/__init__.py": (
        "__version__ = ", f"open({str(target)!r}, 'w').write('x')\n__version__ = ")})
    g = grade(example, row, evil)
    assert not g.resolved and not target.exists()


@needs_bwrap
def test_environment_setup_command_runs_once_in_the_sandbox(example, tmp_path):
    _, rows, repos, _ = example
    row = rows[0]
    snap = repos.materialize(row["repo"], row["base_commit"])
    envs = EnvironmentCache(tmp_path / "envs", EnvironmentSettings(
        setup_command="python -c 'import sys, simplejson; open(sys.prefix + \"/marker\", \"w\")"
                      ".write(simplejson.__file__)'"))
    env = envs.get(REPO, row["environment_setup_commit"], snap)
    assert (env.root / "marker").read_text() == "/testbed/simplejson/__init__.py"
    envs.get(REPO, row["environment_setup_commit"], snap)
    assert envs.builds == 1
    bad = EnvironmentCache(tmp_path / "bad", EnvironmentSettings(setup_command="echo nope; exit 7"))
    with pytest.raises(RuntimeError, match="exit 7"):
        bad.get(REPO, "abc", snap)
    assert not bad.path_for(REPO, "abc").exists()  # nothing half-built left behind
