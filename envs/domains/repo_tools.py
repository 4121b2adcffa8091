"""Read-only repository tools, confined to one directory tree, written in Python (no shell).

`RepoTools(root)` serves the tools a function-localization agent uses on a checked-out
repository: `view_file`, `list_dir`, `find_files`, `grep`, plus an OpenHands-style compatibility
layer (`str_replace_editor` with only `view`; `execute_bash` with a whitelist of read-only
commands that are parsed into argv lists and executed by Python code here, never by a shell or
a subprocess).

Safety rules, all enforced in `resolve()` and `_read_bytes()`:
  * Every path is relative to the tree root. Absolute paths are accepted only under the virtual
    roots (`/testbed`, `/workspace`, `/repo`) or the root's own real path; anything else
    (`/etc`, `/proc`, `~`) is refused.
  * `..` may not climb out; the fully resolved real path (symbolic links followed) must stay
    inside the root's real path, so symlinks pointing outside are refused.
  * Only regular files are opened (stat first, then `O_NONBLOCK | O_NOFOLLOW` and fstat again):
    FIFOs, sockets and device files are refused, so nothing can block on open.
  * Reads are capped (`Limits.max_read_bytes`); a bigger file is shown truncated with a note.
    Files with a NUL byte in their first 8 KiB are reported as binary and not shown.
  * One wall-clock deadline per tool call (`Limits.call_timeout_s`, a `CallBudget`) covers all of
    its work: every walk, every line searched, every command of an `execute_bash` line. The
    budget can also be cancelled (the domain does so when the episode stops waiting), and the
    work stops at its next check.
  * Regexes run in the `regex` module with the GIL released, after a parse-time check that
    refuses counted repetitions whose expansion could exhaust memory when compiled. The module
    can only bound one search in CPU time, so each line's search gets at most
    `Limits.regex_line_cpu_s` of CPU (a line that needs more is skipped and counted); that bounds
    how far past the deadline a call can run.
  * Directory walks do not follow symlinks, skip `.git`, and stop after a number of entries or
    at the deadline. Every output is capped.
Every failure becomes a plain-text observation (`RepoTools.call` never raises).
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import fnmatch
import functools
import json
import os
import re
import re._parser as sre_parse
import stat
import warnings
from typing import Any, Iterator, Mapping

import regex

from ppp_jax.envs.domains.base import function_tool
from ppp_jax.envs.domains.repo_bash import Bash
from ppp_jax.envs.domains.repo_limits import (BASH_COMMANDS, BinaryFile, CallBudget,
                                              DeadlineReached, FileTooLarge, Limits, MatchLimit,
                                              ToolError, WalkLimit, slow_lines_note, stopped_note)


VIRTUAL_ROOTS = ("/testbed", "/workspace", "/repo")
SKIP_DIRS = frozenset({".git", "__pycache__"})


def _regex_expansion(pattern: str) -> int:
    """Worst-case product of nested counted repetitions (`(a{100}){100}` -> 10,000).

    Unbounded repeats count as their lower bound: they are not expanded at compile time.
    Raises ValueError for patterns the stdlib parser rejects.
    """
    possessive = getattr(sre_parse, "POSSESSIVE_REPEAT", None)

    def walk(items) -> int:
        worst = 1
        for op, av in items:
            if op in (sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT, possessive):
                lo, hi, sub = av
                n = lo if hi == sre_parse.MAXREPEAT else hi
                worst = max(worst, max(n, 1) * walk(sub))
            elif op == sre_parse.SUBPATTERN:
                worst = max(worst, walk(av[-1]))
            elif op == sre_parse.BRANCH:
                worst = max([worst] + [walk(s) for s in av[1]])
            elif op in (sre_parse.ASSERT, sre_parse.ASSERT_NOT):
                worst = max(worst, walk(av[1]))
            elif op == sre_parse.GROUPREF_EXISTS:
                worst = max(worst, walk(av[1]), walk(av[2]) if av[2] else 1)
        return worst

    with warnings.catch_warnings():  # "possible nested set" for POSIX classes like [[:alpha:]]
        warnings.simplefilter("ignore", FutureWarning)
        parsed = sre_parse.parse(pattern)
    return walk(parsed)


def omitted_entries_path(root: str | os.PathLike) -> str:
    """Where a snapshot writer lists the tree entries it left out of `root` (JSON: path -> why):
    beside the tree, not in it."""
    return os.fspath(root).rstrip(os.sep) + ".omitted.json"


def word_regexp(pattern: str) -> str:
    """`grep -w`: a match must be neither preceded nor followed by a word character (letter,
    digit, underscore), which `\\b` gets wrong for patterns that start or end with a non-word
    character."""
    return rf"(?<!\w)(?:{pattern})(?!\w)"


@dataclasses.dataclass
class LineScan:
    """What `RepoTools.scan_lines` found in one text."""

    hits: list[tuple[int, str]] = dataclasses.field(default_factory=list)  # (line number, line)
    count: int = 0  # lines selected (all of them, kept or not)
    slow_lines: int = 0  # lines skipped: their search ran past `Limits.regex_line_cpu_s`
    stopped: bool = False  # stopped at `max_hits`


class RepoTools:
    """Read-only tools over one directory tree (see the module docstring).

    Args:
      root: the tree the agent may read (e.g. an instance checkout, or the stdlib directory).
      limits: output, time and size caps.
      virtual_roots: absolute prefixes that map to `root` (OpenHands agents say `/testbed/...`).
    """

    def __init__(self, root: str | os.PathLike, limits: Limits = Limits(),
                 virtual_roots: tuple[str, ...] = VIRTUAL_ROOTS):
        self.root = os.path.realpath(os.fspath(root))
        if not os.path.isdir(self.root):
            raise ValueError(f"repository root {root!r} is not a directory")
        self.limits = limits
        self.virtual_roots = virtual_roots
        self.omitted = _load_omitted(self.root)

    def missing(self, display: str) -> str:
        """The message for a path that does not exist, saying so when the snapshot left it out."""
        why = self.omitted.get(display)
        if why is not None:
            return f"{display} was left out of this snapshot of the repository: {why}."
        return f"The path {display} does not exist."

    # --- paths ----------------------------------------------------------------------------------

    def resolve(self, path: Any, cwd: str = "") -> tuple[str, str]:
        """Maps an agent-supplied path to (real absolute path, display path relative to root).

        Raises ToolError when the path is not a string, is absolute outside the virtual roots,
        climbs out with `..`, or resolves through a symlink to outside the root.
        """
        if not isinstance(path, str):
            raise ToolError(f"Path must be a string, got {type(path).__name__}.")
        if "\x00" in path:
            raise ToolError("Path contains a NUL byte.")
        if len(path) > self.limits.max_path_chars:
            raise ToolError(f"Path is longer than {self.limits.max_path_chars} characters.")
        p = path.strip() or "."
        if p.startswith("~"):
            raise ToolError(f"Access denied: {path!r} is outside the repository.")
        if p.startswith("/"):
            rel = None
            for prefix in (*self.virtual_roots, self.root):
                if p == prefix or p.startswith(prefix.rstrip("/") + "/"):
                    rel = p[len(prefix):].lstrip("/")
                    break
            if rel is None:
                raise ToolError(
                    f"Access denied: {path!r} is outside the repository. Use paths relative to the "
                    f"repository root (or under {self.virtual_roots[0]}/).")
        else:
            rel = os.path.join(cwd, p)
        norm = os.path.normpath(rel or ".")
        if norm == ".." or norm.startswith("../") or os.path.isabs(norm):
            raise ToolError(f"Access denied: {path!r} points outside the repository.")
        real = os.path.realpath(os.path.join(self.root, norm))
        if real != self.root and not real.startswith(self.root + os.sep):
            raise ToolError(
                f"Access denied: {path!r} resolves (through a symbolic link) outside the repository.")
        display = os.path.relpath(real, self.root)
        return real, display

    def _read_bytes(self, real: str, display: str, limit: int) -> tuple[bytes, int]:
        """Reads at most `limit` bytes of a regular file; returns (data, file size)."""
        try:
            st = os.stat(real)
        except FileNotFoundError:
            raise ToolError(self.missing(display)) from None
        except OSError as e:
            raise ToolError(f"Cannot access {display}: {e.strerror}.") from None
        if stat.S_ISDIR(st.st_mode):
            raise ToolError(f"{display} is a directory, not a file.")
        if not stat.S_ISREG(st.st_mode):
            raise ToolError(f"{display} is not a regular file (device, pipe or socket); refused.")
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise ToolError(f"{display} is a symbolic link loop; refused.") from None
            raise ToolError(f"Cannot open {display}: {e.strerror}.") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ToolError(f"{display} is not a regular file; refused.")
            chunks, left = [], limit
            while left > 0:
                chunk = os.read(fd, min(left, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
            return b"".join(chunks), st.st_size
        finally:
            os.close(fd)

    def read_text_parts(self, real: str, display: str,
                        limit: int | None = None) -> tuple[str, int, str | None]:
        """Reads a text file, capped: (text, file size, note or None). Refuses binary files (a
        NUL in the first 8 KiB); stops at a later NUL; notes when the read was cut."""
        limit = limit or self.limits.max_read_bytes
        data, size = self._read_bytes(real, display, limit)
        if b"\x00" in data[:8192]:
            raise ToolError(f"{display} is a binary file ({size} bytes); not shown.")
        nul = data.find(b"\x00")
        text = data[:nul if nul >= 0 else len(data)].decode("utf-8", errors="replace")
        note = None
        if nul >= 0:
            note = f"[binary content from byte {nul} on; not shown]"
        elif size > limit:
            note = f"[file is {size} bytes; only the first {limit} bytes can be read]"
        return text, size, note

    def read_text(self, real: str, display: str, limit: int | None = None) -> tuple[str, int]:
        """Like `read_text_parts`, with the note (if any) appended as a last line."""
        text, size, note = self.read_text_parts(real, display, limit)
        return (text + "\n" + note if note else text), size

    def budget(self) -> CallBudget:
        """A fresh per-call budget (for direct calls of the tool methods)."""
        return CallBudget(self.limits.call_timeout_s)

    def walk(self, real_dir: str, budget: CallBudget | None = None, *,
             depth_first: bool = False) -> Iterator[tuple[str, os.DirEntry]]:
        """Yields (parent dir, entry) without following symlinks, names sorted, breadth-first (or
        depth-first, pre-order: a directory's contents right after it, as `grep -r` lists them);
        skips the insides of `.git` and `__pycache__`; raises WalkLimit at the entry cap or when
        the call's budget runs out."""
        budget = budget or self.budget()
        visited = 0

        def entries_of(directory: str) -> list[os.DirEntry]:
            try:
                with os.scandir(directory) as it:
                    return sorted(it, key=lambda e: e.name)
            except OSError:
                return []

        if depth_first:
            stack = [(real_dir, iter(entries_of(real_dir)))]
            while stack:
                parent, it = stack[-1]
                entry = next(it, None)
                if entry is None:
                    stack.pop()
                    continue
                visited += 1
                if visited > self.limits.walk_max_entries or budget.expired():
                    raise WalkLimit()
                yield parent, entry
                if entry.is_dir(follow_symlinks=False) and entry.name not in SKIP_DIRS:
                    stack.append((entry.path, iter(entries_of(entry.path))))
            return
        queue = collections.deque([real_dir])
        while queue:
            current = queue.popleft()
            for entry in entries_of(current):
                visited += 1
                if visited > self.limits.walk_max_entries or budget.expired():
                    raise WalkLimit()
                yield current, entry
                if entry.is_dir(follow_symlinks=False) and entry.name not in SKIP_DIRS:
                    queue.append(entry.path)

    # --- native tools ---------------------------------------------------------------------------

    def view_file(self, path: str, start_line: int | None = None, end_line: int | None = None,
                  cwd: str = "", budget: CallBudget | None = None) -> str:
        """Shows a file with 6-wide line numbers, optionally lines [start_line, end_line] (1-based,
        inclusive; end -1 = to the end). A directory is listed two levels deep instead."""
        real, display = self.resolve(path, cwd)
        if os.path.isdir(real):
            return self.list_dir(path, 2, cwd, budget)
        text, size, note = self.read_text_parts(real, display)
        lines = text.split("\n")
        if text.endswith("\n"):
            lines.pop()
        notes = [note] if note else []
        n = len(lines)
        for name, v in (("start_line", start_line), ("end_line", end_line)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                raise ToolError(f"{name} must be an integer, got {v!r}.")
        start = 1 if start_line is None else start_line
        end = n if end_line is None or end_line == -1 else end_line
        if start < 1 or (n and start > n) or end < start:
            raise ToolError(f"Invalid line range [{start_line}, {end_line}]: the file has {n} lines "
                            "(lines are numbered from 1; use -1 as end for the last line).")
        end = min(end, n)
        if end - start + 1 > self.limits.max_view_lines:
            notes.append(f"[showing {self.limits.max_view_lines} of {end - start + 1} lines; "
                         "pass a line range to see the rest]")
            end = start + self.limits.max_view_lines - 1
        body = "\n".join(f"{i:6}\t{lines[i - 1]}" for i in range(start, end + 1))
        head = f"Here's the result of running `cat -n` on {display}:"
        return "\n".join([head, body, *notes])

    def list_dir(self, path: str = ".", depth: int = 2, cwd: str = "",
                 budget: CallBudget | None = None) -> str:
        """Lists files and directories under `path`, `depth` levels deep (1..3), hidden ones and
        `.git` left out; directories end with `/`, symlinks show as `name@`."""
        if isinstance(depth, bool) or not isinstance(depth, int):
            raise ToolError(f"depth must be an integer, got {depth!r}.")
        depth = max(1, min(depth, 3))
        real, display = self.resolve(path, cwd)
        if not os.path.isdir(real):
            if os.path.exists(real):
                raise ToolError(f"{display} is not a directory.")
            raise ToolError(self.missing(display))
        out: list[str] = []
        base_depth = real.rstrip(os.sep).count(os.sep)
        stopped = False
        try:
            for parent, entry in self.walk(real, budget):
                level = parent.rstrip(os.sep).count(os.sep) - base_depth + 1
                if level > depth or entry.name.startswith(".") or any(
                        part.startswith(".") for part in os.path.relpath(parent, real).split(os.sep)
                        if part != "."):
                    continue
                rel = os.path.relpath(entry.path, self.root)
                if entry.is_symlink():
                    rel += "@"
                elif entry.is_dir(follow_symlinks=False):
                    rel += "/"
                out.append(rel)
                if len(out) >= self.limits.list_max_entries:
                    stopped = True
                    break
        except WalkLimit:
            stopped = True
        head = f"Files and directories in {display} (up to {depth} levels deep, hidden items excluded):"
        tail = ["[listing truncated]"] if stopped else []
        return "\n".join([head, *sorted(out), *tail])

    def find_files(self, pattern: str, path: str = ".", cwd: str = "",
                   budget: CallBudget | None = None) -> str:
        """Finds files whose relative path (pattern with `/`) or name (otherwise) matches a glob."""
        if not isinstance(pattern, str) or not pattern:
            raise ToolError("pattern must be a non-empty glob string.")
        if len(pattern) > self.limits.max_pattern_chars:
            raise ToolError(f"Pattern is longer than {self.limits.max_pattern_chars} characters.")
        real, display = self.resolve(path, cwd)
        if not os.path.isdir(real):
            raise ToolError(f"{display} is not a directory.")
        pat = pattern[2:] if pattern.startswith("./") else pattern
        use_path = "/" in pat
        results: list[str] = []
        note = ""
        try:
            for _, entry in self.walk(real, budget):
                rel = os.path.relpath(entry.path, self.root)
                subject = os.path.relpath(entry.path, real) if use_path else entry.name
                if fnmatch.fnmatchcase(subject, pat) or (
                        use_path and pat.startswith("**/") and fnmatch.fnmatchcase(subject, pat[3:])):
                    results.append(rel + ("/" if entry.is_dir(follow_symlinks=False) else ""))
                    if len(results) >= self.limits.find_max_results:
                        note = f"[stopped after {len(results)} results]"
                        break
        except WalkLimit:
            note = "[search stopped: too many entries or time limit reached]"
        if not results:
            return f"No files matching {pattern!r} under {display}." + (f"\n{note}" if note else "")
        return "\n".join(results + ([note] if note else []))

    def compile_regex(self, pattern: Any, ignore_case: bool = False, fixed: bool = False,
                      word: bool = False):
        """Compiles an agent regex safely (length and repetition-expansion caps). `fixed`: the
        pattern is a literal string; `word`: it must match a whole word (as `grep -w`)."""
        if not isinstance(pattern, str) or not pattern:
            raise ToolError("pattern must be a non-empty string.")
        if len(pattern) > self.limits.max_pattern_chars:
            raise ToolError(f"Pattern is longer than {self.limits.max_pattern_chars} characters.")
        if fixed:
            pattern = regex.escape(pattern)
        if word:
            pattern = word_regexp(pattern)
        return self.compile_python_regex(pattern, ignore_case)

    def compile_python_regex(self, pattern: str, ignore_case: bool = False,
                             shown: str | None = None):
        """Compiles a pattern already in Python syntax, refusing ones whose counted repetitions
        would expand past `Limits.max_repeat_expansion` copies (the caller caps its length).
        `shown`: how errors name the pattern (the agent's own spelling), if not `pattern`."""
        shown = shown if shown is not None else repr(pattern)
        try:
            expansion = _regex_expansion(pattern)
        except (Exception, RecursionError) as e:  # sre rejects some syntax `regex` accepts
            raise ToolError(f"Invalid regular expression {shown}: {_without_position(e)}.") from None
        if expansion > self.limits.max_repeat_expansion:
            raise ToolError(f"Regular expression {shown} has nested repetition counts that "
                            f"expand to {expansion} copies (limit {self.limits.max_repeat_expansion}).")
        try:
            return regex.compile(pattern, regex.IGNORECASE if ignore_case else 0)
        except (regex.error, OverflowError, RecursionError, ValueError) as e:
            raise ToolError(f"Invalid regular expression {shown}: {_without_position(e)}.") from None

    def scan_lines(self, compiled, text: str, budget: CallBudget, *, invert: bool = False,
                   max_hits: int | None = None, keep: bool = True) -> LineScan:
        """The lines of `text` that `compiled` matches (or, with `invert`, does not), 1-based.

        A final newline ends the last line (as in grep). Each line's search gets at most
        `Limits.regex_line_cpu_s` of CPU (capped by the time left); a line that needs more is
        skipped and counted in `slow_lines`. Stops after `max_hits` hits; `keep=False` only counts.
        Raises DeadlineReached when the call's budget runs out.
        """
        result = LineScan()
        if max_hits is not None and max_hits <= 0:
            return result
        whole = None if invert else _whole_text_regex(compiled.pattern, compiled.flags)
        if whole is not None:
            # One search of the whole text first: most files have no match at all.
            try:
                if whole.search(text, timeout=min(self.limits.regex_line_cpu_s, budget.left()),
                                concurrent=True) is None:
                    return result
            except TimeoutError:
                budget.check()  # too slow as a whole: go line by line
        lines = text.split("\n")
        if text.endswith("\n") or not text:  # an empty file has no line at all
            lines.pop()
        for lineno, line in enumerate(lines, 1):
            left = budget.left()
            if left <= 0:
                raise DeadlineReached()
            try:
                found = compiled.search(line, timeout=min(self.limits.regex_line_cpu_s, left),
                                        concurrent=True) is not None
            except TimeoutError:
                budget.check()
                result.slow_lines += 1
                continue
            if found != invert:
                result.count += 1
                if keep:
                    result.hits.append((lineno, line))
                if max_hits is not None and result.count >= max_hits:
                    result.stopped = True
                    break
        return result

    def grep_files(self, real: str, budget: CallBudget, include: str | None = None,
                   exclude: tuple[str, ...] = (), exclude_dirs: tuple[str, ...] = ()
                   ) -> Iterator[tuple[str, str]]:
        """(real path, path relative to `real`) of the regular files a recursive grep of `real`
        reads, depth-first in name order; `include`/`exclude` globs match file names,
        `exclude_dirs` directory names. Raises WalkLimit at the entry cap or the deadline."""
        skipped_dirs: list[str] = []
        for parent, entry in self.walk(real, budget, depth_first=True):
            if any(parent == d or parent.startswith(d + os.sep) for d in skipped_dirs):
                continue
            if entry.is_dir(follow_symlinks=False):
                if any(fnmatch.fnmatchcase(entry.name, g) for g in exclude_dirs):
                    skipped_dirs.append(entry.path)
                continue
            if not entry.is_file(follow_symlinks=False):
                continue  # symlinks, FIFOs, sockets: not followed, not opened
            if include is not None and not fnmatch.fnmatchcase(entry.name, include):
                continue
            if any(fnmatch.fnmatchcase(entry.name, g) for g in exclude):
                continue
            yield entry.path, os.path.relpath(entry.path, real)

    def read_for_grep(self, real: str, display: str) -> str:
        """A file's text for searching; ToolError if it is not a regular file, is binary (a NUL
        in its first 8 KiB) or is larger than `Limits.grep_max_file_bytes`."""
        data, size = self._read_bytes(real, display, self.limits.grep_max_file_bytes + 1)
        if size > self.limits.grep_max_file_bytes:
            raise FileTooLarge(f"{display} is larger than {self.limits.grep_max_file_bytes} bytes; "
                               "not searched.")
        if b"\x00" in data[:8192]:
            raise BinaryFile(data.decode("utf-8", "replace"))
        return data.decode("utf-8", "replace")

    def grep(self, pattern: str, path: str = ".", include: str | None = None,
             ignore_case: bool = False, cwd: str = "", *, fixed: bool = False, word: bool = False,
             files_only: bool = False, count_only: bool = False,
             max_matches: int | None = None, budget: CallBudget | None = None) -> str:
        """Searches files under `path` (or one file) for a regex, line by line.

        Output lines are `path:lineno:text`, paths relative to the repository root; binary files
        and files over `Limits.grep_max_file_bytes` are skipped; the whole search stops at the
        call's deadline and at the match cap.
        """
        budget = budget or self.budget()
        compiled = self.compile_regex(pattern, ignore_case, fixed, word)
        real, display = self.resolve(path, cwd)
        if include is not None and not isinstance(include, str):
            raise ToolError("include must be a glob string like '*.py'.")
        limit = min(max_matches or self.limits.grep_max_matches, self.limits.grep_max_matches)
        is_dir = os.path.isdir(real)
        out: list[str] = []
        counts: dict[str, int] = {}
        notes: list[str] = []
        skipped = slow = 0
        targets = self.grep_files(real, budget, include) if is_dir else iter([(real, "")])
        try:
            for fpath, _ in targets:
                rel = os.path.relpath(fpath, self.root)
                try:
                    text = self.read_for_grep(fpath, rel)
                except ToolError:
                    if not is_dir:
                        raise ToolError(f"{rel} is binary, special or larger than "
                                        f"{self.limits.grep_max_file_bytes} bytes; not searched.")
                    skipped += 1
                    continue
                scan = self.scan_lines(compiled, text, budget, keep=not (files_only or count_only),
                                       max_hits=1 if files_only else None)
                slow += scan.slow_lines
                if scan.count:
                    counts[rel] = scan.count
                for lineno, line in scan.hits:
                    text_shown = line if len(line) <= self.limits.grep_max_line_chars else (
                        line[:self.limits.grep_max_line_chars] + " ...")
                    out.append(f"{rel}:{lineno}:{text_shown}")
                    if len(out) >= limit:
                        raise MatchLimit()
        except (DeadlineReached, WalkLimit) as e:
            notes.append(stopped_note(budget, e))
        except MatchLimit:
            notes.append(f"[stopped after {limit} matches; narrow the pattern or path]")
        if files_only:
            out = sorted(counts)
        elif count_only:
            out = [f"{k}:{v}" for k, v in sorted(counts.items())]
        if slow:
            notes.append(slow_lines_note(slow, self.limits))
        if skipped and is_dir:
            notes.append(f"[{skipped} binary, special or oversized files skipped]")
        if not out:
            return "\n".join([f"No matches for {pattern!r} in {display}."] + notes)
        return "\n".join(out + notes)

    # --- OpenHands compatibility ----------------------------------------------------------------

    def str_replace_editor(self, command: str, path: str, view_range: Any = None,
                           budget: CallBudget | None = None, **_unused: Any) -> str:
        """OpenHands' editor tool; only `view` is allowed (the environment is read-only)."""
        if command != "view":
            raise ToolError(f"Command '{command}' is not allowed: the repository is read-only; "
                            "only 'view' is available.")
        if view_range is None:
            return self.view_file(path, budget=budget)
        if (not isinstance(view_range, list) or len(view_range) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in view_range)):
            raise ToolError(f"view_range must be a list of two integers, got {view_range!r}.")
        return self.view_file(path, view_range[0], view_range[1], budget=budget)

    def execute_bash(self, command: str, state: dict[str, Any] | None = None,
                     budget: CallBudget | None = None) -> str:
        """Runs a whitelisted read-only command line without a shell (see `Bash`), all of it
        under one budget."""
        return Bash(self, state if state is not None else {}, budget or self.budget()).run(command)

    # --- dispatch -------------------------------------------------------------------------------

    def schemas(self, style: str = "native") -> list[dict[str, Any]]:
        """Tool schemas (see `repo_tool_schemas`)."""
        return repo_tool_schemas(style, self.limits.bash_commands)

    TOOL_NAMES = ("view_file", "list_dir", "find_files", "grep", "execute_bash",
                  "str_replace_editor")

    def call(self, name: str, args: Mapping[str, Any], state: dict[str, Any] | None = None,
             budget: CallBudget | None = None) -> str:
        """Runs one tool call to an observation string; never raises. All its work shares one
        `budget` (by default a fresh `Limits.call_timeout_s` deadline)."""
        state = state if state is not None else {}
        cwd = state.get("cwd", "")
        budget = budget or self.budget()
        try:
            if not isinstance(args, Mapping):
                raise ToolError("Tool arguments must be a mapping.")
            a = dict(args)
            if name == "view_file":
                out = self.view_file(_req(a, "path"), a.get("start_line"), a.get("end_line"), cwd,
                                     budget)
            elif name == "list_dir":
                out = self.list_dir(a.get("path", "."), a.get("depth", 2), cwd, budget)
            elif name == "find_files":
                out = self.find_files(_req(a, "pattern"), a.get("path", "."), cwd, budget)
            elif name == "grep":
                out = self.grep(_req(a, "pattern"), a.get("path", "."), a.get("include"),
                                bool(a.get("ignore_case", False)), cwd, budget=budget)
            elif name == "str_replace_editor":
                out = self.str_replace_editor(_req(a, "command"), _req(a, "path"),
                                              a.get("view_range"), budget)
            elif name == "execute_bash":
                out = self.execute_bash(_req(a, "command"), state, budget)
            else:
                raise ToolError(f"Unknown tool '{name}'.")
        except ToolError as e:
            return f"ERROR: {e}"
        except DeadlineReached:
            return (f"ERROR: the call stopped at its {budget.seconds:g}s time limit"
                    + (" (cancelled)." if budget.cancelled.is_set() else "."))
        except Exception as e:  # a bug here must not kill the episode
            return f"ERROR: the tool failed: {type(e).__name__}: {e}"
        if len(out) > self.limits.max_output_chars:
            out = out[:self.limits.max_output_chars] + "\n[output truncated]"
        return out


def repo_tool_schemas(style: str = "native",
                      bash_commands: tuple[str, ...] = BASH_COMMANDS) -> list[dict[str, Any]]:
    """Tool schemas: "native" (view_file, list_dir, find_files, grep), "openhands"
    (execute_bash, str_replace_editor) or "both"; `bash_commands` is the whitelist that
    execute_bash's description lists (`Limits.bash_commands`)."""
    filters = "/".join(c for c in ("head", "tail", "wc", "grep", "sort", "uniq", "cut", "awk")
                       if c in bash_commands)
    native = [
        function_tool("view_file", "Show a file of the repository with line numbers. Paths are "
                      "relative to the repository root. Optionally a 1-based inclusive line "
                      "range; end_line -1 means the last line.",
                      {"path": {"type": "string"}, "start_line": {"type": "integer"},
                       "end_line": {"type": "integer"}}, ["path"]),
        function_tool("list_dir", "List files and directories (hidden ones excluded).",
                      {"path": {"type": "string"}, "depth": {"type": "integer",
                                                             "description": "1 to 3"}}, []),
        function_tool("find_files", "Find files by glob, e.g. '*.py' (file name) or "
                      "'pkg/**/test_*.py' (relative path).",
                      {"pattern": {"type": "string"}, "path": {"type": "string"}}, ["pattern"]),
        function_tool("grep", "Search file contents with a regular expression (line by line). "
                      "Returns path:line:text.",
                      {"pattern": {"type": "string"}, "path": {"type": "string"},
                       "include": {"type": "string", "description": "file-name glob"},
                       "ignore_case": {"type": "boolean"}}, ["pattern"]),
    ]
    openhands = [
        function_tool("execute_bash", "Run a read-only command in the repository (no shell): "
                      f"{', '.join(bash_commands)}; `|` pipes into {filters}; "
                      "`&&` chains. The repository is at /testbed.",
                      {"command": {"type": "string"}}, ["command"]),
        function_tool("str_replace_editor", "View a file or directory (read-only: only the "
                      "'view' command is allowed).",
                      {"command": {"type": "string", "enum": ["view"]},
                       "path": {"type": "string"},
                       "view_range": {"type": "array", "items": {"type": "integer"}}},
                      ["command", "path"]),
    ]
    if style == "native":
        return native
    if style == "openhands":
        return openhands
    if style == "both":
        return native + openhands
    raise ValueError(f"unknown tool style {style!r}")


@functools.lru_cache(maxsize=256)
def _whole_text_regex(pattern: str, flags: int):
    """`pattern` in multi-line mode, for a pre-check of a whole text: it finds a match wherever
    one line would, except with `\\A` / `\\Z` or lookarounds other than `\\w` ones (a newline
    could then change the answer); None for those."""
    if "\\A" in pattern or "\\Z" in pattern:
        return None
    if re.search(r"\(\?<?[=!]", re.sub(r"\(\?<?[=!]\\w\)", "", pattern)):
        return None
    return regex.compile(pattern, flags | regex.MULTILINE)


def _without_position(error: Exception) -> str:
    """A regex error's text without "at position N", which counts in the translated pattern."""
    return re.sub(r" at position \d+", "", str(error))


def _load_omitted(root: str) -> dict[str, str]:
    """The snapshot writer's list of left-out entries for `root` ({} when there is none)."""
    try:
        with open(omitted_entries_path(root), encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ValueError(f"{omitted_entries_path(root)}: unreadable list of omitted entries: {e}") from None
    if not isinstance(data, dict):
        raise TypeError(f"{omitted_entries_path(root)}: expected a JSON object (path -> reason)")
    return {str(k): str(v) for k, v in data.items()}


def _req(args: dict[str, Any], key: str) -> Any:
    if key not in args:
        raise ToolError(f"Missing required argument '{key}'.")
    return args[key]
