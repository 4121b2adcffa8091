"""`ppp data swe` on rows built from a real git repository's history: the kept/dropped counts
match the rows' real properties; the LLM vaguenizer's cache, resume after a kill, and every
failure (malformed row, missing clone, endpoint errors, garbage replies) ends in a clear message
or a counted drop, never a half-written data set."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ppp_jax import cli
from ppp_jax.envs.prepare import assign_splits, SplitSpec, verify_prepared
from ppp_jax.envs.vaguenize import PAPER_EXAMPLE_PRECISE, VagueCache
from tests.envs.fake_openai_server import error, reply

ROOT = Path(__file__).resolve().parents[2]
REPO = "acme/widgets"

CORE_V0 = '''"""Widgets."""


def add(a, b):
    return a - b


class Box:
    def __init__(self, items):
        self.items = list(items)

    def size(self):
        return len(self.items) + 1
'''


def _git(cwd, *args):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                               "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}).stdout


def _commit(repo: Path, files: dict[str, str], message: str) -> str:
    for path, text in files.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", message)
    return _git(repo, "rev-parse", "HEAD").strip()


def _statement(title: str) -> str:
    return (f"{title}\n\n### Description\n\nWhen calling the function the result is wrong, "
            "see below.\n\n```python\nfrom widgets.core import add\nprint(add(2, 2))\n```\n\n"
            "ValueError: expected 4 but got 0\n\n### System\nPython 3.11.4, widgets 0.3.1\n")


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    return build_history(tmp_path_factory.mktemp("swe_prepare"))


def build_history(base: Path) -> dict:
    """A real repository with a history under `base` (clone root + upstream copy) and SWE rows
    from it: 3 that pass the checks (one with its own vague prompt), one editing no Python
    function, one at a commit the clone lacks, one whose patch does not apply."""
    upstream = base / "upstream" / REPO
    upstream.mkdir(parents=True)
    _git(upstream, "init", "-q", "-b", "main")
    c0 = _commit(upstream, {"widgets/__init__.py": "", "widgets/core.py": CORE_V0,
                            "README.md": "Widgets\n"}, "initial")
    c1 = _commit(upstream, {"widgets/core.py": CORE_V0.replace("a - b", "a + b")}, "fix add")
    c2 = _commit(upstream, {"README.md": "Widgets, a library.\n"}, "docs")
    c3 = _commit(upstream, {"widgets/core.py": CORE_V0.replace("a - b", "a + b").replace(
        "len(self.items) + 1", "len(self.items)")}, "fix size")
    diff = lambda a, b: _git(upstream, "diff", a, b)  # noqa: E731
    bad_patch = diff(c0, c1).replace("    return a - b", "    return a * b")  # context mismatch
    rows = [
        {"instance_id": "w-add", "base_commit": c0, "patch": diff(c0, c1),
         "problem_statement": _statement("add() subtracts instead of adding")},
        {"instance_id": "w-docs", "base_commit": c1, "patch": diff(c1, c2),
         "problem_statement": _statement("README wording is unclear")},
        {"instance_id": "w-gone", "base_commit": "0" * 40, "patch": diff(c0, c1),
         "problem_statement": _statement("A commit that is not in the clone")},
        {"instance_id": "w-stale", "base_commit": c0, "patch": bad_patch,
         "problem_statement": _statement("A patch written against other code")},
        {"instance_id": "w-size", "base_commit": c2, "patch": diff(c2, c3),
         "problem_statement": _statement("Box.size() counts one item too many")},
        {"instance_id": "w-own", "base_commit": c0, "patch": diff(c0, c1),
         "problem_statement": _statement("add is broken for all inputs"),
         "vague_prompt": "adding numbers is broken"},
    ]
    for r in rows:
        r.update(repo=REPO, FAIL_TO_PASS="[]", PASS_TO_PASS="[]", hints_text="")
    rows_path = base / "rows.jsonl"
    rows_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    clones = base / "clones"
    clones.mkdir()
    _git(base, "clone", "-q", "--bare", str(upstream), str(clones / "acme__widgets"))
    return {"base": base, "rows": rows_path, "clones": clones, "upstream": base / "upstream",
            "rows_list": rows}


EXPECT_KEPT = {"w-add", "w-size", "w-own"}
EXPECT_DROPPED = {"edits no Python function": ["w-docs"],
                  "base_commit not in the local clone": ["w-gone"],
                  "patch does not apply at base_commit": ["w-stale"]}


def _config(tmp_path, history, **extra) -> Path:
    cfg = {"output": str(tmp_path / "prepared"),
           "swe": {"rows": str(history["rows"]), "clone_root": str(history["clones"])},
           "split": {"test_size": 1, "seed": 0}}
    for key, value in extra.items():
        section, _, name = key.partition("__")
        if name:
            cfg.setdefault(section, {})[name] = value
        else:
            cfg[section] = value
    path = tmp_path / "data.yaml"
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    return path


def _llm(fake, **kw) -> dict:
    return {"vaguenizer__backend": "llm", "vaguenizer__model": "fake-model",
            "vaguenizer__base_url": fake.base_url, "vaguenizer__api_key_env": "PPP_UNSET_KEY",
            "vaguenizer__max_retries": 1, **kw}


def _echo_title(body):
    """A well-behaved rewriter: the issue's title, lower-cased."""
    return reply(body["messages"][1]["content"].splitlines()[0].lower())


