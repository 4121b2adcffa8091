"""Rehearsal of the 36B Func-Loc run on 8 fake CPU devices, and a shape check of every shipped
config.

The rehearsal runs `ppp train configs/seed_oss_36b_funcloc.yaml` itself — its mesh (FSDP over
every device), engine layout (bf16 replicas of 4-way tensor parallel), memory release, loss and
clip settings — with overrides that only shrink it to this machine: a tiny model, a tiny engine,
4 prompts, short episodes, the embedded stdlib domain and simulator (no SWE data or API here),
4 PPO mini-batches and 2 steps, and DAPO's overlong shaping over a short length limit, with the
reward's [0, 1] clip lifted, so that a random policy's episodes get different rewards (a random
policy scores 0 on every task; non-zero advantages let the clip act). The
trainer is observed from inside the command through wrappers of its update and of the engines'
release, which count live buffers per device (`jax.live_arrays()`).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ppp_jax.scale.chips import libtpu_available

ROOT = Path(__file__).resolve().parents[2]
HAVE_LIBTPU, WHY_NO_LIBTPU = libtpu_available()

SHRINK = [
    # the model and the engine replica
    "model.preset=tiny", "model.attention_impl=xla", "model.sizes.hidden_size=32",
    "model.sizes.intermediate_size=48", "model.sizes.num_layers=1", "model.sizes.num_heads=4",
    "model.sizes.num_kv_heads=4", "model.sizes.head_dim=8",
    "model.sizes.max_position_embeddings=4096",
    "engine.num_slots=8", "engine.page_size=16", "engine.num_pages=1025", "engine.max_seq_len=2048",
    "engine.decode_steps=8", "engine.prefill_chunks=[256]", "engine.prefill_rows=[4]",
    "engine.block_pages=8", "engine.mesh.shape=[2, 1, 4]",
    # the data, the episodes and the step's shape
    "domain.name=stdlib_loc", 'domain.swe_rows=""', 'domain.swe_clone_root=""',
    'domain.swe_cache_dir=""', "domain.stdlib.num_tasks=12", "domain.tools=[finish]",
    "simulator.backend=embedded", "data.batch_size=4", "rl.num_micro_batches=1",
    "rl.ppo_mini_batches=4", "rollout.rows_multiple=32", "rollout.row_len=2048",
    "rollout.concurrency=32", "rollout.episode.max_turns=1",
    "rollout.episode.max_context_tokens=1984", "rollout.episode.turn_max_new_tokens=24",
    "rl.dapo.max_response_len=24", "rl.dapo.overlong_buffer_len=20", "reward.clip=false",
    "rl.advantage.clip_reward_01=false",
    "rl.optim.learning_rate=0.01", "trainer.num_steps=2", "trainer.save_every=2",
    "trainer.tensorboard=false",
]

_SCRIPT = r"""
import json, math, os, sys, weakref
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.getcwd())
import jax
import numpy as np
from ppp_jax import cli
from ppp_jax.envs.testing import tiny_seed_tokenizer
from ppp_jax.train import trainer as trainer_mod

out_path, run_dir, *overrides = sys.argv[1:]
tok_path = os.path.join(run_dir + "-tok.json")
tiny_seed_tokenizer().save(tok_path)
DEV = jax.devices()[0]
events = []


def device_bytes(arrays):
    # bytes of `arrays` that live on DEV (their shard there), without touching their data
    total = 0
    for x in arrays:
        if DEV in x.sharding.device_set:
            total += math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
    return total


def engine_arrays(trainer):
    arrays = []
    for e in trainer.engines:
        layout = e.kv_pool_layout()
        pools = [x for x in jax.live_arrays() if x.shape == layout.shape
                 and x.dtype == layout.dtype and x.sharding == layout.sharding]
        arrays += jax.tree.leaves(e.weights()) + pools
    return arrays


init = trainer_mod.PPPTrainer.__init__


def wrapped_init(self, *args, **kw):
    init(self, *args, **kw)
    trainer = self
    engine_refs = []
    release = trainer.engine.release_memory
    step = trainer.train_step

    def recording_release():
        arrays = engine_arrays(trainer)
        engine_refs[:] = [weakref.ref(x) for x in arrays]
        before = device_bytes(jax.live_arrays())
        events.append(dict(phase="rollout", engine_bytes=device_bytes(arrays),
                           engine_arrays=len(arrays), live_bytes=before,
                           released=[e.memory_released for e in trainer.engines]))
        del arrays
        release()
        events.append(dict(phase="released", live_bytes=device_bytes(jax.live_arrays()),
                           released=[e.memory_released for e in trainer.engines]))

    def recording_step(state, batch, **kw):
        alive = sum(r() is not None for r in engine_refs)
        live = device_bytes(jax.live_arrays())
        new, metrics = step(state, batch, **kw)
        events.append(dict(phase="update", engine_arrays_alive=alive, live_bytes=live,
                           **{k: float(metrics[k]) for k in
                              ("ratio", "clipfrac_high", "clipfrac_low", "dual_clipfrac")}))
        return new, metrics

    trainer.engine.release_memory = recording_release
    trainer.train_step = recording_step


