"""The data fault matrix: every domain's row and corpus formats, each fault refused with one
`file:line: field: reason` line or dropped with a count and a reason; never a traceback, never a
silent drop, never an ignored path (docs/reliability.md, "Data and config")."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import pytest

from ppp_jax.envs.domains import browsecomp as bc
from ppp_jax.envs.domains import swe_func_loc as swe
from ppp_jax.envs.domains.registry import get_domain
from ppp_jax.envs.domains.rows import DataError

GOOD_QUERY = {"query_id": "q1", "query": "Who designed the Varnholm lighthouse?",
              "answer": "Ottilie Brask", "evidence_docs": ["d1"]}
GOOD_DOC = {"docid": "d1", "text": "The Varnholm lighthouse was designed by Ottilie Brask.",
            "url": "https://example.org/d1"}
OTHER_DOC = {"docid": "d2", "text": "Cod from Varnholm is shipped to Portugal."}


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _build_browsecomp(tmp_path, queries: list | None = None, corpus: list | None = None,
                      qname: str = "queries.jsonl"):
    q = tmp_path / qname
    if queries is not None or not q.exists():
        _jsonl(q, [GOOD_QUERY] if queries is None else queries)
    c = _jsonl(tmp_path / "corpus.jsonl", [GOOD_DOC, OTHER_DOC] if corpus is None else corpus)
    return get_domain("browsecomp_plus").build(bc.BrowseCompSection(str(q), str(c), "train"))


# --- BrowseComp-Plus query rows: refused, naming file:line and field --------------------------

_Q2 = "queries.jsonl:2"


@pytest.mark.parametrize("bad, expected", [
    ({"query_id": "q2", "query": "Where is cod shipped?"}, f"{_Q2}: answer: missing"),
    ({"query_id": "q2", "answer": "Portugal"}, f"{_Q2}: query: missing"),
    ({"query_id": "q2", "query": "Where?", "answer": "  "}, f"{_Q2}: answer: empty"),
    ({"query_id": "q2", "query": "Where?", "answer": []}, f"{_Q2}: answer: empty list"),
    ({"query_id": "q2", "query": "Where?", "answer": {"a": 1}}, f"{_Q2}: answer: expected a string"),
    ({"query_id": "q2", "query": 7, "answer": "x"}, f"{_Q2}: query: expected a string, got int"),
    ({"query_id": "q2", "query": "Where?", "answer": "x", "evidence_docs": 5},
     f"{_Q2}: evidence_docs: expected a list of docids or {{docid, text}} objects, got int"),
    ({"query_id": "q2", "query": "Where?", "answer": "x", "evidence_docs": {"docid": "d2"}},
     f"{_Q2}: evidence_docs: expected a list"),
    ({"query_id": "q2", "query": "Where?", "answer": "x", "evidence_docs": [{"text": "t"}]},
     f"{_Q2}: evidence_docs: item 0: expected a 'docid'"),
    ({"query_id": "q2", "query": "Where?", "answer": "x", "gold_docs": [None]},
     f"{_Q2}: gold_docs: item 0: expected a docid"),
    ({"query_id": "q1", "query": "Again?", "answer": "x"},
     f"{_Q2}: query_id: duplicate id 'q1' (first at "),
    ({"query_id": [1], "query": "Where?", "answer": "x"}, f"{_Q2}: query_id: expected a string"),
    ("{not json", f"{_Q2}: not valid JSON"),
    ("[1, 2]", f"{_Q2}: expected a JSON object, got list"),
])
def test_browsecomp_bad_query_row_is_refused_with_file_line_field(tmp_path, bad, expected):
    with pytest.raises(DataError) as e:
        _build_browsecomp(tmp_path, queries=[GOOD_QUERY, bad])
    msg = str(e.value)
    assert expected in msg and "\n" not in msg
    assert str(tmp_path) in msg  # the file is named with its path


# --- BrowseComp-Plus corpus rows ---------------------------------------------------------------

_C2 = "corpus.jsonl:2"


@pytest.mark.parametrize("bad, expected", [
    ({"text": "no id"}, f"{_C2}: docid: missing"),
    ({"docid": None, "text": "null id"}, f"{_C2}: docid: is null"),
    ({"docid": ["d9"], "text": "x"}, f"{_C2}: docid: expected a string or number, got list"),
    ({"docid": "d9"}, f"{_C2}: text: missing (one of text, contents, content is needed)"),
    ({"docid": "d9", "contents": 3}, f"{_C2}: contents: expected a string, got int"),
    ({"docid": "d9", "text": "x", "url": 4}, f"{_C2}: url: expected a string"),
    ({"docid": "d1", "text": "again"}, f"{_C2}: docid: duplicate id 'd1'"),
    ("not json at all", f"{_C2}: not valid JSON"),
])
def test_browsecomp_bad_corpus_row_is_refused_with_file_line_field(tmp_path, bad, expected):
    with pytest.raises(DataError) as e:
        _build_browsecomp(tmp_path, corpus=[GOOD_DOC, bad])
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_all_bad_rows_are_counted_in_one_line(tmp_path):
    rows = [GOOD_QUERY] + [{"query_id": f"q{i}", "query": "x?"} for i in range(2, 7)]
    with pytest.raises(DataError) as e:
        _build_browsecomp(tmp_path, queries=rows)
    msg = str(e.value)
    assert "queries.jsonl:2: answer: missing (and 4 more bad row(s)" in msg
    assert "queries.jsonl:3: answer" in msg and "; ...)" in msg and "\n" not in msg


def test_numeric_ids_answers_and_json_string_evidence_are_accepted(tmp_path):
    rows = [dict(GOOD_QUERY), {"query_id": 2, "query": "Where is cod shipped?", "answer": 1987,
                               "evidence_docs": json.dumps(["d2", {"docid": 3, "text": "t"}])}]
    tasks, _ = _build_browsecomp(tmp_path, queries=rows)
    assert [t.task_id for t in tasks] == ["bcp:q1", "bcp:2"] and tasks[1].gold == ("1987",)


def test_evidence_missing_from_the_corpus_is_counted_not_silent(tmp_path, caplog):
    rows = [GOOD_QUERY, {"query_id": "q2", "query": "Where?", "answer": "x",
                         "evidence_docs": ["d2", "nowhere", "gone"]}]
    with caplog.at_level(logging.WARNING):
        tasks, _ = _build_browsecomp(tmp_path, queries=rows)
    assert len(tasks) == 2
    assert "2 evidence docid(s) not in the corpus" in caplog.text and "q2:nowhere" in caplog.text


# --- the files themselves ----------------------------------------------------------------------

@pytest.mark.parametrize("name, content, expected", [
    ("queries.jsonl", "", "queries.jsonl: no rows (domain.browsecomp_queries)"),
    ("queries.jsonl", "\n\n  \n", "queries.jsonl: no rows"),
    ("queries.json", '"just a string"', "must hold a list of rows or an object with a 'rows' list"),
    ("queries.json", '{"rows": 3}', "a 'rows' list, not an object whose 'rows' is int"),
    ("queries.json", '{"data": [{"query": "x"}]}', "not an object without 'rows' (keys: ['data'])"),
    ("queries.json", '[{"query": "x", "answer": "y"},\n  {oops}]', "queries.json:2: not valid JSON"),
    ("queries.json", '{"rows": [{"query": "x"}]}', "queries.json[0]: answer: missing"),
    ("queries.csv", "query_id,query\n", "unsupported data file (expected .jsonl, .json, .parquet)"),
])
def test_bad_or_empty_file_is_refused(tmp_path, name, content, expected):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError) as e:
        _build_browsecomp(tmp_path, qname=name)
    assert expected in str(e.value)


def test_file_that_is_not_utf8_names_the_line(tmp_path):
    (tmp_path / "queries.jsonl").write_bytes(
        json.dumps(GOOD_QUERY).encode() + b"\n" + b'{"query": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"queries\.jsonl:2: not UTF-8 text"):
        get_domain("browsecomp_plus").build(_section_for(tmp_path, "queries.jsonl"))


def _section_for(tmp_path, qname):
    c = _jsonl(tmp_path / "corpus.jsonl", [GOOD_DOC])
    return bc.BrowseCompSection(str(tmp_path / qname), str(c))


def test_parquet_rows_are_read_or_refused_with_the_install_line(tmp_path):
    path = tmp_path / "queries.parquet"
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        path.write_bytes(b"PAR1 not really")
        with pytest.raises(DataError, match=r"queries\.parquet: reading \.parquet files needs "
                                            r"`pip install pyarrow`"):
            get_domain("browsecomp_plus").build(_section_for(tmp_path, "queries.parquet"))
        return
    pq.write_table(pa.Table.from_pylist([GOOD_QUERY, {"query_id": "q2", "query": "x?",
                                                      "answer": None, "evidence_docs": None}]),
                   path)
    with pytest.raises(DataError, match=r"queries\.parquet:row 2: answer: is null"):
        get_domain("browsecomp_plus").build(_section_for(tmp_path, "queries.parquet"))
    path.write_bytes(b"PAR1 damaged")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        get_domain("browsecomp_plus").build(_section_for(tmp_path, "queries.parquet"))


# --- SWE rows ----------------------------------------------------------------------------------

def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                                          "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
                                          "HOME": str(repo), "PATH": "/usr/bin:/bin"}).stdout


@pytest.fixture(scope="module")
def clones(tmp_path_factory):
    """A clone root holding acme__widgets at a base commit, and two patches against it."""
    root = tmp_path_factory.mktemp("clones")
    r = root / "acme__widgets"
    (r / "pkg").mkdir(parents=True)
    (r / "pkg" / "models.py").write_text("def plain(x):\n    return x + 1\n")
    (r / "README.md").write_text("Widgets\n")
    _git(r, "init", "-q")
    _git(r, "add", "-A")
    _git(r, "commit", "-q", "-m", "base")
    base = _git(r, "rev-parse", "HEAD").strip()
    (r / "pkg" / "models.py").write_text("def plain(x):\n    return x + 2\n")
    code_patch = _git(r, "diff")
    _git(r, "checkout", "-q", "--", ".")
    (r / "README.md").write_text("Widgets and more\n")
    docs_patch = _git(r, "diff")
    _git(r, "checkout", "-q", "--", ".")
    return root, base, code_patch, docs_patch


def _swe_row(base: str, patch: str, iid: str = "acme__widgets-1", **extra) -> dict:
    row = {"repo": "acme/widgets", "instance_id": iid, "base_commit": base, "patch": patch,
           "problem_statement": "plain() returns the wrong value for 1: expected 3, got 2.",
           "FAIL_TO_PASS": '["tests/test_models.py::test_plain"]', "PASS_TO_PASS": "[]"}
    row.update(extra)
    return {k: v for k, v in row.items() if v is not None}


def _build_swe(tmp_path, clones, rows):
    root = clones[0]
    data = _jsonl(tmp_path / "rows.jsonl", rows)
    return get_domain("swe_func_loc").build(swe.SweFuncLocSection(
        swe_rows=str(data), swe_clone_root=str(root), swe_cache_dir=str(tmp_path / "cache")))


_R2 = "rows.jsonl:2"


@pytest.mark.parametrize("change, expected", [
    ({"patch": None}, f"{_R2}: patch: missing"),
    ({"patch": ""}, f"{_R2}: patch: empty"),
    ({"problem_statement": None}, f"{_R2}: problem_statement: missing"),
    ({"base_commit": 123}, f"{_R2}: base_commit: expected a string, got int"),
    ({"instance_id": "acme__widgets-1"}, f"{_R2}: instance_id: duplicate id 'acme__widgets-1'"),
    ({"FAIL_TO_PASS": "[not json"}, f"{_R2}: FAIL_TO_PASS: not a JSON list of test ids"),
    ({"PASS_TO_PASS": 5}, f"{_R2}: PASS_TO_PASS: expected a list of test ids"),
    ({"hints_text": ["x"]}, f"{_R2}: hints_text: expected a string, got list"),
    ({"repo": "acme/absent"}, f"{_R2}: repo: no local clone of 'acme/absent': neither"),
])
def test_swe_bad_row_is_refused_with_file_line_field(tmp_path, clones, change, expected):
    _, base, code_patch, _ = clones
    bad = {**_swe_row(base, code_patch, "acme__widgets-2"), **change}
    bad = {k: v for k, v in bad.items() if v is not None}
    with pytest.raises(DataError) as e:
        _build_swe(tmp_path, clones, [_swe_row(base, code_patch), bad])
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_swe_rows_the_task_filters_out_are_dropped_with_counts(tmp_path, clones, caplog):
    _, base, code_patch, docs_patch = clones
    rows = [_swe_row(base, code_patch), _swe_row(base, docs_patch, "acme__widgets-2"),
            _swe_row("0" * 40, code_patch, "acme__widgets-3"),
            _swe_row(base, code_patch.replace("pkg/models.py", "pkg/absent.py"), "acme__widgets-4")]
    with caplog.at_level(logging.WARNING):
        tasks, _ = _build_swe(tmp_path, clones, rows)
    assert [t.task_id for t in tasks] == ["acme__widgets-1"]
    warning = caplog.text
    assert "4 rows, 1 kept, 3 dropped" in warning
    assert f"{swe.NO_FUNCTION}: 1 (acme__widgets-2)" in warning
    assert f"{swe.NO_COMMIT}: 1 (acme__widgets-3)" in warning
    assert f"{swe.PATCH_ERROR}: 1 (acme__widgets-4)" in warning


def test_swe_rows_that_all_drop_are_refused_with_the_counts(tmp_path, clones):
    """Today's failure: rows dropped silently, then "0 valid records (0 dropped as malformed)"."""
    _, base, _, docs_patch = clones
    with pytest.raises(DataError) as e:
        _build_swe(tmp_path, clones, [_swe_row(base, docs_patch)])
    msg = str(e.value)
    assert "rows.jsonl: no usable rows: " in msg and f"{swe.NO_FUNCTION}: 1 (acme__widgets-1)" in msg


