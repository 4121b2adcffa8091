"""An embedded, offline function-localization domain over the Python standard library.

Real code nobody here wrote: the standard library of the running interpreter
(`sysconfig.get_paths()["stdlib"]`). Each task picks one real, documented function or method and
reports a (synthetic) defect in it:

  * the precise prompt names the module, file, function and signature, and the location in the
    answer's own `file.py:Qual.name` form (so answering from it is a copy, not a rewrite), quotes
    the documented behaviour (first paragraph of the docstring) and states a symptom;
  * the vague prompt says what goes wrong without the names (the rule vaguenizer of
    `envs.vaguenize` over the behaviour and symptom, then every occurrence of the module, class
    and function names removed where they are used as names);
  * the hidden information for the simulator is the gold file and the gold `file.py:Qual.name`;
  * the gold answer is `path/relative/to/stdlib.py:Qual.name`, scored by the same F1 and tools as
    SWE-Func-Loc (the stdlib directory is the read-only tree).

No code is changed and no bug is real: the task is localization from a description, which is what
SWE-Func-Loc measures. Tasks are deterministic for a given Python version and seed: files are
visited in a seeded order and candidates taken in source order, at most `per_file` per file.
About 15% of tasks (by a hash of the task id and seed) form the test split.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import os
import random
import re
import sys
import sysconfig

from ppp_jax.envs.domains.base import Task
from ppp_jax.envs.domains.func_loc import FuncLocDomain, RepoToolsSection, ToolStyle
from ppp_jax.envs.domains.registry import register_domain
from ppp_jax.envs.domains.repo_limits import BASH_WHITELISTS, Limits

DOMAIN = "stdlib_loc"
SKIP_DIRS = frozenset({"test", "tests", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip",
                       "site-packages", "dist-packages", "__pycache__", "pydoc_data", "unittest"})
SKIP_FILES = frozenset({"__main__.py", "this.py", "antigravity.py", "__phello__.foo.py"})

SYMPTOMS = (
    "For ordinary, valid input it returns a wrong result instead of what the documentation says.",
    "It raises an unexpected exception on input that the documentation says is valid.",
    "It silently ignores one of its arguments, so callers do not get the documented behaviour.",
    "It gives a different result when called twice with the same arguments, although nothing "
    "should have changed in between.",
    "It returns without doing anything in some cases where the documentation says it should act.",
)


@dataclasses.dataclass(frozen=True)
class StdlibLocConfig:
    """How to build the stdlib tasks."""

    num_tasks: int = 300
    seed: int = 0
    per_file: int = 2  # at most this many tasks from one source file
    test_fraction: float = 0.15
    min_doc_words: int = 6  # the docstring's first paragraph must have at least this many words
    min_body_statements: int = 3
    max_doc_words: int = 120  # the quoted behaviour is cut to this many words
    # The precise prompt's last sentence names the function and ends with its location, so a
    # reply that quotes it ends with the location too: answering is then a copy from a fixed
    # distance (the chat template's few tokens), which a tiny policy can learn (docs/demo.md).
    location_last: bool = False


def stdlib_root() -> str:
    """The real path of the running interpreter's standard library."""
    return os.path.realpath(sysconfig.get_paths()["stdlib"])


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"


def _source_files(root: str) -> list[str]:
    files = []
    for d, dirs, names in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x not in SKIP_DIRS and not x.startswith(("config-", ".")))
        rel_dir = os.path.relpath(d, root)
        for n in sorted(names):
            if n.endswith(".py") and n not in SKIP_FILES and not n.startswith("_"):
                files.append(os.path.normpath(os.path.join(rel_dir, n)))
    return files


@dataclasses.dataclass(frozen=True)
class _Candidate:
    rel: str
    qualname: str
    kind: str  # "function" | "method"
    signature: str
    doc: str
    lineno: int


