"""`execute_bash` for the read-only repository tools: a tiny command interpreter, no shell.

The command line is split with `shlex` (no variable expansion, no globbing) into pipelines of
argv lists, and each whitelisted command (`BASH_COMMANDS`) is a Python function here running over
the confined `RepoTools`, so every path goes through `RepoTools.resolve`. Nothing is executed by a
shell or a subprocess.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import re
import shlex
import sys
from typing import TYPE_CHECKING, Any

import regex

from ppp_jax.envs.domains.repo_limits import (
    BinaryFile,
    CallBudget,
    DeadlineReached,
    FileTooLarge,
    ToolError,
    WalkLimit,
    slow_lines_note,
    stopped_note,
)

if TYPE_CHECKING:
    from ppp_jax.envs.domains.repo_tools import RepoTools

_OPERATORS = {"|", "&&", ";"}


class Bash:
    """Parses a command line with `shlex` (no expansion, no globbing, no subprocess) and runs each
    whitelisted command as a Python function over the confined `RepoTools`.

    Supported: `A && B`, `A ; B` (sequence), `A | B` (B reads A's output; B must be a filter:
    head, tail, wc, grep, sort, uniq). Refused: redirection, background `&`, `||`, command
    substitution, subshells, every command outside `BASH_COMMANDS`, and options that write,
    execute or wait (`find -exec/-delete`, `sed -i`, `tail -f`).
    """

    FILTERS = {"head", "tail", "wc", "grep", "sort", "uniq", "cut", "awk"}

    def __init__(self, tools: RepoTools, state: dict[str, Any], budget: CallBudget):
        self.tools = tools
        self.state = state
        self.budget = budget  # one deadline for the whole command line
        self.bytes_left = tools.limits.max_read_bytes * 2  # file bytes one command line may read

    @property
    def cwd(self) -> str:
        return self.state.get("cwd", "")

    def run(self, command: Any) -> str:
        if not isinstance(command, str):
            raise ToolError("command must be a string.")
        if len(command) > self.tools.limits.max_command_chars:
            raise ToolError(f"Command is longer than {self.tools.limits.max_command_chars} characters.")
        if "`" in command or "$(" in command:
            raise ToolError("Command substitution is not supported (no shell).")
        if "\n" in command.strip():
            raise ToolError("Only one command line is allowed.")
        lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        try:
            tokens = list(lexer)
        except ValueError as e:
            raise ToolError(f"Cannot parse the command: {e}.") from None
        if not tokens:
            raise ToolError("Empty command.")
        # Split into sequences of pipelines.
        sequences: list[list[list[str]]] = [[[]]]
        for tok in tokens:
            if tok in ("&&", ";"):
                sequences.append([[]])
            elif tok == "|":
                sequences[-1].append([])
            elif tok and set(tok) <= set("|&;<>()"):
                what = {"&": "Running in the background", "||": "The '||' operator"}.get(
                    tok, "A subshell")
                if "<" in tok or ">" in tok:
                    what = "Redirection"
                raise ToolError(f"{what} ({tok!r}) is not allowed: read-only commands only, no shell.")
            else:
                sequences[-1][-1].append(tok)
        outputs: list[str] = []
        for pipeline in sequences:
            if any(not argv for argv in pipeline):
                raise ToolError("Empty command around an operator.")
            stdin: str | None = None
            for i, argv in enumerate(pipeline):
                self.budget.check()
                if i > 0 and argv[0] not in self.FILTERS:
                    raise ToolError(f"'{argv[0]}' cannot read from a pipe here; pipes may feed only "
                                    f"{', '.join(sorted(self.FILTERS))}.")
                stdin = self.dispatch(argv, stdin)
            if stdin:
                outputs.append(stdin.rstrip("\n"))
        return "\n".join(outputs) if outputs else "(no output)"

    def dispatch(self, argv: list[str], stdin: str | None) -> str:
        name = argv[0]
        allowed = self.tools.limits.bash_commands
        if name not in allowed:
            raise ToolError(f"Command '{name}' is not allowed. Allowed read-only commands: "
                            f"{', '.join(allowed)}.")
        return getattr(self, f"cmd_{name}")(argv[1:], stdin)

    # Each command: (args, stdin) -> stdout text. Options are parsed strictly.

    def _text_of(self, path: str) -> str:
        real, display = self.tools.resolve(path, self.cwd)
        if os.path.isdir(real):
            raise ToolError(f"{path}: Is a directory")
        if self.bytes_left <= 0:
            raise ToolError("This command line reads too much; read fewer or smaller files.")
        text, size = self.tools.read_text(real, display, min(self.tools.limits.max_read_bytes,
                                                              self.bytes_left))
        self.bytes_left -= min(size, self.tools.limits.max_read_bytes)
        return text

    def _inputs(self, paths: list[str], stdin: str | None) -> list[tuple[str, str]]:
        if not paths or paths == ["-"]:
            return [("-", stdin or "")]
        return [(p, self._text_of(p)) for p in paths]

    def cmd_pwd(self, args, stdin):
        return "/testbed" + ("/" + self.cwd if self.cwd else "")

    def cmd_echo(self, args, stdin):
        return " ".join(a for a in args if a != "-n") + "\n"

    def cmd_cd(self, args, stdin):
        target = args[0] if args else "/testbed"
        real, display = self.tools.resolve(target, self.cwd)
        if not os.path.isdir(real):
            raise ToolError(f"cd: {target}: No such directory")
        self.state["cwd"] = "" if display == "." else display
        return ""

    def cmd_cat(self, args, stdin):
        number = "-n" in args
        paths = [a for a in args if a != "-n"]
        if any(a.startswith("-") and a != "-" for a in paths):
            raise ToolError(f"cat: unsupported option in {paths}")
        texts = [t for _, t in self._inputs(paths, stdin)]
        text = "".join(texts)
        if number:
            text = "\n".join(f"{i:6}\t{ln}" for i, ln in enumerate(text.split("\n"), 1))
        return text

    def _count_arg(self, args: list[str], cmd: str) -> tuple[int, list[str], bool]:
        n, rest, from_start = 10, [], False
        i = 0
        while i < len(args):
            a = args[i]
            if a in ("-f", "-F", "--follow") or a.startswith("--follow"):
                raise ToolError(f"{cmd}: following a file (-f) is not allowed.")
            if a == "-n" and i + 1 < len(args):
                v, i = args[i + 1], i + 2
            elif a.startswith("-n"):
                v, i = a[2:], i + 1
            elif re.fullmatch(r"-\d+", a):
                v, i = a[1:], i + 1
            elif a.startswith("-") and a != "-":
                raise ToolError(f"{cmd}: unsupported option {a!r}")
            else:
                rest.append(a)
                i += 1
                continue
            if v.startswith("+"):
                from_start, v = True, v[1:]
            if not v.isdigit():
                raise ToolError(f"{cmd}: invalid number of lines {v!r}")
            n = min(int(v), 10**7)
        return n, rest, from_start

    def cmd_head(self, args, stdin):
        n, paths, _ = self._count_arg(args, "head")
        outs = []
        for _, text in self._inputs(paths, stdin):
            outs.append("\n".join(text.split("\n")[:n]))
        return "\n".join(outs)

    def cmd_tail(self, args, stdin):
        n, paths, from_start = self._count_arg(args, "tail")
        outs = []
        for _, text in self._inputs(paths, stdin):
            lines = text.rstrip("\n").split("\n")
            outs.append("\n".join(lines[n - 1:] if from_start else lines[-n:] if n else []))
        return "\n".join(outs)

    def cmd_wc(self, args, stdin):
        flags = {a for a in args if a.startswith("-")}
        if flags - {"-l", "-w", "-c"}:
            raise ToolError(f"wc: unsupported option(s) {sorted(flags - {'-l', '-w', '-c'})}")
        paths = [a for a in args if not a.startswith("-")]
        rows = []
        for name, text in self._inputs(paths, stdin):
            counts = {"-l": text.count("\n"), "-w": len(text.split()), "-c": len(text.encode())}
            shown = [str(counts[f]) for f in ("-l", "-w", "-c") if not flags or f in flags]
            rows.append(" ".join(shown) + ("" if name == "-" else f" {name}"))
        return "\n".join(rows) + "\n"

    def cmd_sort(self, args, stdin):
        if any(a not in ("-r", "-u") for a in args):
            raise ToolError("sort: only -r and -u are supported, on piped input")
        lines = (stdin or "").rstrip("\n").split("\n")
        lines = sorted(set(lines) if "-u" in args else lines, reverse="-r" in args)
        return "\n".join(lines) + "\n"

    def cmd_cut(self, args, stdin):
        """`cut -d SEP -f LIST` or `cut -c LIST` (LIST: N, N-M, N-, -M, comma-separated)."""
        delim, fields, chars, paths = "\t", None, None, []
        it = iter(args)
        for a in it:
            if a in ("-d", "-f", "-c"):
                v = next(it, None)
                if v is None:
                    raise ToolError(f"cut: option {a} needs a value")
                a = a + v
            if a.startswith("-d"):
                delim = a[2:]
                if len(delim) != 1:
                    raise ToolError("cut: the delimiter must be a single character")
            elif a.startswith("-f"):
                fields = _cut_ranges(a[2:])
            elif a.startswith("-c"):
                chars = _cut_ranges(a[2:])
            elif a.startswith("-") and a != "-":
                raise ToolError(f"cut: unsupported option {a} (only -d, -f, -c)")
            else:
                paths.append(a)
        if (fields is None) == (chars is None):
            raise ToolError("cut: give exactly one of -f LIST or -c LIST")
        out = []
        for _, text in self._inputs(paths, stdin):
            for ln in text.rstrip("\n").split("\n"):
                if chars is not None:
                    out.append("".join(c for i, c in enumerate(ln, 1) if _in_ranges(i, chars)))
                elif delim not in ln:
                    out.append(ln)  # GNU cut prints lines without the delimiter whole
                else:
                    parts = ln.split(delim)
                    out.append(delim.join(p for i, p in enumerate(parts, 1)
                                          if _in_ranges(i, fields)))
        return "\n".join(out) + "\n"

    def cmd_awk(self, args, stdin):
        """A subset of awk: `awk [-F SEP] '[/REGEX/] {print ITEM, ...}' [FILE...]`, ITEM one of
        $0, $N, $NF, NR, NF or a "string"; anything else is refused with a message."""
        sep, it, prog, paths = None, iter(args), None, []
        for a in it:
            if a == "-F":
                sep = next(it, None)
            elif a.startswith("-F"):
                sep = a[2:]
            elif prog is None:
                prog = a
            else:
                paths.append(a)
        m = re.fullmatch(r"\s*(?:/((?:[^/\\]|\\.)*)/)?\s*\{\s*print\s*(.*?)\s*;?\s*\}\s*", prog or "")
        if not m:
            raise ToolError("awk: only `awk [-F SEP] '[/REGEX/] {print $N, ...}' FILE` is supported")
        pattern = re.compile(m.group(1)) if m.group(1) is not None else None
        items = [x.strip() for x in re.split(r",(?=(?:[^\"]*\"[^\"]*\")*[^\"]*$)", m.group(2))
                 if x.strip()] or ["$0"]
        for x in items:
            if not re.fullmatch(r'\$(?:\d+|NF)|NR|NF|"[^"]*"', x):
                raise ToolError(f"awk: unsupported print item {x!r} ($N, $NF, NR, NF, \"text\")")
        out, nr = [], 0
        for _, text in self._inputs(paths, stdin):
            for ln in text.rstrip("\n").split("\n"):
                nr += 1
                if pattern is not None and not pattern.search(ln):
                    continue
                fs = ln.split(sep) if sep else ln.split()
                vals = []
                for x in items:
                    if x == "NR":
                        vals.append(str(nr))
                    elif x == "NF":
                        vals.append(str(len(fs)))
                    elif x.startswith('"'):
                        vals.append(x[1:-1])
                    elif x == "$0":
                        vals.append(ln)
                    else:
                        k = len(fs) if x == "$NF" else int(x[1:])
                        vals.append(fs[k - 1] if 0 < k <= len(fs) else "")
                out.append(" ".join(vals))
        return "\n".join(out) + ("\n" if out else "")

    # `python -c "print..."` and `pip list|show|...`: the released server ran these for real (its
    # whitelist: prefixes `python -c "print`, `pip list`, ...). Here they run in the bubblewrap
    # sandbox over the read-only snapshot, as the agent's own user, without network.
    PIP_READ_ONLY = ("list", "show", "freeze", "check", "--version", "-V")

    def cmd_python(self, args, stdin):
        if len(args) != 2 or args[0] != "-c" or not args[1].lstrip().startswith("print"):
            raise ToolError('python: only `python -c "print(...)"` is allowed here.')
        return self._sandboxed([sys.executable, "-c", args[1]])

    cmd_python3 = cmd_python

    def cmd_pip(self, args, stdin):
        if not args or args[0] not in self.PIP_READ_ONLY:
            raise ToolError(f"pip: only {', '.join(self.PIP_READ_ONLY)} are allowed here.")
        return self._sandboxed([sys.executable, "-m", "pip", "--disable-pip-version-check",
                                "--no-input", *args])

    def _sandboxed(self, argv: list[str]) -> str:
        from ppp_jax.envs.sandbox.base import SandboxLimits, SandboxUnavailable  # noqa: PLC0415
        from ppp_jax.envs.sandbox.local import LocalSandbox, running_python_paths  # noqa: PLC0415

        wall = max(1.0, min(30.0, self.budget.left()))
        try:
            box = LocalSandbox.over_read_only(
                self.tools.root, ro_paths=(sys.prefix, *running_python_paths()),
                limits=SandboxLimits(wall_s=wall, memory_bytes=2 << 30, max_processes=64,
                                     max_output_bytes=256 << 10, tmp_bytes=64 << 20))
        except SandboxUnavailable as e:
            raise ToolError(f"{argv[0]}: cannot run here: {e}") from None
        try:
            result = box.run(shlex.join(argv), cwd="/testbed" + ("/" + self.cwd if self.cwd else ""))
        finally:
            box.close()
        if result.timed_out:
            raise ToolError(f"the command timed out after {wall:g} s.")
        return result.output

    def cmd_git(self, args, stdin):
        # The snapshot has no history, like the released `git archive` export.
        return "fatal: not a git repository (or any of the parent directories): .git"

    def cmd_uniq(self, args, stdin):
        if args:
            raise ToolError("uniq: no options or files are supported, on piped input")
        out: list[str] = []
        for ln in (stdin or "").rstrip("\n").split("\n"):
            if not out or out[-1] != ln:
                out.append(ln)
        return "\n".join(out) + "\n"

    def cmd_sed(self, args, stdin):
        # Only `sed -n 'A,Bp' FILE` (print a line range).
        if len(args) < 2 or args[0] != "-n":
            raise ToolError("sed: only `sed -n 'START,ENDp' FILE` is allowed (read-only).")
        m = re.fullmatch(r"(\d+)(?:,(\d+|\$))?p", args[1])
        if not m:
            raise ToolError("sed: only `sed -n 'START,ENDp' FILE` is allowed (read-only).")
        start = int(m.group(1))
        end = m.group(2)
        outs = []
        for _, text in self._inputs(args[2:], stdin):
            lines = text.split("\n")
            stop = len(lines) if end == "$" else start if end is None else int(end)
            outs.append("\n".join(lines[start - 1:stop]))
        return "\n".join(outs)

    def cmd_ls(self, args, stdin):
        paths = [a for a in args if not a.startswith("-")]
        flags = "".join(a[1:] for a in args if a.startswith("-") and not a.startswith("--"))
        if set(flags) - set("alh1RFd"):
            raise ToolError(f"ls: unsupported option(s) -{''.join(sorted(set(flags) - set('alh1RFd')))}")
        show_all = "a" in flags
        outs = []
        for p in paths or ["."]:
            real, display = self.tools.resolve(p, self.cwd)
            if not os.path.exists(real):
                raise ToolError(f"ls: cannot access '{p}': No such file or directory")
            if os.path.isfile(real):
                outs.append(p)
                continue
            if "R" in flags:
                outs.append(self.tools.list_dir(p, 3, self.cwd, self.budget))
                continue
            try:
                names = sorted(os.listdir(real))
            except OSError as e:
                raise ToolError(f"ls: cannot open '{p}': {e.strerror}") from None
            names = [n for n in names if show_all or not n.startswith(".")]
            names = names[:self.tools.limits.list_max_entries]
            rendered = []
            for n in names:
                full = os.path.join(real, n)
                suffix = "@" if os.path.islink(full) else "/" if os.path.isdir(full) else ""
                rendered.append(n + suffix)
            outs.append((f"{p}:\n" if len(paths) > 1 else "") + "\n".join(rendered))
        return "\n".join(outs) + "\n"

    def cmd_tree(self, args, stdin):
        paths = [a for a in args if not a.startswith("-")]
        return self.tools.list_dir(paths[0] if paths else ".", 3, self.cwd, self.budget)

    def cmd_find(self, args, stdin):
        roots: list[str] = []
        i = 0
        while i < len(args) and not args[i].startswith("-"):
            roots.append(args[i])
            i += 1
        name = iname = ptn = None
        ftype = None
        maxdepth = 100
        while i < len(args):
            a = args[i]
            val = args[i + 1] if i + 1 < len(args) else None
            if a in ("-name", "-iname", "-path", "-type", "-maxdepth", "-mindepth") and val is None:
                raise ToolError(f"find: missing argument to {a}")
            if a == "-name":
                name = val
            elif a == "-iname":
                iname = val
            elif a in ("-path", "-wholename"):
                ptn = val
            elif a == "-type":
                if val not in ("f", "d"):
                    raise ToolError("find: -type must be f or d")
                ftype = val
            elif a == "-maxdepth":
                if not val.isdigit():
                    raise ToolError("find: -maxdepth needs a number")
                maxdepth = int(val)
            elif a == "-mindepth":
                pass
            elif a in ("-print",):
                i += 1
                continue
            else:
                raise ToolError(f"find: option {a!r} is not allowed (only -name, -iname, -path, "
                                "-type f|d, -maxdepth; nothing that executes or deletes).")
            i += 2
        out: list[str] = []
        for root in roots or ["."]:
            real, display = self.tools.resolve(root, self.cwd)
            if not os.path.isdir(real):
                raise ToolError(f"find: '{root}': No such directory")
            base = real.rstrip(os.sep).count(os.sep)
            try:
                for _, entry in self.tools.walk(real, self.budget):
                    depth = entry.path.count(os.sep) - base
                    if depth > maxdepth:
                        continue
                    is_dir = entry.is_dir(follow_symlinks=False)
                    if ftype == "f" and is_dir or ftype == "d" and not is_dir:
                        continue
                    if name and not fnmatch.fnmatchcase(entry.name, name):
                        continue
                    if iname and not fnmatch.fnmatchcase(entry.name.lower(), iname.lower()):
                        continue
                    shown = os.path.join(root, os.path.relpath(entry.path, real))
                    if ptn and not fnmatch.fnmatchcase(shown, ptn):
                        continue
                    out.append(shown)
                    if len(out) >= self.tools.limits.find_max_results:
                        out.append("[stopped after the result limit]")
                        return "\n".join(out)
            except WalkLimit:
                out.append("[find stopped: too many entries or time limit reached]")
                break
        return "\n".join(out) + "\n" if out else ""

    def cmd_grep(self, args, stdin):
        """GNU grep over the repository (see `GrepOptions` for what is supported): patterns from
        every `-e` (or the first operand) are each translated from their syntax (-G basic, the
        default; -E extended; -F fixed strings; -P Python/Perl) and then OR-ed, so a line matches
        when any pattern does. Messages that GNU grep writes to stderr are shown inline."""
        opts = GrepOptions.parse(args)
        tools = self.tools
        compiled = tools.compile_python_regex(
            opts.python_regex(tools.limits.max_pattern_chars), opts.ignore_case,
            shown=" / ".join(repr(p) for p in opts.patterns))
        operands = opts.operands
        if not operands:
            operands = ["."] if opts.recursive else ["-"]
            implicit_dot = opts.recursive
        else:
            implicit_dot = False
        out: list[str] = []
        emitted = 0
        slow = skipped = 0
        group_printed = False  # context mode: the next group (in any file) starts with `--`
        limit = tools.limits.grep_max_matches
        many = len(operands) > 1 or (opts.recursive and any(
            o != "-" and os.path.isdir(self._real_or_none(o) or "") for o in operands))
        with_name = opts.with_filename if opts.with_filename is not None else many

        def message(text: str) -> None:
            if not opts.no_messages:
                out.append(f"grep: {text}")

        def report(shown: str, text: str, binary: bool = False) -> bool:
            """Searches one file's text and appends grep's output for it; False at the match cap."""
            nonlocal emitted, slow
            want_lines = not (opts.files_with_matches or opts.files_without_match or opts.count
                              or opts.quiet)
            scan = tools.scan_lines(compiled, text, self.budget, invert=opts.invert,
                                    max_hits=opts.max_count if opts.max_count is not None else (
                                        None if want_lines or opts.count else 1),
                                    keep=want_lines and not binary)
            slow += scan.slow_lines
            prefix = f"{shown}:" if with_name else ""
            if opts.quiet:
                return True
            if opts.files_with_matches:
                if scan.count:
                    out.append(shown)
                return True
            if opts.files_without_match:
                if not scan.count:
                    out.append(shown)
                return True
            if opts.count:
                out.append(f"{prefix}{scan.count}")
                return True
            if binary:
                if scan.count:
                    message(f"{shown}: binary file matches")
                return True
            if (opts.before or opts.after) and not opts.only_matching:
                return print_with_context(shown, text, scan.hits)
            for lineno, line in scan.hits:
                number = f"{lineno}:" if opts.line_number else ""
                pieces = [line]
                if opts.only_matching:
                    pieces = self._matches_in(compiled, line)
                for piece in pieces:
                    if len(piece) > tools.limits.grep_max_line_chars:
                        piece = piece[:tools.limits.grep_max_line_chars] + " ..."
                    out.append(f"{prefix}{number}{piece}")
                    emitted += 1
                    if emitted >= limit:
                        return False
            return True

        def print_with_context(shown: str, text: str, hits: list[tuple[int, str]]) -> bool:
            """GNU's context output: selected lines `name:N:line`, context lines `name-N-line`,
            `--` between groups that do not touch (within and across files)."""
            nonlocal emitted, group_printed
            lines = text.split("\n")
            if text.endswith("\n") or not text:
                lines.pop()
            selected = {n for n, _ in hits}
            printed_to = 0
            for lineno, _ in hits:
                start = max(1, lineno - opts.before, printed_to + 1)
                end = min(len(lines), lineno + opts.after)
                if start > end:
                    continue
                if group_printed and start > printed_to + 1:
                    out.append("--")
                for k in range(start, end + 1):
                    sep = ":" if k in selected else "-"
                    line = lines[k - 1]
                    if len(line) > tools.limits.grep_max_line_chars:
                        line = line[:tools.limits.grep_max_line_chars] + " ..."
                    out.append((f"{shown}{sep}" if with_name else "")
                               + (f"{k}{sep}" if opts.line_number else "") + line)
                    emitted += 1
                    if emitted >= limit:
                        return False
                printed_to = end
                group_printed = True
            return True

        def search_file(real: str, shown: str, in_walk: bool) -> bool:
            """Reads one file and reports it; unreadable ones get grep's message (oversized ones
            found by a recursive walk are counted instead). False at the output cap."""
            nonlocal skipped
            try:
                text = tools.read_for_grep(real, shown)
            except BinaryFile as b:
                return opts.binary_without_match or report(shown, b.text, binary=True)
            except ToolError as e:
                if in_walk and isinstance(e, FileTooLarge):
                    skipped += 1
                else:
                    message(f"{shown}: {e}")
                return True
            return report(shown, text)

        try:
            for operand in operands:
                if operand == "-":
                    if stdin is None:
                        raise ToolError("grep: no file given (and nothing piped in)")
                    if not report("(standard input)", stdin):
                        raise _GrepCap()
                    continue
                try:
                    real, _ = tools.resolve(operand, self.cwd)
                except ToolError as e:
                    message(f"{operand}: {e}")
                    continue
                if not os.path.lexists(real):
                    display = os.path.relpath(real, tools.root)
                    message(f"{operand}: No such file or directory" + (
                        f" ({tools.missing(display)})" if display in tools.omitted else ""))
                    continue
                if os.path.isdir(real):
                    if not opts.recursive:
                        message(f"{operand}: Is a directory")
                        continue
                    files = tools.grep_files(real, self.budget, opts.include, opts.exclude,
                                             opts.exclude_dir)
                    for fpath, rel in files:
                        shown = rel if implicit_dot else os.path.join(operand, rel)
                        if not search_file(fpath, shown, True):
                            raise _GrepCap()
                    continue
                if not search_file(real, operand, False):
                    raise _GrepCap()
        except _GrepCap:
            out.append(f"[stopped after {limit} output lines; narrow the pattern or path]")
        except (DeadlineReached, WalkLimit) as e:
            out.append(stopped_note(self.budget, e))
        if slow:
            out.append(slow_lines_note(slow, tools.limits))
        if skipped:
            out.append(f"[{skipped} file(s) over {tools.limits.grep_max_file_bytes} bytes "
                       "not searched]")
        return "\n".join(out) + "\n" if out else ""

    def _real_or_none(self, path: str) -> str | None:
        try:
            return self.tools.resolve(path, self.cwd)[0]
        except ToolError:
            return None

    def _matches_in(self, compiled, line: str) -> list[str]:
        """`grep -o`: the non-empty matches in one line."""
        left = self.budget.left()
        try:
            return [m.group(0) for m in compiled.finditer(
                line, timeout=min(self.tools.limits.regex_line_cpu_s, left), concurrent=True)
                if m.group(0)]
        except TimeoutError:
            self.budget.check()
            return []


class _GrepCap(Exception):
    """grep reached its output-line cap."""


_GREP_FLAGS = {  # short flag -> GrepOptions field set to True (or the syntax it selects)
    "r": "recursive", "R": "recursive", "i": "ignore_case", "y": "ignore_case",
    "n": "line_number", "l": "files_with_matches", "L": "files_without_match", "c": "count",
    "w": "word", "x": "line", "v": "invert", "s": "no_messages", "q": "quiet",
    "I": "binary_without_match", "o": "only_matching",
}
_GREP_SYNTAX = {"G": "basic", "E": "extended", "F": "fixed", "P": "perl"}
_GREP_LONG_FLAGS = {
    "recursive": "r", "dereference-recursive": "R", "ignore-case": "i", "line-number": "n",
    "files-with-matches": "l", "files-without-match": "L", "count": "c", "word-regexp": "w",
    "line-regexp": "x", "invert-match": "v", "no-messages": "s", "quiet": "q", "silent": "q",
    "only-matching": "o", "basic-regexp": "G", "extended-regexp": "E", "fixed-strings": "F",
    "perl-regexp": "P", "with-filename": "H", "no-filename": "h",
}
_GREP_LONG_VALUES = ("regexp", "include", "exclude", "exclude-dir", "max-count", "after-context",
                     "before-context", "context", "color",
                     "colour", "binary-files")


@dataclasses.dataclass
class GrepOptions:
    """A parsed `grep` command line (GNU option syntax: clustered short flags, `-e PAT` /
    `-ePAT`, long options with `=` or a separate value, options after operands, `--`).

    Supported: -e/--regexp (repeatable), -E, -F, -G, -P (Python regex), -i, -w, -x, -v, -n, -l,
    -L, -c, -o, -q, -s, -m NUM, -r/-R, -H/-h, -I, --include, --exclude, --exclude-dir,
    --binary-files=without-match, --color (ignored), context lines -A/-B/-C NUM and -NUM.
    """

    patterns: list[str] = dataclasses.field(default_factory=list)
    operands: list[str] = dataclasses.field(default_factory=list)
    syntax: str = "basic"
    recursive: bool = False
    ignore_case: bool = False
    line_number: bool = False
    files_with_matches: bool = False
    files_without_match: bool = False
    count: bool = False
    word: bool = False
    line: bool = False
    invert: bool = False
    no_messages: bool = False
    quiet: bool = False
    binary_without_match: bool = False
    only_matching: bool = False
    with_filename: bool | None = None
    max_count: int | None = None
    before: int = 0  # context lines before each selected line (-B, -C)
    after: int = 0  # context lines after it (-A, -C)
    include: str | None = None
    exclude: tuple[str, ...] = ()
    exclude_dir: tuple[str, ...] = ()

    @classmethod
    def parse(cls, args: list[str]) -> GrepOptions:
        opts = cls()
        syntaxes: set[str] = set()
        have_e = False
        i = 0

        def value_after(name: str) -> str:
            if i + 1 >= len(args):
                raise ToolError(f"grep: option requires an argument -- '{name}'")
            return args[i + 1]

        def set_flag(c: str) -> None:
            if c in _GREP_SYNTAX:
                syntaxes.add(c)
                opts.syntax = _GREP_SYNTAX[c]
            elif c in ("H", "h"):
                opts.with_filename = c == "H"
            else:
                setattr(opts, _GREP_FLAGS[c], True)

        def set_value(name: str, value: str) -> None:
            nonlocal have_e
            if name in ("e", "regexp"):
                opts.patterns.extend(value.split("\n"))  # GNU: a newline separates patterns
                have_e = True
            elif name in ("m", "max-count"):
                if not re.fullmatch(r"-?\d+", value):
                    raise ToolError(f"grep: invalid max count {value!r}")
                opts.max_count = max(int(value), 0) if int(value) >= 0 else None
            elif name in ("A", "B", "C", "after-context", "before-context", "context"):
                if not value.isdigit():
                    raise ToolError(f"grep: {value}: invalid context length argument")
                n = min(int(value), 10_000)
                if name in ("A", "C", "after-context", "context"):
                    opts.after = n
                if name in ("B", "C", "before-context", "context"):
                    opts.before = n
            elif name == "include":
                opts.include = value
            elif name == "exclude":
                opts.exclude += (value,)
            elif name == "exclude-dir":
                opts.exclude_dir += (value,)
            elif name == "binary-files":
                if value not in ("binary", "without-match"):
                    raise ToolError(f"grep: --binary-files={value} is not supported "
                                    "(binary or without-match)")
                opts.binary_without_match = value == "without-match"
            # --color / --colour: no colours here; ignored

        while i < len(args):
            a = args[i]
            if a == "--":
                opts.operands.extend(args[i + 1:])
                break
            if a.startswith("--"):
                name, eq, value = a[2:].partition("=")
                if name in _GREP_LONG_FLAGS and not eq:
                    set_flag(_GREP_LONG_FLAGS[name])
                elif name in ("color", "colour") and not eq:
                    pass
                elif name in _GREP_LONG_VALUES:
                    if not eq:
                        value = value_after(name)
                        i += 1
                    set_value(name, value)
                else:
                    raise ToolError(f"grep: unsupported option '{a}' ({_GREP_HELP})")
                i += 1
                continue
            if a.startswith("-") and a != "-":
                j = 1
                while j < len(a):
                    c = a[j]
                    if c.isdigit():  # -NUM: that many context lines on both sides
                        digits = re.match(r"\d+", a[j:]).group(0)
                        set_value("C", digits)
                        j += len(digits)
                        continue
                    if c in "emABC":
                        value = a[j + 1:]
                        if not value:
                            value = value_after(c)
                            i += 1
                        set_value(c, value)
                        break
                    if c in _GREP_FLAGS or c in _GREP_SYNTAX or c in "Hh":
                        set_flag(c)
                    else:
                        raise ToolError(f"grep: unsupported option -- '{c}' ({_GREP_HELP})")
                    j += 1
                i += 1
                continue
            opts.operands.append(a)
            i += 1
        if len(syntaxes) > 1:
            raise ToolError("grep: conflicting matchers specified")
        if not have_e:
            if not opts.operands:
                raise ToolError("grep: no pattern given")
            opts.patterns.extend(opts.operands.pop(0).split("\n"))
        if opts.files_with_matches and opts.files_without_match:
            opts.files_without_match = False  # GNU: the later one wins; keep -l
        return opts

    def python_regex(self, max_chars: int) -> str:
        """One Python regex equivalent to OR-ing every pattern under this syntax and -w / -x."""
        if sum(len(p) for p in self.patterns) > max_chars:
            raise ToolError(f"Pattern is longer than {max_chars} characters.")
        parts = []
        for p in self.patterns:
            if self.syntax == "fixed":
                body = regex.escape(p)
            elif self.syntax == "perl":
                body = p
            else:
                body = posix_to_python(p, extended=self.syntax == "extended")
            if self.line:
                body = rf"^(?:{body})$"
            elif self.word:
                body = rf"(?<!\w)(?:{body})(?!\w)"
            parts.append(f"(?:{body})")
        return "|".join(parts)


_GREP_HELP = ("supported: -e -E -F -G -P -i -w -x -v -n -l -L -c -o -q -s -m NUM -A/-B/-C NUM "
              "-r -R -H -h -I --include= --exclude= --exclude-dir=")


def posix_to_python(pattern: str, extended: bool) -> str:
    """Translates one POSIX regex as GNU grep reads it (basic, or `extended`) into Python syntax.

    Basic: `\\|`, `\\(`, `\\)`, `\\{`, `\\}`, `\\+`, `\\?` are the operators and the bare
    characters are literal; `*` at the start of an expression is literal; `^` / `$` anchor only
    at the ends of an expression. Both: `\\<` / `\\>` are word starts / ends, `\\w \\W \\s \\S
    \\b \\B` and back-references keep their meaning, any other escaped character is literal, and
    a backslash inside a bracket expression is literal (`[[:alpha:]]` classes are kept).
    """
    out: list[str] = []
    n = len(pattern)
    i = 0
    at_start = True  # at the start of an expression (pattern, group or alternative)
    while i < n:
        c = pattern[i]
        if c == "[":
            j = _bracket_end(pattern, i)
            out.append(_bracket_to_python(pattern[i + 1:j]))
            i = j + 1
            at_start = False
            continue
        if c == "\\":
            if i + 1 >= n:
                raise ToolError("grep: Trailing backslash")
            nxt = pattern[i + 1]
            i += 2
            if not extended and nxt in "|(){}+?":
                out.append(nxt)
                at_start = nxt in "|("
                continue
            at_start = False
            if nxt == "<":
                out.append(r"\b(?=\w)")
            elif nxt == ">":
                out.append(r"\b(?<=\w)")
            elif nxt == "`":
                out.append(r"\A")
            elif nxt == "'":
                out.append(r"\Z")
            elif nxt.isdigit() or nxt in "wWsSbB":
                out.append("\\" + nxt)
            else:
                out.append(regex.escape(nxt))
            continue
        i += 1
        if not extended:
            if c in "|(){}+?":
                out.append("\\" + c)
            elif c == "*" and at_start:
                out.append(r"\*")
            elif c == "^" and not at_start:
                out.append(r"\^")
            elif c == "$" and not (i == n or pattern.startswith(("\\)", "\\|"), i)):
                out.append(r"\$")
            else:
                out.append(c)
            at_start = c == "^" and at_start
            continue
        if c == "*" and at_start:
            at_start = False  # GNU -E ignores a leading `*`
            continue
        out.append(c)
        at_start = c in "(|^"
    return "".join(out)


def _bracket_end(pattern: str, start: int) -> int:
    """Index of the `]` closing the bracket expression opened at `start`."""
    j = start + 1
    if j < len(pattern) and pattern[j] == "^":
        j += 1
    if j < len(pattern) and pattern[j] == "]":
        j += 1
    while j < len(pattern):
        if pattern[j] == "[" and j + 1 < len(pattern) and pattern[j + 1] in ":.=":
            close = pattern.find(pattern[j + 1] + "]", j + 2)
            if close < 0:
                break
            j = close + 2
            continue
        if pattern[j] == "]":
            return j
        j += 1
    raise ToolError("grep: Unmatched [, [^, [:, [., or [=")


def _bracket_to_python(body: str) -> str:
    """A POSIX bracket expression's inside as a Python character class (backslash literal)."""
    out = ["["]
    k = 0
    if body.startswith("^"):
        out.append("^")
        k = 1
    if body[k:k + 1] == "]":
        out.append(r"\]")
        k += 1
    while k < len(body):
        ch = body[k]
        if ch == "[" and k + 1 < len(body) and body[k + 1] in ":.=":
            kind = body[k + 1]
            close = body.find(kind + "]", k + 2)
            name = body[k + 2:close]
            out.append(f"[:{name}:]" if kind == ":" else regex.escape(name))
            k = close + 2
            continue
        out.append("\\" + ch if ch in "\\[]" else ch)
        k += 1
    out.append("]")
    return "".join(out)


def _cut_ranges(spec: str) -> list[tuple[int, int]]:
    """`cut`'s LIST ("1,3-5,7-") as inclusive (start, end) pairs, end 10**9 when open."""
    out = []
    for part in spec.split(","):
        m = re.fullmatch(r"(\d*)-(\d*)|(\d+)", part)
        if not m or part == "-":
            raise ToolError(f"cut: invalid list {spec!r}")
        if m.group(3):
            out.append((int(m.group(3)), int(m.group(3))))
        else:
            out.append((int(m.group(1) or 1), int(m.group(2) or 10**9)))
    return out


def _in_ranges(i: int, ranges: list[tuple[int, int]]) -> bool:
    return any(a <= i <= b for a, b in ranges)
