"""Helper process for test_distributed.py: train-state checkpoints across process counts.

    _dist_ckpt.py save DIR [--num-processes 2 --process-id I --coordinator HOST:PORT] --out F
    _dist_ckpt.py restore DIR:N [DIR:N ...] [...same...] --out F   (N: processes that saved DIR)

`save` writes two checkpoints of a sharded train state (params + Adam state + step counter on a
data×fsdp×tensor = 2×2×2 mesh of 8 CPU devices, one or two processes) with the data-iterator
state of every process: step 1 with a different state per process (a marker added), step 2
with the lockstep states of a real `ppp_jax.train.data` iterator. `restore` restores each DIR's
checkpoints onto another layout (other partition specs) and checks, in this process, that every
array is bit-identical to what was saved, that this process got its own iterator state back,
and that a restore across process counts of per-process-different states fails clearly. Each
process writes what it checked to `<out>.p<i>.json`; any failed check exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import sys

from _dist_join import join, process_arguments  # this script's folder is on sys.path

PARAM_SHAPES = {"w": (8, 6), "b": (6,), "e": (4, 8)}


def main() -> int:
    p = process_arguments(argparse.ArgumentParser())
    p.add_argument("mode", choices=["save", "restore"])
    p.add_argument("dirs", nargs="+")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    join(args)
    from ppp_jax.scale import distributed

    import jax
    import numpy as np
    import optax
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from ppp_jax.config.data import DataConfig
    from ppp_jax.train.data import ShardInfo, make_dataset
    from ppp_jax.train.checkpointing import CheckpointError, CheckpointManager
    from ppp_jax.model import sharding as shd

    mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    rng = np.random.default_rng(0)
    host = {k: rng.normal(size=s).astype(np.float32) for k, s in PARAM_SHAPES.items()}
    opt = optax.adam(1e-2)
    me = jax.process_index()

    def place(tree, specs):
        return {k: distributed.host_array(v.shape, NamedSharding(mesh, specs[k]), v)
                for k, v in tree.items()}

    def dataset(shard=None):
        rows = [{"task_id": f"t{i}", "domain": "d", "precise_prompt": f"p{i}",
                 "vague_prompt": f"v{i}", "hidden_info": "h", "gold": ["g"]} for i in range(5)]
        return make_dataset(DataConfig(batch_size=4, seed=1, vague_preferences=("a", "b")),
                                 rows, shard=shard)

    checked: dict[str, list[str]] = {}
    if args.mode == "save":
        specs = {"w": P("fsdp", "tensor"), "b": P("tensor"), "e": P(("data", "fsdp"))}
        params = place(host, specs)
        grads = {k: v * 0.5 for k, v in params.items()}
        state = opt.init(params)
        _, state = opt.update(grads, state, params)  # nonzero moments, count 1
        step = jax.device_put(np.int32(7), NamedSharding(mesh, P()))
        it = dataset().iterator()
        for _ in range(3):
            next(it)
        with CheckpointManager(args.dirs[0], keep=2) as mgr:
            mine = {**it.get_state(), "saved_by": me}  # per-process different
            mgr.save(1, params=params, opt_state={"opt": state, "step": step},
                     rng=jax.random.key(5), data_state=mine)
            mgr.save(2, params=params, opt_state={"opt": state, "step": step},
                     rng=jax.random.key(5), data_state=it.get_state())
            mgr.wait()
        assert CheckpointManager(args.dirs[0]).all_steps() == [1, 2]  # finalized, seen by all
        checked["saved"] = ["1", "2"]
    else:
        # Another layout than the save's: rows and columns swapped over the axes.
        specs = {"w": P("tensor", "fsdp"), "b": P("fsdp"), "e": P(None, "tensor")}
        want_params = place(host, specs)
        grads = {k: v * 0.5 for k, v in want_params.items()}
        _, want_opt = opt.update(grads, opt.init(want_params), want_params)
        rep = NamedSharding(mesh, P())

        def target(x):  # the eager Adam count is on one device: restore it replicated
            sharding = rep if x.is_fully_addressable else x.sharding
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

        target_opt = {"opt": jax.tree.map(target, want_opt),
                      "step": jax.ShapeDtypeStruct((), np.int32, sharding=rep)}

        def to_host(x):
            if x.is_fully_addressable:
                return np.asarray(x)
            if x.is_fully_replicated:
                return np.asarray(x.addressable_data(0))
            return multihost_utils.process_allgather(x, tiled=True)
        expect = dataset(ShardInfo(0, 1)).iterator()  # the global batches
        for _ in range(3):
            next(expect)
        expected_next = [i.uid for i in next(expect)]
        for spec in args.dirs:
            d, saved_procs = spec.rsplit(":", 1)[0], int(spec.rsplit(":", 1)[1])
            mgr = CheckpointManager(d)
            got = mgr.restore(2, abstract_params=want_params, abstract_opt_state=target_opt)
            for name, a, b, t in (("params", got.params, want_params, want_params),
                                  ("opt", got.opt_state["opt"], want_opt, target_opt["opt"])):
                for x, y, z in zip(jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(t)):
                    assert x.sharding == z.sharding, (name, x.sharding, z.sharding)
                    assert x.dtype == y.dtype and x.shape == y.shape
                    np.testing.assert_array_equal(to_host(x), to_host(y), err_msg=f"{d} {name}")
            assert int(np.asarray(got.opt_state["step"].addressable_data(0))) == 7
            assert np.array_equal(jax.random.key_data(got.rng), jax.random.key_data(jax.random.key(5)))
            it = dataset().iterator()
            it.set_state(got.data_state)
            per = len(expected_next) // jax.process_count()
            assert [i.uid for i in next(it)] == expected_next[me * per:(me + 1) * per]
            # Step 1: per-process states; the same count gets its own, another count an error.
            if saved_procs == jax.process_count():
                one = mgr.restore(1, abstract_params=want_params, abstract_opt_state=target_opt)
                assert one.data_state["saved_by"] == me, one.data_state
                checked.setdefault(d, []).append("own_state")
            elif saved_procs > 1:
                try:
                    mgr.restore(1, abstract_params=want_params, abstract_opt_state=target_opt)
                except CheckpointError as e:
                    assert "data-iterator states of 2 processes differ" in str(e), e
                    checked.setdefault(d, []).append("refused_other_count")
                else:
                    raise AssertionError("restored per-process states onto another process count")
            mgr.close()
            checked.setdefault(d, []).append(f"bit_identical_from_{saved_procs}")
    with open(f"{args.out}.p{me}.json", "w") as f:
        json.dump(checked, f)
    distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
