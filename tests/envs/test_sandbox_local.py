"""The local (bubblewrap) sandbox: what agent commands can and cannot do.

Every hostile command below runs for real under bwrap; each test checks that nothing outside the
task's copy changed or leaked. Skipped (with the reason) only where bubblewrap cannot run; `.ci/run`
installs it.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from ppp_jax.envs.sandbox.base import MOUNT, SandboxLimits, SandboxUnavailable
from ppp_jax.envs.sandbox.local import LocalSandbox, check_bwrap, running_python_paths
from tests.envs.bwrap import needs_bwrap

pytestmark = needs_bwrap

SECRET = "ppp-host-secret-4711"


@pytest.fixture
def snapshot(tmp_path: Path) -> Path:
    snap = tmp_path / "snapshot"
    (snap / "pkg").mkdir(parents=True)
    (snap / "pkg" / "__init__.py").write_text("VALUE = 1\n")
    (snap / "README").write_text("hello\n")
    return snap


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A host directory next to the sandboxes, with a secret file: it must stay unread and
    unchanged."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "secret.txt").write_text(SECRET)
    return d


def make(snapshot: Path, tmp_path: Path, **limits) -> LocalSandbox:
    lim = SandboxLimits(**{"wall_s": 20.0, **limits})
    return LocalSandbox.create(snapshot, tmp_path / "work", limits=lim,
                               ro_paths=running_python_paths())


def unchanged(outside: Path) -> bool:
    return sorted(os.listdir(outside)) == ["secret.txt"] and \
        (outside / "secret.txt").read_text() == SECRET


def host_processes_of(uid: int) -> list[int]:
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    out.append(int(pid))
            except OSError:
                pass
    return out


# --- the normal path ------------------------------------------------------------------------

def test_commands_edit_the_copy_and_the_diff_sees_it(snapshot, tmp_path):
    box = make(snapshot, tmp_path)
    try:
        r = box.run("pwd; sed -i 's/VALUE = 1/VALUE = 2/' pkg/__init__.py && echo new > added.txt"
                    " && python3 -c 'import pkg; print(pkg.VALUE)' && git status --short")
        assert r.exit_code == 0, r.output
        assert r.output.splitlines()[0] == MOUNT
        assert "2" in r.output.splitlines() and "?? added.txt" in r.output
        diff = box.diff()
        assert "+VALUE = 2" in diff and "+new" in diff and "README" not in diff
        assert (snapshot / "pkg" / "__init__.py").read_text() == "VALUE = 1\n"  # source untouched
    finally:
        box.close()
    assert not box.home.exists()
    assert box.run("true").output.startswith("ERROR: the sandbox is closed")


def test_diff_leaves_out_test_files_unless_asked(snapshot, tmp_path):
    box = make(snapshot, tmp_path)
    try:
        box.run("mkdir -p tests && echo 'def test_x(): pass' > tests/test_new.py && echo x >> README")
        assert "tests/test_new.py" not in box.diff()
        assert "tests/test_new.py" in box.diff(exclude_tests=False)
    finally:
        box.close()


def test_nonzero_exit_and_cwd(snapshot, tmp_path):
    box = make(snapshot, tmp_path)
    try:
        assert box.run("exit 3").exit_code == 3
        assert box.run("echo t > /tmp/a && cat /tmp/a && echo h > ~/b && cat $HOME/b").output \
            == "t\nh\n"  # a private, writable /tmp (= HOME)
        assert box.run("pwd", cwd=MOUNT + "/pkg").output.strip() == MOUNT + "/pkg"
        assert box.run("pwd", cwd="/etc").output.strip() == MOUNT  # only /testbed or /tmp
    finally:
        box.close()


def test_parallel_sandboxes_do_not_see_each_other(snapshot, tmp_path):
    boxes = [make(snapshot, tmp_path) for _ in range(3)]
    results = {}

    def work(i: int) -> None:
        results[i] = boxes[i].run(f"echo {i} > mine_{i}.txt; sleep 1; ls; ps -e -o pid= | wc -l")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i, r in results.items():
            names = r.output.split()
            assert f"mine_{i}.txt" in names
            assert not any(f"mine_{j}.txt" in names for j in range(3) if j != i)
        assert len({b.uid for b in boxes}) == 3 or os.geteuid() != 0
    finally:
        for b in boxes:
            b.close()


# --- hostile commands -------------------------------------------------------------------------

HOSTILE_NO_EFFECT = [
    # network
    "python3 -c \"import socket; socket.create_connection(('1.1.1.1', 80), timeout=3)\"",
    "python3 -c \"import socket; socket.getaddrinfo('pypi.org', 443)\"",
    "cat /etc/resolv.conf",
    # writing outside the tree
    "echo x > /usr/evil",
    "touch /evil",
    "echo x > /etc/passwd",
    "mkdir /root/x",
    "echo x > {outside}/pwned",
    "rm -rf {outside}",
    "cp /testbed/README {outside}/copy",
    "echo x > /testbed/.git/config",
    "rm -rf /testbed/.git",
    # reading the host
    "cat {outside}/secret.txt",
    "cat /etc/shadow",
    "ls /root/.ssh /home",
    "grep -r {secret} / 2>/dev/null",
    "cat /proc/*/environ | tr '\\0' '\\n' | grep {secret}",
    "env | grep {secret}",
    "ls /var/run/docker.sock /run/docker.sock",
    "ls /sys/class",
    # privilege
    "python3 -c 'import os; os.setuid(0)'",
    "unshare -r true",
    "mount -t tmpfs none /testbed/pkg",
    "chown 0:0 /testbed/README",
    # `..` and symlink tricks
    "cat ../../{outside_rel}/secret.txt",
    "ln -s {outside}/secret.txt s && cat s",
    "ln -s / hostroot && cat hostroot{outside}/secret.txt",
]


@pytest.mark.parametrize("command", HOSTILE_NO_EFFECT)
def test_hostile_command_has_no_effect_outside(command, snapshot, tmp_path, outside, monkeypatch):
    monkeypatch.setenv("PPP_TEST_SECRET", SECRET)  # a host secret in the environment
    box = make(snapshot, tmp_path, wall_s=15.0)
    try:
        cmd = command.format(outside=outside, secret=SECRET,
                             outside_rel=os.path.relpath(outside, "/"))
        r = box.run(cmd)
        assert SECRET not in r.output
        assert r.exit_code != 0 or r.output.strip() == "" or "grep" in cmd, (cmd, r.output)
        assert unchanged(outside)
        assert not Path("/evil").exists() and not Path("/usr/evil").exists()
        assert box.run("git log --oneline | wc -l").output.strip() == "1"
    finally:
        box.close()


def test_host_passwd_is_not_visible(snapshot, tmp_path):
    box = make(snapshot, tmp_path)
    try:
        seen = box.run("cat /etc/passwd").output
        host = Path("/etc/passwd").read_text()
        assert {ln.split(":")[0] for ln in seen.splitlines()} == {"root", "agent"}
        assert seen != host
    finally:
        box.close()


def test_infinite_loop_is_killed_at_the_deadline(snapshot, tmp_path):
    box = make(snapshot, tmp_path, wall_s=2.0)
    try:
        start = time.monotonic()
        r = box.run("while true; do :; done")
        assert r.timed_out and r.exit_code is None
        assert time.monotonic() - start < 8
        assert "timed out after 2 s" in r.output
        assert box.run("echo alive").output.strip() == "alive"  # the sandbox is still usable
    finally:
        box.close()


def test_background_processes_die_with_the_command(snapshot, tmp_path):
    box = make(snapshot, tmp_path)
    try:
        # durations no other process on the machine uses, so `ps` finds only ours
        r = box.run("(sleep 3017.25 &) ; nohup sleep 3019.75 >/dev/null 2>&1 & echo started")
        assert "started" in r.output
        time.sleep(0.5)
        if os.geteuid() == 0:
            assert host_processes_of(box.uid) == []
        out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert "sleep 3017.25" not in out and "sleep 3019.75" not in out
    finally:
        box.close()


def test_fork_bomb_is_contained(snapshot, tmp_path):
    box = make(snapshot, tmp_path, wall_s=5.0, max_processes=48)
    try:
        start = time.monotonic()
        # the shell stays 3 s so the bomb surely meets the limit before the namespace goes
        r = box.run(":(){ :|:& };:; sleep 3")
        assert time.monotonic() - start < 15
        # bash hits the process limit ("fork: ... Resource temporarily unavailable"); when the
        # command's shell exits, the PID namespace and every leftover process go with it
        assert r.timed_out or "Resource temporarily unavailable" in r.output
        time.sleep(0.5)
        if os.geteuid() == 0:
            assert host_processes_of(box.uid) == []
        assert box.run("echo alive").output.strip() == "alive"
    finally:
        box.close()


def test_cannot_kill_host_processes(snapshot, tmp_path):
    victim = subprocess.Popen(["sleep", "60"])
    box = make(snapshot, tmp_path)
    try:
        box.run(f"kill -9 {victim.pid}; pkill -9 sleep; kill -9 -1")
        time.sleep(0.3)
        assert victim.poll() is None  # still running
    finally:
        victim.kill()
        box.close()


def test_a_gigabyte_of_output_is_capped(snapshot, tmp_path):
    box = make(snapshot, tmp_path, max_output_bytes=64 << 10)
    try:
        r = box.run("head -c 1000000000 /dev/zero | tr '\\0' a; echo; echo THE-END")
        assert r.dropped_bytes > 900_000_000
        assert len(r.output) < 80 << 10
        assert "THE-END" in r.output  # the end of the output is kept
        assert "bytes of output not shown" in r.output
    finally:
        box.close()


def test_large_files_and_disk_filling_are_stopped(snapshot, tmp_path):
    box = make(snapshot, tmp_path, max_file_bytes=4 << 20, max_tree_growth_bytes=24 << 20,
               tmp_bytes=8 << 20)
    try:
        r = box.run("head -c 50000000 /dev/zero > big.bin; ls -l big.bin")
        assert r.exit_code != 0 or "File size limit" in r.output
        assert (box.tree / "big.bin").stat().st_size <= 4 << 20
        r = box.run("head -c 50000000 /dev/zero > /tmp/t.bin; echo rc=$?")
        assert "No space left" in r.output or "File size limit" in r.output
        r = box.run("for i in $(seq 40); do head -c 3000000 /dev/zero > f$i.bin; done")
        assert "disk quota" in r.output
        assert box.run("echo again").output.startswith("ERROR:")  # spoiled: no more commands
    finally:
        box.close()


def test_memory_and_cpu_limits(snapshot, tmp_path):
    box = make(snapshot, tmp_path, memory_bytes=512 << 20, cpu_s=2, wall_s=30.0)
    try:
        r = box.run("python3 -c 'x = bytearray(2 * 1024**3); print(len(x))'")
        assert "MemoryError" in r.output
        start = time.monotonic()
        r = box.run("python3 -c 'while True: pass'")
        assert not r.timed_out and r.exit_code != 0  # SIGXCPU, well before the wall clock
        assert time.monotonic() - start < 20
    finally:
        box.close()


def test_host_git_does_not_run_agent_planted_config(snapshot, tmp_path, outside):
    """The host computes the diff with git over the agent's tree: a nested repository with an
    fsmonitor/hook config, or attributes naming a filter, must not make it run anything."""
    box = make(snapshot, tmp_path)
    marker = outside / "pwned"
    try:
        box.run("mkdir -p sub/.git/hooks && printf '[core]\\n\\tfsmonitor = touch " + str(marker)
                + "\\n' > sub/.git/config && echo 'ref: refs/heads/main' > sub/.git/HEAD && "
                "printf '#!/bin/sh\\ntouch " + str(marker) + "\\n' > sub/.git/hooks/pre-commit && "
                "chmod +x sub/.git/hooks/pre-commit && "
                "printf '* filter=evil diff=evil\\n' > .gitattributes && echo x >> README")
        diff = box.diff()
        assert "README" in diff
        assert not marker.exists() and unchanged(outside)
    finally:
        box.close()


def test_apply_refuses_paths_outside_the_copy(snapshot, tmp_path, outside):
    box = make(snapshot, tmp_path)
    try:
        box.run(f"ln -s {outside} link")
        escape = ("diff --git a/link/x b/link/x\nnew file mode 100644\n--- /dev/null\n"
                  "+++ b/link/x\n@@ -0,0 +1 @@\n+x\n")
        assert "does not apply" in box.apply(escape)
        dotdot = ("diff --git a/../x b/../x\nnew file mode 100644\n--- /dev/null\n+++ b/../x\n"
                  "@@ -0,0 +1 @@\n+x\n")
        assert "does not apply" in box.apply(dotdot)
        assert unchanged(outside) and not (tmp_path / "work" / "x").exists()
    finally:
        box.close()


def test_missing_bubblewrap_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap"):
        check_bwrap()
