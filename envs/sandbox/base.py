"""What every sandbox backend shares: its limits, a command's result and the `Sandbox` protocol.

A sandbox is one episode's private, writable copy of a repository at `base_commit`, seen by the
agent at `MOUNT` (`/testbed`, as in the SWE-bench images). Commands run inside it with no
network and bounded time, memory, processes and output; nothing they do reaches outside the copy.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, runtime_checkable

MOUNT = "/testbed"  # where the repository copy appears inside every sandbox


class SandboxUnavailable(RuntimeError):
    """The backend cannot run here (bubblewrap or Docker missing, user namespaces disabled...);
    the message says what is missing and how to get it."""


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    """Per-command limits.

    wall_s: wall-clock seconds before the command's whole process tree is killed.
    cpu_s: CPU seconds per process (RLIMIT_CPU).
    memory_bytes: address space per process (RLIMIT_AS).
    max_processes: processes the sandbox may have at once (RLIMIT_NPROC, enforced by running it
      under its own user id).
    max_output_bytes: stdout+stderr kept; the rest is dropped and counted.
    max_file_bytes: the largest file a command may write (RLIMIT_FSIZE).
    tmp_bytes: size of the private /tmp (a tmpfs).
    max_tree_growth_bytes: how much the working copy may grow; a command writing past it is
      killed and the sandbox refuses further commands.
    """

    wall_s: float = 120.0
    cpu_s: int = 600
    memory_bytes: int = 8 << 30
    max_processes: int = 256
    max_output_bytes: int = 1 << 20
    max_file_bytes: int = 512 << 20
    tmp_bytes: int = 512 << 20
    max_tree_growth_bytes: int = 2 << 30


@dataclasses.dataclass(frozen=True)
class CommandResult:
    """What one command did.

    exit_code: the shell's exit status (None when it was killed at the deadline).
    output: stdout and stderr interleaved, decoded as UTF-8 with replacement, at most
      `max_output_bytes` of it.
    timed_out: killed at `wall_s`.
    dropped_bytes: output bytes beyond `max_output_bytes`, not kept.
    """

    exit_code: int | None
    output: str
    timed_out: bool = False
    dropped_bytes: int = 0


@runtime_checkable
class Sandbox(Protocol):
    """One episode's sandbox (see the module docstring)."""

    def run(self, command: str, *, cwd: str = MOUNT, timeout_s: float | None = None) -> CommandResult:
        """Runs `command` with bash inside the sandbox; never raises for what the command does."""
        ...

    def diff(self, exclude_tests: bool = True) -> str:
        """`git diff` of the copy against `base_commit` (new files included; test files left out
        when `exclude_tests`), as the patch to grade."""
        ...

    def close(self) -> None:
        """Kills anything still running and removes the copy; idempotent."""
        ...


_TEST_DIRS = frozenset({"test", "tests", "testing"})


def is_test_path(path: str) -> bool:
    """Whether a repository path is a test file, whose edits the agent's patch leaves out
    (the instance's `test_patch` supplies the tests): a `test`/`tests`/`testing` directory on
    the path, or a file named `test_*.py`, `*_test.py` or `conftest.py`."""
    parts = path.replace("\\", "/").strip("/").split("/")
    name = parts[-1]
    if any(p in _TEST_DIRS for p in parts[:-1]):
        return True
    return name.startswith("test_") and name.endswith(".py") or name.endswith("_test.py") \
        or name == "conftest.py"
