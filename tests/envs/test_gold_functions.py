"""Gold edited functions from real-looking patches, made with git in a repo the test creates;
SWE row loading, repository snapshots and a SWE-Func-Loc episode on them."""

import asyncio
import json
import os
import subprocess
import textwrap

import pytest

from ppp_jax.envs.domains import swe_func_loc
from ppp_jax.envs.domains.base import location_f1, normalize_location
from ppp_jax.envs.domains.gold_functions import (PatchError, apply_file_patch, gold_functions,
                                                 parse_unified_diff)
from ppp_jax.envs.episode import run_episode
from ppp_jax.envs.policy import ScriptedPolicy
from ppp_jax.envs.simulator_embedded import EmbeddedUserSimulator
from ppp_jax.sampling.chat_format.seed_oss import render_tool_call

FILLER = "".join(f"# filler line {i}\n" for i in range(8))  # keeps hunks apart

BASE_MODELS = f'''import os

CONSTANT = 1


def plain(x):
    return x + 1

{FILLER}
@decorator
def decorated(y):
    return y * 2

{FILLER}
class Outer:
    attr = 1

    def method(self):
        a = 1
{FILLER.replace("#", "        #")}
        b = 2
        return a + b

    class Inner:
        def inner_method(self):
            return "inner"

{FILLER.replace("#", "    #")}
    @property
    def prop(self):
        return self.attr

    def to_delete(self):
        return None

{FILLER}
def with_nested():
    def helper():
        return 1
    return helper()

{FILLER}
def untouched():
    return 0
'''

BASE_UTIL = '''def util(a, b):
    """Adds."""
    return a + b
'''


def edit(text, old, new):
    assert old in text, old
    return text.replace(old, new, 1)


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                                          "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}).stdout


@pytest.fixture()
def repo(tmp_path):
    """A git repo with a base commit; returns (path, base sha, patch text)."""
    r = tmp_path / "widgets"
    (r / "pkg").mkdir(parents=True)
    (r / "docs").mkdir()
    (r / "pkg" / "models.py").write_text(BASE_MODELS)
    (r / "pkg" / "util.py").write_text(BASE_UTIL)
    (r / "docs" / "index.rst").write_text("Widgets\n=======\n")
    git(r, "init", "-q")
    git(r, "add", "-A")
    git(r, "commit", "-q", "-m", "base")
    base = git(r, "rev-parse", "HEAD").strip()
    m = BASE_MODELS
    m = edit(m, "CONSTANT = 1", "CONSTANT = 2")  # module level
    m = edit(m, "    return x + 1", "    return x + 2")  # plain
    m = edit(m, "@decorator\ndef decorated", "@decorator(strict=True)\ndef decorated")  # decorator only
    m = edit(m, "    attr = 1", "    attr = 2")  # class body: Outer
    m = edit(m, "        a = 1\n", "        a = 10\n")  # Outer.method, two hunks
    m = edit(m, "        b = 2\n", "        b = 20\n")
    m = edit(m, 'return "inner"', 'return "INNER"')  # nested class method
    m = edit(m, "    def to_delete(self):\n        return None\n", "")  # deleted method
    m = edit(m, "    @property\n    def prop", "    def added_method(self):\n        return 42\n\n"
                                                "    @property\n    def prop")  # added method
    m = edit(m, "        return 1\n    return helper()", "        return 2\n    return helper()")  # nested def
    m += "\n\ndef brand_new():\n    return 'new'\n"  # added top-level function
    (r / "pkg" / "models.py").write_text(m)
    (r / "pkg" / "util.py").write_text(BASE_UTIL.replace("return a + b", "return b + a"))
    (r / "docs" / "index.rst").write_text("Widgets\n=======\n\nMore docs.\n")
    (r / "pkg" / "fresh.py").write_text("def fresh():\n    return 1\n")
    git(r, "add", "-A")
    patch = git(r, "diff", "--cached", base)
    git(r, "reset", "-q", "--hard", base)
    return r, base, patch


