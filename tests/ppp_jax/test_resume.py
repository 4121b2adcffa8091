"""Kill-and-resume: a run SIGKILLed mid-training resumes and matches an uninterrupted run.

The run (tests/ppp_jax/_resume_run.py) uses the real data pipeline, loop, checkpoint manager and
metrics writers on a toy optax problem; see its docstring.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ppp_jax.train.metrics import read_jsonl
from tests.ppp_jax import _resume_run

SCRIPT = Path(__file__).with_name("_resume_run.py")
STEPS = 12
SAVE_EVERY = 3


def _env(cache_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        JAX_PLATFORMS="cpu",
        # The subprocesses compile the same small programs: share them through the cache.
        JAX_COMPILATION_CACHE_DIR=str(cache_dir),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        PYTHONPATH=str(SCRIPT.parents[2]),
    )
    return env


def _start(run_dir: Path, cache_dir: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, str(SCRIPT), str(run_dir), "--steps", str(STEPS), "--save-every", str(SAVE_EVERY), *extra]
    return subprocess.Popen(cmd, env=_env(cache_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def _deterministic(rows):
    """Rows without the wall-clock metrics, which differ from run to run."""
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in rows]


def _run_here(run_dir: Path) -> None:
    """Runs (or resumes) the same training in this process; only killed runs need a subprocess."""
    assert _resume_run.main([str(run_dir), "--steps", str(STEPS), "--save-every", str(SAVE_EVERY)]) == 0


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("jax_cache")


def _kill_when(proc: subprocess.Popen, metrics: Path, rows: int, timeout: float = 120) -> None:
    """SIGKILLs `proc` as soon as its metrics file has `rows` rows (run in a thread)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(read_jsonl(metrics)) >= rows:
            proc.send_signal(signal.SIGKILL)
            return
        time.sleep(0.01)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache_dir):
    """An uninterrupted run (here) and, at the same time, two runs killed part-way (subprocesses).

    - "self": SIGKILLs itself in the middle of step 8 (deterministic);
    - "external": SIGKILLed from outside once it has written 5 metrics rows (whatever it was
      doing then: stepping, writing a row, or saving a checkpoint).
    """
    ref_dir = tmp_path_factory.mktemp("reference")
    self_dir = tmp_path_factory.mktemp("self_killed")
    ext_dir = tmp_path_factory.mktemp("externally_killed")
    self_proc = _start(self_dir, cache_dir, "--kill-at-step", "8")
    ext_proc = _start(ext_dir, cache_dir, "--step-sleep", "0.1")
    killer = threading.Thread(target=_kill_when, args=(ext_proc, ext_dir / "metrics.jsonl", 5), daemon=True)
    killer.start()
    try:
        _run_here(ref_dir)
    finally:
        self_rc, self_log = _finish(self_proc)
        killer.join(timeout=150)
        ext_rc, ext_log = _finish(ext_proc)
    assert self_rc == -signal.SIGKILL, self_log
    assert ext_rc == -signal.SIGKILL, ext_log
    return {"reference": ref_dir, "self": self_dir, "external": ext_dir}


def test_reference_run_is_complete(runs):
    reference = runs["reference"]
    rows = read_jsonl(reference / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert rows[-1]["train/loss"] < rows[0]["train/loss"]  # it did learn something
    assert sorted(int(p.name) for p in (reference / "ckpt").iterdir() if p.name.isdigit()) == [9, 12]
    assert any((reference / "tb").iterdir())


def test_self_kill_mid_step_then_resume_matches(runs):
    run_dir = runs["self"]
    # Killed in step 8: rows 1..7 were written; checkpoints 3 and 6 were started, and the async
    # write of 6 may or may not have finished (then the run resumes from 3).
    before = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in before] == list(range(1, 8))
    steps = sorted(int(p.name) for p in (run_dir / "ckpt").iterdir() if p.name.isdigit())
    assert steps and steps[-1] in (3, 6)
    _run_here(run_dir)
    ref = read_jsonl(runs["reference"] / "metrics.jsonl")
    resumed = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))  # row 7 rewritten, not duplicated
    assert _deterministic(resumed) == _deterministic(ref)


def test_external_sigkill_at_any_moment_then_resume_matches(runs):
    run_dir = runs["external"]
    metrics = run_dir / "metrics.jsonl"
    done = len(read_jsonl(metrics))
    assert 5 <= done < STEPS
    _run_here(run_dir)
    assert _deterministic(read_jsonl(metrics)) == _deterministic(read_jsonl(runs["reference"] / "metrics.jsonl"))


def test_finished_run_restarted_does_nothing(runs):
    reference = runs["reference"]
    before = (reference / "metrics.jsonl").read_text()
    _run_here(reference)
    assert (reference / "metrics.jsonl").read_text() == before


