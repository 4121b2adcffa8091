"""The PPP trainer end to end on a tiny random policy: engine, orchestrator, train step,
checkpoints, metrics, resume; and the SFT warm start through the same train step."""

import json

import numpy as np
import pytest

from ppp_jax.config import loader as cfgmod
from ppp_jax.envs.testing import tiny_seed_tokenizer
from ppp_jax.train.metrics import read_jsonl
from ppp_jax.config.run import RunConfig

TINY = {
    "name": "t", "seed": 3,
    "model": {"preset": "tiny", "dtype": "float32", "param_dtype": "float32", "remat": "none",
              "attention_impl": "xla",
              "sizes": {"hidden_size": 32, "intermediate_size": 48, "num_layers": 1, "num_heads": 2,
                        "num_kv_heads": 1, "head_dim": 16, "max_position_embeddings": 2048}},
    "engine": {"num_slots": 8, "page_size": 16, "num_pages": 520, "max_seq_len": 1024,
                "decode_steps": 8, "prefill_chunks": [64, 256], "prefill_rows": [1, 4]},
    "domain": {"stdlib": {"num_tasks": 12, "seed": 3}, "tools": ["finish"],
               "system_prompt": "Find the bug."},
    "data": {"batch_size": 2, "seed": 0},
    "reward": {"variant": "released", "clip": False},
    # A random tiny policy gives every episode of a group the same reward, so the GRPO advantages
    # are all zero; a small entropy bonus makes each step a real (nonzero) update, so the resume
    # tests compare trajectories that actually move.
    "rl": {"advantage": {"group_size": 2, "clip_reward_01": False},
           "loss": {"entropy_coef": 0.01},
           "optim": {"learning_rate": 1e-3, "weight_decay": 0.0}, "logprob_chunk_size": 256},
    "rollout": {"concurrency": 8, "row_len": 1024, "pack": True, "rows_multiple": 2,
                "episode": {"max_turns": 2, "max_context_tokens": 960, "turn_max_new_tokens": 12}},
    "trainer": {"num_steps": 2, "save_every": 1, "keep": 3, "tensorboard": False, "progress": False},
}


def tiny_config(tmp_path, **overrides) -> RunConfig:
    data = json.loads(json.dumps(TINY))
    data["run_dir"] = str(tmp_path)
    cfgmod.apply_overrides(data, [f"{k}={v}" for k, v in overrides.items()])
    return cfgmod.from_dict(RunConfig, data)


@pytest.fixture(scope="module")
def tok():
    return tiny_seed_tokenizer()


@pytest.fixture(scope="module")
def engine(tok, tmp_path_factory):
    """One engine for every trainer here (each trainer syncs its params before its first step)."""
    from ppp_jax.train.builders import build_model, make_engine

    cfg = tiny_config(tmp_path_factory.mktemp("engine"))
    eng = make_engine(cfg, build_model(cfg, tok))
    yield eng
    eng.close()


def make_trainer(cfg, tok, run_dir, engine):
    from ppp_jax.train.trainer import PPPTrainer
    from ppp_jax.train.builders import build_parts

    return PPPTrainer(cfg, build_parts(cfg, tokenizer=tok), run_dir=run_dir, engine=engine)


KEYS = ("score/reward", "rollout/episodes", "train/loss", "train/grad_norm")


