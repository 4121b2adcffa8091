"""The docker sandbox backend, up to the exact commands it runs (no Docker here, no image pulls):
the harness's image names, the argv of docker run/exec/rm and of run_evaluation, the in-container
command wrapper run for real on this host, and grading from report files written in the
harness's exact layout and structure."""

import json
import math
import os
import sys
import time

import pytest

from ppp_jax.envs.domains.swe_grading import Grade
from ppp_jax.envs.sandbox.base import CommandResult, Sandbox, SandboxLimits, SandboxUnavailable
from ppp_jax.envs.sandbox.docker import (
    DockerSandbox,
    DockerSettings,
    check_docker,
    check_swebench,
    docker_argv,
    drop_test_files,
    grade_from_logs,
    grade_with_harness,
    harness_argv,
    harness_instance_dir,
    image_name,
    is_test_path,
    split_diff,
    subprocess_runner,
)

BASE = "a" * 40
ACTIVATE = '[ -f /root/.bashrc ] && . /root/.bashrc >/dev/null 2>&1; exec bash -c "$1"'
LIMITS = SandboxLimits(wall_s=30.0, cpu_s=60, memory_bytes=2 << 30, max_processes=64,
                       max_output_bytes=16, max_file_bytes=1 << 20, tmp_bytes=64 << 20)


class Recorder:
    """A `Runner` that records each call and answers from a script (exit status, output), or
    with a callable of (argv, cwd) for replies that act like the real process would."""

    def __init__(self, *replies):
        self.calls = []
        self.replies = list(replies)

    def __call__(self, argv, timeout_s, *, cwd=None):
        self.calls.append((list(argv), timeout_s, cwd))
        reply = self.replies.pop(0) if self.replies else (0, b"")
        return reply(list(argv), cwd) if callable(reply) else reply


# ---- image names --------------------------------------------------------------------------------

@pytest.mark.parametrize("instance_id, image", [
    ("astropy__astropy-12907", "swebench/sweb.eval.x86_64.astropy_1776_astropy-12907:latest"),
    ("django__django-11099", "swebench/sweb.eval.x86_64.django_1776_django-11099:latest"),
    ("sympy__sympy-20590", "swebench/sweb.eval.x86_64.sympy_1776_sympy-20590:latest"),
    ("scikit-learn__scikit-learn-13142",
     "swebench/sweb.eval.x86_64.scikit-learn_1776_scikit-learn-13142:latest"),
    # the harness's own test (tests/test_task_publish.py) pins this one
    ("google__gson-2479", "swebench/sweb.eval.x86_64.google_1776_gson-2479:latest"),
    # repositories with capitals (multimodal's chartjs/Chart.js): the whole name is lower-cased
    ("chartjs__Chart.js-11116", "swebench/sweb.eval.x86_64.chartjs_1776_chart.js-11116:latest"),
])
def test_image_names_follow_the_harness_rule(instance_id, image):
    assert image_name(instance_id) == image


def test_image_name_without_namespace_keeps_dunders_and_other_arch_and_tag():
    assert image_name("astropy__astropy-12907", DockerSettings(namespace=None)) == \
        "sweb.eval.x86_64.astropy__astropy-12907:latest"
    assert image_name("django__django-11099", DockerSettings(arch="arm64", tag="v2")) == \
        "swebench/sweb.eval.arm64.django_1776_django-11099:v2"
    with pytest.raises(ValueError, match="arch"):
        DockerSettings(arch="amd64")
    with pytest.raises(ValueError, match="cache_level"):
        DockerSettings(cache_level="all")
    with pytest.raises(ValueError, match="run_id_prefix"):
        DockerSettings(run_id_prefix="my run")  # run ids go into container names


# ---- the sandbox's docker argv ------------------------------------------------------------------