def reader(repo_path, base):
    def read(path):
        try:
            return git(repo_path, "show", f"{base}:{path}")
        except subprocess.CalledProcessError:
            return None
    return read


def test_gold_functions_on_a_real_patch(repo):
    path, base, patch = repo
    files = parse_unified_diff(patch)
    assert {f.path for f in files} == {"pkg/models.py", "pkg/util.py", "docs/index.rst", "pkg/fresh.py"}
    models = next(f for f in files if f.path == "pkg/models.py")
    assert len(models.hunks) >= 5  # multi-hunk
    g = gold_functions(patch, reader(path, base))
    assert set(g.functions) == {
        "pkg/models.py:plain", "pkg/models.py:decorated", "pkg/models.py:Outer.method",
        "pkg/models.py:Outer.Inner.inner_method", "pkg/models.py:Outer.to_delete",
        "pkg/models.py:with_nested", "pkg/util.py:util"}
    assert set(g.module_level) == {"pkg/models.py", "pkg/models.py:Outer"}
    assert set(g.added) == {"pkg/models.py:Outer.added_method", "pkg/models.py:brand_new",
                            "pkg/fresh.py:fresh"}
    assert g.deleted == ("pkg/models.py:Outer.to_delete",)
    assert g.dropped_files == ("docs/index.rst",)
    # Applying the parsed hunks reproduces git's result exactly.
    new_text = apply_file_patch(reader(path, base)("pkg/models.py"), models)
    subprocess.run(["git", "-C", str(path), "apply"], input=patch, text=True, check=True)
    assert new_text == (path / "pkg" / "models.py").read_text()


def test_no_function_and_bad_patches(repo):
    path, base, patch = repo
    docs_only = "".join(chunk for chunk in patch.split("diff --git")[1:] if "index.rst" in chunk)
    g = gold_functions("diff --git" + docs_only, reader(path, base))
    assert g.functions == () and g.dropped_files == ("docs/index.rst",)
    broken = patch.replace("-    return x + 1", "-    return x + 99")
    with pytest.raises(PatchError):
        gold_functions(broken, reader(path, base))
    with pytest.raises(PatchError):
        parse_unified_diff(patch[: patch.index("+CONSTANT = 2")])  # cut inside a hunk


def test_hunk_lines_starting_with_dashes_are_not_headers():
    patch = textwrap.dedent("""\
        diff --git a/m.py b/m.py
        --- a/m.py
        +++ b/m.py
        @@ -1,3 +1,3 @@
         def f():
        --- x
        +++ y
             return 1
        """)
    fp = parse_unified_diff(patch)[0]
    assert fp.path == "m.py" and [ln[0] for ln in fp.hunks[0].lines] == [" ", "-", "+", " "]


def test_location_f1_normalization():
    gold = ["astropy/modeling/separable.py:_cstack", "a/b.py:C.m"]
    assert normalize_location(" /testbed/./astropy/modeling/separable.py:_cstack ") == \
        "astropy/modeling/separable.py:_cstack"
    assert location_f1("/testbed/astropy/modeling/separable.py:_cstack\n\na/x/../b.py:C.m\n", gold) == 1.0
    assert location_f1("workspace/a/b.py:C.m", gold) == pytest.approx(2 / 3)
    assert location_f1("a/b.py:other", gold) == 0.0
    assert location_f1(None, gold) == 0.0 and location_f1("", []) == 1.0 and location_f1("", gold) == 0.0


