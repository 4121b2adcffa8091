"""Multi-process JAX: 2 processes × 4 CPU devices on loopback (gloo collectives) run the PPP
train step on a data×fsdp×tensor = 2×2×2 mesh and must end with the same params and metrics as
one process with 8 devices. The three processes (1 single + 2 distributed) run at once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ppp_jax.config.distributed import DistributedConfig
from ppp_jax.scale.distributed import process_slice, resolve
from tests.ppp_jax._procs import finish_all, free_port

ROOT = Path(__file__).resolve().parents[2]
HELPER = Path(__file__).with_name("_dist_train.py")


def _spawn(out: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # the helper sets its own device count
    return subprocess.Popen([sys.executable, str(HELPER), "--out", str(out), *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout: float) -> None:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"helper timed out:\n{out[-3000:]}")
    assert proc.returncode == 0, out[-3000:]


def test_two_processes_match_one_process(tmp_path):
    port = free_port()
    single = _spawn(tmp_path / "single.npz")
    multi = [_spawn(tmp_path / f"multi{i}.npz", "--num-processes", "2", "--process-id", str(i),
                    "--coordinator", f"127.0.0.1:{port}") for i in range(2)]
    for p in [single, *multi]:
        _finish(p, timeout=600)
    a, b = np.load(tmp_path / "single.npz"), np.load(tmp_path / "multi0.npz")
    assert not (tmp_path / "multi1.npz").exists()  # only process 0 writes
    assert set(a) == set(b) and any(k.startswith("param/") for k in a)
    for k in a:
        # Same program, same data; only the order of cross-process float32 reductions differs.
        np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6, err_msg=k)
    # The updates did something (lr 1e-2), so equality is not trivially of untouched params.
    assert a["metric0/loss"] != a["metric1/loss"]
    assert a["metric0/loss_tokens"] > 0


def test_resolve_reads_environment(monkeypatch):
    monkeypatch.setenv("PPP_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("PPP_PROCESS_ID", "3")
    cfg = resolve()
    assert (cfg.coordinator_address, cfg.num_processes, cfg.process_id) == ("10.0.0.1:1234", 4, 3)
    assert cfg.multi_process
    # Explicit config wins over the environment.
    assert resolve(DistributedConfig(process_id=1)).process_id == 1


def test_config_validation(monkeypatch):
    with pytest.raises(ValueError, match="process_id=2 must be in"):
        DistributedConfig(num_processes=2, process_id=2)
    monkeypatch.setenv("PPP_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match="is not an int"):
        resolve()


def test_single_process_is_a_noop():
    cfg = resolve(DistributedConfig(num_processes=1))
    assert not cfg.multi_process


def test_process_slice_covers_every_item_once():
    for n in (0, 1, 7, 64):
        parts = [range(n)[process_slice(n, i, 3)] for i in range(3)]
        assert [x for p in parts for x in p] == list(range(n))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert process_slice(5) == slice(0, 5)  # one process here
    with pytest.raises(ValueError, match="not in"):
        process_slice(4, 2, 2)


# ------------------------------------------------------------------------------------------------
# The whole trainer: rollouts split by process, global batch, global metrics, checkpoints
# ------------------------------------------------------------------------------------------------

TRAINER = Path(__file__).with_name("_dist_trainer.py")
NOT_COMPARED = ("time/", "perf/")


def _spawn_run(run_dir: Path, out: Path, steps: int, nproc: int = 1, port: int | None = None
               ) -> list[subprocess.Popen]:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # the helper sets its own device count
    base = [sys.executable, str(TRAINER), "--run-dir", str(run_dir), "--steps", str(steps),
            "--out", str(out)]
    if nproc == 1:
        cmds = [base]
    else:
        cmds = [base + ["--num-processes", str(nproc), "--process-id", str(i),
                        "--coordinator", f"127.0.0.1:{port}"] for i in range(nproc)]
    return [subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for c in cmds]


def _rows(run_dir: Path) -> dict[int, dict]:
    from ppp_jax.train.metrics import read_jsonl

    return {r["step"]: r for r in read_jsonl(run_dir / "metrics.jsonl")}


def _steps(out: Path, nproc: int) -> list[dict[int, dict]]:
    """Per process: step -> {"episodes", "counters"} of the episodes that process ran."""
    return [{s["step"]: s for s in json.loads(Path(f"{out}.p{i}.json").read_text())["steps"]}
            for i in range(nproc)]


def _assert_rows_match(got: dict, want: dict, step: int) -> None:
    keys = [k for k in want if not k.startswith(NOT_COMPARED)]
    assert set(keys) <= set(got), (step, sorted(set(keys) - set(got)))
    for k in keys:
        if k.startswith("train/"):
            # the same batch; only float32 reduction orders over devices/processes differ
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=f"{step} {k}")
        else:  # rollout/score/pref: the same episodes in the same order, same arithmetic
            assert got[k] == want[k] or (np.isnan(got[k]) and np.isnan(want[k])), (step, k)


def _assert_params_match(a: Path, b: Path) -> None:
    pa, pb = np.load(a), np.load(b)
    assert set(pa) == set(pb) and len(pa) > 0
    for k in pa:
        np.testing.assert_allclose(pb[k], pa[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.slow
def test_trainer_two_processes_match_one_process_and_resume(tmp_path):
    """2 processes × 4 devices train 2 PPP steps like 1 process × 8 devices: the same episodes
    (each process ran only its half), the same global metrics, the same params; resumed from
    the 2-process checkpoint, by 2 processes or by 1, step 3 is the 1-process run's step 3."""
    one, two = tmp_path / "one", tmp_path / "two"
    procs = _spawn_run(one, tmp_path / "one", 3) + _spawn_run(two, tmp_path / "two", 2, 2,
                                                              free_port())
    finish_all(procs, timeout=900)
    shutil.copytree(two, tmp_path / "two_on_one")
    procs = (_spawn_run(two, tmp_path / "resumed", 3, 2, free_port())
             + _spawn_run(tmp_path / "two_on_one", tmp_path / "resumed_on_one", 3))
    finish_all(procs, timeout=900)

    rows1, rows2 = _rows(one), _rows(two)
    (single,), (p0, p1) = _steps(tmp_path / "one", 1), _steps(tmp_path / "two", 2)
    assert sorted(rows1) == sorted(rows2) == [1, 2, 3]
    for step in (1, 2):
        # Same episodes in the same order: process 0's half, then process 1's.
        assert p0[step]["episodes"] + p1[step]["episodes"] == single[step]["episodes"]
        groups0 = {g for g, *_ in p0[step]["episodes"]}
        assert groups0 and groups0.isdisjoint(g for g, *_ in p1[step]["episodes"])
        # Each process ran half of the step's episodes; the log has the global count.
        run = single[step]["counters"]["rollout/episodes_run"]
        assert run == 8 and p0[step]["counters"]["rollout/episodes_run"] == run / 2
        assert p1[step]["counters"]["rollout/episodes_run"] == run / 2
        assert rows2[step]["rollout/episodes_run"] == run
        assert rows2[step]["rollout/process_episodes_run_max"] == run / 2
        _assert_rows_match(rows2[step], rows1[step], step)
        assert rows1[step]["train/grad_norm"] > 0  # real updates, not untouched params
    # Step 3 resumed from the 2-process checkpoint, by 2 processes and by 1 process.
    (r0, r1), (r_one,) = _steps(tmp_path / "resumed", 2), _steps(tmp_path / "resumed_on_one", 1)
    assert list(r0) == list(r_one) == [3]
    assert r0[3]["episodes"] + r1[3]["episodes"] == single[3]["episodes"] == r_one[3]["episodes"]
    _assert_rows_match(rows2[3], rows1[3], 3)
    _assert_rows_match(_rows(tmp_path / "two_on_one")[3], rows1[3], 3)
    _assert_params_match(tmp_path / "one.npz", tmp_path / "resumed.npz")
    _assert_params_match(tmp_path / "one.npz", tmp_path / "resumed_on_one.npz")


