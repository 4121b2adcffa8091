"""Helper process for test_distributed.py: a tiny end-to-end PPP run (engine rollouts, embedded
simulator, stdlib domain, GRPO train step, checkpoints) on a global data×fsdp×tensor = 2×2×2
mesh, as one of `--num-processes` processes (1 = one process with 8 CPU devices; 2 = this
process holds 4 of them). Trains (or resumes) `--run-dir` to `--steps` steps.

Every process writes `<out>.p<i>.json`: per step, the episodes it rolled out itself (group,
prompt kind, token ids) and its own rollout counters. Process 0 also writes `<out>.npz`: the
final params, gathered to host.

    python tests/ppp_jax/_dist_trainer.py --num-processes 2 --process-id 0 \
        --coordinator 127.0.0.1:PORT --run-dir /tmp/run --steps 2 --out /tmp/x
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from _dist_join import join, process_arguments  # this script's folder is on sys.path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from tests.ppp_jax.test_trainer import TINY  # noqa: E402

# The TINY run of test_trainer.py on a 2×2×2 mesh: two kv heads (the tensor axis divides them),
# four prompts a step (two per process), one prompt per prefill call (so the engine's float
# rounding does not depend on which requests arrive together).
CONFIG = {
    **TINY, "name": "dist",
    "model": {**TINY["model"], "sizes": {**TINY["model"]["sizes"], "num_kv_heads": 2}},
    "sharding": {"mesh": {"axes": ["data", "fsdp", "tensor"], "shape": [2, 2, 2]}},
    "engine": {**TINY["engine"], "prefill_rows": [1]},
    "data": {**TINY["data"], "batch_size": 4},
}


def main() -> int:
    p = process_arguments(argparse.ArgumentParser())
    p.add_argument("--run-dir", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    join(args)
    from ppp_jax.scale import distributed

    import jax
    import numpy as np
    from flax import nnx
    from jax.experimental import multihost_utils

    from ppp_jax.config import loader as cfgmod
    from ppp_jax.envs.testing import tiny_seed_tokenizer
    from ppp_jax.model import sharding as shd
    from ppp_jax.config.run import RunConfig
    from ppp_jax.train.trainer import PPPTrainer
    from ppp_jax.train.builders import build_parts

    assert jax.process_count() == args.num_processes and len(jax.devices()) == 8
    cfg = cfgmod.from_dict(RunConfig, {**CONFIG, "run_dir": args.run_dir})
    tok = tiny_seed_tokenizer()
    trainer = PPPTrainer(cfg, build_parts(cfg, tokenizer=tok), run_dir=args.run_dir)
    steps = []

    def record(state, metrics):
        ro = trainer.last_rollout
        steps.append({
            "step": state.step,
            "episodes": [[g, r.prompt_kind, list(r.tokens.token_ids)]
                         for g, r in zip(ro.groups, ro.records)],
            "counters": ro.counters.metrics(),
        })

    final = trainer.train(num_steps=args.steps, hooks=[record])
    trainer.engine.close()
    host = multihost_utils.process_allgather(final.train.params, tiled=True)
    flat = {shd.path_name(path): np.asarray(v.get_value() if hasattr(v, "get_value") else v)
            for path, v in nnx.to_flat_state(host)}
    with open(f"{args.out}.p{jax.process_index()}.json", "w") as f:
        json.dump({"final_step": final.step, "steps": steps}, f)
    if jax.process_index() == 0:
        np.savez(f"{args.out}.npz", **flat)
    distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
