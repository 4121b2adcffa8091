"""The rollout engine in the sampling layout: this process's devices split into replicas of the
engine mesh's tensor size, each an engine with the weights cast and laid out by SAMPLING_RULES."""

from __future__ import annotations

import logging
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ppp_jax.config.run import RunConfig, engine_layout
from ppp_jax.model import sharding as shd
from ppp_jax.scale.compile_engine import sampling_model_config

log = logging.getLogger(__name__)


def engine_replica_devices(devices: Sequence[Any], tensor: int) -> list[list[Any]]:
    """`devices` split, in order, into len(devices) // tensor replicas of `tensor` devices each
    (disjoint). Raises ValueError naming both numbers when `tensor` does not divide them."""
    n = len(devices)
    if tensor < 1 or n % tensor:
        raise ValueError(f"engine tensor size {tensor} (engine.mesh) must be a positive divisor of this "
                         f"process's {n} local devices (each engine replica takes `tensor` "
                         "of them)")
    return [list(devices[i:i + tensor]) for i in range(0, n, tensor)]


def engine_replica_mesh(devices: Sequence[Any]) -> Any:
    """The mesh of one engine replica: {data: 1, fsdp: 1, tensor: len(devices)}."""
    return shd.make_mesh({"data": 1, "fsdp": 1, "tensor": len(devices)}, devices=list(devices))


def cast_floating(tree: Any, dtype: Any) -> Any:
    """`tree` with its floating-point leaves cast to `dtype` (a leaf already in `dtype` is
    returned as is; integer leaves are left alone). Shapes and shardings are kept."""
    dtype = jnp.dtype(dtype)

    def cast(x):
        if isinstance(x, (jax.Array, np.ndarray)) and jnp.issubdtype(x.dtype, jnp.floating):
            return x if x.dtype == dtype else x.astype(dtype)
        return x

    return jax.tree.map(cast, tree)


class EngineReplicas:
    """The trainer's rollout engines with `rollout.engine_layout: sampling`: one `Engine` per replica,
    each on its own devices with the weights in the engine dtype laid out by `SAMPLING_RULES`.

    It stands in for the single engine where code holds `trainer.engine`: `update_params`
    syncs every replica, `close` closes every replica, `stats` adds the replicas' counters,
    `config` / `model_config` are the (identical) replicas'. Generation goes through
    `ppp_jax.rollout.policies.ReplicaEnginePolicy` (`make_policy` builds it for this object).

    Args:
      engines: the replicas, in device order.
      shardings: per replica, the NamedShardings of the params (an nnx.State like them).
      dtype: the engines' param dtype; params are cast to it before they are placed.
    """

    def __init__(self, engines: Sequence[Any], shardings: Sequence[Any], dtype: Any):
        if len(engines) != len(shardings) or not engines:
            raise ValueError("EngineReplicas needs one sharding tree per engine, and an engine")
        self.engines = list(engines)
        self.shardings = list(shardings)
        self.dtype = jnp.dtype(dtype)

    @property
    def config(self) -> Any:
        return self.engines[0].config

    @property
    def model_config(self) -> Any:
        return self.engines[0].model_config

    def __len__(self) -> int:
        return len(self.engines)

    def __iter__(self):
        return iter(self.engines)

    def __getitem__(self, i: int) -> Any:
        return self.engines[i]

    def placed(self, params: Any) -> list[Any]:
        """`params` (this process's arrays) cast to the engine dtype and placed on each replica:
        one nnx.State per replica, every leaf a NamedSharding array of that replica's mesh."""
        cast = cast_floating(params, self.dtype)
        return [jax.device_put(cast, sh) for sh in self.shardings]

    def update_params(self, params: Any) -> None:
        """Swaps `params` into every replica (cast and placed per replica; no recompilation)."""
        for engine, state in zip(self.engines, self.placed(params)):
            engine.update_params(state)

    def release_memory(self) -> None:
        """Releases every replica's pools and weights (`Engine.release_memory`);
        `update_params` brings them back."""
        for engine in self.engines:
            engine.release_memory()

    def stats(self) -> dict[str, int]:
        """Every replica's `Engine.stats()` counters, added up (`page_size`, a setting, as is)."""
        total: dict[str, int] = {}
        for engine in self.engines:
            for k, v in engine.stats().items():
                total[k] = v if k == "page_size" else total.get(k, 0) + v
        return total

    def close(self) -> None:
        """Closes every replica (each is closed even if another one's close fails)."""
        errors = []
        for engine in self.engines:
            try:
                engine.close()
            except Exception as e:  # noqa: BLE001 -- close the rest, then report
                errors.append(e)
        if errors:
            raise errors[0]


def make_engine_replicas(cfg: RunConfig, model_config: Any, params: Any,
                         devices: Sequence[Any] | None = None) -> EngineReplicas:
    """The rollout engines of `engine_layout(cfg)` ("sampling") over `devices` (default: this
    process's local devices).

    model_config: the training model's config (the engine model is built from it in the engine
      dtype, `aot_engine.sampling_model_config`).
    params: the training params as this process holds them (an nnx.State of every Param, any
      dtype and sharding, all leaves addressable here); each replica gets them cast to the
      engine dtype and placed with `shd.state_shardings(params, replica_mesh, SAMPLING_RULES)`.
    """
    from ppp_jax.model.transformer import SeedOssForCausalLM
    from ppp_jax.sampling.engine import Engine

    layout = engine_layout(cfg)
    devices = jax.local_devices() if devices is None else list(devices)
    tensor = layout.tensor
    groups = engine_replica_devices(devices, tensor)
    emc = sampling_model_config(model_config, layout.dtype)
    # The engine model's graph (its dtypes are static in it); its weights come from `params`.
    graphdef, _ = nnx.split(shd.abstract_model(lambda: SeedOssForCausalLM(emc, rngs=nnx.Rngs(0))))
    dtype = jnp.dtype(emc.param_dtype)
    cast = cast_floating(params, dtype)
    engines, shardings = [], []
    try:
        for group in groups:
            mesh = engine_replica_mesh(group)
            try:
                sh = shd.state_shardings(params, mesh, shd.SAMPLING_RULES)
            except shd.ShardingError as e:
                raise ValueError(f"engine tensor size {tensor} (engine.mesh): the sampling rules "
                                 f"do not fit the model on a replica mesh {dict(mesh.shape)}: "
                                 f"{e}") from None
            shardings.append(sh)
            model = nnx.merge(graphdef, jax.device_put(cast, sh))
            engines.append(Engine(model, cfg.engine.replica_config(), mesh=mesh))
    except BaseException:
        for engine in engines:  # each holds a thread and a KV pool
            engine.close()
        raise
    log.info("rollout engine: %d replicas x tensor=%d, %s weights (rollout.engine_layout: "
             "sampling)", len(engines), tensor, dtype.name)
    return EngineReplicas(engines, shardings, dtype)