# ------------------------------------------------------------------------------------------------
# Checkpoints across process counts
# ------------------------------------------------------------------------------------------------

CKPT = Path(__file__).with_name("_dist_ckpt.py")


def _spawn_ckpt(args: list[str], out: Path, nproc: int) -> list[subprocess.Popen]:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    base = [sys.executable, str(CKPT), *args, "--out", str(out)]
    port = free_port()
    cmds = [base] if nproc == 1 else [
        base + ["--num-processes", str(nproc), "--process-id", str(i),
                "--coordinator", f"127.0.0.1:{port}"] for i in range(nproc)]
    return [subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for c in cmds]


def test_checkpoints_restore_bit_identical_across_process_counts(tmp_path):
    """A sharded train state saved by 2 processes × 4 devices restores bit-identically (onto
    another layout) in 2 processes and in 1 process × 8 devices, and one saved by 1 process
    restores in 2; each process gets its own data-iterator state back."""
    by2, by1 = tmp_path / "by2", tmp_path / "by1"
    finish_all(_spawn_ckpt(["save", str(by2)], tmp_path / "save2", 2)
                + _spawn_ckpt(["save", str(by1)], tmp_path / "save1", 1), timeout=300)
    dirs = [f"{by2}:2", f"{by1}:1"]
    finish_all(_spawn_ckpt(["restore", *dirs], tmp_path / "restore2", 2)
                + _spawn_ckpt(["restore", *dirs], tmp_path / "restore1", 1), timeout=300)
    for i in range(2):
        got = json.loads(Path(f"{tmp_path / 'restore2'}.p{i}.json").read_text())
        assert got == {str(by2): ["own_state", "bit_identical_from_2"],
                       str(by1): ["bit_identical_from_1"]}
    got = json.loads(Path(f"{tmp_path / 'restore1'}.p0.json").read_text())
    assert got == {str(by2): ["refused_other_count", "bit_identical_from_2"],
                   str(by1): ["own_state", "bit_identical_from_1"]}
    # keep=2 kept both; only finished step directories exist (no tmp left behind)
    assert sorted(p.name for p in (by2).iterdir()) == ["1", "2"]
    # The primary's manifest covers the files both processes wrote (it is written after all).
    from ppp_jax.train.checkpointing import MANIFEST, _item_files

    for step_dir in (by2 / "1", by2 / "2"):
        listed = set(json.loads((step_dir / MANIFEST).read_text())["files"])
        assert listed == set(_item_files(step_dir))
        assert any("process_1" in f for f in listed)


def test_run_config_distributed_section(tmp_path, monkeypatch):
    """The `distributed` section is typed like the others; unset fields come from the env."""
    from ppp_jax.config.loader import ConfigError
    from ppp_jax.config.run import load_run_config

    path = tmp_path / "run.yaml"
    path.write_text("base: " + str(ROOT / "configs/tiny_cpu.yaml") + "\n"
                    "distributed: {coordinator_address: '10.0.0.1:1234', num_processes: 4}\n")
    cfg = load_run_config(str(path))
    assert cfg.distributed.num_processes == 4 and cfg.distributed.process_id is None
    monkeypatch.setenv("PPP_PROCESS_ID", "3")
    resolved = resolve(cfg.distributed)
    assert (resolved.coordinator_address, resolved.num_processes, resolved.process_id) == (
        "10.0.0.1:1234", 4, 3)
    path.write_text("base: " + str(ROOT / "configs/tiny_cpu.yaml") + "\n"
                    "distributed: {num_procs: 4}\n")
    with pytest.raises(ConfigError, match="num_procs.*coordinator_address"):
        load_run_config(str(path))
