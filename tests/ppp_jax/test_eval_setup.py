"""The paper's BrowseComp-Plus setting is a config: `ppp data browsecomp` prepares the folder,
the run config names it and selects the retriever and the LLM answer judge, and `ppp eval`
records which ones were used (JSON and Markdown), with the judge's counters."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from ppp_jax import cli
from tests.envs.fake_openai_server import reply, tool_call_reply

ROOT = Path(__file__).resolve().parents[2]
DOCS = {
    "flight": "The airplane departure was postponed for hours because of heavy fog at the airport.",
    "changelog": "Changelog 4.2: fixes KX-7Q93 in the exporter; new colours for the dashboard.",
    "cook": "Simmer the tomatoes with garlic and basil for twenty minutes to make the sauce.",
}
QUERIES = [
    {"query_id": "q1", "query": "Which release of the exporter fixes KX-7Q93 and changes the "
     "dashboard colours?", "answer": "4.2", "evidence_docs": ["changelog"]},
    {"query_id": "q2", "query": "What was postponed for hours because of heavy fog at the "
     "airport that morning?", "answer": "the airplane departure", "evidence_docs": ["flight"]},
]


def prepare_folder(tmp_path, dense_model: str | None = "hashing") -> Path:
    """`ppp data browsecomp` on QUERIES and DOCS (rule vaguenizer, every query in test) into
    `tmp_path/bcp`; `dense_model` None = the config's default (the packaged MiniLM)."""
    q, c = tmp_path / "q.jsonl", tmp_path / "c.jsonl"
    q.write_text("".join(json.dumps(r) + "\n" for r in QUERIES))
    c.write_text("".join(json.dumps({"docid": k, "text": v}) + "\n" for k, v in DOCS.items()))
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump({
        "output": str(tmp_path / "bcp"), "browsecomp": {"queries": str(q), "corpus": str(c)},
        **({"dense": {"model": dense_model}} if dense_model else {}),
        "vaguenizer": {"backend": "rule"}, "split": {"test_fraction": 1.0}}))
    assert cli.main(["data", "browsecomp", str(data), "--no-progress"]) == 0
    return tmp_path / "bcp"


def _responder(verdict: str):
    def responder(body):
        if body["model"] == "judge-model":
            return reply(verdict)
        if not any(m["role"] == "tool" or "Search Results" in str(m.get("content"))
                   for m in body["messages"]):
            return tool_call_reply("search", {"query": "exporter KX-7Q93 release"})
        return tool_call_reply("finish", {"answer": "release 4.2", "explanation": "changelog",
                                          "confidence": "90%"})
    return responder


def _overrides(run: Path, bcp: Path, server_url: str) -> list[str]:
    """`ppp eval` overrides: BrowseComp-Plus from the prepared folder, hybrid retrieval, the LLM
    judge and the scripted policy at `server_url`, one precise episode."""
    return [
        f"run_dir={run}", "name=bc", "eval.backend=openai", "eval.openai_model=policy-model",
        f"eval.openai_base_url={server_url}", "eval.openai_api_key_env=PPP_UNSET_KEY",
        "eval.num_tasks=1", "eval.preference_ids=[no_preference]", "eval.prompt_kinds=[precise]",
        "domain.name=browsecomp_plus", "domain.stdlib={}", "domain.tools=[]",
        "domain.system_prompt=", f"domain.browsecomp_queries={bcp / 'test.jsonl'}",
        f"domain.browsecomp_corpus={bcp / 'corpus.jsonl'}", f"domain.browsecomp_index={bcp}",
        "domain.browsecomp_split=test", "domain.browsecomp_retriever=hybrid",
        "domain.browsecomp_judge=llm", "domain.browsecomp_judge_model=judge-model",
        f"domain.browsecomp_judge_base_url={server_url}",
        "domain.browsecomp_judge_api_key_env=PPP_UNSET_KEY"]


def test_eval_records_retriever_and_judge(tmp_path, server, capsys):
    server.reset()
    bcp = prepare_folder(tmp_path)
    server.responder = _responder("extracted_final_answer: release 4.2\nreasoning: same\n"
                                  "correct: yes")
    run = tmp_path / "runs"
    overrides = _overrides(run, bcp, server.base_url)
    rc = cli.main(["eval", str(ROOT / "configs" / "eval_tiny_cpu.yaml"), *overrides,
                   "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    result = json.loads((run / "bc" / "eval.json").read_text())
    setup = result["setup"]
    assert setup["domain"] == "browsecomp_plus" and setup["retriever"] == "hybrid"
    assert setup["retriever_detail"]["dense_model"] == "hashing"
    assert setup["retriever_detail"]["dense_memory_mapped"] is True
    assert setup["judge"] == "llm:judge-model" and setup["judge_stats"]["judge_calls"] >= 1
    assert setup["judge_stats"]["judge_yes"] == setup["judge_stats"]["judge_calls"]
    assert setup["simulator"] == {"backend": "embedded"}
    md = (run / "bc" / "eval.md").read_text()
    assert "- retriever: hybrid" in md and "- answer judge: llm:judge-model" in md
    assert result["precise"]["productivity"] == 1.0  # "release 4.2" is right only by the judge
    assert {r["body"]["model"] for r in server.requests} == {"policy-model", "judge-model"}


def test_a_judge_without_verdicts_scores_nothing_and_says_so(tmp_path, server, capsys):
    server.reset()
    bcp = prepare_folder(tmp_path)
    server.responder = _responder("I am not sure.")
    run = tmp_path / "runs"
    rc = cli.main(["eval", str(ROOT / "configs" / "eval_tiny_cpu.yaml"),
                   *_overrides(run, bcp, server.base_url), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0, err  # the run goes on
    result = json.loads((run / "bc" / "eval.json").read_text())
    c = result["counters"]
    assert result["n_episodes"] == 0 and c["dropped_errors"] == 1  # 1 episode: run, re-run, dropped
    assert c["score_errors"] == c["episodes_run"] == c["retried"] + 1
    assert result["setup"]["judge_stats"]["judge_unparsed"] == c["episodes_run"]
    assert "no episode was kept" in err and "nothing was scored" in (run / "bc" / "eval.md").read_text()