def test_start_runs_the_instance_image_with_the_limits_and_no_network():
    rec = Recorder((0, b"f00d\n"))
    box = DockerSandbox.start("django__django-11099", BASE, limits=LIMITS, runner=rec,
                              name="ppp.box")
    assert isinstance(box, Sandbox) and box.container == "ppp.box" and box.base_commit == BASE
    assert rec.calls == [([
        "docker", "run", "--detach", "--name", "ppp.box",
        "--label", "ppp_jax.sandbox=django__django-11099", "--init", "--network", "none",
        "--memory", str(2 << 30), "--memory-swap", str(2 << 30), "--pids-limit", "64",
        "--ulimit", "cpu=60:60", "--ulimit", f"fsize={1 << 20}:{1 << 20}",
        "--tmpfs", f"/tmp:rw,exec,nosuid,size={64 << 20}", "--workdir", "/testbed",
        "swebench/sweb.eval.x86_64.django_1776_django-11099:latest", "tail", "-f", "/dev/null",
    ], 1800.0, None)]


def test_start_names_containers_uniquely_and_uses_the_configured_cli():
    rec = Recorder()
    settings = DockerSettings(docker="/opt/bin/docker", start_timeout_s=60.0)
    a = DockerSandbox.start("astropy__astropy-12907", BASE, settings=settings, runner=rec)
    b = DockerSandbox.start("astropy__astropy-12907", BASE, settings=settings, runner=rec)
    assert a.container.startswith("ppp.astropy__astropy-12907.") and a.container != b.container
    assert [c[0][0] for c in rec.calls] == ["/opt/bin/docker"] * 2 and rec.calls[0][1] == 60.0


def test_start_failure_is_sandbox_unavailable_naming_the_image():
    rec = Recorder((125, b"Unable to find image 'swebench/x:latest' locally\n"
                         b"docker: Error response from daemon: pull access denied.\n"))
    with pytest.raises(SandboxUnavailable, match=r"sweb\.eval\.x86_64\.astropy_1776_astropy-12907"
                                                 r".*exit 125.*pull access denied"):
        DockerSandbox.start("astropy__astropy-12907", BASE, runner=rec)


def test_run_execs_the_command_verbatim_under_an_in_container_timeout():
    rec = Recorder((3, b"0123456789abcdefXYZ"))
    box = DockerSandbox("ppp.box", BASE, limits=LIMITS, runner=rec)
    res = box.run("pytest -q 'tests/a b.py' && echo \"$HOME\"")
    assert rec.calls == [([
        "docker", "exec", "--workdir", "/testbed", "ppp.box",
        "timeout", "-k", "2", "30", "bash", "-c", ACTIVATE, "bash",
        "pytest -q 'tests/a b.py' && echo \"$HOME\"",
    ], 45.0, None)]
    # output past max_output_bytes (16) is dropped and counted
    assert res == CommandResult(exit_code=3, output="0123456789abcdef", dropped_bytes=3)
    box.run("ls", cwd="/testbed/src", timeout_s=0.5)
    assert rec.calls[1][0][2:4] == ["--workdir", "/testbed/src"]
    assert rec.calls[1][0][6:9] == ["-k", "2", "0.5"] and rec.calls[1][1] == 15.5


def test_run_timeouts():
    box = DockerSandbox("ppp.box", BASE, limits=LIMITS, runner=Recorder((None, b"partial")))
    assert box.run("sleep 1000") == CommandResult(exit_code=None, output="partial", timed_out=True)

    def late_124(argv, cwd):  # `timeout` fired at the deadline: 124, after the deadline passed
        time.sleep(0.06)
        return 124, b""
    box = DockerSandbox("ppp.box", BASE, runner=Recorder(late_124))
    assert box.run("sleep 1000", timeout_s=0.05) == CommandResult(None, "", timed_out=True)
    # a command's own 124/137 (an OOM kill) well before the deadline is not a timeout
    box = DockerSandbox("ppp.box", BASE, runner=Recorder((137, b"Killed\n"), (124, b"")))
    assert box.run("python big.py") == CommandResult(137, "Killed\n")
    assert box.run("exit 124") == CommandResult(124, "")


def _local_exec(workdir):
    """Runs the in-container part of a `docker exec` argv (from `timeout` on) on this host, in
    `workdir` instead of /testbed: the wrapper's shell semantics, for real."""
    def run(argv, timeout_s, *, cwd=None):
        assert argv[:2] == ["docker", "exec"]
        return subprocess_runner(argv[argv.index("timeout"):], timeout_s, cwd=str(workdir))
    return run


