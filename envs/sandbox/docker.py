"""The `docker` sandbox backend for SWE-Full: one episode in the official SWE-bench instance
image, and grading by the official harness (`python -m swebench.harness.run_evaluation`).

Thin on purpose. Every docker call is an argv list (no shell strings) built by `docker_argv` and
handed to a `Runner`, the process boundary, so the tests check the exact commands without Docker.
The harness facts used here come from SWE-bench's own code (release 5.0.2, and 3.x/4.x where
their flags differ): the image name rule from `swebench/image_builder/image_spec.py`
(`ImageSpec.name`; `test_spec/test_spec.py` `instance_image_key` before 5.0), the flags from
`swebench/harness/run_evaluation.py`, the log layout and markers from
`swebench/harness/constants/__init__.py`, the report structure from `grading.py`
(`get_eval_report`), and what makes an instance count as an error from `reporting.py`.
"""

from __future__ import annotations

import codecs
import dataclasses
import importlib.metadata
import importlib.util
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from ppp_jax.envs.domains.swe_grading import Grade
from ppp_jax.envs.sandbox.base import (
    MOUNT,
    CommandResult,
    SandboxLimits,
    SandboxUnavailable,
    is_test_path,
)

log = logging.getLogger(__name__)

# In-container `timeout` sends TERM at the deadline, then KILL this many seconds later.
_KILL_AFTER_S = 2
# Host-side backstop beyond the in-container deadline: docker exec start-up plus _KILL_AFTER_S.
_HOST_GRACE_S = 15.0
_INFO_TIMEOUT_S = 30.0
_RM_TIMEOUT_S = 60.0
# Beyond the tests themselves the harness loads the dataset and pulls images; allow for both.
_HARNESS_SLACK_S = 1800.0
_MAX_REASON = 300

# SWE-bench images activate the `testbed` conda env in /root/.bashrc, which a non-interactive
# `bash -c` never reads. Source it once, then run the command verbatim in a fresh bash that
# inherits the activated environment; the command is $1, an argument, never spliced into code.
_ACTIVATE_THEN_RUN = '[ -f /root/.bashrc ] && . /root/.bashrc >/dev/null 2>&1; exec bash -c "$1"'

# The harness's log layout and markers (swebench/harness/constants/__init__.py).
_LOG_DIR = ("logs", "run_evaluation")
_LOG_REPORT = "report.json"
_LOG_INSTANCE = "run_instance.log"
_LOG_TEST_OUTPUT = "test_output.txt"
_APPLY_PATCH_FAIL = ">>>>> Patch Apply Failed"
_START_TEST_OUTPUT = ">>>>> Start Test Output"
_END_TEST_OUTPUT = ">>>>> End Test Output"
# Why a test log was unusable, by the marker the eval script or harness wrote into it.
_TEST_LOG_MARKERS = (
    (_APPLY_PATCH_FAIL, "the test patch does not apply on top of this patch"),
    (">>>>> Reset Failed", "resetting the test files failed"),
    (">>>>> Tests Timed Out", "the test run timed out"),
    ("Timeout error:", "the test run timed out"),
    (">>>>> Tests Errored", "the test run errored"),
)
# Lines the harness's logger starts (logger.py: "%(asctime)s - %(levelname)s - %(message)s").
_LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ - [A-Z]+ - ")

_DIFF_HEADER = "diff --git "


class Runner(Protocol):
    """The process boundary: runs `argv` (no shell) in `cwd` for at most `timeout_s` seconds with
    stdout and stderr together, and returns (exit status, output); the status is None when the
    process was killed at `timeout_s`."""

    def __call__(self, argv: Sequence[str], timeout_s: float, *,
                 cwd: str | None = None) -> tuple[int | None, bytes]: ...