def test_two_ppp_steps_then_resume(tmp_path, tok, engine):
    cfg = tiny_config(tmp_path)
    a = make_trainer(cfg, tok, tmp_path / "a", engine)
    final = a.train(num_steps=2)
    assert final.step == 2
    rows = read_jsonl(tmp_path / "a" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    for k in KEYS + ("rollout/ask_ratio", "time/rollout", "time/train", "perf/train_tokens_per_s"):
        assert k in rows[0], k
    assert rows[0]["rollout/episodes"] == 4  # 2 prompts x G=2
    assert all(np.isfinite(r["train/grad_norm"]) and r["train/grad_norm"] > 0 for r in rows)
    assert all(r["train/skipped"] == 0 for r in rows)
    assert a.engine_step == 2  # the engine runs the trained weights
    assert a.start_step == 0
    # A new trainer on the same directory resumes from the step-2 checkpoint.
    a2 = make_trainer(cfg, tok, tmp_path / "a", engine)
    assert a2.train(num_steps=3).step == 3
    assert a2.start_step == 2  # what `ppp train`'s summary subtracts: 1 step ran here
    assert [r["step"] for r in read_jsonl(tmp_path / "a" / "metrics.jsonl")] == [1, 2, 3]


@pytest.mark.slow
def test_resumed_run_matches_uninterrupted_run(tmp_path, tok, engine):
    cfg = tiny_config(tmp_path)
    make_trainer(cfg, tok, tmp_path / "a", engine).train(num_steps=2)
    make_trainer(cfg, tok, tmp_path / "a", engine).train(num_steps=3)
    make_trainer(cfg, tok, tmp_path / "b", engine).train(num_steps=3)
    resumed = read_jsonl(tmp_path / "a" / "metrics.jsonl")
    straight = read_jsonl(tmp_path / "b" / "metrics.jsonl")
    for k in KEYS:
        assert [r[k] for r in straight] == pytest.approx([r[k] for r in resumed], rel=1e-5), k


def test_ppo_mini_batches_and_epochs_in_the_trainer(tmp_path, tok, engine):
    """rl.ppo_mini_batches × rl.ppo_epochs updates per PPP step, against a π_old that stays at
    the sampling weights: the later updates see ratios away from 1."""
    cfg = tiny_config(tmp_path, **{"rl.ppo_mini_batches": 2, "rl.ppo_epochs": 2})
    t = make_trainer(cfg, tok, tmp_path / "a", engine)
    assert t.process_rows_multiple % 2 == 0  # rows split into the mini-batches
    final = t.train(num_steps=2)
    rows = read_jsonl(tmp_path / "a" / "metrics.jsonl")
    assert [r["train/ppo_updates"] for r in rows] == [4.0, 4.0]
    assert int(final.train.step) == 8  # optimizer updates attempted
    assert all(abs(r["train/ratio_last"] - 1.0) > 1e-6 for r in rows)
    assert t.engine_step == 2


@pytest.mark.slow
def test_resume_with_ppo_mini_batches_matches_uninterrupted_run(tmp_path, tok, engine):
    cfg = tiny_config(tmp_path, **{"rl.ppo_mini_batches": 2, "rl.ppo_epochs": 2})
    make_trainer(cfg, tok, tmp_path / "a", engine).train(num_steps=1)
    make_trainer(cfg, tok, tmp_path / "a", engine).train(num_steps=2)
    make_trainer(cfg, tok, tmp_path / "b", engine).train(num_steps=2)
    resumed = read_jsonl(tmp_path / "a" / "metrics.jsonl")
    straight = read_jsonl(tmp_path / "b" / "metrics.jsonl")
    for k in KEYS + ("train/ratio_last",):
        assert [r[k] for r in straight] == pytest.approx([r[k] for r in resumed], rel=1e-5), k


def test_engine_memory_is_released_during_the_update(tmp_path, tok, engine):
    """rollout.release_engine_memory: no K/V pool is alive while the update runs, and the pools
    are back for the next rollout (the second step's rollout runs on them)."""
    import jax

    layout = engine.kv_pool_layout()
    cfg = tiny_config(tmp_path, **{"rollout.release_engine_memory": True})
    releases_before = engine.stats().get("memory_releases", 0)
    t = make_trainer(cfg, tok, tmp_path / "a", engine)
    seen, step, released_ids = [], t.train_step, set()
    release = engine.release_memory

    def recording_release():  # the pools the engine held when it released them
        released_ids.clear()
        released_ids.update({id(engine._core.k_pool), id(engine._core.v_pool)})
        release()

    def spy(state, batch, **kw):
        pools = sum(id(x) in released_ids and x.shape == layout.shape for x in jax.live_arrays())
        seen.append((engine.memory_released, pools))
        return step(state, batch, **kw)

    engine.release_memory = recording_release
    t.train_step = spy
    t.train(num_steps=2)
    assert seen == [(True, 0), (True, 0)]
    back = engine.kv_pool_layout()
    assert not engine.memory_released and (back.shape, back.dtype) == (layout.shape, layout.dtype)
    assert back.sharding.is_equivalent_to(layout.sharding, len(layout.shape))
    assert engine.stats().get("memory_releases", 0) - releases_before == 2
    assert len(read_jsonl(tmp_path / "a" / "metrics.jsonl")) == 2


def test_sft_lowers_nll_through_the_train_step(tmp_path, tok):
    from flax import nnx

    from ppp_jax.envs.records import TokenView
    from ppp_jax.model.config import tiny
    from ppp_jax.model.transformer import SeedOssForCausalLM
    from ppp_jax.train.sft import SFTBatches, train_sft

    model = SeedOssForCausalLM(tiny(vocab_size=64, hidden_size=32, intermediate_size=48,
                                    num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16),
                               rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    views = []
    for _ in range(8):  # prompt (mask 0) then a fixed "assistant" answer (mask 1)
        prompt = rng.integers(3, 64, size=5).tolist()
        answer = [7, 8, 9, 10, 11, 2]
        views.append(TokenView(tuple(prompt + answer), (0,) * 5 + (1,) * 6, (0.0,) * 11))
    train_sft(model, views, run_dir=tmp_path / "sft", num_steps=12, batch_size=4,
              learning_rate=1e-2, row_len=32, progress=False, rows_multiple=2)
    rows = read_jsonl(tmp_path / "sft" / "metrics.jsonl")
    assert len(rows) == 12
    assert rows[-1]["train/nll"] < 0.5 * rows[0]["train/nll"]
    # resumable iterator state
    it = SFTBatches(views, 4, 0)
    first = [next(it) for _ in range(3)]
    state = it.get_state()
    it2 = SFTBatches(views, 4, 0)
    it2.set_state(state)
    assert next(it2) == next(it)
    assert first[0] != first[1]


@pytest.mark.parametrize("name", ["tiny_cpu", "seed_oss_36b_funcloc", "seed_oss_36b_browsecomp",
                                  "eval_tiny_cpu", "eval_seed_oss_36b_funcloc"])
def test_run_configs_load(name):
    from ppp_jax.config.run import load_run_config

    cfg = load_run_config(f"configs/{name}.yaml")
    if name.startswith(("seed_oss", "eval_seed")):
        # the paper's settings (arXiv 2511.02208 §5.2, §6.2)
        assert (cfg.data.batch_size, cfg.rl.advantage.group_size, cfg.trainer.num_steps) == (64, 8, 200)
        assert cfg.rl.optim.learning_rate == 1e-6 and cfg.rl.optim.weight_decay == 0.01
        assert (cfg.rl.loss.clip_ratio_low, cfg.rl.loss.clip_ratio_high) == (0.2, 0.28)
        assert cfg.rl.loss.agg_mode == "token-mean" and cfg.policy.dropout == 0.0
        assert cfg.model.build().param_count() == 36_151_104_512
    with pytest.raises(cfgmod.ConfigError, match="unknown key"):
        load_run_config(f"configs/{name}.yaml", ["trainer.nope=1"])


def test_failed_rollouts_skip_the_step_and_exhausted_data_ends_cleanly(tmp_path, tok, engine,
                                                                        caplog):
    """Dynamic-sampling failures, empty rounds and data running out skip the update (counted);
    the run then ends cleanly when the data is exhausted. The mesh comes from cfg.sharding."""
    import itertools

    import jax
    from jax.sharding import NamedSharding

    from ppp_jax.rl import dapo
    from ppp_jax.rollout.orchestrator import RolloutRoundEmpty

    cfg = tiny_config(tmp_path, **{"data.num_epochs": 1})
    t = make_trainer(cfg, tok, tmp_path / "s", engine)
    # cfg.sharding: a 1x1x1 mesh here; params and optimizer state live on it.
    assert dict(t.mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1}
    state = t.init_state()
    assert all(isinstance(x.sharding, NamedSharding) and x.sharding.mesh == t.mesh
               for x in jax.tree.leaves(state.train.params))
    for err in (dapo.DynamicSamplingError("cap hit"), RolloutRoundEmpty("outage")):
        def boom(*a, err=err, **k):
            raise err
        t.orchestrator.collect = boom
        new, m = t.step_fn(state, [])
        assert m["rollout/steps_skipped"] == 1.0 and new.train is state.train

    def drain(items, tasks, seed, more_items):
        for i in itertools.count(1):
            more_items(i)

    t.orchestrator.collect = drain
    with caplog.at_level("WARNING"):
        final = t.train(num_steps=50)
    rows = read_jsonl(tmp_path / "s" / "metrics.jsonl")
    assert final.step == 1 and [r["step"] for r in rows] == [1]
    assert rows[0]["rollout/skipped_data_exhausted"] == 1.0
    assert "data exhausted" in caplog.text


def browsecomp_config(tmp_path, **overrides) -> RunConfig:
    """The tiny run on a BrowseComp-Plus domain built from query and corpus files written here."""
    docs = [{"docid": f"d{i}", "text": text, "url": f"https://example.org/d{i}"} for i, text in
            enumerate(["The lighthouse of Varnholm was designed by Ottilie Brask in 1887.",
                       "Ismo Kareli painted the red lighthouse of Varnholm.",
                       "Leena Voss opened a chess cafe in Tallinn named The Quiet Rook.",
                       "Filler text about trains and municipal budgets."])]
    queries = [{"query_id": f"q{i}", "full_query": q, "query": v, "answer": a, "evidence_docs": e}
               for i, (q, v, a, e) in enumerate([
                   ("Who designed the Varnholm lighthouse that Ismo Kareli painted?",
                    "Who designed a lighthouse?", "Ottilie Brask", ["d0", "d1"]),
                   ("What is the chess cafe Leena Voss opened in Tallinn called?",
                    "What is a chess cafe called?", "The Quiet Rook", ["d2"])])]
    for name, rows in (("corpus.jsonl", docs), ("queries.jsonl", queries)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = json.loads(json.dumps(TINY))
    data["run_dir"] = str(tmp_path)
    data["domain"] = {"name": "browsecomp_plus",
                      "browsecomp_queries": str(tmp_path / "queries.jsonl"),
                      "browsecomp_corpus": str(tmp_path / "corpus.jsonl"),
                      "browsecomp_split": "train", "system_prompt": "Search, then answer."}
    cfgmod.apply_overrides(data, [f"{k}={v}" for k, v in overrides.items()])
    return cfgmod.from_dict(RunConfig, data)


def test_browsecomp_domain_from_local_files(tmp_path, tok):
    from ppp_jax.train.builders import build_parts

    cfg = browsecomp_config(tmp_path)
    parts = build_parts(cfg, tokenizer=tok)
    assert [t.task_id for t in parts.tasks] == ["bcp:q0", "bcp:q1"]
    assert {t.split for t in parts.tasks} == {"train"} and parts.tasks[0].gold == ("Ottilie Brask",)
    assert "[DOC d0]" in parts.tasks[0].hidden_info
    names = {s["function"]["name"] if "function" in s else s["name"]
             for s in parts.domain.tool_schemas(parts.tasks[0])}
    assert {"search", "open_page", "finish"} <= names
    # one PPP step (a rollout round on the search domain, then the update), on an engine of its
    # own: the three tool schemas alone take ~750 tokens, more than the shared engine's rows hold
    from ppp_jax.train.trainer import PPPTrainer

    long = browsecomp_config(tmp_path, **{"engine.max_seq_len": 2048, "engine.num_pages": 1100,
                                          "rollout.row_len": 2048,
                                          "rollout.episode.max_context_tokens": 1984})
    trainer = PPPTrainer(long, build_parts(long, tokenizer=tok, model=parts.model),
                         run_dir=tmp_path / "run")
    try:
        final = trainer.train(num_steps=1)
    finally:
        trainer.engine.close()
    assert final.step == 1
    assert read_jsonl(tmp_path / "run" / "metrics.jsonl")[0]["rollout/episodes"] == 4
    # missing files are a clear error, not a download attempt
    bad = browsecomp_config(tmp_path, **{"domain.browsecomp_corpus": str(tmp_path / "nope.jsonl")})
    with pytest.raises(FileNotFoundError, match="browsecomp_corpus"):
        build_parts(bad, tokenizer=tok)


_MESH_SCRIPT = """
import os, pathlib, sys, tempfile
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.getcwd())
import numpy as np
from flax import nnx
from ppp_jax.envs.testing import tiny_seed_tokenizer
from ppp_jax.model import sharding as shd
from ppp_jax.model.api import save_checkpoint
from ppp_jax.train.builders import build_model
from tests.ppp_jax.test_trainer import tiny_config
from tests import numerics as nm

tok = tiny_seed_tokenizer()
tmp = pathlib.Path(tempfile.mkdtemp())
fsdp = {"sharding.mesh.shape": "[1,-1,1]"}
one = build_model(tiny_config(tmp), tok, mesh=shd.make_mesh({"fsdp": 1}))
big = build_model(tiny_config(tmp, **fsdp), tok)          # random init straight onto 4 devices
save_checkpoint(one, one.config, tmp / "ck")
loaded = build_model(tiny_config(tmp, **fsdp, **{"policy.path": str(tmp / "ck")}), tok)
for m in (big, loaded):
    for (k, a), (_, b) in zip(nnx.to_flat_state(nnx.state(m, nnx.Param)),
                              nnx.to_flat_state(nnx.state(one, nnx.Param))):
        x, y = a.get_value(), b.get_value()
        assert dict(x.sharding.mesh.shape) == {"data": 1, "fsdp": 4, "tensor": 1}, k
        # jitted sharded init vs eager: the same random bits through another program's
        # elementwise chain (uniform -> erfinv polynomial -> scale: counted as 32 roundings),
        # relative to each value; the checkpoint: bit for bit
        assert np.allclose(np.asarray(x), np.asarray(y), rtol=nm.f32_chain_rtol(32), atol=0), k
        assert m is big or np.array_equal(np.asarray(x), np.asarray(y)), k
print("OK")
"""


def test_build_model_creates_params_on_the_mesh(tmp_path, tok):
    """The policy is built on cfg.sharding's mesh (4 CPU devices here, in a subprocess): random
    init and checkpoint loads never materialize the whole model on one device; on one device the
    init is the eager one, bit for bit."""
    import subprocess
    import sys
    from pathlib import Path

    import jax
    from flax import nnx

    from ppp_jax.model.transformer import SeedOssForCausalLM
    from ppp_jax.train.builders import build_model, vocab_size_of

    cfg = tiny_config(tmp_path)
    m = build_model(cfg, tok)
    mc = cfg.model.build().replace(vocab_size=-(-vocab_size_of(tok) // 8) * 8)
    ref = SeedOssForCausalLM(mc, rngs=nnx.Rngs(cfg.policy.init_seed))
    for a, b in zip(jax.tree.leaves(nnx.state(m)), jax.tree.leaves(nnx.state(ref))):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", _MESH_SCRIPT], cwd=root, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]
