"""Caps on what one call of the read-only repository tools may read, scan or print, the
commands `execute_bash` allows, and the errors the tools raise."""

from __future__ import annotations

import dataclasses


class ToolError(Exception):
    """A refused or failed tool call; its message is the observation shown to the agent."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """Caps on what one tool call may read, scan or print."""

    max_read_bytes: int = 4 * 1024 * 1024  # bytes read from one file for viewing
    max_view_lines: int = 10_000  # lines shown by one view (reference: >10,000-line files are cut)
    max_path_chars: int = 1024
    max_pattern_chars: int = 1000
    max_repeat_expansion: int = 1000  # product of nested counted repetitions in a regex
    grep_timeout_s: float = 5.0  # wall clock for one grep over all files
    grep_max_matches: int = 200
    grep_max_file_bytes: int = 2 * 1024 * 1024  # larger files are skipped by grep
    grep_max_line_chars: int = 300
    walk_max_entries: int = 50_000  # directory entries visited by one find/grep/list
    walk_timeout_s: float = 5.0
    find_max_results: int = 500
    list_max_entries: int = 1000
    max_command_chars: int = 1000
    max_output_chars: int = 100_000


BASH_COMMANDS = ("ls", "cat", "head", "tail", "wc", "grep", "find", "pwd", "cd", "echo", "sed",
                 "sort", "uniq", "tree")


class WalkLimit(Exception):
    """A directory walk hit its entry or time cap."""


class MatchLimit(Exception):
    """A grep hit its match cap."""
