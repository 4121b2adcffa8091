"""Gold edited functions of a SWE patch, derived with `ast` at the base commit.

The released PPP code ships `edited_functions` precomputed and does not say how; this is ours.
For each file of a unified diff:

  * non-Python files (anything not ending in `.py`) are dropped and listed in `dropped_files`;
  * removed/changed lines (old side) are mapped to the function that contains them in the old
    source; added lines (new side) are mapped to the function that contains them in the patched
    source (the patch applied to the old text here, hunks checked against it);
  * a function's span runs from its first decorator to its last line, so a decorator change edits
    the function; a function nested in a function counts as its outermost enclosing function;
    classes nest into the name (`path.py:Outer.Inner.method`);
  * a function that exists at the base commit and is touched is gold (`functions`), including
    one the patch deletes (also listed in `deleted`); a function that only exists after the patch
    is not locatable at the base commit and is listed in `added`, not gold;
  * a change outside every function goes to `module_level` as `path.py` (module code) or
    `path.py:Class` (a class body outside its methods).

An instance with no gold function (e.g. only docs, only new functions, only module-level code)
is dropped by the caller; the counts are reported (the paper: 500 -> 488 for SWE-bench Verified).
"""

from __future__ import annotations

import ast
import dataclasses
import re
from typing import Callable

_DIFF_GIT = re.compile(r"^diff --git a/(.*) b/(.*)$")
_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


class PatchError(ValueError):
    """A patch that cannot be parsed or does not apply to the base source."""


@dataclasses.dataclass
class Hunk:
    old_start: int
    old_len: int
    new_start: int
    new_len: int
    lines: list[str] = dataclasses.field(default_factory=list)  # with their ' ', '-', '+' prefix


@dataclasses.dataclass
class FilePatch:
    old_path: str | None  # None for a new file
    new_path: str | None  # None for a deleted file
    hunks: list[Hunk] = dataclasses.field(default_factory=list)
    binary: bool = False

    @property
    def path(self) -> str:
        return self.old_path or self.new_path or ""


def _strip_prefix(p: str) -> str | None:
    p = p.strip().split("\t")[0]
    if p == "/dev/null":
        return None
    return p[2:] if p[:2] in ("a/", "b/") else p


def parse_unified_diff(patch: str) -> list[FilePatch]:
    """Parses a git-style unified diff into per-file hunks.

    Hunk bodies are consumed by their line counts, so a removed line that happens to start with
    `--` or `++` is never mistaken for a file header.
    """
    files: list[FilePatch] = []
    cur: FilePatch | None = None
    hunk: Hunk | None = None
    old_left = new_left = 0
    for line in patch.splitlines():
        if hunk is not None and (old_left > 0 or new_left > 0):
            tag = line[:1] if line else " "  # an empty line is an empty context line
            if tag == "\\":
                hunk.lines.append(line)
                continue
            if tag not in (" ", "-", "+"):
                raise PatchError(f"{cur.path}: unexpected line inside a hunk: {line[:60]!r}")
            hunk.lines.append(line if line else " ")
            if tag in (" ", "-"):
                old_left -= 1
            if tag in (" ", "+"):
                new_left -= 1
            if old_left < 0 or new_left < 0:
                raise PatchError(f"{cur.path}: hunk longer than its header says")
            continue
        if line.startswith("\\") and hunk is not None:
            hunk.lines.append(line)
            continue
        m = _DIFF_GIT.match(line)
        if m:
            cur = FilePatch(m.group(1), m.group(2))
            files.append(cur)
            hunk = None
            continue
        if line.startswith("--- "):
            if cur is None or cur.hunks:  # a plain diff without `diff --git` headers
                cur = FilePatch(None, None)
                files.append(cur)
            cur.old_path = _strip_prefix(line[4:])
            continue
        if cur is None:
            continue
        if line.startswith("+++ "):
            cur.new_path = _strip_prefix(line[4:])
        elif line.startswith("new file mode"):
            cur.old_path = None
        elif line.startswith("deleted file mode"):
            cur.new_path = None
        elif line.startswith(("Binary files", "GIT binary patch")):
            cur.binary = True
        else:
            hm = _HUNK.match(line)
            if hm:
                hunk = Hunk(int(hm.group(1)), int(hm.group(2) or 1), int(hm.group(3)),
                            int(hm.group(4) or 1))
                old_left, new_left = hunk.old_len, hunk.new_len
                cur.hunks.append(hunk)
    if hunk is not None and (old_left > 0 or new_left > 0):
        raise PatchError(f"{cur.path}: the patch ends inside a hunk")
    return files


def apply_file_patch(old_text: str, fp: FilePatch) -> str:
    """Applies one file's hunks to its old text (context and removed lines must match)."""
    old = old_text.split("\n")
    trailing_newline = old_text.endswith("\n")
    if trailing_newline:
        old.pop()
    out: list[str] = []
    pos = 0  # next old line index (0-based) not yet copied
    for h in fp.hunks:
        start = h.old_start - 1 if h.old_len > 0 else h.old_start
        if start < pos or start > len(old):
            raise PatchError(f"{fp.path}: hunk at old line {h.old_start} out of order or range")
        out.extend(old[pos:start])
        i = start
        for line in h.lines:
            tag, body = line[:1], line[1:]
            if tag == "\\":
                continue
            if tag in (" ", "-"):
                if i >= len(old) or old[i] != body:
                    raise PatchError(f"{fp.path}: hunk does not match the base at line {i + 1}")
                if tag == " ":
                    out.append(body)
                i += 1
            elif tag == "+":
                out.append(body)
        pos = i
    out.extend(old[pos:])
    return "\n".join(out) + ("\n" if trailing_newline or not old_text else "")


