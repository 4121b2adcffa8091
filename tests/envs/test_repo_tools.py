"""Read-only repository tools: normal use, and a battery of hostile calls (none escapes, none
hangs, none crashes)."""

import os
import time

import pytest

from ppp_jax.envs.domains.repo_tools import Limits, RepoTools

SECRET = "TOP-SECRET-7f3a9c"


@pytest.fixture()
def repo(tmp_path):
    """A small tree with hostile inhabitants, and a secret file just outside it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET + "\n")
    root = tmp_path / "repo"
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "core.py").write_text(
        "import os\n\n\nclass Engine:\n    def start(self):\n        return 'started'\n\n"
        "    def stop(self):\n        return 'stopped'\n\n\ndef helper(x):\n    return x + 1\n")
    (root / "pkg" / "sub" / "util.py").write_text("def util():\n    pass\n" * 3)
    (root / "README.md").write_text("hello\n")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("[core]\n")
    (root / "long_line.txt").write_text("a" * 30000 + "!\n")
    (root / "blob.bin").write_bytes(b"\x7fELF\x00\x00\x01" + bytes(range(256)) * 10)
    with open(root / "huge.txt", "wb") as f:  # 100 MB sparse file: reads are capped
        f.truncate(100 * 1024 * 1024)
    (root / "huge_text.txt").write_text("line of text\n" * 400_000)  # ~5 MB of real text
    with open(root / "huge_sparse_text.txt", "wb") as f:  # 100 MB: text first, then a hole
        f.write(b"text line\n" * 2000)
        f.truncate(100 * 1024 * 1024)
    os.symlink(outside / "secret.txt", root / "link_out")
    os.symlink(outside, root / "dir_out")
    os.symlink("/etc/passwd", root / "passwd_link")
    os.symlink("/dev/zero", root / "zero_link")
    os.symlink("/proc/self/environ", root / "environ_link")
    os.symlink("pkg/core.py", root / "inner_link")  # pointing inside: allowed
    os.symlink("loop_b", root / "loop_a")
    os.symlink("loop_a", root / "loop_b")
    os.mkfifo(root / "fifo")  # opening a FIFO for reading would block forever
    return RepoTools(root, Limits(call_timeout_s=2.0))


def test_view_list_find_grep_work(repo):
    out = repo.call("view_file", {"path": "pkg/core.py", "start_line": 4, "end_line": 6})
    assert "     4\tclass Engine:" in out and "     6\t        return 'started'" in out
    assert "helper" not in out
    assert "     5\t" in repo.call("str_replace_editor", {"command": "view", "path": "/testbed/pkg/core.py",
                                                         "view_range": [5, -1]})
    listing = repo.call("list_dir", {"path": "."})
    assert "pkg/" in listing and "pkg/core.py" in listing and ".git" not in listing
    assert repo.call("find_files", {"pattern": "*.py"}).split("\n") == [
        "pkg/__init__.py", "pkg/core.py", "pkg/sub/util.py"]
    assert repo.call("find_files", {"pattern": "pkg/**/util.py"}) == "pkg/sub/util.py"
    assert repo.call("grep", {"pattern": r"def \w+\(self", "include": "*.py"}).split("\n") == [
        "pkg/core.py:5:    def start(self):", "pkg/core.py:8:    def stop(self):"]
    assert "started" in repo.call("view_file", {"path": "inner_link"})


def test_execute_bash_whitelist_works(repo):
    st = {}
    assert repo.call("execute_bash", {"command": "grep -rn 'def helper' pkg"}, st) == \
        "pkg/core.py:12:def helper(x):"
    assert repo.call("execute_bash", {"command": "cd /testbed/pkg && cat core.py | head -n 2"}, st) == \
        "import os"
    assert st["cwd"] == "pkg"
    assert repo.call("execute_bash", {"command": "pwd"}, st) == "/testbed/pkg"
    assert repo.call("execute_bash", {"command": "wc -l sub/util.py"}, st) == "6 sub/util.py"
    assert repo.call("execute_bash", {"command": "find . -name '*.py' -type f"}, st).split("\n") == [
        "./__init__.py", "./core.py", "./sub/util.py"]
    assert repo.call("execute_bash", {"command": "sed -n '5,6p' core.py"}, {}).startswith("ERROR")  # no cwd: wrong path
    assert repo.call("execute_bash", {"command": "sed -n '5,6p' pkg/core.py"}) == \
        "    def start(self):\n        return 'started'"
    assert repo.call("execute_bash", {"command": r"grep -n 'start\|stop' pkg/core.py | wc -l"}) == "4"


# (tool, args) pairs that must be refused or bounded. Each comment says what it tries.
HOSTILE = [
    ("view_file", {"path": "../outside/secret.txt"}),  # traversal
    ("view_file", {"path": "pkg/../../outside/secret.txt"}),  # traversal through a real dir
    ("view_file", {"path": "/etc/passwd"}),  # absolute path
    ("view_file", {"path": "/testbed/../../etc/passwd"}),  # virtual root + traversal
    ("view_file", {"path": "/proc/self/environ"}),  # /proc
    ("view_file", {"path": "/proc/self/mem"}),  # /proc, binary, huge
    ("view_file", {"path": "link_out"}),  # symlink to a file outside
    ("view_file", {"path": "dir_out/secret.txt"}),  # symlinked directory outside
    ("list_dir", {"path": "dir_out"}),  # list through an outside symlink
    ("view_file", {"path": "passwd_link"}),  # symlink to /etc/passwd
    ("view_file", {"path": "zero_link"}),  # symlink to a device (endless)
    ("view_file", {"path": "environ_link"}),  # symlink into /proc
    ("view_file", {"path": "fifo"}),  # FIFO: open would block forever
    ("view_file", {"path": "loop_a"}),  # symlink loop
    ("view_file", {"path": "huge.txt"}),  # 100 MB (sparse zeros: binary)
    ("view_file", {"path": "blob.bin"}),  # binary file
    ("view_file", {"path": "huge_sparse_text.txt"}),  # 100 MB that looks like text: capped read
    ("grep", {"pattern": "text", "path": "huge_sparse_text.txt"}),  # too big to grep
    ("execute_bash", {"command": "wc -l huge_sparse_text.txt"}),  # capped read
    ("execute_bash", {"command": "tail -n 3 huge.txt"}),  # binary 100 MB
    ("view_file", {"path": "pkg/core.py\x00.txt"}),  # NUL byte
    ("view_file", {"path": "a/" * 3000}),  # overlong path
    ("view_file", {"path": "~/.ssh/id_rsa"}),  # home directory
    ("view_file", {"path": 12345}),  # wrong type
    ("view_file", {"path": "pkg/core.py", "start_line": -5, "end_line": 10**12}),  # bad range
    ("str_replace_editor", {"command": "view", "path": "pkg/core.py", "view_range": "1-5"}),  # bad type
    ("str_replace_editor", {"command": "create", "path": "evil.py", "file_text": "x"}),  # write
    ("str_replace_editor", {"command": "str_replace", "path": "pkg/core.py", "old_str": "os",
                            "new_str": "sys"}),  # edit
    ("grep", {"pattern": r"(a+)+$", "path": "long_line.txt"}),  # catastrophic backtracking
    ("grep", {"pattern": r"^(([a-z])+.)+[A-Z]([a-z])+$"}),  # catastrophic, whole tree
    ("grep", {"pattern": r"(a{10000}){10000}"}),  # compile-time memory bomb
    ("grep", {"pattern": r"(unclosed["}),  # invalid regex
    ("grep", {"pattern": "root", "path": "/etc"}),  # grep outside
    ("grep", {"pattern": "TOP", "path": "dir_out"}),  # grep through outside symlink
    ("grep", {"pattern": "x", "path": "huge.txt"}),  # 100 MB file
    ("find_files", {"pattern": "*", "path": "/"}),  # find from /
    ("find_files", {"pattern": "../*"}),  # glob traversal
    ("list_dir", {"path": "/"}),  # list /
    ("list_dir", {"path": "..", "depth": 99}),  # parent + deep
    ("execute_bash", {"command": "cat /etc/passwd"}),
    ("execute_bash", {"command": "cat ../outside/secret.txt"}),
    ("execute_bash", {"command": "cat /testbed/../../../etc/passwd"}),
    ("execute_bash", {"command": "rm -rf /"}),
    ("execute_bash", {"command": "ls; rm -rf pkg"}),
    ("execute_bash", {"command": "cat pkg/core.py > pkg/copy.py"}),  # redirection
    ("execute_bash", {"command": "echo $(cat /etc/passwd)"}),  # command substitution
    ("execute_bash", {"command": "echo `id`"}),  # backticks
    ("execute_bash", {"command": "python -c 'import os; os.system(\"id\")'"}),
    ("execute_bash", {"command": "find . -exec cat /etc/passwd ;"}),
    ("execute_bash", {"command": "find . -delete"}),
    ("execute_bash", {"command": "grep -r root /etc"}),
    ("execute_bash", {"command": "sleep 100 &"}),  # background
    ("execute_bash", {"command": "cd / && cat etc/passwd"}),  # cd out
    ("execute_bash", {"command": "cat 'unbalanced"}),  # parse error
    ("execute_bash", {"command": "ls " + "x" * 5000}),  # overlong
    ("execute_bash", {"command": "tail -f README.md"}),  # would wait forever
    ("execute_bash", {"command": "sed -i 's/os/sys/' pkg/core.py"}),  # in-place edit
    ("execute_bash", {"command": "cat fifo"}),  # FIFO via cat
    ("execute_bash", {"command": "head -n 99999999999999 huge_text.txt"}),  # big but capped
    ("execute_bash", {"command": "grep -rE '(a+)+$' ."}),  # catastrophic through bash
    ("execute_bash", {"command": "cat link_out dir_out/secret.txt"}),  # symlinks out via cat
    ("execute_bash", {"command": "ls dir_out"}),
    ("execute_bash", {"command": "cat pkg/core.py | sh"}),  # pipe into a shell
    ("execute_bash", {"command": "cat < /etc/passwd"}),  # input redirection
    ("execute_bash", {"command": "true || cat /etc/passwd"}),
    ("execute_bash", {"command": "cat /dev/zero"}),  # device
    ("execute_bash", {"command": "cat " + " ".join(["huge_text.txt"] * 40)}),  # memory: read budget
    ("execute_bash", {"command": 42}),  # wrong type
    ("no_such_tool", {"path": "."}),  # unknown tool
    ("view_file", {}),  # missing argument
]


def test_hostile_battery_none_escapes_hangs_or_crashes(repo, tmp_path):
    assert len(HOSTILE) >= 30
    before = sorted(p.name for p in (tmp_path / "repo").rglob("*"))
    for name, args in HOSTILE:
        t0 = time.monotonic()
        out = repo.call(name, args, {})
        elapsed = time.monotonic() - t0
        assert isinstance(out, str) and out, (name, args)
        assert elapsed < 8, (name, args, elapsed)  # bounded: grep has a 1 s cap here
        assert SECRET not in out, (name, args, out[:200])
        assert "root:x:0" not in out, (name, args)
        assert len(out) <= repo.limits.max_output_chars + 100
    # Nothing was created, removed or changed.
    assert sorted(p.name for p in (tmp_path / "repo").rglob("*")) == before
    assert "def helper" in (tmp_path / "repo" / "pkg" / "core.py").read_text()


def test_hostile_calls_get_clear_refusals(repo):
    def err(name, args):
        out = repo.call(name, args, {})
        assert out.startswith("ERROR:"), (name, args, out[:200])
        return out

    assert "outside the repository" in err("view_file", {"path": "/etc/passwd"})
    assert "symbolic link" in err("view_file", {"path": "link_out"})
    assert "not a regular file" in err("view_file", {"path": "fifo"})
    assert "binary" in err("view_file", {"path": "blob.bin"})
    assert "binary" in err("view_file", {"path": "huge.txt"})
    assert "expand" in err("grep", {"pattern": r"(a{10000}){10000}"})
    assert "not allowed" in err("execute_bash", {"command": "rm -rf /"})
    assert "Redirection" in err("execute_bash", {"command": "cat a > b"})
    assert "read-only" in err("str_replace_editor", {"command": "create", "path": "x", "file_text": ""})
    assert "reads too much" in err("execute_bash", {"command": "cat " + " ".join(["huge_text.txt"] * 40)})
    # Catastrophic regex: the line is skipped after its CPU cap, with a note, not an error.
    t0 = time.monotonic()
    out = repo.call("grep", {"pattern": r"(a+)+$", "path": "long_line.txt"})
    assert "1 line(s) not searched" in out and time.monotonic() - t0 < 8
    # Big text file: shown truncated with a note, not read whole.
    out = repo.call("view_file", {"path": "huge_text.txt", "start_line": 1, "end_line": 3})
    assert "     3\tline of text" in out and "only the first" in out
    out = repo.call("view_file", {"path": "huge_sparse_text.txt"})
    assert out.endswith("\n[binary content from byte 20000 on; not shown]") and len(out) < 60_000
