"""The `str_replace_editor` tool of SWE-Full (OpenHands semantics), confined to one repository copy.

The agent edits a private, writable copy of a repository that lives on the host at `root` and
that it sees at `MOUNT` (`/testbed`). Shell commands run inside a sandbox, but this editor runs
in the host process and touches the files under `root` itself, so it enforces the confinement
the sandbox would otherwise give:

  * Paths must be absolute and under the mount; `..` components are refused outright.
  * The host path is resolved with `os.path.realpath` (symlinks in any component, including the
    last, are followed) and must stay inside `realpath(root)`.
  * That canonical path is then walked again from a descriptor of the root, one component at a
    time with `O_NOFOLLOW`, and every file operation uses the parent directory's descriptor
    (`dir_fd`). A symlink swapped in after the check therefore makes the call fail instead of
    redirecting it outside.
  * Only regular files are opened (lstat first, then `O_NONBLOCK | O_NOFOLLOW` and fstat), so a
    fifo or device never blocks or leaks.
  * Writes go to a temporary file in the same directory and are moved into place with
    `os.replace` (a rename never writes through a symlink or into a hard-linked inode). A
    rewritten file keeps its mode; when this process is root, new files and directories get the
    owner of `root`, because the sandbox runs the agent's commands as that unprivileged user.

`FileEditor.call(args)` never raises for anything the agent sends: every failure is an
observation starting with "ERROR: ".
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import json
import os
import re
import secrets
import stat
from typing import Any, Mapping

from ppp_jax.envs.domains.base import function_tool
from ppp_jax.envs.sandbox.base import MOUNT

TOOL_NAME = "str_replace_editor"
COMMANDS = ("view", "create", "str_replace", "insert", "undo_edit")
SNIPPET_LINES = 4  # context lines shown on each side of an edit
MAX_LISTED = 2000  # directory-view entries scanned at most (a huge tree must not stall a call)

_INT_TEXT = re.compile(r"\s*[+-]?\d{1,18}\s*")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclasses.dataclass(frozen=True)
class EditorLimits:
    """Per-call limits of the editor."""

    max_view_chars: int = 16000  # a longer view is clipped, with a note on how to see the rest
    max_file_bytes: int = 4 << 20  # larger files are not read or edited, nor grown past it
    max_write_bytes: int = 1 << 20  # the largest `file_text` / `new_str` accepted
    max_undo: int = 10  # undo history kept per file


class EditorError(Exception):
    """A refusal or failure, shown to the agent as "ERROR: <message>"."""


def editor_schema() -> dict[str, Any]:
    """The OpenAI function-tool dict of `str_replace_editor`."""
    description = (
        f"View, create and edit files of the repository at {MOUNT}.\n"
        f"* All paths are absolute, e.g. `{MOUNT}/pkg/module.py`; the editor cannot reach outside "
        f"{MOUNT}.\n"
        "* `view` on a file prints it with line numbers (like `cat -n`); `view_range` picks lines. "
        "`view` on a directory lists its non-hidden files and directories up to 2 levels deep.\n"
        "* `create` writes a new file (missing parent directories are made); it refuses an "
        "existing path.\n"
        "* `str_replace` replaces `old_str` by `new_str`. `old_str` must match exactly one "
        "place in the file, character for character, whitespace and indentation included; add "
        "surrounding lines to make it unique. Leave out `new_str` to delete `old_str`.\n"
        "* `insert` puts `new_str` after line `insert_line` (0 inserts at the top).\n"
        "* `undo_edit` reverts the last create, str_replace or insert made to that file.\n"
        "* Long views are clipped; use `view_range`, or `grep -n` in the shell, to see the rest."
    )
    properties = {
        "command": {"type": "string", "enum": list(COMMANDS),
                    "description": "The operation: " + ", ".join(COMMANDS) + "."},
        "path": {"type": "string",
                 "description": f"Absolute path of a file or directory, e.g. `{MOUNT}/pkg/a.py`."},
        "file_text": {"type": "string",
                      "description": "For `create`: the whole content of the new file."},
        "old_str": {"type": "string",
                    "description": "For `str_replace`: the exact text to replace (occurs once)."},
        "new_str": {"type": "string",
                    "description": "For `str_replace`: the replacement (omit to delete `old_str`). "
                                   "For `insert`: the text to insert."},
        "insert_line": {"type": "integer",
                        "description": "For `insert`: `new_str` goes after this line (0 = top)."},
        "view_range": {"type": "array", "items": {"type": "integer"},
                       "description": "For `view` of a file: [start, end], 1-based and inclusive; "
                                      "end -1 means to the end of the file."},
    }
    return function_tool(TOOL_NAME, description, properties, required=("command", "path"))


# --- argument coercion: models send ints as "3" and lists as "[1, 20]" -------------------------

def _opt_str(args: Mapping[str, Any], name: str) -> str | None:
    value = args.get(name)
    if value is None or isinstance(value, str):
        return value
    raise EditorError(f"Parameter `{name}` must be a string, got {type(value).__name__}.")


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool):  # bool is an int subclass; True is not a line number
        raise EditorError(f"Parameter `{name}` must be an integer, got {value!r}.")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT_TEXT.fullmatch(value):
        return int(value)
    raise EditorError(f"Parameter `{name}` must be an integer, got {value!r:.80}.")


def _view_range(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    raw = value
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = None  # refused just below, naming the parameter
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise EditorError("Parameter `view_range` must be a list of two integers like [1, 20], "
                          f"got {raw!r:.80}.")
    return _as_int(value[0], "view_range"), _as_int(value[1], "view_range")


def _encoded(text: str, name: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from a JSON "\ud800" escape
        raise EditorError(f"Parameter `{name}` is not valid Unicode text.") from None


# --- text helpers ------------------------------------------------------------------------------

def _lines(text: str) -> list[str]:
    """Splits on "\\n" only, each line keeping its terminator (the last may lack one), so that
    "".join(lines) == text and the count is what `cat -n` numbers."""
    lines = text.split("\n")
    last = lines.pop()
    out = [line + "\n" for line in lines]
    if last:
        out.append(last)
    return out


def _eol(text: str) -> str:
    """The file's line ending, judged by its first line."""
    i = text.find("\n")
    return "\r\n" if i > 0 and text[i - 1] == "\r" else "\n"


