"""SWE-Full grading: the agent's diff plus the instance's test patch, on a fresh copy, under the
instance's own tests. `resolved` = every FAIL_TO_PASS and PASS_TO_PASS test passes.

This module holds the verdict type every backend returns (`Grade`); the local backend's grading
(`grade_patch`) lives here too, the Docker backend's in `envs/sandbox/docker.py`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
from typing import Any, Mapping, Sequence

from ppp_jax.envs.sandbox.base import SandboxLimits, is_test_path


@dataclasses.dataclass(frozen=True)
class Grade:
    """One graded patch.

    resolved: every FAIL_TO_PASS and every PASS_TO_PASS test passed.
    fail_to_pass / pass_to_pass: test id -> passed (a test missing from the run counts as failed).
    reason: "" when resolved; otherwise why not, one line ("empty patch", "patch does not apply:
      ...", "edits test files: ...", "2/3 FAIL_TO_PASS failing: ...", "test run timed out after
      300 s", ...).
    """

    resolved: bool
    fail_to_pass: Mapping[str, bool] = dataclasses.field(default_factory=dict)
    pass_to_pass: Mapping[str, bool] = dataclasses.field(default_factory=dict)
    reason: str = ""

    @property
    def fail_to_pass_share(self) -> float:
        """The share of FAIL_TO_PASS tests passing (1.0 when there are none), logged beside
        `resolved` as the partial-progress signal."""
        if not self.fail_to_pass:
            return 1.0 if self.resolved else 0.0
        return sum(self.fail_to_pass.values()) / len(self.fail_to_pass)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: what the episode record's stats carry."""
        return {"resolved": self.resolved, "reason": self.reason,
                "fail_to_pass_share": self.fail_to_pass_share,
                "fail_to_pass": dict(self.fail_to_pass), "pass_to_pass": dict(self.pass_to_pass)}


# --- the local backend's grading ------------------------------------------------------------

DEFAULT_TEST_COMMAND = "python -m pytest -rA -p no:cacheprovider -o addopts='' {tests}"
GRADE_LIMITS = SandboxLimits(wall_s=1800.0, max_output_bytes=16 << 20)
MAX_PATCH_BYTES = 8 << 20

_SUMMARY = re.compile(r"^(PASSED|FAILED|ERROR|XFAIL|XPASS)\s+(\S.*?)\s*$")
_PASSING = frozenset({"PASSED", "XFAIL"})  # as the SWE-bench harness counts them


def parse_pytest_summary(output: str) -> dict[str, str]:
    """Test id -> status from pytest's `-rA` short summary (`PASSED a.py::t`, `FAILED a.py::t -
    msg`, ...). The last status of an id wins (a test reported both FAILED and ERROR, e.g. a
    failing teardown, keeps the later line)."""
    statuses: dict[str, str] = {}
    for line in output.splitlines():
        m = _SUMMARY.match(line.strip())
        if not m:
            continue
        status, rest = m.groups()
        if status in ("FAILED", "ERROR", "XFAIL", "XPASS") and " - " in rest:
            rest = rest.split(" - ", 1)[0]
        statuses[rest.strip()] = status
    return statuses


def files_of_tests(test_ids: Sequence[str]) -> list[str]:
    """The files of pytest node ids (`tests/test_a.py::TestX::test_y[p]` -> `tests/test_a.py`),
    in first-seen order: the local backend runs whole files and reads the ids it needs."""
    return list(dict.fromkeys(t.split("::", 1)[0] for t in test_ids if t.strip()))


def patch_files(sandbox: Any, patch: str) -> list[str]:
    """Paths a patch touches, read by `git apply --numstat` in the sandbox's copy (so exactly
    what git would apply; a patch git cannot parse raises RuntimeError with git's message)."""
    out = sandbox.git("apply", "--numstat", "-z", "-", input=patch.encode("utf-8", "surrogateescape"))
    names = []
    for record in out.decode("utf-8", "surrogateescape").split("\0"):
        parts = record.split("\t", 2)
        if len(parts) == 3 and parts[2]:
            names.append(parts[2])
    return names


def grade_patch(patch: str, *, snapshot: str | os.PathLike, work_root: str | os.PathLike,
                test_patch: str, fail_to_pass: Sequence[str], pass_to_pass: Sequence[str],
                environment: Any = None, test_command: str = DEFAULT_TEST_COMMAND,
                limits: SandboxLimits = GRADE_LIMITS) -> Grade:
    """Grades `patch` on a fresh copy of `snapshot` (the tree at base_commit) with the local
    sandbox: apply the patch, then the instance's `test_patch`, run `test_command` (`{tests}`
    becomes the FAIL_TO_PASS and PASS_TO_PASS test files) and read pytest's summary.

    Never raises for a bad patch or a bad test run: an empty, oversized or malformed patch, one
    that edits test files or does not apply, a test patch that does not apply, a run that times
    out or reports nothing are all `Grade(resolved=False, reason=...)`. A missing sandbox
    (bubblewrap) does raise SandboxUnavailable: that is the machine, not the patch."""
    from ppp_jax.envs.sandbox.local import LocalSandbox  # noqa: PLC0415

    f2p, p2p = list(fail_to_pass), list(pass_to_pass)

    def failed(reason: str) -> Grade:
        return Grade(False, {t: False for t in f2p}, {t: False for t in p2p}, reason)

    if not patch.strip():
        return failed("empty patch")
    if len(patch.encode("utf-8", "surrogateescape")) > MAX_PATCH_BYTES:
        return failed(f"patch too large ({len(patch)} chars; limit {MAX_PATCH_BYTES} bytes)")
    kwargs: dict[str, Any] = {"limits": limits}
    if environment is not None:
        kwargs.update(ro_paths=environment.ro_paths, path_prefix=[environment.bin_dir])
    box = LocalSandbox.create(snapshot, work_root, **kwargs)
    try:
        try:
            touched = patch_files(box, patch)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            return failed(f"malformed patch: {str(e).splitlines()[0] if str(e) else e}"[:300])
        edited_tests = [p for p in touched if is_test_path(p)]
        if edited_tests:
            return failed(f"edits test files: {', '.join(edited_tests[:5])}")
        why = box.apply(patch, "patch") or box.apply(test_patch, "test_patch")
        if why:
            return failed(why)
        files = files_of_tests(f2p + p2p)
        if not files:
            return failed("the instance lists no FAIL_TO_PASS or PASS_TO_PASS tests")
        command = test_command.replace("{tests}", " ".join(shlex.quote(f) for f in files))
        result = box.run(command)
    finally:
        box.close()
    if result.timed_out:
        return failed(f"test run timed out after {limits.wall_s:g} s")
    statuses = parse_pytest_summary(result.output)
    if not statuses:
        tail = " | ".join(result.output.strip().splitlines()[-3:])
        return failed(f"test run reported no results (exit {result.exit_code}): {tail}"[:300])
    f2p_ok = {t: statuses.get(t) in _PASSING for t in f2p}
    p2p_ok = {t: statuses.get(t) in _PASSING for t in p2p}
    reasons = []
    for kind, ok in (("FAIL_TO_PASS", f2p_ok), ("PASS_TO_PASS", p2p_ok)):
        bad = [t for t, passed in ok.items() if not passed]
        if bad:
            shown = ", ".join(f"{t} ({statuses.get(t, 'not run')})" for t in bad[:3])
            reasons.append(f"{len(bad)}/{len(ok)} {kind} failing: {shown}")
    return Grade(not reasons, f2p_ok, p2p_ok, "; ".join(reasons))