def _first_paragraph(doc: str) -> str:
    para = re.split(r"\n\s*\n", doc.strip(), maxsplit=1)[0]
    return " ".join(para.split())


@functools.lru_cache(maxsize=4096)  # parsing is the slow part; it is a pure function of the file
def _candidates(root: str, rel: str, cfg: StdlibLocConfig) -> tuple[_Candidate, ...]:
    try:
        with open(os.path.join(root, rel), "rb") as f:
            tree = ast.parse(f.read(), filename=rel)
    except (SyntaxError, ValueError, OSError):
        return ()
    found: list[tuple[str, str, ast.AST]] = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found.append((node.name, "function", node))
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for sub in node.body:
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    found.append((f"{node.name}.{sub.name}", "method", sub))
    counts: dict[str, int] = {}
    for q, _, _ in found:
        counts[q] = counts.get(q, 0) + 1
    out = []
    for qualname, kind, node in found:
        name = qualname.rsplit(".", 1)[-1]
        if name.startswith("_") or counts[qualname] > 1:  # private, or redefined (ambiguous)
            continue
        if any(isinstance(d, ast.Name) and d.id in ("overload", "abstractmethod")
               or isinstance(d, ast.Attribute) and d.attr in ("setter", "deleter", "overload",
                                                              "abstractmethod")
               for d in node.decorator_list):
            continue
        doc = ast.get_docstring(node) or ""
        para = _first_paragraph(doc)
        body = node.body[1:] if doc else node.body
        if len(para.split()) < cfg.min_doc_words or len(body) < cfg.min_body_statements:
            continue
        try:
            sig = f"({ast.unparse(node.args)})"
        except Exception:  # noqa: BLE001 -- unparse of exotic defaults
            continue
        out.append(_Candidate(rel, qualname, kind, sig, para, node.lineno))
    return tuple(out)


def _module_name(rel: str) -> str:
    mod = rel[:-3].replace(os.sep, ".")
    return mod[: -len(".__init__")] if mod.endswith(".__init__") else mod


def _split_of(task_id: str, cfg: StdlibLocConfig) -> str:
    h = int(hashlib.sha256(f"{cfg.seed}:{task_id}".encode()).hexdigest()[:8], 16)
    return "test" if h / 0xFFFFFFFF < cfg.test_fraction else "train"


def _remove_names(text: str, names: list[str]) -> str:
    """`text` with each of `names` replaced by "it" wherever it is used as a name.

    A name that cannot be an ordinary lower-case word (snake_case, digits, capitals, dots) goes
    wherever it stands as a whole word; a name that is also an ordinary word ("get", "copy",
    "email") goes only where the text uses it as code: after a dot or backtick, or before "(",
    "." + word, or a backtick. So "callers do not get the result" keeps its "get" while
    "os.get()" loses it.
    """
    # Singulars too: "dataclasses" -> "dataclass", "shutils" -> "shutil".
    variants = set(names) | {n[:-1] for n in names if n.endswith("s")} | {
        n[:-2] for n in names if n.endswith("es")}
    for n in sorted(variants, key=len, reverse=True):
        if len(n) < 3:
            continue
        e = re.escape(n)
        if not (n.isalpha() and n.islower()):
            pattern = rf"(?<!\w){e}(?!\w)"
        else:
            pattern = rf"(?<![\w]){e}(?=[(`]|\.\w)|(?<=[.`]){e}(?!\w)"
        text = re.sub(pattern, "it", text)
    return text


def _vague(doc: str, symptom: str, names: list[str]) -> str:
    """The vague prompt: rule-vaguenized behaviour + symptom, with the names taken out."""
    from ppp_jax.envs.vaguenize import RuleVaguenizer

    text = RuleVaguenizer(max_sentences=2).vaguenize(f"{doc} {symptom}")
    return f"Something in the Python standard library is misbehaving. {_remove_names(text, names)}"