def test_loop_saves_when_data_runs_out_and_splits_train_state(tmp_path):
    """A finite dataset ends the run early; the last state is still checkpointed and resumable."""
    import jax
    import jax.numpy as jnp

    from ppp_jax.config.data import DataConfig
    from ppp_jax.train.data import ShardInfo, make_dataset
    from ppp_jax.train import loop
    from ppp_jax.train.checkpointing import CheckpointManager
    from ppp_jax.train.metrics import JsonlWriter

    cfg = DataConfig(batch_size=6, seed=1, num_epochs=1, vague_preferences=("a", "b", "c"))
    ds = make_dataset(cfg, _resume_run.rows(), shard=ShardInfo(0, 1))  # 20 prompts: 3 batches
    params = {"w": jnp.zeros((_resume_run.DIM,), jnp.float32), "b": jnp.zeros((), jnp.float32)}
    zero = jnp.zeros((), jnp.int32)
    train = _resume_run.ToyTrainState(params, _resume_run.OPT.init(params), zero, zero)
    init = loop.LoopState(0, train, jax.random.key(0))
    step_fn = _resume_run.make_step_fn(None)
    with CheckpointManager(tmp_path / "ckpt", save_every=100) as ckpt:
        final = loop.run_loop(init, ds.iterator(), step_fn, num_steps=10, ckpt=ckpt,
                              writer=JsonlWriter(tmp_path / "m.jsonl"))
        assert final.step == 3 and ckpt.all_steps() == [3]
        it = ds.iterator()
        again = loop.restore_or_init(init, it, ckpt)
    assert again.step == 3 and int(again.train.step) == 3
    assert jax.tree.structure(again.train) == jax.tree.structure(final.train)
    assert all(bool(jnp.array_equal(a, b)) for a, b in zip(jax.tree.leaves(again.train), jax.tree.leaves(final.train)))
    with pytest.raises(StopIteration):  # the restored iterator is at the end of the data too
        next(it)
    # Mapping-shaped train states split and merge as well.
    p, rest = loop.split_train({"params": 1, "opt_state": 2})
    assert (p, rest, loop.merge_train(p, rest)) == (1, {"opt_state": 2}, {"params": 1, "opt_state": 2})
    with pytest.raises(TypeError, match="mapping or dataclass with `params`"):
        loop.split_train((1, 2))


@pytest.mark.slow
def test_kill_and_resume_with_the_real_train_step(tmp_path, cache_dir):
    """The same guarantee with `ppp_jax.rl.train_step` (donating its state) on the tiny Seed-OSS policy."""
    steps = ["--steps", "6", "--save-every", "2", "--policy", "tiny"]

    def start(run_dir, *extra):
        cmd = [sys.executable, str(SCRIPT), str(run_dir), *steps, *extra]
        return subprocess.Popen(cmd, env=_env(cache_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    ref = start(tmp_path / "ref")
    killed = start(tmp_path / "run", "--kill-at-step", "5")
    rc, log = _finish(ref, timeout=600)
    assert rc == 0, log[-3000:]
    rc, log = _finish(killed, timeout=600)
    assert rc == -signal.SIGKILL, log[-3000:]
    assert [r["step"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3, 4]
    rc, log = _finish(start(tmp_path / "run"), timeout=600)
    assert rc == 0, log[-3000:]
    ref_rows = _deterministic(read_jsonl(tmp_path / "ref" / "metrics.jsonl"))
    rows = _deterministic(read_jsonl(tmp_path / "run" / "metrics.jsonl"))
    assert [r["step"] for r in ref_rows] == [r["step"] for r in rows] == list(range(1, 7))
    assert [r["train/batch_digest"] for r in rows] == [r["train/batch_digest"] for r in ref_rows]
    # Not bitwise: two identical uninterrupted processes already differ in the last bits of some
    # reductions of the real step on XLA:CPU (e.g. train/logp_pearson ~1e-4 relative, measured),
    # so the check is to float32 reduction noise (looser for the correlation); the toy tests
    # above are exact.
    for a, b in zip(rows, ref_rows):
        assert a.keys() == b.keys()
        for k in a:
            rel = 2e-3 if k == "train/logp_pearson" else 1e-5
            assert a[k] == pytest.approx(b[k], rel=rel, abs=1e-6), (a["step"], k, a[k], b[k])


def test_sigterm_stops_gracefully_with_a_checkpoint(tmp_path):
    from ppp_jax.train import loop
    from ppp_jax.train.checkpointing import CheckpointManager
    from ppp_jax.train.metrics import JsonlWriter

    ds, init, step_fn = _resume_run.toy_loop_parts()

    def preempt(state, metrics):
        if state.step == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    with CheckpointManager(tmp_path / "ckpt", save_every=100) as ckpt:
        final = loop.run_loop(init, ds.iterator(), step_fn, num_steps=6, ckpt=ckpt,
                              writer=JsonlWriter(tmp_path / "m.jsonl"), hooks=[preempt])
        assert final.step == 4 and ckpt.all_steps() == [4]
        assert signal.getsignal(signal.SIGTERM) == before  # handler restored
        final = loop.run_loop(init, ds.iterator(), step_fn, num_steps=6, ckpt=ckpt,
                              writer=JsonlWriter(tmp_path / "m.jsonl"))
        assert final.step == 6 and ckpt.all_steps() == [4, 6]
    assert [r["step"] for r in read_jsonl(tmp_path / "m.jsonl")] == [1, 2, 3, 4, 5, 6]
