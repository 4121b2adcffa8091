"""`rollout.engine_layout: sampling`: the trainer's rollout engine as per-replica tensor-parallel
engines, laid out as the `engine:` section says (what `ppp compile` compiles).

In this process (one device): the config section, the replica split of the devices, and the
episode -> replica dispatch of `ReplicaEnginePolicy`. In a subprocess on 8 fake CPU devices
(`_ENGINE_SCRIPT`): a trainer with engine tensor=4 / bfloat16 (2 replicas on disjoint devices,
bf16 weights laid out by SAMPLING_RULES, synced exactly after a step, rollouts on both), and a
float32 tensor=2 replica whose log-probs match the default engine's.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ppp_jax.config import loader as cfgmod
from ppp_jax.config.run import EngineLayout, RunConfig, engine_layout, load_run_config
from tests.ppp_jax._procs import finish_all, free_port
from tests.ppp_jax.test_trainer import tiny_config

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------


def test_engine_layout_resolves_from_the_engine_section(tmp_path):
    assert tiny_config(tmp_path).rollout.engine_layout == "training"
    assert engine_layout(tiny_config(tmp_path)) == EngineLayout(tensor=0, dtype="")
    cfg = tiny_config(tmp_path, **{"rollout.engine_layout": "sampling",
                                   "engine.mesh.shape": "[2, 1, 4]", "engine.dtype": "bfloat16"})
    # the layout `ppp compile` compiles: the engine mesh's tensor size, the engine dtype
    assert engine_layout(cfg) == EngineLayout(tensor=4, dtype="bfloat16")
    assert cfg.sharding.mesh.shape == (1, -1, 1)  # the training mesh as before
    cfg = load_run_config("configs/tiny_cpu.yaml", ["rollout.engine_layout=sampling",
                                                    "engine.mesh.shape=[1, 1, 2]"])
    assert engine_layout(cfg).tensor == 2
    # the choice round-trips through the config dict written into checkpoints
    again = cfgmod.from_dict(RunConfig, cfgmod.to_dict(cfg))
    assert engine_layout(again) == engine_layout(cfg)
    # the 36B configs train with the layout they compile
    big = load_run_config("configs/seed_oss_36b_funcloc.yaml")
    assert engine_layout(big) == EngineLayout(tensor=4, dtype="bfloat16")


def test_engine_layout_rejects_bad_values(tmp_path):
    with pytest.raises(cfgmod.ConfigError, match=r"engine_layout.*'replicas'"):
        tiny_config(tmp_path, **{"rollout.engine_layout": "replicas"})
    # a dtype outside the choices is refused when the config is loaded (ppp_jax.config.rules)
    with pytest.raises(cfgmod.ConfigError, match=r"engine\.dtype: 'float8' is not allowed"):
        tiny_config(tmp_path, **{"rollout.engine_layout": "sampling", "engine.dtype": "float8"})
    # -1 means "over the slice" to `ppp compile`; a process cannot resolve it alone
    bad = tiny_config(tmp_path, **{"rollout.engine_layout": "sampling",
                                   "engine.mesh.shape": "[2, 1, -1]"})
    with pytest.raises(ValueError, match=r"engine\.mesh .*tensor size must be a number, not -1"):
        engine_layout(bad)


def test_replica_devices_split_in_order_or_fail_clearly():
    from ppp_jax.train.engine_replicas import engine_replica_devices

    assert engine_replica_devices(list(range(8)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert engine_replica_devices(list(range(8)), 8) == [list(range(8))]
    assert engine_replica_devices(list(range(2)), 1) == [[0], [1]]
    with pytest.raises(ValueError, match=r"engine tensor size 3 .* 8 local devices"):
        engine_replica_devices(list(range(8)), 3)
    with pytest.raises(ValueError, match=r"engine tensor size 16 .* 8 local devices"):
        engine_replica_devices(list(range(8)), 16)


# ------------------------------------------------------------------------------------------------
# Dispatch
# ------------------------------------------------------------------------------------------------


def test_replica_policy_sends_each_group_to_one_replica_with_the_usual_seeds():
    from ppp_jax.envs.testing import tiny_seed_tokenizer
    from ppp_jax.rollout.policies import (ReplicaEnginePolicy, SeededEnginePolicy,
                                          episode_group_key, replica_for)

    assert episode_group_key("7|task-3:pref:vague|1|0") == "7|task-3:pref:vague"
    assert episode_group_key("7|a|b|1|0") == "7|a|b"  # a group key may hold "|"
    assert episode_group_key("plain-id") == "plain-id"
    assert replica_for("7|g", 3) == replica_for("7|g", 3)  # stable (a hash, not a counter)
    with pytest.raises(ValueError, match="num_replicas=0"):
        replica_for("7|g", 0)

    tok = tiny_seed_tokenizer()
    engines = [object(), object(), object()]
    policy = ReplicaEnginePolicy(engines, tok, base_seed=11)
    single = SeededEnginePolicy(engines[0], tok, base_seed=11)
    groups = [f"11|task-{i}" for i in range(24)]
    used = set()
    for group in groups:
        replica = replica_for(group, 3)
        used.add(replica)
        for sample in range(4):
            for attempt in range(2):
                eid = f"{group}|{sample}|{attempt}"
                session = policy.start(eid)
                assert session.policy.engine is engines[replica]  # the whole group, retries too
                ref = single.start(eid)
                assert (session.seed, session.session_id) == (ref.seed, ref.session_id)
                assert session.policy.chat is policy.chat  # one tokenizer, shared
    assert used == {0, 1, 2}
    assert sum(policy.sessions_per_replica) == 24 * 4 * 2
    assert policy.engine is engines[0]


# ------------------------------------------------------------------------------------------------
# 8 fake devices (subprocess)
# ------------------------------------------------------------------------------------------------


_ENGINE_SCRIPT = r"""
import json, os, pathlib, sys, tempfile
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.getcwd())
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from ppp_jax.envs.testing import tiny_seed_tokenizer
from ppp_jax.model import sharding as shd
from ppp_jax.sampling.params import Request, SamplingParams
from ppp_jax.train.builders import build_model, build_parts, make_engine
from ppp_jax.train.engine_replicas import make_engine_replicas
from ppp_jax.train.trainer import PPPTrainer
from tests.ppp_jax._procs import finish_all, free_port
from tests.ppp_jax.test_trainer import tiny_config