def test_the_in_container_wrapper_runs_commands_verbatim_and_kills_the_tree(tmp_path):
    box = DockerSandbox("ppp.box", BASE, runner=_local_exec(tmp_path))
    res = box.run("""x='a "b" $c'; echo "$x" | tr a A; echo err >&2; exit 7""")
    assert res == CommandResult(7, 'A "b" $c\nerr\n')
    pid_file = tmp_path / "child.pid"
    started = time.monotonic()
    # 3 s, not less: on a loaded machine the shell must have started the child and written its
    # pid before the timeout (a fresh-clone CI at load 4-5 killed it first at 0.5 s)
    res = box.run(f"sleep 30 & echo $! > {pid_file}; wait", timeout_s=3.0)
    assert res.timed_out and res.exit_code is None and time.monotonic() - started < 15
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{child}") and time.monotonic() < deadline:
        with open(f"/proc/{child}/status") as f:  # a killed child may linger as a zombie
            if "\nState:\tZ" in f.read():
                break
        time.sleep(0.05)
    else:
        assert not os.path.exists(f"/proc/{child}"), "the background child outlived the timeout"


DIFF = """\
diff --git a/src/core.py b/src/core.py
index 1111111..2222222 100644
--- a/src/core.py
+++ b/src/core.py
@@ -1 +1 @@
-x = 1
+x = 2
diff --git a/tests/test_core.py b/tests/test_core.py
index 3333333..4444444 100644
--- a/tests/test_core.py
+++ b/tests/test_core.py
@@ -1 +1 @@
-assert x == 1
+assert x == 2
diff --git a/docs/my notes.txt b/docs/my notes.txt
new file mode 100644
index 0000000..5555555
--- /dev/null
+++ b/docs/my notes.txt
@@ -0,0 +1 @@
+diff --git a/tests/fake b/tests/fake
diff --git a/pkg/core_test.py b/pkg/core_test.py
deleted file mode 100644
index 6666666..0000000
--- a/pkg/core_test.py
+++ /dev/null
@@ -1 +0,0 @@
-pass
diff --git "a/src/caf\\303\\251 \\"q\\".py" "b/src/caf\\303\\251 \\"q\\".py"
new file mode 100644
index 0000000..7777777
--- /dev/null
+++ "b/src/caf\\303\\251 \\"q\\".py"
@@ -0,0 +1 @@
+pass
"""


def test_split_diff_and_drop_test_files():
    assert [p for p, _ in split_diff(DIFF)] == [
        "src/core.py", "tests/test_core.py", "docs/my notes.txt", "pkg/core_test.py",
        'src/café "q".py']
    assert "".join(s for _, s in split_diff(DIFF)) == DIFF
    kept = drop_test_files(DIFF)
    assert [p for p, _ in split_diff(kept)] == [
        "src/core.py", "docs/my notes.txt", 'src/café "q".py']
    assert "+diff --git a/tests/fake b/tests/fake\n" in kept  # content lines are not headers
    assert drop_test_files("") == ""


def test_diff_stages_everything_then_diffs_against_base_without_tests():
    rec = Recorder((0, b""), (0, DIFF.encode()))
    box = DockerSandbox("ppp.box", BASE, limits=LIMITS, runner=rec)
    assert box.diff() == drop_test_files(DIFF)
    assert rec.calls == [
        (["docker", "exec", "--workdir", "/testbed", "ppp.box", "git", "add", "-A"], 30.0, None),
        (["docker", "exec", "--workdir", "/testbed", "ppp.box", "git", "-c", "core.fileMode=false",
          "-c", "core.quotePath=false", "diff", "--no-color", "--no-renames", BASE], 30.0, None)]
    box = DockerSandbox("ppp.box", BASE, runner=Recorder((0, b""), (0, DIFF.encode())))
    assert box.diff(exclude_tests=False) == DIFF


def test_diff_raises_when_git_fails():
    box = DockerSandbox("ppp.box", BASE, runner=Recorder(
        (128, b"fatal: Unable to create '/testbed/.git/index.lock': File exists.\n")))
    with pytest.raises(RuntimeError, match="git add -A.*exit 128.*index.lock"):
        box.diff()
    with pytest.raises(ValueError, match="hex commit"):
        DockerSandbox("ppp.box", "--output=/etc/passwd", runner=Recorder())


