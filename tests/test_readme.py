"""The README and the docs say what the code does: their snippets run, their commands parse.

- Every ```python block of README.md and docs/*.md runs in its own subprocess from a scratch
  directory. A block whose first line is a comment saying it needs a running server
  ("# with `ppp serve") or real weights ("# not run:") is left out. A block followed by
  "Prints:" and a ```text block must print exactly that text.
- Every `ppp ...` command line in the shell blocks of the README, docs/training.md,
  docs/scale.md and docs/domains.md (the `ppp data` recipes) is parsed by the real CLI
  (`ppp_jax.cli.main`, with the chosen command's `run` replaced so nothing executes), and its
  config and overrides are loaded with the command's own loader, so a wrong flag, a wrong
  override key or a missing config fails here.
- The README's docs index lists every docs/*.md file, and every relative link resolves.
- (slow) The README's command chain runs as written, on the tiny config.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOC_FILES = [README, *sorted((ROOT / "docs").glob("*.md"))]
# Files whose shell blocks hold `ppp` commands a user types as written.
COMMAND_FILES = [README, ROOT / "docs" / "training.md", ROOT / "docs" / "scale.md",
                 ROOT / "docs" / "domains.md"]
SKIP_MARKERS = ("# with `ppp serve", "# not run:")
# Linked from the README but written on another branch of this round (the lead merges them).
WRITTEN_ELSEWHERE: set[str] = set()

_BLOCK = re.compile(r"```(\w*)\n(.*?)```(?:\n\nPrints:\n\n```text\n(.*?)```)?", re.S)


def python_blocks(path: Path) -> list[tuple[str, str | None]]:
    """(code, expected stdout or None) of every runnable ```python block of `path`."""
    out = []
    for lang, code, expected in _BLOCK.findall(path.read_text()):
        if lang == "python" and not code.lstrip().startswith(SKIP_MARKERS):
            out.append((code, expected or None))
    return out


def logical_lines(code: str) -> list[str]:
    """Shell code -> commands: backslash continuations joined, and a line whose quote is still
    open continued by the next, as the shell does."""
    lines, pending = [], ""
    for raw in code.replace("\\\n", " ").splitlines():
        pending = f"{pending} {raw.strip()}".strip() if pending else raw.strip()
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the command goes on
            continue
        if pending:
            lines.append(pending)
        pending = ""
    assert not pending, f"unterminated shell command: {pending}"
    return lines


def shell_lines(path: Path) -> list[str]:
    """The commands of the ```bash blocks of `path`."""
    return [line for lang, code, _ in _BLOCK.findall(path.read_text()) if lang == "bash"
            for line in logical_lines(code)]


def ppp_commands(line: str) -> list[list[str]]:
    """The argv (after `ppp`) of every `ppp` command in a shell line, looking inside quoted
    strings too (`on_all '... ppp train ...'`); words up to a shell separator."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError as e:
        raise AssertionError(f"shell line does not parse ({e}): {line}") from None
    found, i = [], 0
    while i < len(words):
        word = words[i]
        if word == "ppp" or word.endswith("/ppp"):
            argv = []
            i += 1
            while i < len(words) and words[i] not in ("&&", ";", "|", "||"):
                argv.append(words[i].rstrip(";"))
                i += 1
            found.append(argv)
            continue
        if " " in word and re.search(r"(^|[\s/])ppp(\s|$)", word):
            found += ppp_commands(word.replace("&&", " && ").replace(";", " ; "))
        i += 1
    return found


PY_CASES = [pytest.param(code, expected, id=f"{f.relative_to(ROOT)}:{n}")
            for f in DOC_FILES for n, (code, expected) in enumerate(python_blocks(f))]
CMD_CASES = [pytest.param(argv, id=f"{f.relative_to(ROOT)}:{' '.join(argv[:2])}:{n}")
             for f in COMMAND_FILES
             for n, argv in enumerate(a for line in shell_lines(f) for a in ppp_commands(line))]


def test_readme_has_the_promised_snippets_and_commands():
    code = "\n".join(c for c, _ in python_blocks(README))
    for needle in ("api.load_pretrained", "api.next_token_logprobs", "EmbeddedUserSimulator",
                   "reward_breakdown"):
        assert needle in code, f"README lost its {needle} snippet"
    docs_code = "\n".join(c for f in DOC_FILES for c, _ in python_blocks(f))
    for needle in ("Engine.from_pretrained", "list_preferences", "ppp_reward"):
        assert needle in docs_code, f"the docs lost their {needle} snippet"
    commands = {p.values[0][0] for p in CMD_CASES if p.values[0]}
    for name in ("sft", "train", "eval", "convert", "serve", "compile"):
        assert name in commands, f"no `ppp {name}` command in the README or the recipes"


def test_shell_blocks_are_found():
    """The extraction itself: a continuation line and a quoted remote command."""
    assert ppp_commands("ppp eval cfg.yaml --checkpoint x   # comment") == [
        ["eval", "cfg.yaml", "--checkpoint", "x"]]
    assert ppp_commands("on_all 'cd a && .venv/bin/ppp train c.yaml k=v'") == [
        ["train", "c.yaml", "k=v"]]