out = {"devices": jax.device_count()}
tok = tiny_seed_tokenizer()
tmp = pathlib.Path(tempfile.mkdtemp())
# 4 heads / 4 kv heads so that tensor=4 splits them (the shared tiny model has 2 / 1)
heads = {"model.sizes.num_heads": 4, "model.sizes.num_kv_heads": 4, "model.sizes.head_dim": 8,
         # one prefill bucket and one turn: fewer programs to compile per replica
         "engine.prefill_chunks": "[256]", "engine.prefill_rows": "[4]",
         "rollout.episode.max_turns": 1}

# -- tensor=4, bfloat16: 2 replicas, one trainer step -------------------------------------------
cfg = tiny_config(tmp, **heads, **{"rollout.engine_layout": "sampling", "engine.mesh.shape": "[2, 1, 4]",
                                   "engine.dtype": "bfloat16", "data.batch_size": 4})
trainer = PPPTrainer(cfg, build_parts(cfg, tokenizer=tok), run_dir=tmp / "run")
out["num_engines"] = len(trainer.engines)
out["engine_devices"] = [sorted({d.id for x in jax.tree.leaves(e.weights())
                                 for d in x.sharding.device_set}) for e in trainer.engines]
out["engine_dtypes"] = sorted({str(x.dtype) for e in trainer.engines
                               for x in jax.tree.leaves(e.weights())})
