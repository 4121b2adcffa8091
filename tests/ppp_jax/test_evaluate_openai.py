"""`ppp eval` with `eval.backend: openai`, end to end against a real loopback OpenAI-compatible
server (tests/envs/fake_openai_server.py): the command builds the client from the config, runs the
Table-2 protocol through `OpenAIPolicy`, writes the JSON and Markdown reports, and never leaks the
API key (read from the configured environment variable) into its outputs or logs."""

import json
import logging
from pathlib import Path

import pytest

from ppp_jax import cli
from ppp_jax.config.run import load_run_config
from ppp_jax.train.builders import build_tasks
from tests.envs.fake_openai_server import tool_call_reply

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "eval_tiny_cpu.yaml"
KEY_ENV = "PPP_TEST_EVAL_OPENAI_KEY"
SECRET = "sk-SENTINEL-do-not-leak-7f3a9c"
QUESTION = "What exactly does not behave as documented?"


def test_ppp_eval_openai_backend(server, tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setenv(KEY_ENV, SECRET)
    caplog.set_level(logging.DEBUG)
    server.reset()
    overrides = [f"run_dir={tmp_path}", "name=oa", "eval.backend=openai",
                 "eval.openai_model=fake-model", f"eval.openai_base_url={server.base_url}",
                 f"eval.openai_api_key_env={KEY_ENV}", "eval.num_tasks=2",
                 "eval.preference_ids=[concise_question, capital]", "eval.prompt_kinds=[vague]"]
    cfg = load_run_config(CONFIG, overrides)
    tasks, _ = build_tasks(cfg)
    tasks = [t for t in tasks if t.split == cfg.eval.split][:2]
    assert len(tasks) == 2
    # Scripted model: ask once, then finish; right on the first task, wrong on the second.
    answers = {tasks[0].vague_prompt: tasks[0].gold[0], tasks[1].vague_prompt: "nowhere.py:nothing"}

    def responder(body):
        msgs = body["messages"]
        if not any(m["role"] == "assistant" for m in msgs):
            return tool_call_reply("ask_user", {"question": QUESTION})
        user = next(m["content"] for m in msgs if m["role"] == "user")
        answer = next(a for p, a in answers.items() if p in user)
        return tool_call_reply("finish", {"answer": answer})

    server.responder = responder
    rc = cli.main(["eval", str(CONFIG), *overrides, "--no-progress", "--name", "oa_eval"])
    requests = list(server.requests)
    out, err = capsys.readouterr()
    assert rc == 0, err

    run = tmp_path / "oa"
    result = json.loads((run / "oa_eval.json").read_text())
    md = (run / "oa_eval.md").read_text()
    assert result["n_episodes"] == 4 and "precise" not in result
    assert result["policy"] == "OpenAI-compatible model fake-model"
    assert result["settings"]["tasks"] == 2
    assert result["settings"]["preferences"] == ["concise_question", "capital"]
    v = result["vague"]
    assert v["n"] == 4 and v["ask_ratio"] == 1.0 and v["low_effort_share"] == 1.0
    assert v["productivity"] == pytest.approx(0.5)  # right on one task of two
    assert result["per_preference"]["concise_question"]["personalization"] == 1.0
    assert result["per_preference"]["capital"]["personalization"] == 0.0
    assert set(result["per_preference"]) == {"concise_question", "capital"}
    assert "avg" in result and "counters" in result
    assert "| vague | 4 |" in md and "fake-model" in md

    # Two calls per episode, each sent to the configured model with the key as bearer token.
    assert len(requests) == 8
    assert {r["body"]["model"] for r in requests} == {"fake-model"}
    assert {r["body"]["temperature"] for r in requests} == {cfg.eval.temperature}
    assert all(r["headers"].get("authorization") == f"Bearer {SECRET}" for r in requests)
    assert {t["function"]["name"] for t in requests[0]["body"]["tools"]} >= {"ask_user", "finish"}

    # The key is nowhere in what the command wrote, printed or logged.
    written = "".join(p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file())
    assert SECRET not in written and SECRET not in out and SECRET not in err
    assert SECRET not in caplog.text
