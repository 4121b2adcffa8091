"""Caps on what one call of the read-only repository tools may read, scan or print, the
commands `execute_bash` allows, the per-call time budget, and the errors the tools raise."""

from __future__ import annotations

import dataclasses
import threading
import time


class ToolError(Exception):
    """A refused or failed tool call; its message is the observation shown to the agent."""


BASH_COMMANDS = ("ls", "cat", "head", "tail", "wc", "grep", "find", "pwd", "cd", "echo", "sed",
                 "sort", "uniq", "tree")
# The released server also allows these (envs/repo_server.py of PPP-Agent; its list is longer:
# see docs/fidelity.md). `cut`, a subset of `awk` and `git` (which meets a snapshot without
# history, as the released `git archive` export does) are emulated (`repo_bash.Bash`);
# `python -c "print..."`, `python3 -c "print..."` and `pip list|show|freeze|check|--version`
# run for real, in the bubblewrap sandbox over the read-only snapshot (no network, no writes).
RELEASED_BASH_COMMANDS = BASH_COMMANDS + ("cut", "awk", "git", "python", "python3", "pip")
BASH_WHITELISTS = {"paper": BASH_COMMANDS, "released": RELEASED_BASH_COMMANDS}


@dataclasses.dataclass(frozen=True)
class Limits:
    """Caps on what one tool call may read, scan or print."""

    max_read_bytes: int = 4 * 1024 * 1024  # bytes read from one file for viewing
    max_view_lines: int = 10_000  # lines shown by one view (reference: >10,000-line files are cut)
    max_path_chars: int = 1024
    max_pattern_chars: int = 1000
    max_repeat_expansion: int = 1000  # product of nested counted repetitions in a regex
    # Wall clock for ALL the work of one tool call (every grep, walk and read of a command line).
    call_timeout_s: float = 10.0
    # CPU seconds one regex search of one line may take. The `regex` module can only time a
    # search in CPU time and cannot be stopped from outside, so this (times the machine's load)
    # bounds how far a call can run past its deadline or its cancellation; a line that needs more
    # is skipped and counted (only pathological backtracking takes that long on one line).
    regex_line_cpu_s: float = 0.25
    grep_max_matches: int = 200
    grep_max_file_bytes: int = 2 * 1024 * 1024  # larger files are skipped by grep
    grep_max_line_chars: int = 300
    walk_max_entries: int = 50_000  # directory entries visited by one find/grep/list
    find_max_results: int = 500
    list_max_entries: int = 1000
    max_command_chars: int = 1000
    max_output_chars: int = 100_000
    bash_commands: tuple[str, ...] = BASH_COMMANDS  # execute_bash's whitelist (`BASH_WHITELISTS`)

    def __post_init__(self):
        if not (self.call_timeout_s > 0 and self.regex_line_cpu_s > 0):
            raise ValueError(f"Limits: call_timeout_s and regex_line_cpu_s must be > 0, got "
                             f"{self.call_timeout_s} and {self.regex_line_cpu_s}")




class WalkLimit(Exception):
    """A directory walk hit its entry cap, or the call's deadline."""


class MatchLimit(Exception):
    """A grep hit its match cap."""


class DeadlineReached(Exception):
    """The tool call's wall-clock deadline passed, or the call was cancelled."""


class CallBudget:
    """The one wall-clock deadline (and cancellation flag) shared by all the work of one tool call.

    Every loop of the tools (directory walks, lines searched, commands of a command line) checks
    it, so a call stops at its deadline and soon after `cancel()` (e.g. when the episode's own
    tool timeout gives up waiting), instead of running on in a worker thread.
    """

    def __init__(self, seconds: float, cancelled: threading.Event | None = None):
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.cancelled = cancelled if cancelled is not None else threading.Event()

    def cancel(self) -> None:
        """Asks the call to stop at its next check."""
        self.cancelled.set()

    def left(self) -> float:
        """Seconds to the deadline (0 once passed or cancelled)."""
        if self.cancelled.is_set():
            return 0.0
        return max(0.0, self.deadline - time.monotonic())

    def expired(self) -> bool:
        return self.left() <= 0.0

    def check(self) -> None:
        """Raises DeadlineReached once the deadline has passed or the call was cancelled."""
        if self.expired():
            raise DeadlineReached()


class BinaryFile(ToolError):
    """A file grep does not show as text (a NUL in its first 8 KiB); carries the decoded text so
    a caller can still say whether it matches, as grep does."""

    def __init__(self, text: str):
        super().__init__("binary file")
        self.text = text


class FileTooLarge(ToolError):
    """A file over `Limits.grep_max_file_bytes`, which grep does not search."""


def stopped_note(budget: CallBudget, why: Exception) -> str:
    """The note ending a search cut short by the entry cap, the deadline or a cancellation."""
    if isinstance(why, WalkLimit) and not budget.expired():
        return "[search stopped: too many files; results are partial]"
    if budget.cancelled.is_set():
        return "[search cancelled; results are partial]"
    return f"[search stopped at the {budget.seconds:g}s time limit of one call; results are partial]"


def slow_lines_note(slow: int, limits: Limits) -> str:
    """The note counting lines skipped because one search ran past `regex_line_cpu_s`."""
    return (f"[{slow} line(s) not searched: the pattern took over {limits.regex_line_cpu_s:g}s of "
            "CPU on each (catastrophic backtracking?); simplify it]")
