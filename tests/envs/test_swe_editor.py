"""The SWE-Full `str_replace_editor`: every command's success and error paths, undo chains, exact
bytes kept, and a battery of escape attempts (none reads or writes outside the repository)."""

import os
import stat
import threading

import pytest

from ppp_jax.envs.domains.swe_editor import EditorError, EditorLimits, FileEditor, editor_schema

SECRET = "TOP-SECRET-51c2e0\n"
CORE = ("import os\n\n\nclass Engine:\n    def start(self):\n        return 'started'\n\n"
        "    def stop(self):\n        return 'stopped'\n\n\ndef helper(x):\n    return x + 1\n")
OWNER = 12345  # an unprivileged uid the tree is handed to, as the sandbox's user would own it


@pytest.fixture()
def tree(tmp_path):
    """(repo root, outside dir): a small repository, and beside it a directory it must not reach."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET)
    root = tmp_path / "repo"
    (root / "pkg" / "sub" / "deeper").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "core.py").write_text(CORE)
    (root / "pkg" / "sub" / "util.py").write_text("def util():\n    pass\n")
    (root / "pkg" / "sub" / "deeper" / "level3.py").write_text("x = 3\n")
    (root / "README.md").write_text("hello\n")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("[core]\n")
    (root / ".hidden.txt").write_text("hidden\n")
    os.symlink(outside / "secret.txt", root / "link_out")
    os.symlink(outside, root / "dir_out")
    os.symlink("pkg/core.py", root / "link_in")  # a symlink that stays inside is fine
    return root, outside


@pytest.fixture()
def ed(tree):
    return FileEditor(tree[0])


def call(ed, **args):
    return ed.call(args)


def assert_error(out, *fragments):
    assert out.startswith("ERROR: "), out
    for f in fragments:
        assert f in out, (f, out)


# --- view ---------------------------------------------------------------------------------------

def test_view_file_is_cat_n(ed):
    out = call(ed, command="view", path="/testbed/pkg/core.py")
    assert out.startswith("Here's the result of running `cat -n` on /testbed/pkg/core.py:\n")
    assert "     1\timport os\n" in out
    assert "     4\tclass Engine:\n" in out
    assert out.endswith("    13\t    return x + 1")


def test_view_range_and_string_forms(ed):
    out = call(ed, command="view", path="/testbed/pkg/core.py", view_range=[4, 6])
    assert out.splitlines()[1:] == ["     4\tclass Engine:", "     5\t    def start(self):",
                                    "     6\t        return 'started'"]
    assert call(ed, command="view", path="/testbed/pkg/core.py", view_range="[4, 6]") == out
    assert call(ed, command="view", path="/testbed/pkg/core.py", view_range=["4", "6"]) == out
    to_end = call(ed, command="view", path="/testbed/pkg/core.py", view_range=[12, -1])
    assert to_end.splitlines()[1:] == ["    12\tdef helper(x):", "    13\t    return x + 1"]
    past = call(ed, command="view", path="/testbed/pkg/core.py", view_range=[12, 99])
    assert "    13\t    return x + 1" in past and "has 13 lines" in past


@pytest.mark.parametrize("rng, fragment", [
    ([0, 3], "first element"), ([14, 20], "first element"), ([5, 3], "second element"),
    ([5, -2], "second element"), ([1], "two integers"), ([1, 2, 3], "two integers"),
    ("1-3", "view_range"), ([1, "x"], "view_range"), ([True, 3], "view_range"), (7, "view_range")])
def test_view_range_validation(ed, rng, fragment):
    assert_error(call(ed, command="view", path="/testbed/pkg/core.py", view_range=rng), fragment)


def test_view_directory_two_levels_no_hidden(ed):
    out = call(ed, command="view", path="/testbed")
    lines = out.splitlines()
    assert lines[0].startswith("Here's the files and directories up to 2 levels deep in /testbed")
    listed = set(lines[1:])
    assert {"/testbed/", "/testbed/README.md", "/testbed/pkg/", "/testbed/pkg/core.py",
            "/testbed/pkg/sub/", "/testbed/link_out", "/testbed/dir_out"} <= listed
    assert "/testbed/pkg/sub/util.py" not in listed  # third level
    assert not any("/." in x for x in listed)  # .git, .hidden.txt
    assert not any(x.startswith("/testbed/dir_out/") for x in listed)  # symlinks not descended
    sub = call(ed, command="view", path="/testbed/pkg/sub/")
    assert "/testbed/pkg/sub/deeper/level3.py" in sub.splitlines()
    assert_error(call(ed, command="view", path="/testbed/pkg", view_range=[1, 2]), "directory")


def test_path_spellings(ed):
    plain = call(ed, command="view", path="/testbed/pkg/core.py")
    assert call(ed, command="view", path="//testbed/./pkg//core.py") == plain
    assert call(ed, command="view", path="/testbed/").startswith(
        "Here's the files and directories up to 2 levels deep in /testbed,")


def test_directory_listing_clipped(tree):
    root, _ = tree
    for i in range(300):
        (root / f"file_{i:03d}.py").write_text("")
    ed = FileEditor(root, limits=EditorLimits(max_view_chars=1000))
    out = call(ed, command="view", path="/testbed")
    assert len(out) < 1300 and "Listing clipped" in out


def test_view_errors(ed, tree):
    root, _ = tree
    assert_error(call(ed, command="view", path="/testbed/nope.py"), "does not exist")
    assert_error(call(ed, command="view", path="/testbed/README.md/x"), "/testbed/README.md/x")
    (root / "blob.bin").write_bytes(b"\x7fELF\x00\x01\x02")
    assert_error(call(ed, command="view", path="/testbed/blob.bin"), "binary")
    (root / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    assert_error(call(ed, command="view", path="/testbed/latin1.txt"), "UTF-8")
    (root / "empty.txt").write_text("")
    assert "(the file is empty)" in call(ed, command="view", path="/testbed/empty.txt")
    assert call(ed, command="view", path="/testbed/link_in").count("\n") == 13  # inside link: fine


def test_view_clipped_with_note(tree):
    root, _ = tree
    (root / "long.py").write_text("".join(f"line_{i} = {i}\n" for i in range(1, 2001)))
    ed = FileEditor(root, limits=EditorLimits(max_view_chars=500))
    out = call(ed, command="view", path="/testbed/long.py")
    assert len(out) < 800 and "clipped" in out and "grep -n" in out
    last = int(out.split("showing lines 1-")[1].split(" ")[0])
    assert f"view_range=[{last + 1}, 2000]" in out
    nxt = call(ed, command="view", path="/testbed/long.py", view_range=[last + 1, -1])
    assert f"{last + 1:6}\tline_{last + 1} = {last + 1}" in nxt
    (root / "one_line.txt").write_text("a" * 5000)
    one = call(ed, command="view", path="/testbed/one_line.txt")
    assert "[line clipped]" in one and len(one) < 1000


def test_size_limits(tree):
    root, _ = tree
    (root / "big.txt").write_text("x" * 2000)
    ed = FileEditor(root, limits=EditorLimits(max_file_bytes=1000, max_write_bytes=100))
    assert_error(call(ed, command="view", path="/testbed/big.txt"), "2000 bytes", "limit")
    assert_error(call(ed, command="create", path="/testbed/new.txt", file_text="y" * 101),
                 "file_text")
    assert_error(call(ed, command="str_replace", path="/testbed/README.md", old_str="hello",
                      new_str="z" * 101), "new_str")
    assert_error(call(ed, command="insert", path="/testbed/README.md", insert_line=0,
                      new_str="z" * 101), "new_str")
    (root / "mid.txt").write_text("a\n" * 480)  # 960 bytes: an insert of 80 would exceed 1000
    assert_error(call(ed, command="insert", path="/testbed/mid.txt", insert_line=0,
                      new_str="b" * 80), "nothing was written")
    assert (root / "mid.txt").read_text() == "a\n" * 480
    assert not os.path.exists(root / "new.txt")


# --- create -------------------------------------------------------------------------------------

def test_create_and_parents(ed, tree):
    root, _ = tree
    out = call(ed, command="create", path="/testbed/new/dir/mod.py", file_text="A = 1\r\nB = 2")
    assert out == "File created successfully at: /testbed/new/dir/mod.py"
    assert (root / "new" / "dir" / "mod.py").read_bytes() == b"A = 1\r\nB = 2"
    assert_error(call(ed, command="create", path="/testbed/new/dir/mod.py", file_text="x"),
                 "already exists", "cannot overwrite")
    assert_error(call(ed, command="create", path="/testbed/pkg", file_text="x"), "already exists")
    assert_error(call(ed, command="create", path="/testbed/new.py"), "file_text")
    assert_error(call(ed, command="create", path="/testbed/new.py", file_text=3), "file_text")
    assert_error(call(ed, command="create", path="/testbed/README.md/x.py", file_text="x"))
    assert (root / "README.md").read_text() == "hello\n"
    assert not [p for p in os.listdir(root / "new" / "dir") if "editor-tmp" in p]


# --- str_replace --------------------------------------------------------------------------------

def test_str_replace_success_snippet(ed, tree):
    root, _ = tree
    new = "        return 'halted'\n        # done"
    out = call(ed, command="str_replace", path="/testbed/pkg/core.py",
               old_str="        return 'stopped'", new_str=new)
    assert (root / "pkg" / "core.py").read_text() == CORE.replace(
        "        return 'stopped'", "        return 'halted'\n        # done")
    assert out.startswith("The file /testbed/pkg/core.py has been edited.")
    assert "     9\t        return 'halted'\n    10\t        # done" in out
    # 4 lines of context on each side of the 2 new lines (9-10): lines 5-14
    assert "     5\t    def start(self):" in out and "    14\t    return x + 1" in out
    assert "     4\t" not in out


def test_str_replace_errors(ed, tree):
    root, _ = tree
    p = "/testbed/pkg/core.py"
    assert_error(call(ed, command="str_replace", path=p, old_str="missing()", new_str="x"),
                 "did not appear verbatim")
    assert_error(call(ed, command="str_replace", path=p, old_str="return", new_str="yield"),
                 "Multiple occurrences", "[6, 9, 13]")
    assert_error(call(ed, command="str_replace", path=p, old_str="", new_str="x"), "old_str")
    assert_error(call(ed, command="str_replace", path=p, new_str="x"), "old_str")
    assert_error(call(ed, command="str_replace", path=p, old_str="helper", new_str="helper"),
                 "identical")
    assert_error(call(ed, command="str_replace", path=p, old_str=["x"], new_str="y"), "old_str")
    assert_error(call(ed, command="str_replace", path="/testbed/pkg", old_str="a", new_str="b"),
                 "directory")
    assert (root / "pkg" / "core.py").read_text() == CORE


def test_str_replace_delete_keeps_bytes(ed, tree):
    root, _ = tree
    (root / "crlf.txt").write_bytes(b"one\r\ntwo\r\nthree")  # CRLF, no final newline
    call(ed, command="str_replace", path="/testbed/crlf.txt", old_str="two\n")  # omitted new_str
    assert (root / "crlf.txt").read_bytes() == b"one\r\nthree"
    call(ed, command="str_replace", path="/testbed/crlf.txt", old_str="one\n", new_str="1\n1b\n")
    assert (root / "crlf.txt").read_bytes() == b"1\r\n1b\r\nthree"
    script = root / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o751)
    call(ed, command="str_replace", path="/testbed/run.sh", old_str="hi", new_str="bye")
    assert script.read_text() == "#!/bin/sh\necho bye\n"
    assert stat.S_IMODE(script.stat().st_mode) == 0o751


# --- insert -------------------------------------------------------------------------------------

def test_insert(ed, tree):
    root, _ = tree
    p, f = "/testbed/pkg/sub/util.py", root / "pkg" / "sub" / "util.py"
    out = call(ed, command="insert", path=p, insert_line=0, new_str="import sys")
    assert f.read_text() == "import sys\ndef util():\n    pass\n"
    assert "     1\timport sys\n     2\tdef util():" in out
    call(ed, command="insert", path=p, insert_line="3", new_str="\n\nX = 1\n")
    assert f.read_text() == "import sys\ndef util():\n    pass\n\n\nX = 1\n"
    call(ed, command="insert", path=p, insert_line=2, new_str="    '''doc'''")
    assert f.read_text() == "import sys\ndef util():\n    '''doc'''\n    pass\n\n\nX = 1\n"
    (root / "nonl.txt").write_text("a\nb")  # no final newline: the file keeps ending without one
    call(ed, command="insert", path="/testbed/nonl.txt", insert_line=2, new_str="c")
    assert (root / "nonl.txt").read_text() == "a\nb\nc"
    (root / "empty.txt").write_text("")
    call(ed, command="insert", path="/testbed/empty.txt", insert_line=0, new_str="first")
    assert (root / "empty.txt").read_text() == "first\n"
    (root / "crlf.txt").write_bytes(b"a\r\nb\r\n")
    call(ed, command="insert", path="/testbed/crlf.txt", insert_line=1, new_str="x\ny")
    assert (root / "crlf.txt").read_bytes() == b"a\r\nx\r\ny\r\nb\r\n"


@pytest.mark.parametrize("args, fragment", [
    ({"insert_line": 5, "new_str": "x"}, "[0, 3]"), ({"insert_line": -1, "new_str": "x"}, "[0, 3]"),
    ({"new_str": "x"}, "insert_line"), ({"insert_line": 1}, "new_str"),
    ({"insert_line": "two", "new_str": "x"}, "insert_line"),
    ({"insert_line": 1.5, "new_str": "x"}, "insert_line"),
    ({"insert_line": [1], "new_str": "x"}, "insert_line")])
def test_insert_errors(ed, tree, args, fragment):
    root, _ = tree
    (root / "three.txt").write_text("1\n2\n3\n")
    assert_error(call(ed, command="insert", path="/testbed/three.txt", **args), fragment)
    assert (root / "three.txt").read_text() == "1\n2\n3\n"


# --- undo ---------------------------------------------------------------------------------------

def test_undo_chain(ed, tree):
    root, _ = tree
    p, f = "/testbed/README.md", root / "README.md"
    states = [f.read_text()]
    call(ed, command="str_replace", path=p, old_str="hello", new_str="hi")
    states.append(f.read_text())
    call(ed, command="insert", path=p, insert_line=1, new_str="second")
    states.append(f.read_text())
    call(ed, command="str_replace", path=p, old_str="second\n")
    assert f.read_text() == "hi\n"
    for expected in reversed(states):
        out = call(ed, command="undo_edit", path=p)
        assert out.startswith("Last edit to /testbed/README.md undone successfully"), out
        assert f.read_text() == expected
    assert_error(call(ed, command="undo_edit", path=p), "No edit history")
    assert_error(call(ed, command="undo_edit", path="/testbed/pkg/core.py"), "No edit history")


def test_undo_create_removes_file(ed, tree):
    root, _ = tree
    call(ed, command="create", path="/testbed/tmp/new.py", file_text="a = 1\n")
    call(ed, command="str_replace", path="/testbed/tmp/new.py", old_str="1", new_str="2")
    call(ed, command="undo_edit", path="/testbed/tmp/new.py")
    assert (root / "tmp" / "new.py").read_text() == "a = 1\n"
    out = call(ed, command="undo_edit", path="/testbed/tmp/new.py")
    assert "removed" in out and not (root / "tmp" / "new.py").exists()
    out = call(ed, command="create", path="/testbed/tmp/new.py", file_text="b\n")
    assert out.startswith("File created")


def test_undo_history_is_bounded(tree):
    root, _ = tree
    ed = FileEditor(root, limits=EditorLimits(max_undo=2))
    for i in range(3):
        call(ed, command="insert", path="/testbed/README.md", insert_line=0, new_str=str(i))
    call(ed, command="undo_edit", path="/testbed/README.md")
    call(ed, command="undo_edit", path="/testbed/README.md")
    assert (root / "README.md").read_text() == "0\nhello\n"
    assert_error(call(ed, command="undo_edit", path="/testbed/README.md"), "No edit history")


# --- arguments ----------------------------------------------------------------------------------

@pytest.mark.parametrize("args, fragment", [
    (None, "object"), (["view"], "object"), ({}, "command"),
    ({"command": "delete", "path": "/testbed"}, "command"),
    ({"command": "view"}, "path"), ({"command": "view", "path": 7}, "path"),
    ({"command": "view", "path": "/testbed/\x00x"}, "path"),
    ({"command": "create", "path": "/testbed/s.py", "file_text": "\ud800"}, "file_text")])
def test_bad_arguments_never_raise(ed, args, fragment):
    assert_error(ed.call(args), fragment)


def test_schema():
    schema = editor_schema()
    fn = schema["function"]
    assert schema["type"] == "function" and fn["name"] == "str_replace_editor"
    assert fn["parameters"]["required"] == ["command", "path"]
    assert fn["parameters"]["properties"]["command"]["enum"] == [
        "view", "create", "str_replace", "insert", "undo_edit"]
    props = set(fn["parameters"]["properties"])
    assert {"file_text", "old_str", "new_str", "insert_line", "view_range"} <= props


# --- confinement --------------------------------------------------------------------------------

def _secret_untouched(outside):
    assert sorted(os.listdir(outside)) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == SECRET


@pytest.mark.parametrize("args", [
    {"command": "view", "path": "/testbed/link_out"},  # symlinked file -> outside file
    {"command": "str_replace", "path": "/testbed/link_out", "old_str": "TOP", "new_str": "X"},
    {"command": "insert", "path": "/testbed/link_out", "insert_line": 0, "new_str": "X"},
    {"command": "view", "path": "/testbed/dir_out/secret.txt"},  # symlinked directory -> outside
    {"command": "view", "path": "/testbed/dir_out"},
    {"command": "create", "path": "/testbed/dir_out/planted.txt", "file_text": "X"},
    {"command": "str_replace", "path": "/testbed/dir_out/secret.txt", "old_str": "TOP",
     "new_str": "X"},
    {"command": "view", "path": "/testbed/../outside/secret.txt"},  # `..` paths
    {"command": "view", "path": "/testbed/pkg/../../outside/secret.txt"},
    {"command": "create", "path": "/testbed/../outside/planted.txt", "file_text": "X"},
    {"command": "view", "path": "/etc/passwd"},
    {"command": "view", "path": "/"},
    {"command": "view", "path": "/testbedX/secret.txt"},
    {"command": "view", "path": "outside/secret.txt"},  # relative
    {"command": "undo_edit", "path": "/testbed/link_out"}])
def test_escapes_refused(ed, tree, args):
    out = ed.call(args)
    assert_error(out)
    assert "TOP-SECRET" not in out and "root:" not in out
    _secret_untouched(tree[1])


def test_relative_path_suggests_mount(ed):
    assert_error(call(ed, command="view", path="pkg/core.py"), "/testbed/pkg/core.py")
    assert_error(call(ed, command="view", path="./pkg"), "/testbed/pkg")
    assert_error(call(ed, command="view", path="testbed/pkg"), "Maybe you meant /testbed/pkg?")


def test_host_path_refused(ed, tree):
    root, outside = tree
    assert_error(call(ed, command="view", path=str(root / "pkg" / "core.py")), "outside /testbed")
    assert_error(call(ed, command="view", path=str(outside / "secret.txt")), "outside /testbed")


def test_symlink_planted_before_create(ed, tree):
    root, outside = tree
    os.symlink(outside / "planted.txt", root / "trap.py")  # dangling, pointing outside
    os.symlink(outside / "secret.txt", root / "trap2.py")  # pointing at an existing outside file
    assert_error(call(ed, command="create", path="/testbed/trap.py", file_text="X"), "outside")
    assert_error(call(ed, command="create", path="/testbed/trap2.py", file_text="X"), "outside")
    _secret_untouched(outside)


@pytest.mark.parametrize("target", ["/testbed/../..", "../..", "/", "/etc", ".."])
def test_symlink_climbing_out(ed, tree, target):
    root, outside = tree
    os.symlink(target, root / "up")
    for args in ({"command": "view", "path": "/testbed/up"},
                 {"command": "view", "path": "/testbed/up/etc/passwd"},
                 {"command": "view", "path": "/testbed/up/outside/secret.txt"},
                 {"command": "create", "path": "/testbed/up/outside/planted.txt", "file_text": "X"},
                 {"command": "create", "path": "/testbed/up/tmp/planted.txt", "file_text": "X"}):
        out = ed.call(args)
        assert_error(out)
        assert "TOP-SECRET" not in out and "root:" not in out
    _secret_untouched(outside)
    assert not os.path.exists("/tmp/planted.txt")


def test_symlink_loop_and_nonregular_files(ed, tree):
    root, _ = tree
    os.symlink("loop", root / "loop")
    assert_error(call(ed, command="view", path="/testbed/loop"))
    assert_error(call(ed, command="view", path="/testbed/loop/x"))
    assert_error(call(ed, command="create", path="/testbed/loop/x", file_text="X"))
    os.mkfifo(root / "fifo")
    calls = ({"command": "view", "path": "/testbed/fifo"},
             {"command": "str_replace", "path": "/testbed/fifo", "old_str": "a", "new_str": "b"},
             {"command": "insert", "path": "/testbed/fifo", "insert_line": 0, "new_str": "b"},
             {"command": "create", "path": "/testbed/fifo", "file_text": "b"})
    results = []
    # A fifo opened for reading would block forever; run in a thread so a regression fails fast.
    worker = threading.Thread(target=lambda: results.extend(map(ed.call, calls)), daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "the editor blocked on a fifo"
    for out in results[:3]:
        assert_error(out, "not a regular file")
    assert_error(results[3], "already exists")
    assert stat.S_ISFIFO(os.lstat(root / "fifo").st_mode)
    if os.geteuid() == 0:
        os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        assert_error(call(ed, command="view", path="/testbed/null"), "not a regular file")


def test_swapped_symlink_is_not_followed(ed, tree):
    """Defence in depth: even when a symlink appears after the path was checked, the O_NOFOLLOW
    walk refuses a symlinked directory and the rename replaces a symlinked file, not its target."""
    root, outside = tree
    with pytest.raises(EditorError, match="cannot be reached"):
        ed._open_parent(("dir_out", "secret.txt"), "/testbed/dir_out/secret.txt")
    os.symlink(outside / "secret.txt", root / "swapped.txt")
    ed._write(("swapped.txt",), "/testbed/swapped.txt", b"mine\n")
    assert not os.path.islink(root / "swapped.txt")
    assert (root / "swapped.txt").read_text() == "mine\n"
    _secret_untouched(outside)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can hand files to another uid")
def test_ownership_when_root(tmp_path):
    root = tmp_path / "repo"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "a.py").write_text("a = 1\n")
    for dirpath, dirnames, filenames in os.walk(tmp_path):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            os.chown(name, OWNER, OWNER)
    (root / "pkg" / "root_owned.py").write_text("b = 1\n")  # stays uid 0 until rewritten
    ed = FileEditor(root)
    call(ed, command="create", path="/testbed/new/deep/mod.py", file_text="x = 1\n")
    call(ed, command="str_replace", path="/testbed/pkg/a.py", old_str="1", new_str="2")
    call(ed, command="insert", path="/testbed/pkg/root_owned.py", insert_line=1, new_str="c = 2")
    for rel in ("new", "new/deep", "new/deep/mod.py", "pkg/a.py", "pkg/root_owned.py"):
        st = os.lstat(root / rel)
        assert (st.st_uid, st.st_gid) == (OWNER, OWNER), rel
    call(ed, command="undo_edit", path="/testbed/pkg/a.py")
    st = os.lstat(root / "pkg" / "a.py")
    assert (st.st_uid, st.st_gid) == (OWNER, OWNER)
    assert (root / "pkg" / "a.py").read_text() == "a = 1\n"