@pytest.mark.parametrize("code,expected", PY_CASES)
def test_doc_snippet_runs(code, expected, tmp_path):
    code = code.replace("/tmp/ppp_readme", str(tmp_path / "ppp_readme"))
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"snippet failed:\n{code}\n--- stderr ---\n{proc.stderr[-3000:]}"
    if expected is not None:
        assert proc.stdout == expected, (
            f"snippet printed\n{proc.stdout}\nbut the docs say it prints\n{expected}")


def _load_config(name: str, args) -> None:
    """Loads the command's config with its overrides, as the command would (raises on a bad
    key, a wrong type or a missing file)."""
    overrides = list(getattr(args, "overrides", None) or getattr(args, "override", None) or [])
    if name in ("demo", "train", "sft", "eval"):
        from ppp_jax.config.run import load_run_config

        load_run_config(args.config, overrides)
    elif name == "serve":
        from ppp_jax.commands.serve import ServeConfig
        from ppp_jax.config.loader import load_config

        load_config(args.config, ServeConfig, overrides)
    elif name == "data":
        from ppp_jax.commands.data import load_data_config

        load_data_config(args.config, overrides)
    elif name == "compile":
        from ppp_jax.config.compile import load_compile_config
        from ppp_jax.scale.mesh import parse_mesh

        load_compile_config(args.config, overrides)
        for flag in ("mesh", "engine_mesh"):
            if getattr(args, flag, None):
                parse_mesh(getattr(args, flag))
    elif name == "convert" and getattr(args, "mesh", None):
        from ppp_jax.scale.mesh import parse_mesh

        parse_mesh(args.mesh)  # meshes are written data=1,fsdp=-1,tensor=1 everywhere


@pytest.mark.parametrize("argv", CMD_CASES)
def test_doc_command_parses(argv, monkeypatch):
    from ppp_jax import cli

    assert argv, "a bare `ppp` in the docs"
    if argv[0].startswith("-"):  # `ppp --version`, `ppp --help`
        try:
            status = cli.main(list(argv))
        except SystemExit as e:  # argparse's --version / --help exit
            status = e.code
        assert status in (0, None), f"`ppp {' '.join(argv)}` exited {status}"
        return
    name = argv[0]
    assert name in cli.COMMANDS, f"`ppp {name}` is not a command ({sorted(cli.COMMANDS)})"
    module = importlib.import_module(cli.COMMANDS[name].module)
    seen = []
    monkeypatch.setattr(module, "run", lambda args: seen.append(args) or 0)
    monkeypatch.chdir(ROOT)  # the docs' config paths are relative to the repository root
    try:
        status = cli.main(list(argv))
    except SystemExit as e:  # argparse's usage error
        raise AssertionError(f"`ppp {' '.join(argv)}` is refused by the CLI (exit {e.code})") from None
    assert status == 0 and len(seen) == 1, f"`ppp {' '.join(argv)}` did not reach the command"
    _load_config(name, seen[0])


def test_docs_index_is_complete_and_links_resolve():
    text = README.read_text()
    index = text[text.index("## Documentation"):]
    for doc in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{doc.name})" in index, f"README's docs index does not list docs/{doc.name}"
    for path in DOC_FILES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if "://" in target:
                continue
            resolved = (path.parent / target).resolve()
            rel = os.path.relpath(resolved, ROOT)
            assert resolved.exists() or rel in WRITTEN_ELSEWHERE, (
                f"{path.relative_to(ROOT)} links to {target}, which does not exist")


def test_readme_stays_a_front_door():
    """About 150 lines: reference material belongs in docs/."""
    assert len(README.read_text().splitlines()) <= 200


@pytest.mark.slow
def test_readme_chain_runs_as_written(tmp_path):
    """The README's chain sft -> train -> eval -> convert -> serve -> eval over the API, exactly
    as written, in a scratch directory holding a copy of configs/ (minutes on 2 CPU cores)."""
    text = README.read_text()
    block = text[text.index("The chain from a warm start"):]
    lines = shell_lines_from(block[block.index("```bash"):])
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    ppp = [sys.executable, "-m", "ppp_jax.cli"]
    server = None
    try:
        for line in lines:
            for argv in ppp_commands(line):
                if argv[0] == "compile":
                    continue  # the 36B AOT compile (minutes): covered by tests/ppp_jax/test_aot.py
                if argv[0] == "serve":
                    server = subprocess.Popen(ppp + argv, cwd=tmp_path, env=env,
                                              start_new_session=True)
                    port = next(int(a.split("=", 1)[1]) for a in argv if a.startswith("port="))
                    _wait_for_port(port, server)
                    continue
                proc = subprocess.run(ppp + argv, cwd=tmp_path, env=env, capture_output=True,
                                      text=True, timeout=1800)
                assert proc.returncode == 0, (
                    f"`ppp {' '.join(argv)}` exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
    assert (tmp_path / "runs" / "tiny_cpu" / "eval.md").exists()


def shell_lines_from(markdown: str) -> list[str]:
    """The commands of the first ```bash block of a piece of markdown."""
    code = markdown[markdown.index("```bash\n") + 8:]
    return logical_lines(code[:code.index("```")])


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"ppp serve exited {proc.returncode} before listening"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(1.0)
    raise AssertionError(f"ppp serve did not listen on port {port} within {timeout:.0f}s")