def _numbered(lines: list[str], first: int) -> list[str]:
    """`cat -n` rendering of `lines`, the first being line `first`."""
    out = []
    for n, line in enumerate(lines, first):
        if line.endswith("\n"):
            line = line[:-2] if line.endswith("\r\n") else line[:-1]
        out.append(f"{n:6}\t{line}")
    return out


class FileEditor:
    """One episode's `str_replace_editor`: views and edits files under `root`, seen as `mount`.

    Holds the undo history, so create one per episode. Not thread-safe; an episode's tool calls
    run one at a time.
    """

    def __init__(self, root: str | os.PathLike, mount: str = MOUNT,
                 limits: EditorLimits = EditorLimits()):
        """`root`: the host directory of the repository copy; `mount`: where the agent sees it."""
        self.root = os.path.realpath(root)
        if not os.path.isdir(self.root):
            raise NotADirectoryError(f"editor root {root!r} is not a directory")
        self.mount = "/" + "/".join(p for p in mount.split("/") if p)
        self.limits = limits
        st = os.stat(self.root)
        # Only root may chown; files it writes must stay writable by the sandbox's user.
        self._owner = (st.st_uid, st.st_gid) if os.geteuid() == 0 else None
        self._undo: dict[tuple[str, ...], collections.deque[bytes | None]] = {}

    # --- entry point ---------------------------------------------------------------------------

    def call(self, args: Mapping[str, Any]) -> str:
        """Runs one `str_replace_editor` call and returns the observation text. Never raises for
        anything the agent sends; failures come back as "ERROR: ..."."""
        try:
            if not isinstance(args, Mapping):
                raise EditorError(f"Arguments must be an object, got {type(args).__name__}.")
            command = args.get("command")
            if command not in COMMANDS:
                raise EditorError(f"Parameter `command` must be one of {', '.join(COMMANDS)}; "
                                  f"got {command!r:.80}.")
            if args.get("path") is None:
                raise EditorError(f"Parameter `path` is required for command {command}.")
            shown, parts = self._resolve(args["path"])
            return getattr(self, "_" + command)(shown, parts, args)
        except EditorError as e:
            return f"ERROR: {e}"
        except OSError as e:
            return f"ERROR: {args.get('path')!r:.200}: {e.strerror or e}."
        except Exception as e:  # noqa: BLE001 - the agent must get an observation, never a crash
            return f"ERROR: internal editor error ({type(e).__name__}: {e})."

    # --- path resolution -----------------------------------------------------------------------

    def _resolve(self, path: Any) -> tuple[str, tuple[str, ...]]:
        """Maps an agent path to (its display form, the canonical components under root)."""
        if not isinstance(path, str):
            raise EditorError(f"Parameter `path` must be a string, got {type(path).__name__}.")
        if "\x00" in path or len(path) > 4096:
            raise EditorError("Parameter `path` is not a valid path.")
        if not path.startswith("/"):
            rel = re.sub(r"^(\./)+", "", path.strip())
            bare = self.mount.lstrip("/")
            if rel == bare or rel.startswith(bare + "/"):  # "testbed/x": the slash was forgotten
                suggestion = "/" + rel
            else:
                suggestion = f"{self.mount}/{rel}"
            raise EditorError(f"The path {path!r:.200} is not an absolute path; it must start with "
                              f"{self.mount}/. Maybe you meant {suggestion}?")
        comps = [p for p in path.split("/") if p not in ("", ".")]
        if ".." in comps:
            raise EditorError(f"The path {path!r:.200} contains '..'; use a plain absolute path "
                              f"under {self.mount}.")
        mount = [p for p in self.mount.split("/") if p]
        if comps[:len(mount)] != mount:
            raise EditorError(f"Access denied: {path!r:.200} is outside {self.mount}; the editor "
                              f"only works on the repository at {self.mount}.")
        agent_rel = comps[len(mount):]
        shown = "/".join([self.mount.rstrip("/"), *agent_rel]) if agent_rel else self.mount
        real = os.path.realpath(os.path.join(self.root, *agent_rel))
        if os.path.commonpath([self.root, real]) != self.root:
            raise EditorError(f"Access denied: {shown} resolves (through a symbolic link) "
                              f"outside {self.mount}.")
        rel = os.path.relpath(real, self.root)
        return shown, tuple(p for p in rel.split(os.sep) if p not in ("", "."))

    def _open_parent(self, parts: tuple[str, ...], shown: str, make: bool = False) -> int:
        """A descriptor of the directory holding `parts[-1]`, reached from root without following
        any symlink; with `make`, missing directories are created (owned like root)."""
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            for name in parts[:-1]:
                try:
                    nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not make:
                        raise EditorError(f"The path {shown} does not exist.") from None
                    try:
                        os.mkdir(name, 0o755, dir_fd=fd)
                        if self._owner:
                            os.chown(name, *self._owner, dir_fd=fd, follow_symlinks=False)
                    except FileExistsError:  # made meanwhile; the O_NOFOLLOW open below checks it
                        pass
                    nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        # ELOOP: a symlink appeared after resolution; ENOTDIR: a file on the way.
                        raise EditorError(
                            f"The path {shown} cannot be reached: a component is not a directory "
                            "(or changed while being resolved).") from None
                    raise
                os.close(fd)
                fd = nxt
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _lstat(self, pfd: int, parts: tuple[str, ...]) -> os.stat_result | None:
        if not parts:  # the root itself
            return os.stat(self.root)
        try:
            return os.stat(parts[-1], dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    # --- reading -------------------------------------------------------------------------------

    def _read(self, pfd: int, name: str, shown: str) -> tuple[str, int]:
        """The text and permission bits of a regular file (refusing others, big ones, binaries)."""
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        self._check_regular(st, shown)
        fd = os.open(name, _READ_FLAGS, dir_fd=pfd)
        try:
            st = os.fstat(fd)
            self._check_regular(st, shown)
            chunks, size = [], 0
            while chunk := os.read(fd, 1 << 20):
                size += len(chunk)
                if size > self.limits.max_file_bytes:  # the file grew since fstat
                    self._check_regular(os.fstat(fd), shown, size)
                chunks.append(chunk)
        finally:
            os.close(fd)
        data = b"".join(chunks)
        if b"\x00" in data:
            raise EditorError(f"{shown} is a binary file (it contains NUL bytes); the editor "
                              "only handles text.")
        try:
            return data.decode("utf-8"), stat.S_IMODE(st.st_mode)
        except UnicodeDecodeError as e:
            raise EditorError(f"{shown} is not valid UTF-8 text (byte {e.start}); the editor only "
                              "handles UTF-8 files. Use the shell for this file.") from None

    def _check_regular(self, st: os.stat_result, shown: str, size: int | None = None) -> None:
        if stat.S_ISDIR(st.st_mode):
            raise EditorError(f"{shown} is a directory; only `view` works on directories.")
        if stat.S_ISLNK(st.st_mode):
            raise EditorError(f"{shown} is a symbolic link that does not resolve (a loop?).")
        if not stat.S_ISREG(st.st_mode):
            raise EditorError(f"{shown} is not a regular file (a fifo, socket or device); refused.")
        size = st.st_size if size is None else size
        if size > self.limits.max_file_bytes:
            raise EditorError(f"{shown} is {size} bytes, over the editor's limit of "
                              f"{self.limits.max_file_bytes}; look at it with the shell "
                              "(`grep -n`, `sed -n '1,50p'`).")

    def _load(self, parts: tuple[str, ...], shown: str) -> tuple[str, int]:
        if not parts:
            raise EditorError(f"{shown} is a directory; only `view` works on directories.")
        pfd = self._open_parent(parts, shown)
        try:
            if self._lstat(pfd, parts) is None:
                raise EditorError(f"The path {shown} does not exist. Please provide a valid path.")
            return self._read(pfd, parts[-1], shown)
        finally:
            os.close(pfd)

    # --- writing -------------------------------------------------------------------------------

    def _write(self, parts: tuple[str, ...], shown: str, data: bytes, *, mode: int = 0o644,
               exclusive: bool = False, make_dirs: bool = False) -> None:
        """Writes `data` to a temporary file beside the target, then moves it into place.
        `exclusive`: fail if the target exists (linkat, so no window where it could appear)."""
        if not parts:
            raise EditorError(f"{shown} is a directory; it cannot be written.")
        if len(data) > self.limits.max_file_bytes:
            raise EditorError(f"The result would be {len(data)} bytes, over the editor's limit of "
                              f"{self.limits.max_file_bytes}; nothing was written.")
        pfd = self._open_parent(parts, shown, make=make_dirs)
        name = parts[-1]
        tmp = f".{name[:64]}.{secrets.token_hex(6)}.editor-tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=pfd)
            try:
                if self._owner:
                    os.fchown(fd, *self._owner)
                os.fchmod(fd, mode)  # after fchown, which would clear set-id bits
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            if exclusive:
                try:
                    os.link(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd, follow_symlinks=False)
                    return
                except FileExistsError:
                    raise EditorError(_exists(shown)) from None
                except OSError:  # a filesystem without hard links: check, then rename
                    if self._lstat(pfd, parts) is not None:
                        raise EditorError(_exists(shown)) from None
            else:
                st = self._lstat(pfd, parts)
                if st is not None and stat.S_ISDIR(st.st_mode):
                    raise EditorError(f"{shown} is a directory; it cannot be written.")
            # rename replaces a symlink swapped in at `name` rather than writing through it
            os.replace(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
        finally:
            try:
                os.unlink(tmp, dir_fd=pfd)
            except FileNotFoundError:
                pass
            os.close(pfd)

    def _remember(self, parts: tuple[str, ...], before: bytes | None) -> None:
        history = self._undo.setdefault(parts, collections.deque(maxlen=self.limits.max_undo))
        history.append(before)

    # --- rendering -----------------------------------------------------------------------------

    def _clip(self, numbered: list[str], first: int, total: int, shown: str) -> str:
        """Joins numbered lines, stopping before `max_view_chars` with a note on the rest."""
        out, used = [], 0
        for i, line in enumerate(numbered):
            if used + len(line) + 1 > self.limits.max_view_chars:
                if not out:  # one huge line: show its start rather than nothing
                    out.append(line[:self.limits.max_view_chars] + " [line clipped]")
                    i += 1
                last = first + i - 1
                out.append(f"[Output clipped at {self.limits.max_view_chars} characters: showing "
                           f"lines {first}-{last} of {total}. To see more, view with "
                           f"view_range=[{min(last + 1, total)}, {total}], or find what you need "
                           f"with `grep -n PATTERN {shown}`.]")
                break
            out.append(line)
            used += len(line) + 1
        return "\n".join(out)

    def _snippet(self, text: str, shown: str, first_line: int, n_new: int) -> str:
        lines = _lines(text)
        start = max(1, first_line - SNIPPET_LINES)
        end = min(len(lines), first_line + n_new - 1 + SNIPPET_LINES)
        body = self._clip(_numbered(lines[start - 1:end], start), start, len(lines), shown)
        return (f"The file {shown} has been edited. Here's the result of running `cat -n` on a "
                f"snippet of {shown}:\n{body}\nReview the changes and make sure they are as "
                "expected. Edit the file again if necessary.")

    # --- commands ------------------------------------------------------------------------------

    def _view(self, shown: str, parts: tuple[str, ...], args: Mapping[str, Any]) -> str:
        rng = _view_range(args.get("view_range"))
        pfd = self._open_parent(parts, shown) if parts else None
        try:
            st = self._lstat(pfd, parts) if parts else os.stat(self.root)
            if st is None:
                raise EditorError(f"The path {shown} does not exist. Please provide a valid path.")
            if stat.S_ISDIR(st.st_mode):
                if rng is not None:
                    raise EditorError(
                        "Parameter `view_range` is not allowed when `path` is a directory.")
                if parts:
                    dfd = os.open(parts[-1], _DIR_FLAGS, dir_fd=pfd)
                else:
                    dfd = os.open(self.root, _DIR_FLAGS)
                try:
                    return self._view_dir(dfd, shown)
                finally:
                    os.close(dfd)
            text, _ = self._read(pfd, parts[-1], shown)
        finally:
            if pfd is not None:
                os.close(pfd)
        lines = _lines(text)
        n = len(lines)
        head = f"Here's the result of running `cat -n` on {shown}:\n"
        if rng is None:
            if n == 0:
                return head + "(the file is empty)"
            return head + self._clip(_numbered(lines, 1), 1, n, shown)
        start, end = rng
        if not 1 <= start <= n:
            raise EditorError(f"Invalid `view_range` {list(rng)}: its first element should be "
                              f"within [1, {n}], the lines of {shown}." if n else
                              f"Invalid `view_range` {list(rng)}: {shown} is empty.")
        if end != -1 and end < start:
            raise EditorError(f"Invalid `view_range` {list(rng)}: the second element should be -1 "
                              f"(to the end) or at least the first element ({start}).")
        note = ""
        if end == -1:
            end = n
        elif end > n:  # clipped rather than refused: what the agent wants is clear
            note = f"\n[{shown} has {n} lines; showing lines {start}-{n}.]"
            end = n
        return head + self._clip(_numbered(lines[start - 1:end], start), start, n, shown) + note

    def _view_dir(self, dfd: int, shown: str) -> str:
        entries: list[str] = []
        scanned = 0

        def walk(fd: int, prefix: str, depth: int) -> None:
            nonlocal scanned
            with os.scandir(fd) as it:
                children = []
                for entry in it:
                    scanned += 1
                    if scanned > MAX_LISTED:
                        break
                    if not entry.name.startswith("."):
                        children.append((entry.name, entry.is_dir(follow_symlinks=False)))
            for name, is_dir in sorted(children):
                entries.append(f"{prefix}/{name}" + ("/" if is_dir else ""))
                if is_dir and depth < 2 and scanned <= MAX_LISTED:
                    try:  # never descend through a symlink (is_dir above did not follow it either)
                        sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
                    except OSError:
                        continue
                    try:
                        walk(sub, f"{prefix}/{name}", depth + 1)
                    finally:
                        os.close(sub)

        walk(dfd, shown.rstrip("/"), 1)
        body = "\n".join([shown.rstrip("/") + "/", *entries])
        if scanned > MAX_LISTED:
            body += (f"\n[Listing stopped after {MAX_LISTED} entries; view a subdirectory, or use "
                     "`find` in the shell.]")
        if len(body) > self.limits.max_view_chars:
            cut = body.rfind("\n", 0, self.limits.max_view_chars)
            body = body[:max(cut, 0)] + (f"\n[Listing clipped at {self.limits.max_view_chars} "
                                         "characters; view a subdirectory to see more.]")
        return (f"Here's the files and directories up to 2 levels deep in {shown}, excluding "
                f"hidden items:\n{body}")

    def _create(self, shown: str, parts: tuple[str, ...], args: Mapping[str, Any]) -> str:
        file_text = _opt_str(args, "file_text")
        if file_text is None:
            raise EditorError("Parameter `file_text` is required for command create.")
        data = _encoded(file_text, "file_text")
        if len(data) > self.limits.max_write_bytes:
            raise EditorError(f"Parameter `file_text` is {len(data)} bytes, over the limit of "
                              f"{self.limits.max_write_bytes}; create the file in smaller pieces.")
        if not parts:
            raise EditorError(_exists(shown))
        self._write(parts, shown, data, exclusive=True, make_dirs=True)
        self._remember(parts, None)
        return f"File created successfully at: {shown}"

    def _str_replace(self, shown: str, parts: tuple[str, ...], args: Mapping[str, Any]) -> str:
        old = _opt_str(args, "old_str")
        new = _opt_str(args, "new_str") or ""
        if old is None:
            raise EditorError("Parameter `old_str` is required for command str_replace.")
        if old == "":
            raise EditorError("Parameter `old_str` must not be empty; use `insert` to add text.")
        if old == new:
            raise EditorError("No replacement was performed: `new_str` and `old_str` are "
                              "identical.")
        self._check_new_str(new)
        text, mode = self._load(parts, shown)
        starts = _occurrences(text, old)
        if not starts and "\r\n" in text and "\r" not in old:
            # A CRLF file edited with "\n" strings: match and write in the file's own line endings.
            old = old.replace("\n", "\r\n")
            new = new if "\r" in new else new.replace("\n", "\r\n")
            starts = _occurrences(text, old)
        if not starts:
            raise EditorError(f"No replacement was performed, old_str `{_short(old)}` did not "
                              f"appear verbatim in {shown}.")
        if len(starts) > 1:
            lines = sorted({text.count("\n", 0, i) + 1 for i in starts})
            more = "" if len(starts) < 100 else " (and maybe more)"
            raise EditorError(f"No replacement was performed. Multiple occurrences of old_str "
                              f"`{_short(old)}` in lines {lines}{more}. Please ensure it is "
                              "unique.")
        i = starts[0]
        result = text[:i] + new + text[i + len(old):]
        self._write(parts, shown, result.encode("utf-8"), mode=mode)
        self._remember(parts, text.encode("utf-8"))
        return self._snippet(result, shown, text.count("\n", 0, i) + 1, new.count("\n") + 1)

    def _check_new_str(self, new: str) -> None:
        if len(_encoded(new, "new_str")) > self.limits.max_write_bytes:
            raise EditorError(f"Parameter `new_str` is over the limit of "
                              f"{self.limits.max_write_bytes} bytes.")

    def _insert(self, shown: str, parts: tuple[str, ...], args: Mapping[str, Any]) -> str:
        if args.get("insert_line") is None:
            raise EditorError("Parameter `insert_line` is required for command insert.")
        at = _as_int(args["insert_line"], "insert_line")
        new = _opt_str(args, "new_str")
        if new is None:
            raise EditorError("Parameter `new_str` is required for command insert.")
        self._check_new_str(new)
        text, mode = self._load(parts, shown)
        lines = _lines(text)
        if not 0 <= at <= len(lines):
            raise EditorError(f"Invalid `insert_line` {at}: it should be within [0, {len(lines)}], "
                              f"the number of lines of {shown}.")
        eol = _eol(text)
        if eol == "\r\n" and "\r" not in new:
            new = new.replace("\n", "\r\n")
        before, after = lines[:at], lines[at:]
        if before and not before[-1].endswith("\n"):  # after a last line that lacks its newline
            before[-1] += eol
        if after and not new.endswith("\n"):
            new += eol
        elif not after and not new.endswith("\n") and (not lines or text.endswith("\n")):
            new += eol  # appended to a file that ends with a newline: keep it ending with one
        result = "".join(before) + new + "".join(after)
        self._write(parts, shown, result.encode("utf-8"), mode=mode)
        self._remember(parts, text.encode("utf-8"))
        return self._snippet(result, shown, at + 1, max(1, len(_lines(new))))

    def _undo_edit(self, shown: str, parts: tuple[str, ...], args: Mapping[str, Any]) -> str:
        history = self._undo.get(parts)
        if not history:
            raise EditorError(f"No edit history found for {shown}; there is nothing to undo.")
        before = history[-1]
        if before is None:  # undoing a create: remove the file it made
            pfd = self._open_parent(parts, shown)
            try:
                st = self._lstat(pfd, parts)
                if st is not None:
                    if stat.S_ISDIR(st.st_mode):
                        raise EditorError(
                            f"{shown} is now a directory; the create cannot be undone.")
                    os.unlink(parts[-1], dir_fd=pfd)
            finally:
                os.close(pfd)
            history.pop()
            return f"Last edit to {shown} undone successfully: the file it created was removed."
        mode = 0o644
        pfd = self._open_parent(parts, shown, make=True)
        try:
            st = self._lstat(pfd, parts)
            if st is not None and stat.S_ISREG(st.st_mode):
                mode = stat.S_IMODE(st.st_mode)
        finally:
            os.close(pfd)
        self._write(parts, shown, before, mode=mode, make_dirs=True)
        history.pop()
        text = before.decode("utf-8")
        lines = _lines(text)
        if lines:
            body = self._clip(_numbered(lines, 1), 1, len(lines), shown)
        else:
            body = "(the file is empty)"
        return (f"Last edit to {shown} undone successfully. Here's the result of running `cat -n` "
                f"on {shown}:\n{body}")


def _occurrences(text: str, sub: str, cap: int = 100) -> list[int]:
    """Start offsets of the first `cap` (possibly overlapping) occurrences of `sub` in `text`."""
    out, i = [], text.find(sub)
    while i != -1 and len(out) < cap:
        out.append(i)
        i = text.find(sub, i + 1)
    return out


def _exists(shown: str) -> str:
    return (f"File already exists at: {shown}; cannot overwrite with `create` (use `str_replace` "
            "or `insert` to change it).")


def _short(s: str, n: int = 200) -> str:
    return s if len(s) <= n else s[:n] + "..."

