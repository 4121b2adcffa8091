"""A shortened `make run`: the same pipeline (build, SFT, eval, PPP RL, eval, report) with a
tiny policy and a few steps; checks the report's form, the plots and resuming."""

import json

import pytest

from ppp_jax.config import loader as cfgmod
from ppp_jax.config.run import RunConfig

SHORT = [
    "model.sizes={hidden_size: 32, intermediate_size: 48, num_layers: 1, num_heads: 2, "
    "num_kv_heads: 1, head_dim: 16, max_position_embeddings: 1024}",
    "domain.stdlib.num_tasks=40",
    "sft.num_episodes=48", "sft.num_steps=3", "sft.batch_size=8",
    "sft.copy_drills=24", "sft.copy_steps=2", "sft.copy_batch_size=8",
    "data.batch_size=2", "rl.advantage.group_size=2",
    "trainer.num_steps=2", "trainer.save_every=1", "trainer.tensorboard=false",
    "eval.num_tasks=1", "eval.preference_ids=[lang_ita, capital]",
    "rollout.episode.turn_max_new_tokens=16", "rollout.episode.max_turns=2",
    "rollout.concurrency=8",
    "engine.num_slots=8", "engine.num_pages=400",
]


def short_config(run_dir) -> RunConfig:
    return cfgmod.load_config("configs/tiny_cpu.yaml", RunConfig,
                              SHORT + [f"run_dir={run_dir}", "name=short"])


