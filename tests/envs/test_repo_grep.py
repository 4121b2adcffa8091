"""`execute_bash` grep against the real GNU grep binary on the same small tree, and the one
wall-clock deadline per tool call (cancellation included)."""

import asyncio
import os
import shlex
import shutil
import subprocess
import threading
import time

import pytest

from ppp_jax.envs.domains.base import Task
from ppp_jax.envs.domains.func_loc import TOOL_THREAD_NAME, FuncLocDomain
from ppp_jax.envs.domains.repo_tools import Limits, RepoTools

GREP = shutil.which("grep")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("grep_tree")
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "docs").mkdir()
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "core.py").write_text(
        "import os\n\n\nclass Engine:\n    def start(self):\n        return 'started'\n\n"
        "    def stop(self):\n        return 'stopped'\n\n\ndef helper(x):\n    return x + 1\n"
        "\n\ndef stop_all(engines):  # nonstop (x)\n    return [e.stop() for e in engines]\n")
    (root / "pkg" / "sub" / "util.py").write_text(
        "def util():\n    pass\n\n\ndef a_b(value):\n    return value.a.b  # a.b or a*b, -x\n")
    (root / "docs" / "notes.txt").write_text(
        "Start the engine first.\nThen STOP it.\na.b is literal; axb is not.\n*a starts a line\n"
        "-x looks like an option\nends with foo\n")
    (root / "docs" / "empty.txt").write_text("")
    (root / "data.bin").write_bytes(b"\x00\x01start\x00stop\n")
    return root


def real_grep(root, command):
    argv = shlex.split(command)
    assert argv[0] == "grep"
    proc = subprocess.run([GREP, *argv[1:]], cwd=root, capture_output=True, text=True, check=False,
                          env={"LC_ALL": "C.UTF-8", "PATH": os.environ.get("PATH", "")})
    assert proc.returncode in (0, 1), (command, proc.stderr)
    return sorted(proc.stdout.splitlines())


def our_grep(root, command):
    out = RepoTools(root).call("execute_bash", {"command": command}, {})
    assert not out.startswith("ERROR"), (command, out)
    return [] if out == "(no output)" else sorted(out.splitlines())


SAME_AS_GNU = [
    "grep -e start -e stop pkg/core.py",  # several -e: OR of the patterns (returned nothing)
    "grep -n -e 'def start' -e 'def stop' pkg/core.py",
    "grep -F -e 'x + 1' -e \"'stopped'\" pkg/core.py",  # fixed strings, several (nothing before)
    "grep -F a.b docs/notes.txt",  # -F: the dot is literal
    "grep -F -x 'Then STOP it.' docs/notes.txt",
    "grep a.b docs/notes.txt",  # basic regex: the dot is any character
    "grep -E 'start|stop' pkg/core.py",
    "grep 'start\\|stop' pkg/core.py",  # basic-regex alternation
    "grep 'x + 1' pkg/core.py",  # basic regex: `+` is literal
    "grep -E 'x \\+ 1' pkg/core.py",
    "grep 'stop()' pkg/core.py",  # basic regex: parentheses are literal
    "grep -E '(sta|sto)[a-z]+' pkg/core.py",
    "grep '\\(sta\\|sto\\)p' pkg/core.py",
    "grep -i ENGINE pkg/core.py -n",  # an option after the operand (GNU permutes)
    "grep -w stop pkg/core.py",  # not stop_all, not nonstop, not stopped
    "grep -w -e stop -e start pkg/core.py",
    "grep '\\<stop\\>' pkg/core.py",
    "grep -x 'def util():' pkg/sub/util.py",
    "grep -v return pkg/core.py",
    "grep -c -e start -e stop pkg/core.py",
    "grep -o 'st[a-z]*' pkg/core.py",
    "grep -m 1 -n def pkg/core.py",
    "grep -ie START -e Stop docs/notes.txt pkg/core.py",  # two files: names shown
    "grep -rn def pkg",
    "grep -rn 'def \\(start\\|util\\)' .",
    "grep -rl stop",  # no operand: the current directory, names without ./
    "grep -rc def pkg",  # counts for every file, zeros included
    "grep -rL helper pkg",
    "grep -rh 'return value' pkg",
    "grep -rn --include=*.py -e helper -e util .",
    "grep -rn --exclude-dir=sub def pkg",
    "grep -r -I start .",
    "grep '[[:upper:]][a-z]*ngine' pkg/core.py",
    "grep '[.*]' docs/notes.txt",
    "grep '*a' docs/notes.txt",  # basic regex: a leading `*` is literal
    "grep -- -x docs/notes.txt pkg/sub/util.py",
    "grep -Fw -e a.b docs/notes.txt pkg/sub/util.py",
    "grep -E 'a{2}|x' docs/notes.txt",
    "grep -n '^def' pkg/core.py",
    "grep -n 'engines)$' pkg/core.py",
    "grep -n '^$' pkg/core.py",
    "grep -c '' docs/empty.txt docs/notes.txt",  # an empty file has no line
    "grep -P 'foo(?!\\s)' docs/notes.txt",  # a lookahead that a newline would defeat
    "grep -P '\\bstop\\b' pkg/core.py",
    "grep -rn -w -e Engine -e engines -e x .",
]


