"""Helper process for test_distributed.py: two PPP train steps of a tiny model on a global
data×fsdp×tensor = 2×2×2 mesh, as one of `--num-processes` processes (1 = single process with
8 CPU devices; 2 = this process holds 4 of them). Writes the updated params (gathered to host)
and the metrics to `--out` (.npz) from process 0.

    python tests/ppp_jax/_dist_train.py --num-processes 2 --process-id 0 \
        --coordinator 127.0.0.1:PORT --out /tmp/x.npz
"""

from __future__ import annotations

import argparse
import sys

from _dist_join import join, process_arguments  # this script's folder is on sys.path


def main() -> int:
    p = process_arguments(argparse.ArgumentParser())
    p.add_argument("--out", required=True)
    args = p.parse_args()
    join(args)
    from ppp_jax.scale import distributed

    import jax
    import numpy as np
    from flax import nnx
    from jax.experimental import multihost_utils

    from ppp_jax.rl import train_step as ts
    from ppp_jax.rl.batch import TokenBatch
    from ppp_jax.model import sharding as shd
    from ppp_jax.model.config import tiny
    from ppp_jax.model.transformer import SeedOssForCausalLM
    from ppp_jax.rl.optim import make_optimizer
    from ppp_jax.config.rl import OptimConfig, RLConfig

    assert jax.process_count() == args.num_processes, jax.process_count()
    assert len(jax.devices()) == 8 and len(jax.local_devices()) == 8 // args.num_processes

    # vocab and kv heads divisible by tensor=2; distinct sizes otherwise (config.tiny).
    cfg = tiny(vocab_size=64, num_kv_heads=2)
    mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model = shd.create_sharded(lambda: SeedOssForCausalLM(cfg, rngs=nnx.Rngs(0)), mesh)
    graphdef, params = ts.split_model(model)
    rl = RLConfig(optim=OptimConfig(learning_rate=1e-2, max_grad_norm=1.0), num_micro_batches=2,
                  logprob_chunk_size=6)
    opt = make_optimizer(rl.optim)
    state_abs = jax.eval_shape(lambda p: ts.init_train_state(p, opt), params)
    param_sh = jax.tree.map(lambda x: x.sharding, params)
    state_sh = ts.train_state_shardings(state_abs, param_sh, opt, mesh)
    state = jax.jit(lambda p: ts.init_train_state(p, opt), out_shardings=state_sh)(params)
    step = ts.make_train_step(graphdef, rl, opt, mesh=mesh)

    # The same host batch on every process; each uploads only its own rows.
    rng = np.random.default_rng(0)
    b, t = 8, 12
    tokens = rng.integers(2, cfg.vocab_size, (b, t)).astype(np.int32)
    fields = dict(
        tokens=tokens,
        positions=np.tile(np.arange(t, dtype=np.int32), (b, 1)),
        segment_ids=np.ones((b, t), np.int32),
        targets=np.roll(tokens, -1, axis=1),
        loss_mask=(rng.random((b, t)) < 0.7).astype(np.float32),
        advantages=np.repeat(rng.normal(size=(b, 1)), t, axis=1).astype(np.float32),
        sampler_logprobs=(-rng.random((b, t)) * 4).astype(np.float32),
    )
    fields["old_logprobs"] = fields["sampler_logprobs"]
    sharding = ts.batch_sharding(mesh)
    batch = TokenBatch(**{k: distributed.host_array(v.shape, sharding, v) for k, v in fields.items()})

    metrics_seen = []
    with shd.using_mesh(mesh):
        for _ in range(2):
            state, metrics = step(state, batch)
            metrics_seen.append({k: float(np.asarray(v.addressable_data(0)))
                                 for k, v in metrics.items()})
    host_params = multihost_utils.process_allgather(state.params, tiled=True)
    flat = {shd.path_name(path): np.asarray(v.get_value() if hasattr(v, "get_value") else v)
            for path, v in nnx.to_flat_state(host_params)}
    if jax.process_index() == 0:
        out = {f"param/{k}": v for k, v in flat.items()}
        for i, m in enumerate(metrics_seen):
            out.update({f"metric{i}/{k}": np.float64(v) for k, v in m.items()})
        np.savez(args.out, **out)
    distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