def test_swe_missing_file_or_hub_name_is_one_line_not_an_import_error(tmp_path, clones):
    section = swe.SweFuncLocSection(swe_rows=str(tmp_path / "absent.jsonl"),
                                    swe_clone_root=str(clones[0]),
                                    swe_cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError, match=r"absent\.jsonl: no such file"):
        get_domain("swe_func_loc").build(section)
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(DataError, match=r"SWE-bench_Verified: not a local file.*pip install datasets"):
            swe.load_swe_rows("verified")
        with pytest.raises(DataError, match="pip install datasets"):
            bc.load_rows("Tevatron/browsecomp-plus")


# --- the task-record pipeline (ppp_jax.train.data) ---------------------------------------------

def _data_config(path, **kw):
    from ppp_jax.config.data import DataConfig

    return DataConfig(train_path=str(path), batch_size=1, vague_preferences=("json",), **kw)


@pytest.mark.parametrize("name, content, expected", [
    ("absent.jsonl", None, "absent.jsonl: no such file"),
    ("empty.jsonl", "", "empty.jsonl: no rows"),
    ("bad.json", "[{}, {oops", "bad.json:1: not valid JSON"),
    ("obj.json", '{"a": 1}', "must hold a list of records"),
    ("rows.csv", "a,b\n", "unsupported task-record file"),
])
def test_task_record_file_faults(tmp_path, name, content, expected):
    from ppp_jax.train.data import ShardInfo, make_dataset

    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=expected.replace(".", r"\.")):
        make_dataset(_data_config(tmp_path / name), shard=ShardInfo(0, 1))