def test_close_removes_the_container_once(caplog):
    rec = Recorder()
    box = DockerSandbox("ppp.box", BASE, runner=rec)
    box.close()
    box.close()
    assert rec.calls == [(["docker", "rm", "--force", "ppp.box"], 60.0, None)]
    with pytest.raises(RuntimeError, match="closed"):
        box.run("ls")
    with pytest.raises(RuntimeError, match="closed"):
        box.diff()
    rec = Recorder((1, b"Cannot connect to the Docker daemon\n"))
    with DockerSandbox("ppp.other", BASE, runner=rec) as box:
        pass
    assert len(rec.calls) == 1 and "Cannot connect" in caplog.text  # logged, not raised
    box.close()
    assert len(rec.calls) == 1


def test_docker_argv_takes_strings_only():
    assert docker_argv("docker", "rm", "--force", "x") == ["docker", "rm", "--force", "x"]
    with pytest.raises(TypeError):
        docker_argv("docker", "run", 5)


# ---- test files ---------------------------------------------------------------------------------

@pytest.mark.parametrize("path, expected", [
    ("tests/test_core.py", True), ("sympy/core/tests/test_basic.py", True),
    ("tests/conftest.py", True), ("lib/test/data.json", True), ("numpy/testing/utils.py", True),
    ("src/test_utils.py", True), ("pkg/core_test.py", True), ("test_x.py", True),
    ("src/core.py", False), ("src/testing.py", False), ("src/tests.py", False),
    ("src/latest/core.py", False), ("pytest_plugin.py", False), ("contest/core.py", False),
    ("test_data.txt", False), ("src/test", False), ("", False),
])
def test_is_test_path(path, expected):
    assert is_test_path(path) is expected


# ---- prerequisites ------------------------------------------------------------------------------

def _fake_cli(tmp_path, script):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text("#!/bin/sh\n" + script)
    (bin_dir / "docker").chmod(0o755)
    return bin_dir


def test_check_docker_without_the_cli_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SandboxUnavailable, match=r"`docker` CLI, which is not on PATH.*"
                                                 r"install Docker Engine.*local \(bubblewrap\)"):
        check_docker()


def test_check_docker_with_the_daemon_down_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(_fake_cli(tmp_path, (
        "echo\necho 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
        "Is the docker daemon running?' >&2\nexit 1\n"))))
    with pytest.raises(SandboxUnavailable, match=r"`docker info` failed \(exit 1\): Cannot connect "
                                                 r"to the Docker daemon.*systemctl start docker"):
        check_docker()


def test_check_docker_returns_the_server_version(tmp_path, monkeypatch):
    bin_dir = _fake_cli(tmp_path, 'echo "$@" > "${0%/*}/args"\necho 28.2.2\n')
    monkeypatch.setenv("PATH", str(bin_dir))
    assert check_docker() == "28.2.2"
    assert (bin_dir / "args").read_text() == "info --format {{.ServerVersion}}\n"


def test_check_swebench_when_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "swebench", None)  # not importable, whatever is installed
    with pytest.raises(SandboxUnavailable, match="pip install swebench"):
        check_swebench()


def test_subprocess_runner():
    code_out = subprocess_runner(["sh", "-c", "echo out; echo err >&2; exit 3"], 10)
    assert code_out == (3, b"out\nerr\n")
    started = time.monotonic()
    assert subprocess_runner(["sh", "-c", "echo early; sleep 30"], 0.3) == (None, b"early\n")
    assert time.monotonic() - started < 10
    code, out = subprocess_runner(["/nonexistent/docker", "info"], 1)
    assert code == 127 and b"not found" in out


# ---- the harness --------------------------------------------------------------------------------

