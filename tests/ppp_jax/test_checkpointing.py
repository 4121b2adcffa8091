"""Tests for the train-state checkpoint manager (ppp_jax/checkpointing.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ppp_jax.config.checkpoint import CheckpointConfig
from ppp_jax.train.checkpointing import (CheckpointError, CheckpointManager, DamagedCheckpoint,
                                         TrainCheckpoint, export_hf)

CHILD = Path(__file__).with_name("_ckpt_child.py")


class _Tiny(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.a = nnx.Linear(3, 5, rngs=rngs)
        self.b = nnx.Linear(5, 2, use_bias=False, rngs=rngs)


def _train_state(seed: int):
    params = nnx.state(_Tiny(nnx.Rngs(seed)), nnx.Param)
    tx = optax.adamw(1e-2)
    opt_state = tx.init(params)
    # One real update so the optimizer state holds non-trivial moments and a count.
    grads = jax.tree.map(jnp.ones_like, params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def _leaves_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb)
    )


def test_round_trip_and_keep(tmp_path):
    saved = {}
    with CheckpointManager(tmp_path, keep=2) as mgr:
        for step in (1, 2, 3):
            params, opt_state = _train_state(step)
            saved[step] = (params, opt_state)
            mgr.save(step, params=params, opt_state=opt_state, rng=jax.random.key(step),
                     data_state={"grain": {"next_index": step}}, metadata={"config": {"lr": 0.1}})
    mgr = CheckpointManager(tmp_path)
    assert mgr.all_steps() == [2, 3]  # keep=2
    abstract_params, abstract_opt = _train_state(0)
    got = mgr.restore_latest(abstract_params=abstract_params, abstract_opt_state=abstract_opt)
    assert got.step == 3
    assert isinstance(got.params, nnx.State)
    assert jax.tree.structure(got.params) == jax.tree.structure(saved[3][0])
    assert jax.tree.structure(got.opt_state) == jax.tree.structure(saved[3][1])
    assert _leaves_equal(got.params, saved[3][0]) and _leaves_equal(got.opt_state, saved[3][1])
    assert not _leaves_equal(got.params, saved[2][0])
    assert jnp.array_equal(jax.random.key_data(got.rng), jax.random.key_data(jax.random.key(3)))
    assert got.data_state == {"grain": {"next_index": 3}}
    assert got.metadata == {"config": {"lr": 0.1}}
    older = mgr.restore(2, abstract_params=abstract_params, restore_opt_state=False)
    assert older.opt_state is None and _leaves_equal(older.params, saved[2][0])


def test_raw_key_and_untargeted_restore(tmp_path):
    with CheckpointManager(tmp_path, async_save=False) as mgr:
        mgr.save(5, params={"w": jnp.arange(4.0)}, opt_state=(), rng=jax.random.PRNGKey(7))
    got = CheckpointManager(tmp_path).restore()
    assert got.step == 5 and got.data_state is None and got.metadata == {}
    assert got.opt_state is None  # saved without leaves, restored without a target
    sgd_state = optax.sgd(0.1).init({"w": jnp.arange(4.0)})  # a tree without leaves
    assert CheckpointManager(tmp_path).restore(abstract_opt_state=sgd_state).opt_state == sgd_state
    np.testing.assert_array_equal(np.asarray(got.params["w"]), np.arange(4.0))
    np.testing.assert_array_equal(np.asarray(got.rng), np.asarray(jax.random.PRNGKey(7)))


def test_errors_are_clear(tmp_path):
    mgr = CheckpointManager(tmp_path, async_save=False)
    assert mgr.restore_latest() is None
    with pytest.raises(CheckpointError, match="no finished checkpoint"):
        mgr.restore()
    params, opt_state = _train_state(1)
    mgr.save(1, params=params, opt_state=opt_state, rng=jax.random.key(0))
    with pytest.raises(CheckpointError, match="step 1 already exists"):
        mgr.save(1, params=params, opt_state=opt_state, rng=jax.random.key(0))
    with pytest.raises(CheckpointError, match=r"no checkpoint for step 4 .*have \[1\]"):
        mgr.restore(4)
    # A target of another shape: the error names the step and the item.
    wrong = jax.tree.map(lambda x: jax.ShapeDtypeStruct((7,) + x.shape, x.dtype), params)
    with pytest.raises(CheckpointError, match=r"step 1, item 'params'"):
        mgr.restore(1, abstract_params=wrong)
    mgr.close()


def test_corrupt_checkpoint_is_reported_not_used(tmp_path, caplog):
    with CheckpointManager(tmp_path, async_save=False) as mgr:
        for step in (1, 2):
            params, opt_state = _train_state(step)
            mgr.save(step, params=params, opt_state=opt_state, rng=jax.random.key(step))
    target, target_opt = _train_state(0)
    # Garble every data file of step 2's params.
    files = [p for p in (tmp_path / "2" / "params").rglob("*") if p.is_file() and p.stat().st_size > 0]
    assert files
    for p in files:
        p.write_bytes(b"\x00garbage" * 8)
    mgr = CheckpointManager(tmp_path)
    # Asked for by number: refused, naming the step and the damaged file.
    with pytest.raises(DamagedCheckpoint, match=r"checkpoint step 2 .* damaged: params/\S+: size 64 bytes"):
        mgr.restore(2, abstract_params=target, abstract_opt_state=target_opt)
    # The latest: falls back to step 1, in one log line naming step 2 and the file.
    with caplog.at_level("WARNING", logger="ppp_jax.train.checkpointing"):
        got = mgr.restore_latest(abstract_params=target, abstract_opt_state=target_opt)
    assert got.step == 1 and _leaves_equal(got.params, _train_state(1)[0])
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "step 2: params/" in lines[0] and "restored step 1 instead" in lines[0]
    assert [s for s, _ in mgr.skipped] == [2]
    # The damaged step is moved aside, not deleted; saving goes on from step 1.
    moved = mgr.set_aside_skipped()
    assert [p.name.split("-")[:2] for p in moved] == [["step", "2"]]
    assert moved[0].parent == tmp_path.parent / f"{tmp_path.name}-damaged"
    assert mgr.all_steps() == [1] and (moved[0] / "params").is_dir()
    # A missing item is named as such; with no intact step left, restore refuses in one line.
    import shutil

    shutil.rmtree(tmp_path / "1" / "meta")
    with pytest.raises(CheckpointError, match=r"step 1 .* damaged: item 'meta' missing"):
        mgr.restore(1)
    with pytest.raises(CheckpointError, match=r"^no intact checkpoint in .*: step 1: item 'meta' missing") as err:
        mgr.restore()
    assert "\n" not in str(err.value)


def test_every_step_carries_a_manifest_and_old_steps_restore_unverified(tmp_path, caplog):
    """Async and sync saves both publish `ppp_manifest.json`; a step saved before manifests
    (meta format 1, no manifest) restores with a warning; a new-format step without one is damaged."""
    import json

    from ppp_jax.train.checkpointing import MANIFEST

    for async_save in (True, False):
        d = tmp_path / f"async_{async_save}"
        with CheckpointManager(d, async_save=async_save) as mgr:
            mgr.save(1, params={"w": jnp.arange(4.0)}, opt_state={}, rng=jax.random.key(0))
        manifest = json.loads((d / "1" / MANIFEST).read_text())
        assert {f.split("/")[0] for f in manifest["files"]} == {"params", "rng", "data", "meta", "opt_state"}
        assert not list(d.glob("*tmp*"))
    d = tmp_path / "async_False"
    (d / "1" / MANIFEST).unlink()
    with pytest.raises(DamagedCheckpoint, match=f"no {MANIFEST}"):
        CheckpointManager(d).restore(1)
    # Make it an old-format step: meta format_version 1.
    meta_file = d / "1" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["format_version"] = 1
    meta_file.write_text(json.dumps(meta))
    with caplog.at_level("WARNING", logger="ppp_jax.train.checkpointing"):
        got = CheckpointManager(d).restore(1)
    np.testing.assert_array_equal(np.asarray(got.params["w"]), np.arange(4.0))
    assert any("restored without verification" in r.getMessage() for r in caplog.records)


def _child(directory: Path, mode: str) -> subprocess.Popen:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(CHILD.parents[2]))
    return subprocess.Popen([sys.executable, str(CHILD), str(directory), mode], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_on_line(proc: subprocess.Popen, line: str) -> None:
    """SIGKILLs the child as soon as it prints `line` (pytest-timeout bounds the wait)."""
    while True:
        out = proc.stdout.readline()
        if not out:
            raise AssertionError(f"child ended without printing {line!r}: {proc.stderr.read()[-3000:]}")
        if out.strip() == line:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("mode", ["finalize", "write"])
def test_kill_mid_save_never_yields_a_partial_checkpoint(tmp_path, mode):
    proc = _child(tmp_path, mode)
    _kill_on_line(proc, "KILLME")
    leftovers = [p.name for p in tmp_path.iterdir() if "tmp" in p.name]
    if mode == "finalize":
        # Killed after every item was written but before the commit: the step stays a tmp dir.
        assert leftovers and leftovers[0].startswith("2.")
    mgr = CheckpointManager(tmp_path)
    steps = mgr.all_steps()
    print(f"{mode}: steps after the kill: {steps}, leftovers {leftovers}")
    assert steps in ([1], [1, 2]), steps
    if mode == "finalize":
        assert steps == [1]
    target = {"w": jax.ShapeDtypeStruct((4,), jnp.float32), "b": jax.ShapeDtypeStruct((3,), jnp.float32)}
    got = mgr.restore(1, abstract_params=target, restore_opt_state=False)
    assert got.step == 1 and got.data_state == {"pos": 1}
    np.testing.assert_array_equal(np.asarray(got.params["w"]), np.full(4, 1.0))
    # Saving goes on: the next step is written, and the leftover tmp directory has been removed
    # (orbax cleans it up in the background when the manager opens, and waits for that on save).
    mgr.save(3, params={"w": jnp.zeros(4), "b": jnp.zeros(3)}, opt_state={}, rng=jax.random.key(0))
    mgr.wait()
    assert mgr.all_steps() == steps + [3]
    assert not [p for p in tmp_path.iterdir() if "tmp" in p.name]
    mgr.close()


def test_restore_onto_other_sharding(tmp_path):
    proc = _child(tmp_path, "reshard")
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0 and "RESHARD_OK" in out, err[-3000:]


def test_config_and_export_hook(tmp_path):
    cfg = CheckpointConfig(directory=str(tmp_path), save_every=4, keep=1)
    mgr = CheckpointManager.from_config(cfg)
    assert mgr.should_save(8) and not mgr.should_save(6)
    with pytest.raises(ValueError, match="save_every"):
        CheckpointConfig(save_every=0)
    calls = []
    restored = TrainCheckpoint(3, {"w": 1}, None, None, None, {})
    out = export_hf(restored, tmp_path / "hf", model_config="cfg",
                       exporter=lambda p, c, d: calls.append((p, c, d)))
    assert out == tmp_path / "hf" and calls == [({"w": 1}, "cfg", tmp_path / "hf")]
    mgr.close()


@pytest.mark.slow
def test_export_tiny_policy_to_hf(tmp_path):
    """Checkpoint -> restore onto the model's abstract state -> HF safetensors via model.hf_io."""
    from ppp_jax.model import hf_io
    from ppp_jax.model.config import tiny
    from ppp_jax.model.transformer import SeedOssForCausalLM

    cfg = tiny()
    params = nnx.state(SeedOssForCausalLM(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    with CheckpointManager(tmp_path / "ckpt") as mgr:
        mgr.save(1, params=params, opt_state={}, rng=jax.random.key(0))
    restored = CheckpointManager(tmp_path / "ckpt").restore(abstract_params=params, restore_opt_state=False)
    out = export_hf(restored, tmp_path / "hf", model_config=cfg)
    assert (out / "config.json").exists()
    exported = dict(hf_io.iter_hf_tensors(out))
    assert len(exported) == len(hf_io.tensor_maps(cfg))
    emb = [v for k, v in exported.items() if "embed_tokens" in k][0]
    np.testing.assert_array_equal(emb, np.asarray(hf_io.params_of(params)["embed.embedding"]))