def test_task_records_all_skipped_say_why(tmp_path):
    from ppp_jax.train.data import ShardInfo, make_dataset

    _jsonl(tmp_path / "r.jsonl", [{"task_id": "a"}, "{bad"])
    with pytest.raises(ValueError) as e:
        make_dataset(_data_config(tmp_path / "r.jsonl", on_malformed="skip"), shard=ShardInfo(0, 1))
    msg = str(e.value)
    assert "all 2 task rows were dropped as malformed" in msg and "r.jsonl:1" in msg
    assert "0 dropped" not in msg


# --- through the CLI: one line on stderr, no traceback, nothing built -------------------------

def test_cli_refuses_a_bad_row_in_one_line(tmp_path, capsys):
    from ppp_jax.cli import main

    q = _jsonl(tmp_path / "q.jsonl", [GOOD_QUERY, {"query_id": "q2", "query": "x?"}])
    c = _jsonl(tmp_path / "c.jsonl", [GOOD_DOC])
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"name: bc\nrun_dir: {tmp_path / 'runs'}\nmodel: {{preset: tiny}}\n"
                   f"domain: {{name: browsecomp_plus, browsecomp_queries: {q}, "
                   f"browsecomp_corpus: {c}}}\n")
    # a tokenizer where `ppp train` looks for one, so that the data is what it refuses
    from ppp_jax.envs.testing import tiny_seed_tokenizer

    (tmp_path / "runs" / "bc").mkdir(parents=True)
    tiny_seed_tokenizer().save(str(tmp_path / "runs" / "bc" / "tokenizer.json"))
    for command in ("train", "eval", "sft", "demo"):
        rc = main([command, str(cfg), "--no-progress"])
        err = capsys.readouterr().err.strip()
        assert rc == 1, (command, err)
        assert err == f"ppp {command}: {q}:2: answer: missing", err
    assert not (tmp_path / "runs" / "bc" / "checkpoints").exists()