def test_shortened_demo_writes_a_well_formed_report_and_resumes(tmp_path, capsys):
    from ppp_jax.demo import run_demo

    cfg = short_config(tmp_path)
    summary = run_demo(cfg, progress=False)
    out = tmp_path / "short"
    for name in ("report.md", "summary.json", "eval_before.json", "eval_after.json",
                 "reward_components.png", "ask_ratio.png", "questions_by_effort.png",
                 "tokenizer.json", "timings.json"):
        assert (out / name).exists(), name
    for name in ("reward_components.png", "ask_ratio.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "summary.json").read_text())
    assert data == json.loads(json.dumps(summary))
    for when in ("before", "after"):
        for kind in ("vague", "precise"):
            assert set(data[when][kind]) == {"ask_ratio", "productivity", "proactivity",
                                              "personalization", "low_effort_share"}
            assert 0.0 <= data[when][kind]["ask_ratio"] <= 1.0
    assert data["training"]["steps"] == 2 and data["sft"]["steps"] == 3
    copy_rows = (out / "sft_copy" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in copy_rows] == [1, 2]  # the copy stage ran first
    report = (out / "report.md").read_text()
    assert "## Before vs after PPP" in report and "![Ask ratio](ask_ratio.png)" in report
    assert "| vague | ask_ratio |" in report

    # Rerunning reuses every finished stage and rewrites the same report.
    capsys.readouterr()
    again = run_demo(cfg, progress=False)
    said = capsys.readouterr().out
    assert "warm start found" in said and "evaluation 'before' found" in said
    assert "evaluation 'after' found" in said
    assert again == summary


def test_run_folder_from_other_inputs_is_refused(tmp_path):
    """Cached stages (tokenizer, warm start) made from another config, another stdlib or an older
    version of the demo are not silently reused: the run stops with a message naming what
    changed."""
    from ppp_jax.demo import INPUTS_FILE, StaleRunError, check_stage_inputs
    from ppp_jax.train.builders import build_tasks

    cfg = short_config(tmp_path)
    tasks, _ = build_tasks(cfg)
    out = cfg.output_dir
    out.mkdir(parents=True)
    (out / "tokenizer.json").write_text("{}")
    with pytest.raises(StaleRunError, match="older version"):
        check_stage_inputs(cfg, tasks)  # a tokenizer with no record of its inputs
    (out / "tokenizer.json").unlink()
    check_stage_inputs(cfg, tasks)
    assert (out / INPUTS_FILE).exists()
    check_stage_inputs(cfg, tasks)  # same inputs: a rerun resumes
    changed = cfgmod.load_config("configs/tiny_cpu.yaml", RunConfig,
                                 SHORT + [f"run_dir={tmp_path}", "name=short", "sft.num_steps=7"])
    with pytest.raises(StaleRunError, match=r"changed: sft\b"):
        check_stage_inputs(changed, tasks)
    with pytest.raises(StaleRunError, match="changed: tasks"):
        check_stage_inputs(cfg, tasks[1:])


def test_demo_from_a_pretrained_qwen_checkpoint_trains_only_its_top(tmp_path):
    """The demo pipeline started from a Hugging Face checkpoint (configs/demo_smollm2.yaml's
    path, on a random tiny Qwen2 model with a Qwen2.5 tokenizer): no tokenizer is trained, the
    warm-start episodes are in the checkpoint's Hermes format, and with `rl.freeze` the frozen
    bottom layer and embedding leave the warm start bit-identical while the top layer moves; PPP
    runs on top."""
    import numpy as np

    from ppp_jax.demo import run_demo
    from ppp_jax.model.api import load_pretrained
    from ppp_jax.model.testing import write_tiny_hf_checkpoint
    from tests.sampling.chat_templates import qwen_tokenizer

    ckpt = tmp_path / "qwen_tiny"
    tok = qwen_tokenizer()
    write_tiny_hf_checkpoint(ckpt, family="qwen2", vocab_size=-(-len(tok) // 8) * 8,
                             hidden_size=32, intermediate_size=48, num_layers=2, num_heads=2,
                             num_kv_heads=1, head_dim=16, max_position_embeddings=1024)
    tok.save_pretrained(str(ckpt))
    cfg = cfgmod.load_config("configs/demo_smollm2.yaml", RunConfig, SHORT + [
        # the test tokenizer is nearly character-level: ~1,500 tokens an episode
        f"run_dir={tmp_path}", "name=pre", f"policy.path={ckpt}", "sft.row_len=2560",
        "rl.freeze.bottom_layers=1", "rl.num_micro_batches=1", "rollout.rows_multiple=2",
        "rollout.row_len=2560", "rollout.episode.max_context_tokens=2200",
        "engine.max_seq_len=2560", "engine.num_pages=1400", "engine.prefill_chunks=[256, 1024]",
        "rl.optim.learning_rate=1e-3", "sft.learning_rate=1e-3"])
    summary = run_demo(cfg, progress=False)
    out = tmp_path / "pre"
    assert not (out / "tokenizer.json").exists()  # the checkpoint's own tokenizer
    assert summary["training"]["steps"] == 2 and summary["sft"]["steps"] == 3

    start = load_pretrained(ckpt)
    final = load_pretrained(out / "sft_policy")  # PPP's own freeze: tests/ppp_jax/test_freeze.py
    for name in ("q_proj", "o_proj"):
        a = np.asarray(getattr(start.layers.attn, name).kernel[...])
        b = np.asarray(getattr(final.layers.attn, name).kernel[...])
        np.testing.assert_array_equal(b[0], a[0])  # frozen bottom layer
        assert not np.array_equal(b[1], a[1]), name  # trained top layer
    np.testing.assert_array_equal(np.asarray(final.embed.embedding[...]),
                                  np.asarray(start.embed.embedding[...]))
    # the warm start was in the Hermes layout (ChatML turns, JSON calls)
    from ppp_jax.demo import build_stage

    built = build_stage(cfg)
    text = built.tokenizer.decode(list(built.views[0].token_ids))
    assert text.startswith("<|im_start|>system\n") and '<tool_call>\n{"name": ' in text
    assert "<seed:" not in text


def test_warm_start_refuses_when_every_episode_exceeds_row_len(tmp_path):
    """No warm-start episode fits `sft.row_len`: a message naming the key and the shortest
    episode, before any training (it was "no SFT examples")."""
    from ppp_jax.demo import build_stage, sft_stage
    from ppp_jax.train.builders import build_model

    def refused(overrides, message):
        name = f"short{len(list(tmp_path.iterdir()))}"  # a fresh run folder per case
        cfg = cfgmod.load_config("configs/tiny_cpu.yaml", RunConfig,
                                 SHORT + [f"run_dir={tmp_path}", f"name={name}", *overrides])
        built = build_stage(cfg)
        with pytest.raises(ValueError, match=message):
            sft_stage(cfg, built, build_model(cfg, built.tokenizer), progress=False)
        assert not (tmp_path / name / "sft_policy").exists()

    refused(["sft.row_len=16", "sft.copy_steps=0"], r"every warm-start example is longer than "
            r"sft\.row_len = 16 tokens \(the shortest has \d+\)")
    refused(["sft.copy_row_len=8"], r"every copy drill is longer than sft\.copy_row_len = 8 "
            r"tokens \(the shortest has \d+\)")
    refused(["sft.copy_drills=0"], r"sft\.copy_steps needs copy drills \(sft\.copy_drills > 0\)")
    refused(["demo.location_tokens=false"], r"sft\.location_weight needs location tokens in the "
            r"tokenizer \(demo\.location_tokens: true")
