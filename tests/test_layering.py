"""The import graph of `ppp_jax` flows one way and has no cycles.

Layers, lowest first: `model` <- `sampling` <- `envs` <- the rest of `ppp_jax`. Inside the rest,
the subpackages are layered too: `config` <- `rl` <- `rollout` <- `scale` <- `train` <- `eval`
<- the pipelines and the CLI (`demo`, `commands`, `cli`). A module may import its own layer or a
lower one. Every import counts, including those inside functions: a function-level import that
hides a cycle is still a cycle here (the lazy imports of the CLI, kept for start-up time, point
down the stack and form none). Imports under `if TYPE_CHECKING:` are left out: they name types
for annotations and never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# import name prefix -> source folder (pyproject's package-dir mapping)
PACKAGE_DIRS = {"ppp_jax.model": "model", "ppp_jax.sampling": "sampling", "ppp_jax.envs": "envs",
                "ppp_jax": "ppp_jax"}
LAYERS = ("ppp_jax.model", "ppp_jax.sampling", "ppp_jax.envs", "ppp_jax.config", "ppp_jax.rl",
          "ppp_jax.rollout", "ppp_jax.scale", "ppp_jax.train", "ppp_jax.eval", "ppp_jax")


def module_files() -> dict[str, Path]:
    """Every module of the distribution: import name -> file."""
    out = {}
    for prefix, folder in PACKAGE_DIRS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([prefix, *parts])
            out.setdefault(name, path)
    return out


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The `ppp_jax` modules `name` imports anywhere in its file (`from pkg import mod` counts as
    importing `pkg.mod` when that is a module, else `pkg`)."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), str(path))
    type_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                 and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                 for stmt in block.body for n in ast.walk(stmt)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")[: len(name.split(".")) - node.level + is_package]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in known and t != name)
    return out


def layer_of(module: str) -> int:
    for i, prefix in enumerate(LAYERS):
        if module == prefix or module.startswith(prefix + "."):
            return i
    raise AssertionError(module)


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {m: imported_modules(m, p, set(files)) for m, p in files.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_the_graph_is_read():
    graph = import_graph()
    assert "ppp_jax.rl.losses" in graph and "ppp_jax.model.transformer" in graph
    assert "ppp_jax.config.rl" in graph["ppp_jax.rl.losses"]  # a known edge is found


def test_imports_point_down_the_stack():
    upward = [f"{a} -> {b}" for a, bs in import_graph().items() for b in sorted(bs)
              if layer_of(b) > layer_of(a)]
    assert not upward, "imports that point up the stack:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_checks_catch_what_they_look_for():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer_of("ppp_jax.sampling.engine") < layer_of("ppp_jax.envs.episode")
    assert layer_of("ppp_jax.rl.losses") < layer_of("ppp_jax.train.trainer")