out["pool_dtype"] = str(trainer.engines[0].kv_pool_layout().dtype)
layout_ok = True
for e in trainer.engines:
    mesh = e.mesh
    want = shd.state_shardings(trainer.init_params, mesh, shd.SAMPLING_RULES)
    for x, sh in zip(jax.tree.leaves(e.weights()), jax.tree.leaves(want)):
        layout_ok &= x.sharding.is_equivalent_to(sh, x.ndim)
    layout_ok &= dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 4}
out["layout_ok"] = bool(layout_ok)
out["q_spec"] = str(trainer.engines[0].weights()["layers"]["attn"]["q_proj"]["kernel"]
                    .get_value().sharding.spec)
final = trainer.train(num_steps=1)
out["step"] = final.step
out["sessions_per_replica"] = trainer.policy.sessions_per_replica
out["episodes_run"] = trainer.last_rollout.counters.episodes_run
new_bf16 = jax.tree.leaves(jax.tree.map(lambda x: x.astype(jnp.bfloat16), final.train.params))
init = jax.tree.leaves(trainer.init_params)
out["params_moved"] = any(not np.array_equal(np.asarray(a), np.asarray(b))
                          for a, b in zip(init, jax.tree.leaves(final.train.params)))
out["synced_exactly"] = all(
    all(x.dtype == jnp.bfloat16 and np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(e.weights()), new_bf16))
    for e in trainer.engines)
trainer.engine.close()  # the one-engine interface closes every replica
out["all_closed"] = all(e.closed for e in trainer.engines)

# -- float32, tensor=2 replica vs the default engine: same next-token log-probs ----------------
base = tiny_config(tmp, **heads)
model = build_model(base, tok)   # on the training mesh (fsdp = 8), float32
f32 = tiny_config(tmp, **heads, **{"rollout.engine_layout": "sampling", "engine.mesh.shape": "[4, 1, 2]",
                                   "engine.dtype": "float32"})
default = make_engine(base, model)
replicas = make_engine_replicas(f32, model.config, nnx.state(model, nnx.Param),
                                devices=jax.devices()[:2])
prompt = [0, 5, 17, 42, 7, 99, 3, 250, 11]
params = SamplingParams(temperature=0.0, max_new_tokens=6, top_logprobs=5)
results = []
for engine in (default, replicas[0]):
    [r] = engine.generate_batch([Request(prompt, params)])
    results.append(r)
out["same_tokens"] = results[0].token_ids == results[1].token_ids
diff = 0.0
for ta, tb in zip(results[0].top_logprobs, results[1].top_logprobs):
    out["same_tokens"] &= [i for i, _ in ta] == [i for i, _ in tb]
    diff = max(diff, max(abs(a - b) for (_, a), (_, b) in zip(ta, tb)))
out["max_logprob_diff"] = diff
# its derived float32 bound (tests/numerics.py): two evaluations of the log-probs
from ppp_jax.model import testing as mt
from tests import numerics as nm
seq = prompt + results[0].token_ids
zs = float(np.abs(mt.jit_logits(model, np.array([seq]), np.arange(len(seq))[None])).max())
out["logprob_atol"] = nm.f32_logprob_atol(nm.transformer_path_length(model.config, len(seq)),
                                          model.config.vocab_size, zs,
                                          2 * zs + np.log(model.config.vocab_size))
out["replica_weights_dtype"] = sorted({str(x.dtype)
                                       for x in jax.tree.leaves(replicas[0].weights())})