def test_harness_argv_per_release():
    common = ["--dataset_name", "princeton-nlp/SWE-bench_Verified", "--split", "test",
              "--predictions_path", "/w/p.jsonl", "--instance_ids", "a__a-1", "b__b-2",
              "--run_id", "r1", "--max_workers", "4", "--timeout", "1800"]
    head = [sys.executable, "-m", "swebench.harness.run_evaluation"]
    ids = ["a__a-1", "b__b-2"]
    assert harness_argv("/w/p.jsonl", ids, "r1", harness_version="5.0.2") == head + common
    assert harness_argv("/w/p.jsonl", ids, "r1", harness_version="4.1.0") == head + common + [
        "--namespace", "swebench", "--instance_image_tag", "latest", "--cache_level", "env"]
    settings = DockerSettings(namespace=None, tag="v1", cache_level="instance", max_workers=2,
                              timeout_s=600, dataset_name="SWE-bench/SWE-bench_Lite", split="dev")
    assert harness_argv("p.jsonl", ["a__a-1"], "r2", settings, "3.0.17", python="py") == [
        "py", "-m", "swebench.harness.run_evaluation", "--dataset_name", "SWE-bench/SWE-bench_Lite",
        "--split", "dev", "--predictions_path", "p.jsonl", "--instance_ids", "a__a-1",
        "--run_id", "r2", "--max_workers", "2", "--timeout", "600",
        "--namespace", "none", "--instance_image_tag", "v1", "--cache_level", "instance"]
    with pytest.raises(SandboxUnavailable, match="pip install -U swebench"):
        harness_argv("p.jsonl", ["a__a-1"], "r", harness_version="2.1.7")


def harness_report(instance_id, f2p_ok=(), f2p_bad=(), p2p_ok=(), p2p_bad=(), resolved=None):
    """A report.json as the harness writes it (grading.py get_eval_report, tests_status on)."""
    if resolved is None:
        resolved = not f2p_bad and not p2p_bad
    return json.dumps({instance_id: {
        "patch_is_None": False, "patch_exists": True, "patch_successfully_applied": True,
        "resolved": resolved, "infra_failure": False,
        "tests_status": {
            "FAIL_TO_PASS": {"success": list(f2p_ok), "failure": list(f2p_bad)},
            "PASS_TO_PASS": {"success": list(p2p_ok), "failure": list(p2p_bad)},
            "FAIL_TO_FAIL": {"success": [], "failure": []},
            "PASS_TO_FAIL": {"success": [], "failure": []},
        }}}, indent=4)


ASTROPY_F2P = "astropy/modeling/tests/test_separable.py::test_separable[compound_model6]"
ASTROPY_P2P = "astropy/modeling/tests/test_separable.py::test_coord_matrix"
APPLY_FAILED_LOG = """\
2026-08-18 10:00:01,123 - INFO - Intermediate patch for {iid} written to {d}/patch.diff, now \
applying to container...
2026-08-18 10:00:02,001 - INFO - Failed to apply patch to container: git apply --verbose
2026-08-18 10:00:02,500 - INFO - Failed to apply patch to container: patch --batch --forward \
--fuzz=5 -p1 -i
2026-08-18 10:00:02,501 - INFO - >>>>> Patch Apply Failed:
patching file astropy/modeling/separable.py
Hunk #1 FAILED at 242.
1 out of 1 hunk FAILED -- saving rejects to file astropy/modeling/separable.py.rej

2026-08-18 10:00:02,502 - INFO - Traceback (most recent call last):
"""