trainer_mod.PPPTrainer.__init__ = wrapped_init
code = cli.main(["train", "configs/seed_oss_36b_funcloc.yaml", f"run_dir={run_dir}",
                 'policy.path=""', f"policy.tokenizer={tok_path}", "--no-progress", *overrides])
json.dump(dict(code=code, events=events), open(out_path, "w"))
"""


def test_36b_funcloc_config_rehearsed_on_8_fake_devices(tmp_path):
    script = tmp_path / "rehearsal.py"
    script.write_text(_SCRIPT)
    out = tmp_path / "out.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, str(script), str(out), str(tmp_path / "run"), *SHRINK],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and out.exists(), proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads(out.read_text())
    assert result["code"] == 0, proc.stderr[-5000:]
    events = result["events"]
    phases = [e["phase"] for e in events]
    # two PPP steps, each: rollout, release, 4 mini-batch updates
    assert phases == (["rollout", "released"] + ["update"] * 4) * 2, phases
    rollouts = [e for e in events if e["phase"] == "rollout"]
    released = [e for e in events if e["phase"] == "released"]
    updates = [e for e in events if e["phase"] == "update"]
    for r, gone in zip(rollouts, released):
        # during the rollout every engine holds its weights and pools, on this device too
        assert r["released"] == [False, False] and r["engine_arrays"] > 0
        assert r["engine_bytes"] > 0
        # released: exactly their bytes leave the device
        assert gone["released"] == [True, True]
        assert r["live_bytes"] - gone["live_bytes"] == r["engine_bytes"], (r, gone)
    # back for the second step's rollout, the same size (pools re-created, weights re-cast)
    assert rollouts[1]["engine_bytes"] == rollouts[0]["engine_bytes"]
    # during every update no engine buffer is alive
    assert [u["engine_arrays_alive"] for u in updates] == [0] * 8
    for step in (updates[:4], updates[4:]):
        # π_old recomputed at the sampling weights: the first update is on-policy
        assert step[0]["ratio"] == pytest.approx(1.0, abs=1e-5)
        assert step[0]["clipfrac_high"] + step[0]["clipfrac_low"] == 0.0
        # the later ones are off-policy, and the clip acts
        assert all(abs(u["ratio"] - 1.0) > 1e-4 for u in step[1:]), step
        assert any(u["clipfrac_high"] + u["clipfrac_low"] > 0 for u in step[1:]), step
    metrics = [json.loads(line) for line in
               (tmp_path / "run" / "seed_oss_36b_funcloc" / "metrics.jsonl").read_text().splitlines()]
    assert [m["train/ppo_updates"] for m in metrics] == [4.0, 4.0]


# ---- every shipped config ----------------------------------------------------------------------

CONFIGS = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
# Configs made for one CPU device are shape-checked on the smallest TPU slice laid out like them.
SMALL_SLICE = ["--topology", "v5e:2x2", "--mesh", "data=1,fsdp=-1,tensor=1",
               "--engine-mesh", "data=-1,fsdp=1,tensor=1"]


def test_the_shipped_configs_are_the_ones_checked_here():
    assert CONFIGS == ["data_browsecomp_plus.yaml", "data_swe_gym.yaml", "data_swe_verified.yaml",
                       "demo_smollm2.yaml",
                       "eval_released_ppp36b_browsecomp.yaml", "eval_released_ppp36b_funcloc.yaml",
                       "eval_seed_oss_36b_funcloc.yaml", "eval_seed_oss_36b_swefull.yaml",
                       "eval_tiny_cpu.yaml", "rehearsal_smollm2.yaml",
                       "seed_oss_36b_browsecomp.yaml",
                       "seed_oss_36b_funcloc.yaml", "seed_oss_36b_swefull.yaml",
                       "serve_smollm2.yaml", "serve_tiny.yaml", "tiny_cpu.yaml",
                       "tiny_cpu_swefull.yaml"]


def test_serve_config_loads():
    from ppp_jax.commands.serve import ServeConfig
    from ppp_jax.config.loader import load_config

    cfg = load_config(ROOT / "configs" / "serve_tiny.yaml", ServeConfig)
    assert cfg.engine.num_slots > 0 and cfg.engine.max_seq_len > 0


@pytest.mark.skipif(not HAVE_LIBTPU, reason=WHY_NO_LIBTPU or "libtpu present")
@pytest.mark.parametrize("name", [c for c in CONFIGS if not c.startswith(("serve_", "data_"))])
def test_shipped_run_config_passes_the_shape_check(name, tmp_path):
    """`ppp compile --dry-run`: the config loads as a run config, and every program `ppp train`
    runs with it (train step at the trainer's own batch and T, π_old pass when it runs, engine
    prefill and decode) traces and lays out on its slice."""
    one_cpu = ("tiny" in name or "rehearsal" in name or name.startswith("demo_"))
    extra = SMALL_SLICE if one_cpu else []  # one-CPU configs
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "ppp_jax.cli", "compile", f"configs/{name}",
                           "--dry-run", "--steps", "train,prefill,decode", *extra], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "what `ppp train` runs:" in proc.stdout
    assert proc.stdout.count("shapes and shardings agree") == 3
    assert "dry run: every step traces and lays out" in proc.stdout