def _run(*argv) -> int:
    return cli.main(["data", "swe", *map(str, argv), "--no-progress"])


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_rule_vaguenizer_counts_match_the_rows_real_properties(tmp_path, history, capsys):
    assert _run(_config(tmp_path, history)) == 0
    out = tmp_path / "prepared"
    manifest = verify_prepared(out)  # every file's sha256 as recorded
    kept = _rows(out / "rows.jsonl")
    assert {r["instance_id"] for r in kept} == EXPECT_KEPT
    dropped = json.loads((out / "dropped.json").read_text())
    assert {k: v["ids"] for k, v in dropped["by_reason"].items()} == EXPECT_DROPPED
    assert manifest["counts"] == {"rows": 6, "kept": 3, "dropped": 3, "train": 2, "test": 1,
                                  "dropped_by_reason": {k: 1 for k in EXPECT_DROPPED}}
    by_id = {r["instance_id"]: r for r in kept}
    assert by_id["w-add"]["gold_functions"] == ["widgets/core.py:add"]
    assert by_id["w-size"]["gold_functions"] == ["widgets/core.py:Box.size"]
    # the paper's style: the title and the exact error line, no code or versions
    assert by_id["w-add"]["vague_prompt"] == ('Add() subtracts instead of adding, with the error '
                                              '"ValueError: expected 4 but got 0"')
    assert by_id["w-own"]["vague_prompt"] == "adding numbers is broken"
    assert {r["vague_source"] for r in kept} == {"rule", "row"}
    split = assign_splits(sorted(EXPECT_KEPT), SplitSpec(test_size=1, seed=0))
    for side in ("train", "test"):
        assert {r["instance_id"] for r in _rows(out / f"{side}.jsonl")} == {
            i for i, s in split.items() if s == side}
    assert manifest["vaguenizer"]["backend"] == "rule"
    assert "3 of 6 rows kept" in capsys.readouterr().out
    # an existing output is refused unless overwrite=true
    assert _run(_config(tmp_path, history)) == 1
    assert "already exists" in capsys.readouterr().err


def test_llm_vaguenizer_cache_makes_the_second_run_free(tmp_path, history, fake):
    fake.responder = _echo_title
    cfg = _config(tmp_path, history, **_llm(fake))
    assert _run(cfg) == 0
    assert len(fake.requests) == 2  # w-add and w-size; w-own keeps its own vague prompt
    body = fake.requests[0]["body"]
    assert PAPER_EXAMPLE_PRECISE in body["messages"][0]["content"]
    manifest = json.loads((tmp_path / "prepared" / "manifest.json").read_text())
    vag = manifest["vaguenizer"]
    assert vag["model"] == "fake-model" and vag["prompt"]["system"] == body["messages"][0]["content"]
    assert vag["sources"] == {"llm": 2, "row": 1} and vag["stats"]["asked"] == 2
    kept = {r["instance_id"]: r for r in _rows(tmp_path / "prepared" / "rows.jsonl")}
    assert kept["w-size"]["vague_prompt"] == "box.size() counts one item too many"
    # the second run asks the endpoint 0 times
    assert _run(cfg, "overwrite=true") == 0
    assert len(fake.requests) == 2
    again = json.loads((tmp_path / "prepared" / "manifest.json").read_text())
    assert again["vaguenizer"]["stats"]["cache_hits"] == 2 and again["vaguenizer"]["stats"]["asked"] == 0


def test_a_run_killed_halfway_resumes_without_re_asking(tmp_path, history, fake):
    fake.responder = lambda body: {**_echo_title(body), "delay": 1.5}
    cfg = _config(tmp_path, history, **_llm(fake, vaguenizer__max_concurrency=1,
                                            vaguenizer__keep_row_vague=False))
    cache = tmp_path / "prepared.vague_cache.jsonl"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "ppp_jax.cli", "data", "swe", str(cfg),
                             "--no-progress"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (cache.exists() and len(VagueCache(cache).entries) >= 1):
            assert proc.poll() is None and time.monotonic() < deadline, "no rewrite was cached"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    done = len(VagueCache(cache).entries)
    assert 1 <= done < 3
    assert not (tmp_path / "prepared").exists()  # nothing half-written under the output name
    fake.wait_idle(10)
    asked_before = len(fake.requests)
    fake.responder = _echo_title
    assert _run(cfg) == 0
    assert len(fake.requests) - asked_before == 3 - done  # only the unfinished rows
    manifest = json.loads((tmp_path / "prepared" / "manifest.json").read_text())
    assert manifest["vaguenizer"]["stats"]["cache_hits"] == done
    assert manifest["counts"]["kept"] == 3
    assert not list(tmp_path.glob("prepared.partial-*"))  # the killed run's partial is gone


