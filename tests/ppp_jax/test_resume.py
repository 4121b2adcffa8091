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

from ppp_jax.metrics import read_jsonl
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
