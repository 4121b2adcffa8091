"""pyproject.toml installs every package of the source tree: `[tool.setuptools] packages` is an
explicit list (model/, sampling/ and envs/ are mapped under ppp_jax), so a new subpackage left
out of it is missing from a wheel (`pip install .`), while an editable install still finds it."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_source_package_is_listed_and_mapped():
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setup["packages"])
    dirs = setup["package-dir"]
    for name in listed:  # each listed package resolves to a folder with an __init__.py
        prefix = max((p for p in dirs if name == p or name.startswith(p + ".")), key=len)
        folder = ROOT / dirs[prefix] / name[len(prefix) + 1:].replace(".", "/")
        assert (folder / "__init__.py").is_file(), f"{name} -> {folder}: no __init__.py"
    found = set()
    for prefix, folder in dirs.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([prefix, *rel.parts]))
    assert sorted(found - listed) == [], "packages missing from pyproject.toml's packages list"
