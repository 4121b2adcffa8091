"""`ppp data browsecomp` refusals and resumes (the model-free hashing embedder; the packaged
MiniLM path is in test_retrieval_modes.py): a malformed query row or document names its line and
field and writes nothing; an endpoint that fails refuses the set and writes nothing; the cache
makes the rerun ask only for what failed."""

from __future__ import annotations

import json

import yaml

from ppp_jax import cli
from ppp_jax.envs.prepare import verify_prepared
from tests.envs.fake_openai_server import error, reply

DOCS = {"a": "The airplane departure was postponed because of fog.",
        "b": "Interest rates rose, so mortgage payments increased."}
QUERIES = [{"query_id": f"q{i}", "query": f"Which event number {i} was postponed because of fog "
            "at the airport on that long morning?", "answer": "departure",
            "evidence_docs": ["a"]} for i in range(3)]


def _setup(tmp_path, fake, queries=QUERIES, **vague):
    q, c = tmp_path / "q.jsonl", tmp_path / "c.jsonl"
    q.write_text("".join(json.dumps(r) + "\n" for r in queries))
    c.write_text("".join(json.dumps({"docid": k, "text": v}) + "\n" for k, v in DOCS.items()))
    cfg = {"output": str(tmp_path / "out"), "browsecomp": {"queries": str(q), "corpus": str(c)},
           "dense": {"model": "hashing"},
           "vaguenizer": {"backend": "llm", "model": "fake-model", "base_url": fake.base_url,
                          "api_key_env": "PPP_UNSET_KEY", "max_retries": 0, **vague}}
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(cfg))
    return q, ["data", "browsecomp", str(tmp_path / "d.yaml"), "--no-progress"]


def _short(body):
    return reply(" ".join(body["messages"][1]["content"].split()[:6]) + "?")


def test_malformed_query_row_is_refused_naming_line_and_field(tmp_path, fake, capsys):
    bad = [dict(r) for r in QUERIES]
    del bad[1]["answer"]
    q, argv = _setup(tmp_path, fake, queries=bad)
    assert cli.main(argv) == 1
    assert f"{q}:2: answer: missing" in capsys.readouterr().err
    assert not list(tmp_path.glob("out*")) and fake.requests == []


def test_endpoint_failure_refuses_then_the_rerun_asks_only_for_the_rest(tmp_path, fake, capsys):
    q, argv = _setup(tmp_path, fake)
    fake.responder = lambda body: (error(500, "down") if "number 1" in body["messages"][1]["content"]
                                   else _short(body))
    assert cli.main(argv) == 1  # 1 of 3 failed > max_failed_fraction 0.05
    assert "1 of 3 rewrites failed" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    asked = len(fake.requests)
    fake.responder = _short
    assert cli.main(argv) == 0
    assert len(fake.requests) - asked == 1  # the two finished rewrites came from the cache
    manifest = verify_prepared(tmp_path / "out")
    assert manifest["vaguenizer"]["stats"]["cache_hits"] == 2
    assert manifest["counts"]["kept"] == 3 and manifest["dense"]["model"] == "hashing"
    assert manifest["vaguenizer"]["failures"] == {}


def test_garbage_rewrites_are_counted_with_their_reasons(tmp_path, fake):
    q, argv = _setup(tmp_path, fake, max_failed_fraction=0.5, rewrite_tries=1)
    fake.responder = lambda body: (reply("<|im_start|>assistant") if "number 2" in
                                   body["messages"][1]["content"] else _short(body))
    assert cli.main(argv) == 0
    manifest = verify_prepared(tmp_path / "out")
    assert manifest["counts"]["dropped_by_reason"] == {"vaguenizer failed: unusable reply": 1}
    assert "chat-template tokens" in manifest["vaguenizer"]["failures"]["q2"]