def test_malformed_row_refuses_the_set_naming_line_and_field(tmp_path, history, capsys):
    rows = [dict(r) for r in history["rows_list"]]
    del rows[3]["patch"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _run(_config(tmp_path, history, swe__rows=str(bad))) == 1
    err = capsys.readouterr().err
    assert f"{bad}:4: patch: missing" in err
    assert not (tmp_path / "prepared").exists() and not list(tmp_path.glob("prepared.*"))
    bad.write_text(bad.read_text() + "{not json\n")
    assert _run(_config(tmp_path, history, swe__rows=str(bad))) == 1
    assert f"{bad}:7: not valid JSON" in capsys.readouterr().err


def test_missing_clone_is_refused_or_cloned_on_demand(tmp_path, history, capsys):
    empty = tmp_path / "no_clones"
    empty.mkdir()
    assert _run(_config(tmp_path, history, swe__clone_root=str(empty))) == 1
    err = capsys.readouterr().err
    assert "no local clone of 'acme/widgets'" in err and "swe.clone_missing=true" in err
    assert not (tmp_path / "prepared").exists()
    # on demand (here from a local upstream: no network in tests)
    cfg = _config(tmp_path, history, swe__clone_root=str(empty), swe__clone_missing=True,
                  swe__clone_url=str(history["upstream"]) + "/{repo}")
    assert _run(cfg) == 0
    assert (empty / "acme__widgets").is_dir()
    manifest = verify_prepared(tmp_path / "prepared")
    assert manifest["source"]["cloned"] == [REPO] and manifest["counts"]["kept"] == 3
    # a clone that fails is one line naming the repository
    cfg = _config(tmp_path, history, swe__clone_root=str(tmp_path / "c2"), swe__clone_missing=True,
                  swe__clone_url=str(tmp_path / "nowhere") + "/{repo}", overwrite=True)
    assert _run(cfg) == 1
    assert "acme/widgets: repo: git clone" in capsys.readouterr().err


def test_endpoint_errors_and_garbage_are_counted_drops_or_a_refusal(tmp_path, history, fake,
                                                                    capsys):
    fake.default = error(500, "overloaded")
    cfg = _config(tmp_path, history, **_llm(fake))
    assert _run(cfg) == 1
    err = capsys.readouterr().err
    assert "2 of 3 rewrites failed" in err and "endpoint error" in err and "Nothing was written" in err
    assert not (tmp_path / "prepared").exists()
    assert len(fake.requests) == 4  # 2 rows x (1 try + 1 retry)
    # garbage for one row, allowed up to half the rows: that row is dropped and counted
    fake.reset()
    fake.responder = lambda body: (reply("Sure! Here is the rewritten issue you asked for.")
                                   if "Box.size" in body["messages"][1]["content"]
                                   else _echo_title(body))
    cfg = _config(tmp_path, history, **_llm(fake, vaguenizer__max_failed_fraction=0.5))
    assert _run(cfg) == 0
    dropped = json.loads((tmp_path / "prepared" / "dropped.json").read_text())["by_reason"]
    assert dropped["vaguenizer failed: unusable reply"]["ids"] == ["w-size"]
    manifest = json.loads((tmp_path / "prepared" / "manifest.json").read_text())
    assert manifest["counts"]["kept"] == 2 and manifest["counts"]["dropped"] == 4
    # asked twice (rewrite_tries=2, the retry at temperature 1.0), refused twice
    assert manifest["vaguenizer"]["stats"]["rejected"] == 2
    assert manifest["vaguenizer"]["stats"]["rewrite_retries"] == 1
    retry = [r["body"] for r in fake.requests if "Box.size" in r["body"]["messages"][1]["content"]]
    assert [b.get("temperature") for b in retry] == [0.0, 1.0]


def test_a_run_config_naming_the_prepared_split_uses_its_vague_prompts(tmp_path, history):
    from ppp_jax.envs.domains.swe_func_loc import SweFuncLocSection, build_domain

    assert _run(_config(tmp_path, history, split={"test_fraction": 0.0})) == 0
    prepared = {r["instance_id"]: r for r in _rows(tmp_path / "prepared" / "train.jsonl")}
    section = SweFuncLocSection(swe_rows=str(tmp_path / "prepared" / "train.jsonl"),
                                swe_clone_root=str(history["clones"]),
                                swe_cache_dir=str(tmp_path / "snapshots"))
    tasks, _ = build_domain(section)
    assert {t.task_id: t.vague_prompt for t in tasks} == {
        i: r["vague_prompt"] for i, r in prepared.items()}
    assert {t.task_id: list(t.gold) for t in tasks} == {
        i: r["gold_functions"] for i, r in prepared.items()}


def test_an_unknown_vaguenizer_backend_is_refused_not_taken_for_the_llm():
    from ppp_jax.envs.prepare import VaguenizerSpec

    with pytest.raises(ValueError, match="vaguenizer.backend must be 'rule' or 'llm', got 'gpt'"):
        VaguenizerSpec(backend="gpt")
    assert VaguenizerSpec(backend="llm").backend == "llm"