def test_swe_rows_snapshot_and_episode(repo, tmp_path):
    path, base, patch = repo
    row = {"repo": "acme/widgets", "instance_id": "acme__widgets-1", "base_commit": base,
           "patch": patch, "test_patch": "", "problem_statement":
           "Widgets: `plain()` returns the wrong value when called with 1. Expected 3, got 2.",
           "hints_text": "", "created_at": "2024-01-01T00:00:00Z", "version": "1.0",
           "FAIL_TO_PASS": json.dumps(["tests/test_models.py::test_plain"]), "PASS_TO_PASS": "[]",
           "environment_setup_commit": base}
    docs_only = dict(row, instance_id="acme__widgets-2", patch="diff --git" + "".join(
        c for c in patch.split("diff --git")[1:] if "index.rst" in c))
    data = tmp_path / "rows.jsonl"
    swe_func_loc.rows_to_jsonl([row, docs_only], data)
    rows = swe_func_loc.load_swe_rows(str(data))
    cache = swe_func_loc.RepoCache(tmp_path / "cache", clones={"acme/widgets": str(path)})
    tasks, report = swe_func_loc.build_swe_tasks(rows, cache)
    assert report.rows == 2 and report.tasks == 1
    assert report.dropped_no_function == ["acme__widgets-2"]
    # a malformed row refuses the set, naming the row and field (tests/ppp_jax/test_data_faults.py)
    with pytest.raises(swe_func_loc.DataError, match=r"row 2: repo: missing"):
        swe_func_loc.build_swe_tasks(rows + [{"instance_id": "bad"}], cache)
    task = tasks[0]
    assert task.metadata["FAIL_TO_PASS"] == ["tests/test_models.py::test_plain"]
    assert "pkg/models.py:plain" in task.gold and "pkg/models.py" in task.hidden_info.splitlines()
    assert "plain" not in task.vague_prompt

    snap = cache.materialize("acme/widgets", base)
    assert snap == cache.materialize("acme/widgets", base)  # shared
    assert (snap / "pkg" / "models.py").read_text() == BASE_MODELS  # base commit, not HEAD edits
    assert not os.access(snap / "pkg" / "models.py", os.W_OK) or os.geteuid() == 0
    assert (os.stat(snap / "pkg" / "models.py").st_mode & 0o222) == 0

    domain = swe_func_loc.make_domain(cache)
    script = [render_tool_call("execute_bash", {"command": "grep -rn 'def plain' /testbed/pkg"}),
              render_tool_call("str_replace_editor", {"command": "view", "path": "/testbed/pkg/util.py"}),
              render_tool_call("finish", {"answer": "\n".join(task.gold)})]
    rec = asyncio.run(run_episode(domain, task, ScriptedPolicy(script), EmbeddedUserSimulator(),
                                  preference_id="no_preference", prompt_kind="precise"))
    assert rec.tool_calls[0].observation == "/testbed/pkg/models.py:6:def plain(x):"  # as GNU grep names it
    assert "return a + b" in rec.tool_calls[1].observation
    assert rec.task_score == 1.0 and rec.domain == "swe_func_loc"


# (answer line, what the released scorer's `clean` makes of it: envs/repo_env.py FuncLocEnv)
RELEASED_CLEAN = [
    ("./testbed/pkg/x.py:f", "pkg/x.py:f"),  # scored 0 before: only `./` was stripped
    ("/./testbed/pkg/x.py:f", "pkg/x.py:f"),
    ("//workspace/pkg/x.py:C.m", "pkg/x.py:C.m"),
    ("  ./workspace/pkg/../pkg/x.py:f  ", "pkg/x.py:f"),
    ("./pkg/x.py:f", "pkg/x.py:f"),
    ("testbed/./pkg//x.py:f", "pkg/x.py:f"),
    ("testbed/testbed/x.py:f", "testbed/x.py:f"),  # one prefix only, as released
    ("/repo/pkg/x.py:f", "repo/pkg/x.py:f"),  # /repo is not a prefix the released scorer knows
    ("pkg/x.py: f", "pkg/x.py: f"),  # the released scorer keeps inner spaces
]


@pytest.mark.parametrize("line, cleaned", RELEASED_CLEAN)
def test_location_normalization_matches_the_released_scorer(line, cleaned):
    assert normalize_location(line) == cleaned


def test_f1_of_prefixed_answers():
    gold = ["pkg/x.py:f", "pkg/y.py:C.m"]
    assert location_f1("./testbed/pkg/x.py:f\n/./workspace/pkg/y.py:C.m", gold) == 1.0
    assert location_f1("./testbed/pkg/x.py:f", gold) == pytest.approx(2 / 3)