def test_grade_with_harness_reads_every_kind_of_outcome(tmp_path):
    iids = ["astropy__astropy-12907", "django__django-11099", "sympy__sympy-20590",
            "psf__requests-2317", "pytest-dev__pytest-5103", "pylint-dev__pylint-7080",
            "sphinx-doc__sphinx-8435"]
    patches = {iid: f"diff --git a/{iid} b/{iid}\n" for iid in iids}
    patches["pallets__flask-4045"] = ""  # empty: graded without the harness
    model = "org/ppp-policy"

    def harness(argv, cwd):  # writes what run_evaluation writes, where it writes it
        run_id = argv[argv.index("--run_id") + 1]
        for iid in iids:
            (harness_instance_dir(cwd, run_id, model, iid)).mkdir(parents=True)
        d = {iid: harness_instance_dir(cwd, run_id, model, iid) for iid in iids}
        (d[iids[0]] / "report.json").write_text(harness_report(
            iids[0], f2p_ok=[ASTROPY_F2P], p2p_ok=[ASTROPY_P2P]))
        (d[iids[1]] / "report.json").write_text(harness_report(
            iids[1], f2p_ok=["test_unicode (auth_tests.test_validators.UsernameValidatorsTests)"],
            f2p_bad=["test_ascii (auth_tests.test_validators.UsernameValidatorsTests)"],
            p2p_ok=[f"test_{i}" for i in range(3)], p2p_bad=[f"test_p{i}" for i in range(5)]))
        (d[iids[2]] / "run_instance.log").write_text(
            APPLY_FAILED_LOG.format(iid=iids[2], d=d[iids[2]]))
        (d[iids[3]] / "report.json").write_text('{"psf__requests-2317": {"resolved": tru')
        (d[iids[4]] / "run_instance.log").write_text(
            "2026-08-18 10:00:00,000 - INFO - Test runtime: 1_800.00 seconds\n"
            "2026-08-18 10:00:00,001 - INFO - Traceback (most recent call last):\n"
            "swebench.harness.utils.EvaluationError: Error in evaluation for "
            "pytest-dev__pytest-5103: Test timed out after 1800 seconds.\n")
        (d[iids[5]] / "report.json").write_text(json.dumps({iids[5]: {
            "patch_is_None": False, "patch_exists": True, "patch_successfully_applied": False,
            "resolved": False, "infra_failure": False}}))
        (d[iids[5]] / "test_output.txt").write_text("+ git apply -v - <<'EOF_114329324912'\n"
                                                    ">>>>> Tests Timed Out\n")
        d[iids[6]].rmdir()  # the harness died before this one
        return 1, b"Running 7 instances...\nError: something broke\n"

    rec = Recorder(harness)
    grades = grade_with_harness(patches, tmp_path, model_name=model, run_id="ppp-run-1",
                                runner=rec, harness_version="5.0.2")
    assert list(grades) == list(patches)

    [(argv, timeout_s, cwd)] = rec.calls
    preds = tmp_path / "ppp-run-1.predictions.jsonl"
    assert cwd == str(tmp_path.resolve()) and timeout_s == 1800 * math.ceil(7 / 4) + 1800
    assert argv == harness_argv(str(preds.resolve()), iids, "ppp-run-1", harness_version="5.0.2")
    assert [json.loads(line) for line in preds.read_text().splitlines()] == [
        {"instance_id": iid, "model_name_or_path": model, "model_patch": patches[iid]}
        for iid in iids]
    assert (tmp_path / "ppp-run-1.harness.log").read_bytes().endswith(b"something broke\n")
    assert (tmp_path / "logs/run_evaluation/ppp-run-1/org__ppp-policy/astropy__astropy-12907"
            / "report.json").is_file()

    assert grades["astropy__astropy-12907"] == Grade(
        True, fail_to_pass={ASTROPY_F2P: True}, pass_to_pass={ASTROPY_P2P: True})
    dj = grades["django__django-11099"]
    assert not dj.resolved and dj.fail_to_pass_share == 0.5
    assert dj.pass_to_pass == {**{f"test_{i}": True for i in range(3)},
                               **{f"test_p{i}": False for i in range(5)}}
    assert dj.reason == ("1/2 FAIL_TO_PASS failing: test_ascii (auth_tests.test_validators."
                         "UsernameValidatorsTests); 5/8 PASS_TO_PASS failing: test_p0, test_p1, "
                         "test_p2 (+2 more)")
    assert grades["sympy__sympy-20590"] == Grade(
        False, reason="patch does not apply: Hunk #1 FAILED at 242.")
    bad = grades["psf__requests-2317"]
    assert not bad.resolved and bad.reason.startswith("malformed harness report ")
    assert "JSONDecodeError" in bad.reason
    assert grades["pytest-dev__pytest-5103"] == Grade(
        False, reason="test run timed out after 1800 s")
    assert grades["pylint-dev__pylint-7080"].reason.startswith(
        "tests gave no usable result: the test run timed out (see ")
    assert grades["sphinx-doc__sphinx-8435"] == Grade(False, reason=(
        f"harness wrote no report (see {tmp_path.resolve() / 'ppp-run-1.harness.log'}); "
        "harness exited 1: Error: something broke"))
    assert grades["pallets__flask-4045"] == Grade(False, reason="empty patch")
    assert all("\n" not in g.reason for g in grades.values())