@pytest.mark.skipif(GREP is None, reason="needs the grep binary to compare with")
@pytest.mark.parametrize("command", SAME_AS_GNU)
def test_grep_output_is_gnu_grep_output(tree, command):
    assert our_grep(tree, command) == real_grep(tree, command)


IN_ORDER_AS_GNU = [  # explicit files: the order is the command line's, compared line by line
    "grep -n -A 1 'def stop' pkg/core.py",
    "grep -B2 helper pkg/core.py",
    "grep -C 1 -n return pkg/core.py",  # groups that touch merge, others are split by --
    "grep -2 -n 'class Engine' pkg/core.py",
    "grep -n -A1 -e start -e stop pkg/core.py pkg/sub/util.py docs/notes.txt",  # -- across files
    "grep -m1 -A2 def pkg/core.py",  # trailing context after the last counted match
    "grep -v -n -B1 -e return -e def pkg/core.py",
    "grep --context=1 --line-number Engine pkg/core.py",
    "grep -e start -e stop pkg/core.py docs/notes.txt",
]


@pytest.mark.skipif(GREP is None, reason="needs the grep binary to compare with")
@pytest.mark.parametrize("command", IN_ORDER_AS_GNU)
def test_grep_output_and_order_are_gnu_grep_s(tree, command):
    proc = subprocess.run([GREP, *shlex.split(command)[1:]], cwd=tree, capture_output=True,
                          text=True, check=False, env={"LC_ALL": "C.UTF-8"})
    ours = RepoTools(tree).call("execute_bash", {"command": command})
    assert ours == (proc.stdout.rstrip("\n") or "(no output)")


def test_several_patterns_each_keep_their_own_syntax(tree):
    # The bug: the alternation joining several -e patterns was itself escaped as a basic regex.
    assert our_grep(tree, "grep -e 'def start' -e 'def stop' pkg/core.py") == [
        "    def start(self):", "    def stop(self):", "def stop_all(engines):  # nonstop (x)"]
    assert our_grep(tree, "grep -F -e 'a.b' -e '(x)' pkg/sub/util.py pkg/core.py") == [
        "pkg/core.py:def helper(x):", "pkg/core.py:def stop_all(engines):  # nonstop (x)",
        "pkg/sub/util.py:    return value.a.b  # a.b or a*b, -x"]
    assert our_grep(tree, "cat pkg/core.py | grep -c -e start -e stop") == ["6"]


def test_grep_errors_and_binary_files_as_gnu_reports_them(tree):
    tools = RepoTools(tree)
    out = tools.call("execute_bash", {"command": "grep start nope.txt docs data.bin docs/notes.txt"})
    assert out.split("\n") == ["grep: nope.txt: No such file or directory",
                               "grep: docs: Is a directory", "grep: data.bin: binary file matches",
                               "docs/notes.txt:*a starts a line"]
    assert tools.call("execute_bash", {"command": "grep -E -F x docs"}).startswith(
        "ERROR: grep: conflicting matchers")
    assert "invalid context length" in tools.call("execute_bash", {"command": "grep -A x s pkg"})
    assert tools.call("execute_bash", {"command": "grep -s start nope.txt"}) == "(no output)"