default.close()
replicas.close()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def eight_devices():
    """The `_ENGINE_SCRIPT` results (8 fake CPU devices, in a subprocess)."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _ENGINE_SCRIPT], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_bf16_replicas_on_disjoint_devices_synced_after_a_step(eight_devices):
    out = eight_devices
    assert out["devices"] == 8
    assert out["num_engines"] == 2
    assert out["engine_devices"] == [[0, 1, 2, 3], [4, 5, 6, 7]]  # disjoint, in device order
    assert out["engine_dtypes"] == ["bfloat16"]
    assert out["pool_dtype"] == "bfloat16"  # the KV pool follows the engine dtype
    assert out["layout_ok"]  # every leaf as SAMPLING_RULES lays it out on the replica mesh
    assert "tensor" in out["q_spec"]  # ... which really splits the heads
    assert out["step"] == 1 and out["params_moved"]
    assert out["synced_exactly"]  # the new params, cast to bf16, bit for bit on both replicas
    assert all(n > 0 for n in out["sessions_per_replica"]), out["sessions_per_replica"]
    assert sum(out["sessions_per_replica"]) == out["episodes_run"]
    assert out["all_closed"]


def test_f32_tensor2_replica_matches_the_default_engine(eight_devices):
    out = eight_devices
    assert out["replica_weights_dtype"] == ["float32"]
    assert out["same_tokens"]
    # tensor=2 vs one device: two float32 evaluations (bound derived in the script)
    assert out["max_logprob_diff"] < out["logprob_atol"], out


# ------------------------------------------------------------------------------------------------
# Two processes (slow): each lays its engines out over its own 4 devices
# ------------------------------------------------------------------------------------------------


_TWO_PROCESS_SCRIPT = r"""
import argparse, json, os, sys
sys.path.insert(0, os.path.join(os.getcwd(), "tests", "ppp_jax"))
sys.path.insert(0, os.getcwd())
from _dist_join import join, process_arguments
args = process_arguments(argparse.ArgumentParser()).parse_args()
join(args)
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from ppp_jax import config as cfgmod, distributed
from ppp_jax.envs.testing import tiny_seed_tokenizer
from ppp_jax.config.run import RunConfig
from ppp_jax.train.builders import build_parts
from ppp_jax.train.trainer import PPPTrainer
from tests.ppp_jax._dist_trainer import CONFIG

cfg = cfgmod.from_dict(RunConfig, {
    **CONFIG, "run_dir": os.environ["PPP_TEST_RUN_DIR"],
    "rollout": {**CONFIG.get("rollout", {}), "engine_layout": "sampling"},
    "engine": {"mesh": {"axes": ["data", "fsdp", "tensor"], "shape": [-1, 1, 2]},
               "dtype": "bfloat16"}})
trainer = PPPTrainer(cfg, build_parts(cfg, tokenizer=tiny_seed_tokenizer()))
final = trainer.train(num_steps=1)
host = jax.tree.leaves(multihost_utils.process_allgather(final.train.params, tiled=True))
synced = all(x.dtype == jnp.bfloat16 and np.array_equal(np.asarray(x),
                                                        np.asarray(y).astype(jnp.bfloat16))
             for e in trainer.engines for x, y in zip(jax.tree.leaves(e.weights()), host))
local = {d.id for d in jax.local_devices()}
devices = [sorted(d.id for d in jax.tree.leaves(e.weights())[0].sharding.device_set)
           for e in trainer.engines]
trainer.engine.close()
print(json.dumps({"process": jax.process_index(), "step": final.step, "synced": bool(synced),
                  "local": all(set(g) <= local for g in devices), "replicas": len(devices),
                  "sessions": trainer.policy.sessions_per_replica}))
distributed.shutdown()
"""


@pytest.mark.slow
def test_two_processes_each_run_their_own_replicas(tmp_path):
    """2 processes x 4 CPU devices, engine tensor=2 / bfloat16: each process builds 2 replicas on
    its own devices from its process-local copy of the params, and after a step both hold the
    new params cast to bf16, bit for bit."""
    port = free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", PPP_TEST_RUN_DIR=str(tmp_path))
    env.pop("XLA_FLAGS", None)  # _dist_join sets 4 devices per process
    procs = [subprocess.Popen([sys.executable, "-c", _TWO_PROCESS_SCRIPT, "--num-processes", "2",
                               "--process-id", str(i), "--coordinator", f"127.0.0.1:{port}"],
                              cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = finish_all(procs, timeout=600)
    results = [json.loads(text.strip().splitlines()[-1]) for text in outputs]
    assert sorted(r["process"] for r in results) == [0, 1]
    for r in results:
        assert r["step"] == 1 and r["synced"] and r["local"] and r["replicas"] == 2, r
        assert sum(r["sessions"]) > 0, r
