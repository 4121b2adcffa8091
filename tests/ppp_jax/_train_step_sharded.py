"""8-device vs 1-device train step, run as a subprocess with 8 fake CPU devices:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.ppp_jax._train_step_sharded

Two updates (AdamW, 2 micro-batches, seq-mean-token-mean, TIS on) on a (data 2, fsdp 2, tensor 2)
mesh and on one device, fp32; prints one JSON line with the largest differences.
"""

from __future__ import annotations

import json


def main() -> None:
    import jax
    import numpy as np

    from ppp_jax.rl.batch import assemble_batch
    from ppp_jax.model.sharding import make_mesh, state_shardings
    from ppp_jax.rl.optim import make_optimizer
    from ppp_jax.config.rl import LossConfig, OptimConfig, RLConfig
    from ppp_jax.rl.train_step import (batch_sharding, init_train_state, make_train_step,
                                       shard_batch, shard_train_state, train_state_shardings)
    from tests.ppp_jax.rl_helpers import random_views, tiny_split

    graphdef, params = tiny_split(0)
    views = random_views(16, seed=4)
    adv = np.random.default_rng(5).normal(size=16)
    batch = assemble_batch(views, adv, pad_to_multiple=8, rows_multiple=16)
    cfg = RLConfig(
        loss=LossConfig(agg_mode="seq-mean-token-mean", tis_cap=2.0),
        optim=OptimConfig(learning_rate=1e-2, weight_decay=0.01, warmup_steps=1, max_grad_norm=1.0),
        num_micro_batches=2,
        logprob_chunk_size=8,
    )
    opt = make_optimizer(cfg.optim)

    def run(step, state, batch):
        metrics = []
        for _ in range(2):
            state, m = step(state, batch)
            metrics.append({k: float(v) for k, v in m.items()})
        return state, metrics

    one = jax.devices()[0]
    state1 = jax.device_put(init_train_state(params, opt), one)
    s1, m1 = run(make_train_step(graphdef, cfg, opt, donate=False), state1, jax.device_put(batch, one))

    mesh = make_mesh((2, 2, 2))
    state = init_train_state(params, opt)
    shardings = train_state_shardings(state, state_shardings(params, mesh), opt, mesh)
    state8 = shard_train_state(state, shardings)
    step8 = make_train_step(graphdef, cfg, opt, mesh=mesh, state_shardings=shardings)
    s8, m8 = run(step8, state8, shard_batch(batch, mesh))

    # SGD (update = lr · g, no Adam normalization to amplify float-order noise in near-zero
    # gradient components): the updates themselves must agree tightly.
    import optax

    sgd = optax.sgd(1.0)
    g1, _ = make_train_step(graphdef, cfg, sgd, donate=False)(
        jax.device_put(init_train_state(params, sgd), one), jax.device_put(batch, one))
    sgd_state = init_train_state(params, sgd)
    sgd_shardings = train_state_shardings(sgd_state, state_shardings(params, mesh), sgd, mesh)
    g8, _ = make_train_step(graphdef, cfg, sgd, mesh=mesh, state_shardings=sgd_shardings)(
        shard_train_state(sgd_state, sgd_shardings), shard_batch(batch, mesh))
    upd_diff, upd_scale = 0.0, 0.0
    for a, b, p0 in zip(jax.tree.leaves(g1.params), jax.tree.leaves(g8.params), jax.tree.leaves(params)):
        a, b, p0 = np.asarray(a), np.asarray(b), np.asarray(p0)
        upd_diff = max(upd_diff, float(np.max(np.abs((a - p0) - (b - p0)))))
        upd_scale = max(upd_scale, float(np.max(np.abs(a - p0))))

    p1, p8 = jax.tree.leaves(s1.params), jax.tree.leaves(s8.params)
    max_param_diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(p1, p8))
    moved = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                for a, b in zip(p1, jax.tree.leaves(params)))
    rel, worst_key = 0.0, ""
    for a, b in zip(m1, m8):
        for k in a:
            if k == "logp_pearson":  # checked on step 1 against its derived bound, below
                continue
            r = abs(a[k] - b[k]) / (abs(a[k]) + 1e-3)
            if r > rel:
                rel, worst_key = r, k
    # Pearson's r of step 1 (the same params on both sides) and its derived float32 bound
    # (tests/numerics.py): five moment sums that cancel, of the trainer's log-probs (two
    # evaluations, the log-prob bound) and the sampler's, both shifted as the step shifts them
    from ppp_jax.rl.train_step import policy_logprobs
    from tests import numerics as nm
    from tests.ppp_jax.rl_helpers import policy_bounds

    logp, _ = jax.jit(lambda p, b: policy_logprobs(graphdef, p, b, temperature=1.0,
                                                   chunk_size=8))(params, batch)
    sel = np.asarray(batch.loss_mask) > 0
    y = np.asarray(batch.sampler_logprobs, np.float64)[sel]
    x = np.asarray(logp, np.float64)[sel]
    pearson_bound = nm.f32_pearson_atol(x - y.mean(), y - y.mean(),
                                        input_atol=policy_bounds(graphdef, params, batch).logp_atol)
    kept = all(x.sharding == s for x, s in zip(jax.tree.leaves(s8), jax.tree.leaves(shardings)))
    sharded_leaves = sum(len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated
                         for x in jax.tree.leaves(s8.params))
    print(json.dumps({
        "num_devices": jax.device_count(),
        "max_param_diff": max_param_diff,
        "sgd_update_max_diff": upd_diff,
        "sgd_update_max": upd_scale,
        "param_change": moved,
        "max_metric_rel_diff": rel,
        "pearson_step1_diff": abs(m1[0]["logp_pearson"] - m8[0]["logp_pearson"]),
        "pearson_bound": pearson_bound,
        "worst_metric": worst_key,
        # step 1 only: the same params on both sides (step 2 starts from AdamW-updated ones)
        "grad_norm_rel_diff": abs(m1[0]["grad_norm"] - m8[0]["grad_norm"]) / m1[0]["grad_norm"],
        "rows": int(batch.shape[0]), "row_len": int(batch.shape[1]),
        "num_params": sum(int(np.size(x)) for x in jax.tree.leaves(params)),
        "shardings_kept": kept,
        "sharded_param_leaves": sharded_leaves,
        "batch_spec": str(batch_sharding(mesh).spec),
        "loss_1dev": m1[-1]["loss"],
        "loss_8dev": m8[-1]["loss"],
    }))


if __name__ == "__main__":
    main()
