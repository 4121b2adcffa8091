"""Multi-process JAX: 2 processes × 4 CPU devices on loopback (gloo collectives) run the PPP
train step on a data×fsdp×tensor = 2×2×2 mesh and must end with the same params and metrics as
one process with 8 devices. The three processes (1 single + 2 distributed) run at once.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ppp_jax import distributed

ROOT = Path(__file__).resolve().parents[2]
HELPER = Path(__file__).with_name("_dist_train.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    port = _free_port()
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
    cfg = distributed.resolve()
    assert (cfg.coordinator_address, cfg.num_processes, cfg.process_id) == ("10.0.0.1:1234", 4, 3)
    assert cfg.multi_process
    # Explicit config wins over the environment.
    assert distributed.resolve(distributed.DistributedConfig(process_id=1)).process_id == 1


def test_config_validation(monkeypatch):
    with pytest.raises(ValueError, match="process_id=2 must be in"):
        distributed.DistributedConfig(num_processes=2, process_id=2)
    monkeypatch.setenv("PPP_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match="is not an int"):
        distributed.resolve()


def test_single_process_is_a_noop():
    cfg = distributed.resolve(distributed.DistributedConfig(num_processes=1))
    assert not cfg.multi_process


def test_process_slice_covers_every_item_once():
    for n in (0, 1, 7, 64):
        parts = [range(n)[distributed.process_slice(n, i, 3)] for i in range(3)]
        assert [x for p in parts for x in p] == list(range(n))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert distributed.process_slice(5) == slice(0, 5)  # one process here
    with pytest.raises(ValueError, match="not in"):
        distributed.process_slice(4, 2, 2)
