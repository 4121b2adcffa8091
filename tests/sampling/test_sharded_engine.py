"""The engine sharded on 8 fake CPU devices (kv heads over "tensor") equals the 1-device engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_sharded_engine_matches_single_device(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "tests.sampling._sharded_engine", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == 8
    assert "tensor" in out["pool_spec"], out["pool_spec"]  # the KV pool really is sharded
    assert "tensor" in out["q_spec"], out["q_spec"]
    assert out["sharded"] == out["single"]
    # tensor-parallel vs one device: two float32 evaluations (bound derived in the script)
    assert out["max_logprob_diff"] < out["logprob_atol"], out
