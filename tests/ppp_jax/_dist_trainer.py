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

# The TINY run of test_trainer.py on a 2×2×2 mesh: two heads and two kv heads (the tensor axis
# divides them), four prompts a step (two per process), G = 2, one prompt per prefill call (so
# the engine's float rounding does not depend on which requests arrive together).
CONFIG = {
    "name": "dist", "seed": 3,
    "model": {"preset": "tiny", "dtype": "float32", "param_dtype": "float32", "remat": "none",
              "attention_impl": "xla",
              "sizes": {"hidden_size": 32, "intermediate_size": 48, "num_layers": 1, "num_heads": 2,
                        "num_kv_heads": 2, "head_dim": 16, "max_position_embeddings": 2048}},
    "sharding": {"mesh": {"axes": ["data", "fsdp", "tensor"], "shape": [2, 2, 2]}},
    "sampler": {"num_slots": 8, "page_size": 16, "num_pages": 520, "max_seq_len": 1024,
                "decode_steps": 8, "prefill_chunks": [64, 256], "prefill_rows": [1]},
    "domain": {"stdlib": {"num_tasks": 12, "seed": 3}, "tools": ["finish"],
               "system_prompt": "Find the bug."},
    "data": {"batch_size": 4, "seed": 0},
    "reward": {"variant": "released", "clip": False},
    "rl": {"advantage": {"group_size": 2, "clip_reward_01": False},
           "loss": {"entropy_coef": 0.01},
           "optim": {"learning_rate": 1e-3, "weight_decay": 0.0}, "logprob_chunk_size": 256},
    "rollout": {"concurrency": 8, "row_len": 1024, "pack": True, "rows_multiple": 2,
                "episode": {"max_turns": 2, "max_context_tokens": 960, "turn_max_new_tokens": 12}},
    "trainer": {"num_steps": 2, "save_every": 1, "keep": 3, "tensorboard": False, "progress": False},
}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--num-processes", type=int, default=1)
    p.add_argument("--process-id", type=int, default=0)
    p.add_argument("--coordinator", default=None)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    os.environ["JAX_PLATFORMS"] = "cpu"

    from ppp_jax import distributed

    distributed.initialize(distributed.DistributedConfig(
        coordinator_address=args.coordinator, num_processes=args.num_processes,
        process_id=args.process_id, local_device_count=8 // args.num_processes,
        initialization_timeout_s=120))

    import jax
    import numpy as np
    from flax import nnx
    from jax.experimental import multihost_utils

    from ppp_jax import config as cfgmod
    from ppp_jax.envs.testing import tiny_seed_tokenizer
    from ppp_jax.model import sharding as shd
    from ppp_jax.run_config import RunConfig
    from ppp_jax.trainer import PPPTrainer, build_parts

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