@pytest.mark.parametrize("content, reason", [
    ("", "JSONDecodeError"),
    ("[1, 2]", "TypeError"),
    ('{"other__id-1": {}}', "KeyError"),
    ('{"x__x-1": {"patch_successfully_applied": true, "resolved": "yes", "tests_status": '
     '{"FAIL_TO_PASS": {"success": [], "failure": []}, '
     '"PASS_TO_PASS": {"success": [], "failure": []}}}}', "TypeError"),
    ('{"x__x-1": {"patch_successfully_applied": true, "resolved": true, "tests_status": '
     '{"FAIL_TO_PASS": {"success": [1], "failure": []}, '
     '"PASS_TO_PASS": {"success": [], "failure": []}}}}', "TypeError"),
    ('{"x__x-1": {"patch_successfully_applied": true, "resolved": true, "tests_status": {}}}',
     "KeyError"),
])
def test_malformed_reports_are_unresolved_grades(tmp_path, content, reason):
    (tmp_path / "report.json").write_text(content)
    grade = grade_from_logs(tmp_path, "x__x-1")
    assert not grade.resolved and grade.reason.startswith("malformed harness report")
    assert reason in grade.reason


def test_reports_without_test_results(tmp_path):
    (tmp_path / "report.json").write_text(json.dumps({"x__x-1": {
        "patch_is_None": True, "patch_exists": False, "patch_successfully_applied": False,
        "resolved": False, "infra_failure": False}}))
    assert grade_from_logs(tmp_path, "x__x-1") == Grade(False, reason="empty patch")
    (tmp_path / "report.json").write_text(json.dumps({"x__x-1": {
        "patch_is_None": False, "patch_exists": True, "patch_successfully_applied": False,
        "resolved": False, "infra_failure": True,
        "infra_failure_reason": "container_unavailable"}}))
    (tmp_path / "test_output.txt").write_text("+ pytest\nError response from daemon\n")
    assert grade_from_logs(tmp_path, "x__x-1").reason == (
        "tests gave no usable result: no test output between the harness's markers (likely "
        f"infrastructure: container_unavailable) (see {tmp_path / 'test_output.txt'})")
    assert grade_from_logs(tmp_path / "absent", "x__x-1") == Grade(
        False, reason=f"harness wrote no report (see {tmp_path / 'absent'})")


def test_grade_with_harness_skips_empty_patches_and_needs_swebench(tmp_path, monkeypatch):
    rec = Recorder()
    assert grade_with_harness({"a__a-1": "", "b__b-2": " \n"}, tmp_path, runner=rec) == {
        "a__a-1": Grade(False, reason="empty patch"), "b__b-2": Grade(False, reason="empty patch")}
    assert rec.calls == []
    monkeypatch.setitem(sys.modules, "swebench", None)
    with pytest.raises(SandboxUnavailable, match="pip install swebench"):
        grade_with_harness({"a__a-1": "diff --git a/x b/x\n"}, tmp_path, runner=rec)
    assert rec.calls == []


def test_grade_with_harness_killed_and_fresh_run_ids(tmp_path):
    rec = Recorder((None, b"Running 1 instances...\n"), (0, b""))
    settings = DockerSettings(run_id_prefix="trial", timeout_s=60, max_workers=1)
    [g1] = grade_with_harness({"a__a-1": "p\n"}, tmp_path, settings=settings, runner=rec,
                              harness_version="5.0.2").values()
    assert g1.reason.endswith("; harness killed after 1860 s") and rec.calls[0][1] == 1860
    grade_with_harness({"a__a-1": "p\n"}, tmp_path, settings=settings, runner=rec,
                       harness_version="5.0.2")
    ids = [c[0][c[0].index("--run_id") + 1] for c in rec.calls]
    assert all(i.startswith("trial-") for i in ids) and ids[0] != ids[1]