def _make_task(c: _Candidate, cfg: StdlibLocConfig, rng: random.Random) -> Task:
    module = _module_name(c.rel)
    words = c.doc.split()
    doc = " ".join(words[: cfg.max_doc_words]) + (" ..." if len(words) > cfg.max_doc_words else "")
    symptom = rng.choice(SYMPTOMS)
    gold = f"{c.rel}:{c.qualname}"
    task_id = f"stdlib:{gold}"
    what = "method" if c.kind == "method" else "function"
    head = f"Bug report for the Python {python_version()} standard library.\n\n"
    named = f"The {what} `{module}.{c.qualname}{c.signature}`, defined in `{c.rel}`"
    report = (f"Documented behaviour: {doc}\n\nWhat goes wrong: {symptom}\n\n"
              f"Please find the function(s) that must be edited to fix this.")
    if cfg.location_last:
        precise = f"{head}{report}\n\n{named}, does not behave as documented; its location: {gold}"
    else:
        precise = f"{head}{named} (location {gold}), does not behave as documented.\n\n{report}"
    names = [c.qualname, *c.qualname.split("."), module, *module.split(".")]
    vague = _vague(doc, symptom, names) + " Please find where it needs fixing."
    hidden = f"{c.rel}\n{gold}"
    meta = {"module": module, "qualname": c.qualname, "path": c.rel, "lineno": c.lineno,
            "python_version": python_version(), "seed": cfg.seed}
    return Task(task_id, DOMAIN, precise, vague, hidden, (gold,), _split_of(task_id, cfg), meta)


@functools.lru_cache(maxsize=8)
def build_tasks(cfg: StdlibLocConfig = StdlibLocConfig(), root: str | None = None) -> tuple[Task, ...]:
    """Builds the stdlib tasks (deterministic for a Python version, seed and stdlib tree).

    Files are visited in a seeded shuffle of their sorted list; each contributes its first
    `per_file` eligible functions/methods (public, documented, non-trivial, unambiguous name)
    in a seeded order, until `num_tasks` are collected.
    """
    root = os.path.realpath(root or stdlib_root())
    rng = random.Random(f"stdlib_loc:{python_version()}:{cfg.seed}")
    files = _source_files(root)
    rng.shuffle(files)
    tasks: list[Task] = []
    for rel in files:
        cands = list(_candidates(root, rel, cfg))
        rng.shuffle(cands)
        for c in cands[: cfg.per_file]:
            tasks.append(_make_task(c, cfg, rng))
        if len(tasks) >= cfg.num_tasks:
            break
    return tuple(tasks[: cfg.num_tasks])


def split_tasks(tasks: tuple[Task, ...], split: str) -> list[Task]:
    """The tasks of one split ("train" or "test")."""
    return [t for t in tasks if t.split == split]


def make_domain(root: str | None = None, tool_style: ToolStyle = "native",
                shell_whitelist: str = "paper") -> FuncLocDomain:
    """The stdlib domain: every task reads the (read-only) stdlib directory."""
    real = os.path.realpath(root or stdlib_root())
    return FuncLocDomain(DOMAIN, lambda task: real, tool_style,
                         Limits(bash_commands=BASH_WHITELISTS[shell_whitelist]))


@dataclasses.dataclass(frozen=True)
class StdlibLocSection(RepoToolsSection):
    """The `domain:` config keys of stdlib_loc (embedded, offline).

    stdlib: how the stdlib tasks are built.
    tool_style: the repository tools (`RepoToolsSection`).
    """

    stdlib: StdlibLocConfig = StdlibLocConfig()


def build_domain(section: StdlibLocSection) -> tuple[list[Task], FuncLocDomain]:
    """(tasks, domain) of a `StdlibLocSection` (the registered builder)."""
    return list(build_tasks(section.stdlib)), make_domain(tool_style=section.tool_style,
                                                          shell_whitelist=section.shell_whitelist)


register_domain(DOMAIN, StdlibLocSection, build_domain)