def changed_lines(fp: FilePatch) -> tuple[set[int], set[int]]:
    """(old line numbers removed, new line numbers added), 1-based."""
    removed, added = set(), set()
    for h in fp.hunks:
        o, n = h.old_start, h.new_start
        for line in h.lines:
            tag = line[:1]
            if tag == " ":
                o, n = o + 1, n + 1
            elif tag == "-":
                removed.add(o)
                o += 1
            elif tag == "+":
                added.add(n)
                n += 1
    return removed, added


@dataclasses.dataclass(frozen=True)
class Span:
    qualname: str  # "func", "Class.method", "Outer.Inner.method"; classes: kind "class"
    kind: str  # "function" | "class"
    start: int  # first decorator line, 1-based
    end: int


def code_spans(source: str) -> list[Span]:
    """Function spans (outermost functions, qualified by their classes) and class spans."""
    tree = ast.parse(source)
    spans: list[Span] = []

    def visit(body, prefix: str):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                q = f"{prefix}{node.name}"
                if isinstance(node, ast.ClassDef):
                    spans.append(Span(q, "class", start, node.end_lineno or node.lineno))
                    visit(node.body, q + ".")
                else:
                    spans.append(Span(q, "function", start, node.end_lineno or node.lineno))
            elif isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
                # `if TYPE_CHECKING:` / `try: ... except ImportError:` blocks define functions too.
                for field in ("body", "orelse", "finalbody"):
                    visit(getattr(node, field, []) or [], prefix)
                for handler in getattr(node, "handlers", []) or []:
                    visit(handler.body, prefix)

    visit(tree.body, "")
    return spans


def _locate(line: int, spans: list[Span]) -> Span | None:
    """The innermost span containing `line` (functions beat their classes)."""
    best = None
    for s in spans:
        if s.start <= line <= s.end and (best is None or s.start >= best.start):
            best = s
    return best


@dataclasses.dataclass(frozen=True)
class GoldFunctions:
    """What a patch edits.

    Attributes:
      functions: gold `path.py:qualname` of functions that exist at the base commit and change.
      module_level: `path.py` or `path.py:Class` for changes outside functions.
      added: `path.py:qualname` of functions that only exist after the patch.
      deleted: gold functions the patch removes entirely (also in `functions`).
      dropped_files: non-Python files in the patch.
    """

    functions: tuple[str, ...]
    module_level: tuple[str, ...]
    added: tuple[str, ...]
    deleted: tuple[str, ...]
    dropped_files: tuple[str, ...]


def gold_functions(patch: str, read_base: Callable[[str], str | None]) -> GoldFunctions:
    """Derives the gold functions of `patch`; `read_base(path)` gives a file's base-commit text
    (None if it does not exist). Raises PatchError if the patch does not apply."""
    functions: dict[str, None] = {}
    module: dict[str, None] = {}
    added: dict[str, None] = {}
    deleted: dict[str, None] = {}
    dropped: list[str] = []
    for fp in parse_unified_diff(patch):
        path = fp.path
        if not path.endswith(".py") or fp.binary:
            dropped.append(path)
            continue
        old_text = read_base(fp.old_path) if fp.old_path else ""
        if fp.old_path and old_text is None:
            raise PatchError(f"{fp.old_path} does not exist at the base commit")
        old_text = old_text or ""
        new_text = apply_file_patch(old_text, fp) if fp.new_path else ""
        try:
            old_spans = code_spans(old_text)
            new_spans = code_spans(new_text)
        except SyntaxError as e:
            raise PatchError(f"{path}: cannot parse Python source: {e}") from None
        old_names = {s.qualname for s in old_spans if s.kind == "function"}
        new_names = {s.qualname for s in new_spans if s.kind == "function"}
        removed, plus = changed_lines(fp)
        for line in sorted(removed):
            s = _locate(line, old_spans)
            _record(path, s, functions, module)
        for line in sorted(plus):
            s = _locate(line, new_spans)
            if s is not None and s.kind == "function" and s.qualname not in old_names:
                added[f"{path}:{s.qualname}"] = None
            else:
                _record(path, s, functions, module)
        for name in old_names - new_names:
            if f"{path}:{name}" in functions:
                deleted[f"{path}:{name}"] = None
    return GoldFunctions(tuple(functions), tuple(module), tuple(added), tuple(deleted), tuple(dropped))


def _record(path: str, span: Span | None, functions: dict, module: dict) -> None:
    if span is None:
        module[path] = None
    elif span.kind == "function":
        functions[f"{path}:{span.qualname}"] = None
    else:
        module[f"{path}:{span.qualname}"] = None
