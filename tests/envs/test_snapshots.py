"""Repository snapshots for SWE-Func-Loc: exactly the tree at the commit (no `.gitattributes`
export rules), symlinks pointing outside left out and reported, and the tools still work."""

import asyncio
import io
import json
import os
import subprocess
import tarfile

import pytest

from ppp_jax.envs.domains import swe_func_loc
from ppp_jax.envs.domains.base import Task
from ppp_jax.envs.domains.repo_tools import omitted_entries_path


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                               "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}).stdout


@pytest.fixture()
def clone(tmp_path):
    """A repository whose tree has export rules, an executable, odd names and every kind of
    symlink; returns (path, commit)."""
    r = tmp_path / "clone"
    (r / "pkg" / "deep").mkdir(parents=True)
    git(r, "init", "-q")
    (r / ".gitattributes").write_text("notes/secret.txt export-ignore\nversion.py export-subst\n")
    (r / "notes").mkdir()
    (r / "notes" / "secret.txt").write_text("kept: the tree has it\n")
    (r / "version.py").write_text("COMMIT = '$Format:%H$'\n")
    (r / "pkg" / "a.py").write_text("def f():\n    return 1\n")
    (r / "pkg" / "deep" / "b c.py").write_text("def g():\n    return 2\n")
    (r / "pkg" / "déjà.py").write_text("x = 'ü'\n")
    (r / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(r / "run.sh", 0o755)
    os.symlink("/etc/passwd", r / "abs_link")  # absolute: outside
    os.symlink("../../outside", r / "pkg" / "up_link")  # climbs out of the tree
    os.symlink("a.py", r / "pkg" / "inner_link")  # inside: kept
    os.symlink("deep", r / "pkg" / "dir_link")  # inside: kept
    os.symlink(".", r / "here")  # inside (the root itself): kept
    os.symlink("here/..", r / "via_link")  # looks inside, resolves to the root's parent
    git(r, "add", "-A")
    git(r, "commit", "-qm", "base")
    commit = git(r, "rev-parse", "HEAD").decode().strip()
    return r, commit


def tree_files(root):
    found = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(d, name)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                found[rel] = ("link", os.readlink(p))
            elif os.path.isfile(p):
                with open(p, "rb") as f:
                    found[rel] = ("file", f.read())
    return found


def test_snapshot_is_exactly_the_commit_tree(clone, tmp_path):
    path, commit = clone
    cache = swe_func_loc.RepoCache(tmp_path / "cache", clones={"acme/x": str(path)})
    snap = cache.materialize("acme/x", commit)  # raised on a link pointing outside
    omitted = cache.omitted("acme/x", commit)
    assert sorted(omitted) == ["abs_link", "pkg/up_link", "via_link"]
    assert "outside" in omitted["abs_link"] and "resolves outside" in omitted["via_link"]
    # Every other entry of `git ls-tree -r` is there, with its blob's exact bytes.
    listing = git(path, "ls-tree", "-r", "-z", commit).split(b"\0")
    expected = {}
    for rec in filter(None, listing):
        meta, _, name = rec.partition(b"\t")
        mode, _, oid = meta.decode().split()
        name = os.fsdecode(name)
        if name in omitted:
            continue
        blob = git(path, "cat-file", "blob", oid)
        expected[name] = ("link", os.fsdecode(blob)) if mode == "120000" else ("file", blob)
    got = tree_files(snap)
    assert {k: v for k, v in got.items() if v[0] == "file" or k in expected} == expected
    # .gitattributes export rules do not apply: the ignored file is kept, nothing is substituted.
    assert (snap / "notes" / "secret.txt").read_text() == "kept: the tree has it\n"
    assert (snap / "version.py").read_text() == "COMMIT = '$Format:%H$'\n"
    # ... whereas `git archive` would have applied them (what the snapshot used to be).
    archived = subprocess.run(["git", "-C", str(path), "archive", "--format=tar", commit],
                              capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archived)) as tar:
        assert "notes/secret.txt" not in tar.getnames()
        assert tar.extractfile("version.py").read().decode() == f"COMMIT = '{commit}'\n"
    assert os.access(snap / "run.sh", os.X_OK) and not os.access(snap / "pkg" / "a.py", os.X_OK)
    assert (os.stat(snap / "pkg" / "a.py").st_mode & 0o222) == 0  # read-only
    # The list of left-out entries sits beside the tree, not in it.
    with open(omitted_entries_path(snap), encoding="utf-8") as f:
        assert json.load(f) == omitted
    assert not any(name.endswith(".omitted.json") for name in got)


def test_tools_work_on_a_snapshot_with_outside_links_and_name_what_was_left_out(clone, tmp_path):
    path, commit = clone
    cache = swe_func_loc.RepoCache(tmp_path / "cache", clones={"acme/x": str(path)})
    domain = swe_func_loc.make_domain(cache, "both")
    task = Task("acme__x-1", "swe_func_loc", "p", "v", "", ("pkg/a.py:f",), "test",
                {"repo": "acme/x", "base_commit": commit})

    def call(name, args):
        return asyncio.run(domain.run_tool(task, name, args, {}))

    assert "unavailable" not in call("view_file", {"path": "pkg/a.py"})
    assert "     1\tdef f():" in call("view_file", {"path": "pkg/inner_link"})
    assert call("execute_bash", {"command": "grep -rn 'def g' pkg"}) == "pkg/deep/b c.py:1:def g():"
    out = call("view_file", {"path": "abs_link"})
    assert out.startswith("ERROR") and "left out of this snapshot" in out and "/etc/passwd" in out
    out = call("execute_bash", {"command": "cat pkg/up_link"})
    assert "left out of this snapshot" in out and "outside the repository" in out
    out = call("execute_bash", {"command": "grep x via_link"})
    assert "No such file or directory" in out and "left out of this snapshot" in out


def test_failed_snapshot_leaves_nothing_and_old_snapshots_are_flagged(clone, tmp_path, caplog):
    path, _ = clone
    cache = swe_func_loc.RepoCache(tmp_path / "cache", clones={"acme/x": str(path)})
    with pytest.raises(RuntimeError, match="git ls-tree"):
        cache.materialize("acme/x", "0" * 40)
    assert os.listdir(tmp_path / "cache") == []  # no half-written tree left behind
    old = cache.path_for("acme/x", "1" * 40)
    old.mkdir()  # as an older version (git archive, no list of omitted entries) left it
    assert cache.materialize("acme/x", "1" * 40) == old
    assert "delete it to rebuild" in caplog.text and cache.omitted("acme/x", "1" * 40) == {}
