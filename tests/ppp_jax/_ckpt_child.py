"""Subprocess helper for test_checkpointing.py.

    python tests/ppp_jax/_ckpt_child.py DIR finalize   # save step 1; start step 2 and hang
                                                       # just before orbax commits it
    python tests/ppp_jax/_ckpt_child.py DIR write      # save step 1; start a large step 2 and
                                                       # print KILLME while it is being written
    python tests/ppp_jax/_ckpt_child.py DIR reshard    # (4 fake devices) save sharded one way,
                                                       # restore sharded another way

The parent SIGKILLs the process after it prints KILLME and checks what a restore finds.
"""

from __future__ import annotations

import os
import sys
import time

mode = sys.argv[2]
if mode == "reshard":
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

from ppp_jax.train.checkpointing import CheckpointManager  # noqa: E402


def state(step: int, n: int):
    params = {"w": jnp.full((n,), float(step), jnp.float32), "b": jnp.arange(3, dtype=jnp.float32) + step}
    return dict(params=params, opt_state={"mu": params["b"] * 2}, rng=jax.random.key(step),
                data_state={"pos": step}, metadata={"step": step})


def main() -> None:
    directory = sys.argv[1]
    if mode == "reshard":
        devs = np.array(jax.devices())
        assert len(devs) == 4
        x = jnp.arange(8 * 8, dtype=jnp.float32).reshape(8, 8)
        row = NamedSharding(Mesh(devs, ("x",)), P("x", None))  # saved: rows over 4 devices
        col = NamedSharding(Mesh(devs.reshape(2, 2), ("a", "b")), P("b", "a"))  # restored: a 2x2 grid
        with CheckpointManager(directory, async_save=False) as mgr:
            mgr.save(1, params={"x": jax.device_put(x, row)}, opt_state={}, rng=jax.random.key(0))
        mgr = CheckpointManager(directory)
        target = {"x": jax.ShapeDtypeStruct((8, 8), jnp.float32, sharding=col)}
        got = mgr.restore(abstract_params=target, restore_opt_state=False).params["x"]
        assert got.sharding == col, got.sharding
        np.testing.assert_array_equal(np.asarray(got), np.asarray(x))
        print("RESHARD_OK", flush=True)
        return

    mgr = CheckpointManager(directory, keep=3)
    mgr.save(1, **state(1, 4))
    mgr.wait()
    if mode == "finalize":
        from orbax.checkpoint._src.path import atomicity

        async def hang(self, *args, **kwargs):
            print("KILLME", flush=True)
            while True:
                time.sleep(1)

        # Every item is written; only the rename of the tmp directory is left.
        atomicity.AtomicRenameTemporaryPath.finalize = hang
        mgr.save(2, **state(2, 4))
        mgr.wait()
    elif mode == "write":
        mgr.save(2, **state(2, 16_000_000))  # 64 MB: the background write takes a while
        print("KILLME", flush=True)
        mgr.wait()
        print("SAVED", flush=True)
        time.sleep(60)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