def subprocess_runner(argv: Sequence[str], timeout_s: float, *,
                      cwd: str | None = None) -> tuple[int | None, bytes]:
    """The default `Runner`: a child process in its own session, killed with its whole process
    group at the timeout. A missing binary reads like the shell's "command not found" (127)."""
    try:
        proc = subprocess.Popen(list(argv), cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
    except FileNotFoundError as e:
        return 127, f"{argv[0]}: not found ({e})\n".encode()
    try:
        out, _ = proc.communicate(timeout=timeout_s)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the harness has worker processes of its own
        except ProcessLookupError:
            pass
        try:
            out, _ = proc.communicate(timeout=5.0)
        except subprocess.TimeoutExpired:  # something outside the group still holds the pipe
            proc.kill()
            out = b""
        return None, out


@dataclasses.dataclass(frozen=True)
class DockerSettings:
    """Where the instance images come from and how the SWE-bench harness is run."""

    namespace: str | None = "swebench"
    """Docker Hub namespace of the instance images; None for images built locally (then the
    name has no namespace and keeps its `__`)."""
    arch: str = "x86_64"
    """Architecture in the image name: "x86_64" (the harness's amd64) or "arm64"."""
    tag: str = "latest"
    """Instance image tag."""
    dataset_name: str = "princeton-nlp/SWE-bench_Verified"
    """Dataset the harness loads the instances and their tests from (`--dataset_name`): a Hugging
    Face name or a local .json/.jsonl file."""
    split: str = "test"
    """Split of that dataset (`--split`)."""
    max_workers: int = 4
    """Instances the harness evaluates at once (`--max_workers`)."""
    timeout_s: int = 1800
    """Seconds the harness allows one instance's test run (`--timeout`)."""
    run_id_prefix: str = "ppp-jax"
    """Start of the harness run ids made here; each call adds a time stamp and a random suffix,
    since the harness reuses (skips) any instance that already has a report under its run id."""
    docker: str = "docker"
    """The docker CLI: a name looked up on PATH, or a path."""
    cache_level: str = "env"
    """`--cache_level` for swebench 3.x/4.x ("none", "base", "env", "instance": which images
    survive the run); 5.x has no such flag and this is not passed."""
    start_timeout_s: float = 1800.0
    """Seconds `docker run` may take to start a sandbox, pulling its image when missing."""

    def __post_init__(self):
        if self.arch not in ("x86_64", "arm64"):
            raise ValueError(f"DockerSettings.arch must be 'x86_64' or 'arm64', not {self.arch!r}")
        if self.namespace is not None and not self.namespace:
            raise ValueError("DockerSettings.namespace: use None for no namespace, not ''")
        if self.cache_level not in ("none", "base", "env", "instance"):
            raise ValueError(f"DockerSettings.cache_level must be none/base/env/instance, "
                             f"not {self.cache_level!r}")
        if self.max_workers < 1 or self.timeout_s <= 0 or self.start_timeout_s <= 0:
            raise ValueError("DockerSettings: max_workers, timeout_s and start_timeout_s must be "
                             "positive")
        # the harness puts the run id into container names
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.run_id_prefix):
            raise ValueError(f"DockerSettings.run_id_prefix {self.run_id_prefix!r}: use letters, "
                             "digits, '_', '.' and '-'")


def image_name(instance_id: str, settings: DockerSettings = DockerSettings()) -> str:
    """The instance image the harness uses for `instance_id`, by its own rule
    (`ImageSpec.name`): `{namespace}/sweb.eval.{arch}.{instance_id}:{tag}` lower-cased, with
    `__` written `_1776_` when there is a namespace (Docker Hub allows no double underscore)."""
    key = f"sweb.eval.{settings.arch}.{instance_id}:{settings.tag}"
    if settings.namespace is not None:
        key = f"{settings.namespace}/{key}".replace("__", "_1776_")
    return key.lower()


def split_diff(diff: str) -> list[tuple[str, str]]:
    """A `git diff --no-renames` output cut into (path, section) pairs, one per file, in order;
    text before the first file header, if any, comes as ("", text)."""
    sections: list[tuple[str, str]] = []
    path, lines = "", []
    for line in diff.splitlines(keepends=True):
        if line.startswith(_DIFF_HEADER):
            if lines:
                sections.append((path, "".join(lines)))
            path, lines = _header_path(line.rstrip("\n")), []
        lines.append(line)
    if lines:
        sections.append((path, "".join(lines)))
    return sections


def drop_test_files(diff: str) -> str:
    """`diff` without the sections of files that `is_test_path` calls tests."""
    return "".join(section for path, section in split_diff(diff) if not is_test_path(path))


