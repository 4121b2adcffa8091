"""`execute_bash` for the read-only repository tools: a tiny command interpreter, no shell.

The command line is split with `shlex` (no variable expansion, no globbing) into pipelines of
argv lists, and each whitelisted command (`BASH_COMMANDS`) is a Python function here running over
the confined `RepoTools`, so every path goes through `RepoTools.resolve`. Nothing is executed by a
shell or a subprocess.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import time
from typing import TYPE_CHECKING, Any

from ppp_jax.envs.domains.repo_limits import BASH_COMMANDS, ToolError, WalkLimit

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

    FILTERS = {"head", "tail", "wc", "grep", "sort", "uniq"}

    def __init__(self, tools: RepoTools, state: dict[str, Any]):
        self.tools = tools
        self.state = state
        self.deadline = time.monotonic() + tools.limits.grep_timeout_s * 2
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
                if i > 0 and argv[0] not in self.FILTERS:
                    raise ToolError(f"'{argv[0]}' cannot read from a pipe here; pipes may feed only "
                                    f"{', '.join(sorted(self.FILTERS))}.")
                stdin = self.dispatch(argv, stdin)
            if stdin:
                outputs.append(stdin.rstrip("\n"))
        return "\n".join(outputs) if outputs else "(no output)"

    def dispatch(self, argv: list[str], stdin: str | None) -> str:
        name = argv[0]
        if name not in BASH_COMMANDS:
            raise ToolError(f"Command '{name}' is not allowed. Allowed read-only commands: "
                            f"{', '.join(BASH_COMMANDS)}.")
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
                outs.append(self.tools.list_dir(p, 3, self.cwd))
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
        return self.tools.list_dir(paths[0] if paths else ".", 3, self.cwd)

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
        deadline = time.monotonic() + self.tools.limits.walk_timeout_s
        for root in roots or ["."]:
            real, display = self.tools.resolve(root, self.cwd)
            if not os.path.isdir(real):
                raise ToolError(f"find: '{root}': No such directory")
            base = real.rstrip(os.sep).count(os.sep)
            try:
                for _, entry in self.tools.walk(real, deadline):
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
        return "\n".join(out) + "\n" if out else ""

    def cmd_grep(self, args, stdin):
        flags: set[str] = set()
        patterns: list[str] = []
        include = None
        rest: list[str] = []
        i = 0
        while i < len(args):
            a = args[i]
            if a == "-e" and i + 1 < len(args):
                patterns.append(args[i + 1])
                i += 2
                continue
            if a.startswith("--include="):
                include = a.split("=", 1)[1]
            elif a == "--":
                rest.extend(args[i + 1:])
                break
            elif a.startswith("--"):
                raise ToolError(f"grep: unsupported option {a!r}")
            elif a.startswith("-") and len(a) > 1 and not rest:
                bad = set(a[1:]) - set("rRnilcwEFHhsI")
                if bad:
                    raise ToolError(f"grep: unsupported option(s) -{''.join(sorted(bad))}")
                flags |= set(a[1:])
            else:
                rest.append(a)
            i += 1
        if not patterns:
            if not rest:
                raise ToolError("grep: no pattern given")
            patterns.append(rest.pop(0))
        pattern = patterns[0] if len(patterns) == 1 else "|".join(f"(?:{p})" for p in patterns)
        if "F" not in flags and "E" not in flags:
            # Basic regex: `\|` is alternation and `|`, `(`, `)` are literals; map to Python syntax.
            pattern = _bre_to_python(pattern)
        kw = dict(ignore_case="i" in flags, fixed="F" in flags, word="w" in flags,
                  files_only="l" in flags, count_only="c" in flags)
        if not rest:
            if stdin is None:
                raise ToolError("grep: no file given (and nothing piped in)")
            compiled = self.tools.compile_regex(pattern, kw["ignore_case"], kw["fixed"], kw["word"])
            hits = []
            for ln in stdin.split("\n"):
                left = self.deadline - time.monotonic()
                try:
                    if left > 0 and compiled.search(ln, timeout=left, concurrent=True):
                        hits.append(ln)
                except TimeoutError:
                    hits.append("[grep stopped after the time limit]")
                    break
            return (f"{len(hits)}\n" if kw["count_only"] else "\n".join(hits) + "\n") if hits else ""
        outs = []
        for p in rest:
            real, _ = self.tools.resolve(p, self.cwd)
            if os.path.isdir(real) and not flags & {"r", "R"}:
                raise ToolError(f"grep: {p}: Is a directory (use -r)")
            res = self.tools.grep(pattern, p, include, cwd=self.cwd, **kw)
            if res.startswith("No matches for"):  # keep only the notes (time limit, skipped files)
                notes = [ln for ln in res.split("\n")[1:] if ln.startswith("[")]
                if notes:
                    outs.append("\n".join(notes))
                continue
            if "n" not in flags and not kw["files_only"] and not kw["count_only"]:
                res = "\n".join(re.sub(r"^([^:\n]*):\d+:", r"\1:", ln) for ln in res.split("\n"))
            outs.append(res)
        return "\n".join(outs) + "\n" if outs else ""


def _bre_to_python(pattern: str) -> str:
    """Translates grep's basic-regex alternation/grouping (`\\|`, `\\(`, `\\)`) to Python syntax,
    making bare `|`, `(`, `)`, `{`, `}`, `+`, `?` literal as in POSIX BRE."""
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            out.append(nxt if nxt in "|(){}+?" else c + nxt)
            i += 2
            continue
        out.append("\\" + c if c in "|(){}+?" else c)
        i += 1
    return "".join(out)
