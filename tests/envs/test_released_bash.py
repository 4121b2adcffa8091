"""execute_bash's released whitelist: cut, a subset of awk, and git (a snapshot without history,
like the released `git archive` export); refused under the paper whitelist."""

import pytest

from ppp_jax.envs.domains.repo_limits import BASH_WHITELISTS, Limits, ToolError
from ppp_jax.envs.domains.repo_tools import RepoTools
from tests.envs.bwrap import needs_bwrap

TEXT = "alpha,1,x\nbeta,22,y\ngamma,333,z\nno delimiter here\n"


@pytest.fixture
def tools(tmp_path):
    (tmp_path / "data.csv").write_text(TEXT)
    (tmp_path / "mod.py").write_text("def f(a, b):\n    return a\nclass K:\n    def g(self):\n        pass\n")
    return {w: RepoTools(tmp_path, Limits(bash_commands=BASH_WHITELISTS[w]))
            for w in ("paper", "released")}


def bash(tools, cmd, which="released"):
    return tools[which].execute_bash(cmd, {})


def test_cut(tools):
    assert bash(tools, "cut -d , -f 2 data.csv") == "1\n22\n333\nno delimiter here"
    assert bash(tools, "cut -d, -f1,3 data.csv").split("\n")[:2] == ["alpha,x", "beta,y"]
    assert bash(tools, "cut -c 1-3 data.csv").split("\n")[:2] == ["alp", "bet"]
    assert bash(tools, "grep -n def mod.py | cut -d : -f 1") == "1\n4"
    with pytest.raises(ToolError, match="exactly one of -f"):
        bash(tools, "cut data.csv")


def test_awk_subset(tools):
    # line 4 has no comma: $2 is empty (a blank last line, trimmed by execute_bash)
    assert bash(tools, "awk -F , '{print $2}' data.csv") == "1\n22\n333"
    assert bash(tools, "awk -F, '/^b/ {print NR, $1, $NF}' data.csv") == "2 beta y"
    assert bash(tools, "awk '/def/ {print $2}' mod.py") == "f(a,\ng(self):"
    with pytest.raises(ToolError, match="only `awk"):
        bash(tools, "awk 'BEGIN {x=1} {print x}' data.csv")


def test_git_meets_a_tree_without_history_and_paper_refuses(tools):
    assert bash(tools, "git log -3").startswith("fatal: not a git repository")
    for cmd in ("cut -d , -f 2 data.csv", "awk '{print $1}' data.csv", "git log"):
        with pytest.raises(ToolError, match="is not allowed"):
            bash(tools, cmd, "paper")


def test_execute_bash_description_lists_the_whitelist(tools):
    def desc(which):
        return next(s["function"]["description"] for s in tools[which].schemas("openhands")
                    if s["function"]["name"] == "execute_bash")

    assert "tree, cut, awk, git, python, python3, pip;" in desc("released") and "uniq/cut/awk;" in desc("released")
    assert "cut" not in desc("paper") and "tree; `|` pipes into head/tail/wc/grep/sort/uniq;" in desc("paper")


@needs_bwrap
def test_python_print_and_pip_run_sandboxed_over_the_read_only_snapshot(tools, tmp_path):
    tmp_path.chmod(0o755)  # as a snapshot is: world-readable (pytest's tmp dirs are 0700)
    assert bash(tools, 'python -c "print(6 * 7)"') == "42"
    # it sees the snapshot at /testbed (cwd carried by cd), and cannot write to it
    assert bash(tools, "python3 -c \"print(open('data.csv').read().split()[0])\"") == "alpha,1,x"
    out = bash(tools, "python -c \"print(open('x.txt', 'w'))\"")
    assert "Read-only file system" in out and not (tmp_path / "x.txt").exists()
    out = bash(tools, "python -c \"print(__import__('socket').create_connection(('1.1.1.1', 80), 2))\"")
    assert "Network is unreachable" in out or "Errno" in out
    assert "pytest" in bash(tools, "pip list")
    assert bash(tools, "pip show pytest").startswith("Name: pytest")
    with pytest.raises(ToolError, match="only `python -c"):
        bash(tools, "python -c \"import os; os.system('id')\"")
    with pytest.raises(ToolError, match="only `python -c"):
        bash(tools, "python script.py")
    with pytest.raises(ToolError, match="pip: only"):
        bash(tools, "pip install requests")
    with pytest.raises(ToolError, match="not allowed"):
        bash(tools, 'python -c "print(1)"', which="paper")