# --- one wall-clock deadline per tool call --------------------------------------------------------

EVIL = r"^(([a-z])+.)+[A-Z]([a-z])+$"  # catastrophic backtracking on a long lower-case line


@pytest.fixture()
def slow_tree(tmp_path):
    root = tmp_path / "slow"
    root.mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (root / name).write_text(("a" * 3000 + "!\n") * 20)
    return root


def test_one_deadline_covers_every_grep_of_a_command_line(slow_tree):
    limits = Limits(call_timeout_s=1.0, regex_line_cpu_s=0.2)
    tools = RepoTools(slow_tree, limits)
    command = " ; ".join([f"grep -E '{EVIL}' a.txt b.txt c.txt"] * 4)  # 240 lines, ~0.2 s each
    t0 = time.monotonic()
    out = tools.call("execute_bash", {"command": command})
    elapsed = time.monotonic() - t0
    # The deadline, plus at most one in-flight line search (CPU-timed, so stretched by load).
    assert elapsed < limits.call_timeout_s + 1.5, elapsed
    assert "time limit of one call" in out or "stopped at its 1s time limit" in out, out


def test_cancelled_tool_call_stops_its_worker_thread(slow_tree):
    limits = Limits(call_timeout_s=60.0, regex_line_cpu_s=0.2)
    domain = FuncLocDomain("test_loc", lambda task: str(slow_tree), "openhands", limits)
    task = Task("t1", "test_loc", "p", "v", "", ("a.txt:f",), "test", {})
    command = " ; ".join([f"grep -E '{EVIL}' a.txt b.txt c.txt"] * 4)

    async def give_up_early():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(domain.run_tool(task, "execute_bash", {"command": command}, {}),
                                   0.3)

    t0 = time.monotonic()
    asyncio.run(give_up_early())  # also joins the loop's executor threads, if any were used
    while any(t.name == TOOL_THREAD_NAME for t in threading.enumerate()):
        assert time.monotonic() - t0 < 3.0, "the tool's worker thread kept running"
        time.sleep(0.02)
    assert time.monotonic() - t0 < 3.0  # without cancellation: 240 lines x 0.2 s of CPU


def test_every_tool_shares_the_call_s_budget(tree):
    # A budget already spent stops every kind of work of the call, not only grep.
    from ppp_jax.envs.domains.repo_limits import CallBudget

    tools = RepoTools(tree)
    spent = CallBudget(0.0)
    for name, args in [("execute_bash", {"command": "grep -rn def ."}),
                       ("execute_bash", {"command": "ls -R pkg"}),
                       ("execute_bash", {"command": "find . -name '*.py'"}),
                       ("execute_bash", {"command": "tree"}),
                       ("list_dir", {"path": "."}), ("find_files", {"pattern": "*.py"}),
                       ("grep", {"pattern": "def"}),
                       ("str_replace_editor", {"command": "view", "path": "pkg"})]:
        out = tools.call(name, args, {}, spent)
        assert "time limit" in out or "truncated" in out or "stopped" in out, (name, args, out)
        assert "def helper" not in out and "util.py" not in out, (name, args, out)


def test_oversized_files_are_counted_in_a_walk_and_named_when_asked_for(tree):
    tools = RepoTools(tree, Limits(grep_max_file_bytes=150))  # pkg/core.py is over 150 bytes
    out = tools.call("execute_bash", {"command": "grep -rl def pkg"})
    assert out.split("\n") == ["pkg/sub/util.py", "[1 file(s) over 150 bytes not searched]"]
    out = tools.call("execute_bash", {"command": "grep def pkg/core.py"})
    assert out == "grep: pkg/core.py: pkg/core.py is larger than 150 bytes; not searched."