def _header_path(header: str) -> str:
    rest = header[len(_DIFF_HEADER):]
    quoted = re.fullmatch(r'"a/((?:[^"\\]|\\.)*)" "b/(?:[^"\\]|\\.)*"', rest)
    if quoted:  # git C-quotes names with quotes, backslashes or control characters
        return codecs.escape_decode(quoted.group(1).encode())[0].decode("utf-8", "replace")
    # "a/P b/P": with renames off both sides name the same P, so P is the first half (this holds
    # for names with spaces, where splitting on a space would not)
    return rest[2:2 + (len(rest) - 5) // 2]


def docker_argv(docker: str, *args: str) -> list[str]:
    """The argv of one docker invocation: the CLI, then `args`; every docker call in this module
    is built here."""
    bad = [a for a in args if not isinstance(a, str)]
    if bad:
        raise TypeError(f"docker arguments must be strings, got {bad!r}")
    return [docker, *args]


def _seconds(x: float) -> str:
    return f"{x:.3f}".rstrip("0").rstrip(".")


def _last_line(out: bytes) -> str:
    lines = [ln.strip() for ln in out.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_REASON else text[:_MAX_REASON - 3] + "..."


def _status(code: int | None) -> str:
    return "timed out" if code is None else f"exit {code}"


class DockerSandbox:
    """One episode's sandbox: a container of the instance's SWE-bench image (repository at
    `/testbed`, at `base_commit`), no network, memory, process, CPU-time and file-size limits
    from `SandboxLimits`, and a private tmpfs /tmp. Commands go in with `docker exec`.

    `start` creates the container; the constructor attaches to one that already runs.
    """

    def __init__(self, container: str, base_commit: str, *, limits: SandboxLimits = SandboxLimits(),
                 settings: DockerSettings = DockerSettings(), runner: Runner = subprocess_runner):
        # a hex id cannot be read by git as an option or a path
        if not re.fullmatch(r"[0-9a-f]{7,40}", base_commit):
            raise ValueError(f"base_commit must be a hex commit id, not {base_commit!r}")
        self.container = container
        self.base_commit = base_commit
        self._limits = limits
        self._settings = settings
        self._runner = runner
        self._closed = False

    @classmethod
    def start(cls, instance_id: str, base_commit: str, *, limits: SandboxLimits = SandboxLimits(),
              settings: DockerSettings = DockerSettings(), runner: Runner = subprocess_runner,
              name: str | None = None) -> DockerSandbox:
        """Starts a container of `instance_id`'s image (pulled when missing) and returns its
        sandbox; raises `SandboxUnavailable` when docker cannot start it (no image, no
        daemon...)."""
        name = name or f"ppp.{instance_id.lower()}.{uuid.uuid4().hex[:8]}"
        image = image_name(instance_id, settings)
        argv = docker_argv(
            settings.docker, "run", "--detach", "--name", name,
            # to find leaked ones: docker ps --filter label=ppp_jax.sandbox
            "--label", f"ppp_jax.sandbox={instance_id}",
            "--init",  # a real PID 1 reaps the processes that killed commands leave behind
            "--network", "none",
            # cgroup limits are the container's own: memory without swap, and a process cap
            "--memory", str(limits.memory_bytes), "--memory-swap", str(limits.memory_bytes),
            "--pids-limit", str(limits.max_processes),
            "--ulimit", f"cpu={limits.cpu_s}:{limits.cpu_s}",
            "--ulimit", f"fsize={limits.max_file_bytes}:{limits.max_file_bytes}",
            # exec: tests build and load extensions under /tmp; Docker's tmpfs default is noexec
            "--tmpfs", f"/tmp:rw,exec,nosuid,size={limits.tmp_bytes}",
            "--workdir", MOUNT,
            image, "tail", "-f", "/dev/null")
        code, out = runner(argv, settings.start_timeout_s)
        if code != 0:
            raise SandboxUnavailable(
                f"docker could not start {image} ({_status(code)}): {_last_line(out)}")
        return cls(name, base_commit, limits=limits, settings=settings, runner=runner)

    def _docker(self, *args: str, timeout_s: float) -> tuple[int | None, bytes]:
        return self._runner(docker_argv(self._settings.docker, *args), timeout_s)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"sandbox {self.container} is closed")

    def run(self, command: str, *, cwd: str = MOUNT,
            timeout_s: float | None = None) -> CommandResult:
        """Runs `command` with bash in the container (the `testbed` env active). At the deadline
        the in-container `timeout` kills the command's whole process group (killing the docker
        client would not: the command would go on inside), then `timed_out` is set and
        `exit_code` is None. Output past `max_output_bytes` is dropped and counted."""
        self._check_open()
        limit = self._limits.wall_s if timeout_s is None else timeout_s
        started = time.monotonic()
        code, out = self._docker(
            "exec", "--workdir", cwd, self.container,
            "timeout", "-k", str(_KILL_AFTER_S), _seconds(limit),
            "bash", "-c", _ACTIVATE_THEN_RUN, "bash", command,
            timeout_s=limit + _HOST_GRACE_S)
        # 124: `timeout` sent TERM; 137: TERM was ignored and KILL followed. A command can exit with
        # those itself (an OOM kill is 137), hence the elapsed-time check.
        timed_out = code is None or (code in (124, 137) and time.monotonic() - started >= limit)
        keep = self._limits.max_output_bytes
        return CommandResult(exit_code=None if timed_out else code,
                             output=out[:keep].decode("utf-8", "replace"), timed_out=timed_out,
                             dropped_bytes=max(0, len(out) - keep))

    def diff(self, exclude_tests: bool = True) -> str:
        """`git diff` of /testbed against `base_commit` after `git add -A` (so new files are in),
        ignoring mode changes, renames written as delete + add; test files (`is_test_path`) left
        out when `exclude_tests`. Raises RuntimeError when git fails: there is no patch to grade."""
        self._check_open()
        out = b""
        for git in (("git", "add", "-A"),
                    ("git", "-c", "core.fileMode=false", "-c", "core.quotePath=false", "diff",
                     "--no-color", "--no-renames", self.base_commit)):
            code, out = self._docker("exec", "--workdir", MOUNT, self.container, *git,
                                     timeout_s=self._limits.wall_s)
            if code != 0:
                raise RuntimeError(f"`{' '.join(git)}` failed in {self.container} "
                                   f"({_status(code)}): {_last_line(out)}")
        text = out.decode("utf-8", "replace")
        return drop_test_files(text) if exclude_tests else text

    def close(self) -> None:
        """Removes the container and everything running in it; idempotent."""
        if self._closed:
            return
        self._closed = True
        code, out = self._docker("rm", "--force", self.container, timeout_s=_RM_TIMEOUT_S)
        if code != 0 and b"No such container" not in out:
            log.warning("docker rm %s failed (%s): %s", self.container, _status(code),
                        _last_line(out))

    def __enter__(self) -> DockerSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_docker(docker: str = "docker", runner: Runner = subprocess_runner) -> str:
    """Raises `SandboxUnavailable`, saying how to fix it, unless the docker CLI is on PATH and
    its daemon answers `docker info`; returns the daemon's version."""
    path = shutil.which(docker)
    if path is None:
        raise SandboxUnavailable(
            f"the docker sandbox backend needs the `{docker}` CLI, which is not on PATH: install "
            "Docker Engine (https://docs.docker.com/engine/install/) and start it, or use the "
            "local (bubblewrap) backend")
    code, out = runner(docker_argv(path, "info", "--format", "{{.ServerVersion}}"), _INFO_TIMEOUT_S)
    if code != 0:
        raise SandboxUnavailable(
            f"`{docker} info` failed ({_status(code)}): {_last_line(out) or 'no output'}; start "
            "the Docker daemon (`sudo systemctl start docker`) and let this user reach it (`sudo "
            "usermod -aG docker $USER`, then log in again)")
    return _last_line(out)


def check_swebench() -> str:
    """Raises `SandboxUnavailable` unless the `swebench` package is importable here; returns its
    version ("" when it is importable but not installed as a distribution)."""
    if importlib.util.find_spec("swebench") is None:
        raise SandboxUnavailable(
            f"grading with the docker backend runs the SWE-bench harness, and the `swebench` "
            f"package is not importable by {sys.executable}: `pip install swebench` (it also "
            "needs Docker)")
    try:
        return importlib.metadata.version("swebench")
    except importlib.metadata.PackageNotFoundError:
        return ""


def _major(version: str) -> int:
    match = re.match(r"(\d+)", version)
    return int(match.group(1)) if match else 5  # unknown (a source checkout): the current release


def harness_argv(predictions_path: str, instance_ids: Sequence[str], run_id: str,
                 settings: DockerSettings = DockerSettings(), harness_version: str = "5",
                 python: str = sys.executable) -> list[str]:
    """The `python -m swebench.harness.run_evaluation` argv for these instances. 5.x reads each
    instance's image from the dataset; 3.x/4.x derive it, so they also get `--namespace`
    (4.1+ reads "none" as no namespace), `--instance_image_tag` and `--cache_level`."""
    major = _major(harness_version)
    if major < 3:
        raise SandboxUnavailable(f"swebench {harness_version} predates the published instance "
                                 "images: `pip install -U swebench`")
    argv = [python, "-m", "swebench.harness.run_evaluation",
            "--dataset_name", settings.dataset_name, "--split", settings.split,
            "--predictions_path", str(predictions_path), "--instance_ids", *instance_ids,
            "--run_id", run_id, "--max_workers", str(settings.max_workers),
            "--timeout", str(settings.timeout_s)]
    if major < 5:
        argv += ["--namespace", settings.namespace or "none", "--instance_image_tag", settings.tag,
                 "--cache_level", settings.cache_level]
    return argv


def harness_instance_dir(work_dir: str | os.PathLike, run_id: str, model_name: str,
                         instance_id: str) -> Path:
    """Where the harness, run in `work_dir`, writes one instance's logs and report.json:
    `logs/run_evaluation/<run_id>/<model, '/' written '__'>/<instance_id>` (run_evaluation.py)."""
    return Path(work_dir).joinpath(*_LOG_DIR, run_id, model_name.replace("/", "__"), instance_id)


def grade_from_logs(instance_dir: str | os.PathLike, instance_id: str, *,
                    harness_log: str | os.PathLike | None = None, harness_note: str = "") -> Grade:
    """The `Grade` for one instance from what the harness left in `instance_dir`: its report.json
    when there is one, else the reason it wrote none (the harness writes no report when the patch
    does not apply or the tests time out; it logs why in run_instance.log). `harness_log` and
    `harness_note` say where to look when even that log is missing. Never raises."""
    directory = Path(instance_dir)
    report = directory / _LOG_REPORT
    if not report.is_file():
        return _grade_without_report(directory, harness_log, harness_note)
    try:
        return _grade_from_entry(json.loads(report.read_text())[instance_id], directory)
    except (OSError, ValueError, LookupError, TypeError, AttributeError) as e:
        return Grade(False, reason=_one_line(
            f"malformed harness report {report}: {type(e).__name__}: {e}"))


def _outcomes(block: Any) -> dict[str, bool]:
    success, failure = block["success"], block["failure"]
    if not (isinstance(success, list) and isinstance(failure, list)
            and all(isinstance(t, str) for t in success + failure)):
        raise TypeError("tests_status lists must hold test ids")
    return {**{t: True for t in success}, **{t: False for t in failure}}


def _failing(kind: str, outcomes: Mapping[str, bool]) -> str:
    failing = [t for t, ok in outcomes.items() if not ok]
    if not failing:
        return ""
    more = f" (+{len(failing) - 3} more)" if len(failing) > 3 else ""
    return f"{len(failing)}/{len(outcomes)} {kind} failing: {', '.join(failing[:3])}{more}"


def _grade_from_entry(entry: Any, directory: Path) -> Grade:
    if entry.get("patch_is_None"):
        return Grade(False, reason="empty patch")
    status = entry.get("tests_status")
    if not entry.get("patch_successfully_applied") or status is None:
        # the harness found no usable test results in test_output.txt (grading.py get_logs_eval)
        why = _test_log_reason(directory / _LOG_TEST_OUTPUT)
        infra = entry.get("infra_failure_reason")
        infra_note = f" (likely infrastructure: {infra})" if infra else ""
        return Grade(False, reason=_one_line(
            f"tests gave no usable result: {why}{infra_note} (see {directory / _LOG_TEST_OUTPUT})"))
    resolved = entry["resolved"]
    if not isinstance(resolved, bool):
        raise TypeError(f"'resolved' is {resolved!r}, not a bool")
    f2p, p2p = _outcomes(status["FAIL_TO_PASS"]), _outcomes(status["PASS_TO_PASS"])
    reason = "" if resolved else (
        "; ".join(r for r in (_failing("FAIL_TO_PASS", f2p), _failing("PASS_TO_PASS", p2p)) if r)
        or "the harness marked it unresolved")
    return Grade(resolved, fail_to_pass=f2p, pass_to_pass=p2p, reason=_one_line(reason))


def _test_log_reason(path: Path) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "no test output"
    for marker, why in _TEST_LOG_MARKERS:
        if marker in text:
            return why
    if _START_TEST_OUTPUT not in text or _END_TEST_OUTPUT not in text:
        return "no test output between the harness's markers"
    return "the test log could not be parsed or contradicts the test command's exit status"


def _grade_without_report(directory: Path, harness_log: str | os.PathLike | None,
                          harness_note: str) -> Grade:
    instance_log = directory / _LOG_INSTANCE
    try:
        text = instance_log.read_text(errors="replace")
    except OSError:
        where = harness_log if harness_log is not None else directory
        note = f"; {harness_note}" if harness_note else ""
        return Grade(False, reason=_one_line(f"harness wrote no report (see {where}){note}"))
    if _APPLY_PATCH_FAIL in text:
        detail = _apply_failure_detail(text)
        return Grade(False, reason=_one_line(
            "patch does not apply" + (f": {detail}" if detail else "")))
    timed_out = re.search(r"Test timed out after (\d+) seconds", text)
    if timed_out:
        return Grade(False, reason=f"test run timed out after {timed_out.group(1)} s")
    return Grade(False, reason=_one_line(f"harness wrote no report (see {instance_log})"))


def _apply_failure_detail(text: str) -> str:
    """The first telling line of the last apply attempt's output, logged after the marker."""
    after = text.split(_APPLY_PATCH_FAIL, 1)[1].splitlines()[1:]
    for line in after:
        if _LOG_RECORD.match(line):
            break
        line = line.strip()
        if line and not line.startswith(("patching file", "checking file", "Checking patch")):
            return line
    return ""


def grade_with_harness(patches: Mapping[str, str], work_dir: str | os.PathLike, *,
                       settings: DockerSettings = DockerSettings(), model_name: str = "ppp-jax",
                       run_id: str | None = None, runner: Runner = subprocess_runner,
                       harness_version: str | None = None) -> dict[str, Grade]:
    """Grades `patches` (instance id -> the agent's diff) with one run of the SWE-bench harness in
    `work_dir`: writes the predictions JSONL (`instance_id`, `model_name_or_path`, `model_patch`),
    runs `harness_argv` there, keeps its output in `<run_id>.harness.log`, and reads each
    instance's report.json into a `Grade` (`grade_from_logs`). An empty patch is graded without
    the harness, which skips those. Raises `SandboxUnavailable` when swebench is missing (unless
    `harness_version` is given); a missing or malformed report is an unresolved Grade."""
    work = Path(work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    grades = {iid: Grade(False, reason="empty patch")
              for iid, patch in patches.items() if not patch.strip()}
    todo = [iid for iid in patches if iid not in grades]
    if not todo:
        return grades
    version = check_swebench() if harness_version is None else harness_version
    run_id = run_id or (f"{settings.run_id_prefix}-{time.strftime('%Y%m%d-%H%M%S')}-"
                        f"{uuid.uuid4().hex[:6]}")
    predictions = work / f"{run_id}.predictions.jsonl"
    predictions.write_text("".join(
        json.dumps({"instance_id": iid, "model_name_or_path": model_name,
                    "model_patch": patches[iid]}) + "\n"
        for iid in todo))
    argv = harness_argv(str(predictions), todo, run_id, settings, version)
    limit = settings.timeout_s * math.ceil(len(todo) / settings.max_workers) + _HARNESS_SLACK_S
    code, out = runner(argv, limit, cwd=str(work))
    harness_log = work / f"{run_id}.harness.log"
    harness_log.write_bytes(out)
    note = ("" if code == 0 else f"harness killed after {_seconds(limit)} s" if code is None
            else f"harness exited {code}: {_last_line(out)}")
    for iid in todo:
        grades[iid] = grade_from_logs(harness_instance_dir(work, run_id, model_name, iid), iid,
                                      harness_log=harness_log, harness_note=note)
    return {iid: grades[iid] for iid in patches}
