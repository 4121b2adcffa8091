"""Multi-process (multi-host) JAX: `jax.distributed.initialize` driven by a config or the
environment.

One process runs per host (per GPU node, per TPU VM). Every process runs the same program; the
global mesh spans all processes' devices, `jax.jit` programs are SPMD over it, and each process
feeds and reads only its own (addressable) shards. On CPU (tests, here) the cross-process
collectives go over gloo (`jax_cpu_collectives_implementation`), so a 2-process × 4-device run on
loopback computes exactly what one process with 8 devices computes.

Precedence for each field: an explicit `DistributedConfig` value, then the environment
(`PPP_COORDINATOR_ADDRESS`, `PPP_NUM_PROCESSES`, `PPP_PROCESS_ID`, `PPP_LOCAL_DEVICE_COUNT`,
falling back to JAX's own `JAX_COORDINATOR_ADDRESS` / `JAX_NUM_PROCESSES` / `JAX_PROCESS_ID`),
then single-process defaults. On Cloud TPU and SLURM, leave all three unset with
`auto_detect=True` and JAX finds them itself.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from jax.sharding import Mesh
from ppp_jax.config.distributed import ENV_PREFIXES, DistributedConfig


def _env(name: str) -> str | None:
    for prefix in ENV_PREFIXES:
        value = os.environ.get(prefix + name)
        if value:
            return value
    return None


def _env_int(name: str) -> int | None:
    value = _env(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable *_{name}={value!r} is not an int") from None


def resolve(cfg: DistributedConfig | None = None) -> DistributedConfig:
    """`cfg` with every unset field filled from the environment (see the module docstring)."""
    cfg = cfg or DistributedConfig()
    return dataclasses.replace(
        cfg,
        coordinator_address=cfg.coordinator_address or _env("COORDINATOR_ADDRESS"),
        num_processes=cfg.num_processes if cfg.num_processes is not None else _env_int("NUM_PROCESSES"),
        process_id=cfg.process_id if cfg.process_id is not None else _env_int("PROCESS_ID"),
        local_device_count=(cfg.local_device_count if cfg.local_device_count is not None
                            else _env_int("LOCAL_DEVICE_COUNT")),
    )


def initialize(cfg: DistributedConfig | None = None) -> DistributedConfig:
    """Joins the multi-process job described by `cfg` (+ environment); a no-op for one process.

    Must run before anything touches a JAX backend (jax.devices(), the first jit). Returns the
    resolved config. Raises ValueError naming the missing field when a multi-process job is
    asked for without a coordinator address or process id.
    """
    import jax

    cfg = resolve(cfg)
    if cfg.local_device_count is not None:
        jax.config.update("jax_num_cpu_devices", cfg.local_device_count)
    if not cfg.multi_process:
        return cfg
    if cfg.cpu_collectives != "none":
        jax.config.update("jax_cpu_collectives_implementation", cfg.cpu_collectives)
    if cfg.auto_detect:
        jax.distributed.initialize(initialization_timeout=cfg.initialization_timeout_s)
        return cfg
    missing = [n for n in ("coordinator_address", "process_id") if getattr(cfg, n) is None]
    if missing:
        raise ValueError(f"a {cfg.num_processes}-process job needs {missing} (config "
                         f"`distributed.*` or env PPP_COORDINATOR_ADDRESS / PPP_PROCESS_ID)")
    jax.distributed.initialize(
        coordinator_address=cfg.coordinator_address,
        num_processes=cfg.num_processes,
        process_id=cfg.process_id,
        cluster_detection_method="deactivate",
        initialization_timeout=cfg.initialization_timeout_s,
    )
    return cfg


def shutdown() -> None:
    """Leaves the job (safe to call when not initialized)."""
    import jax

    if jax.process_count() > 1:
        jax.distributed.shutdown()


def process_slice(n: int, index: int | None = None, count: int | None = None) -> slice:
    """This process's contiguous share of `n` host-side work items (episodes to roll out, records
    to score): process i of P gets items [i·n/P, (i+1)·n/P), sizes differing by at most one.
    `index`/`count` default to `jax.process_index()` / `jax.process_count()`."""
    if index is None or count is None:
        import jax

        index = jax.process_index() if index is None else index
        count = jax.process_count() if count is None else count
    if not 0 <= index < count:
        raise ValueError(f"process index {index} is not in [0, {count})")
    return slice(index * n // count, (index + 1) * n // count)


def host_array(global_shape, sharding, host_value):
    """A global `jax.Array` of `global_shape` placed with `sharding`, built from a host numpy
    array that every process holds in full (each process uploads only its addressable shards).
    For inputs that are small or generated identically on every host (batches in tests)."""
    import jax

    return jax.make_array_from_callback(tuple(global_shape), sharding, lambda idx: host_value[idx])


def process_count() -> int:
    import jax

    return jax.process_count()


def allgather_objects(obj: Any) -> list[Any]:
    """Every process's `obj` (any picklable value), in process order, on every process.

    A collective: every process must call it at the same point of the program. The objects
    travel as pickled bytes through one device all-gather (gloo on CPU, the interconnect on
    TPU/GPU), so keep them small (per-episode summaries, counters, iterator states). With one
    process this is `[obj]` and nothing is sent.
    """
    import jax

    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils

    data = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.array([data.size], np.int64))).reshape(-1)
    buf = np.zeros(int(sizes.max()), np.uint8)
    buf[: data.size] = data
    gathered = np.asarray(multihost_utils.process_allgather(buf))
    return [pickle.loads(gathered[i, : int(n)].tobytes()) for i, n in enumerate(sizes)]


def any_process(flag: bool) -> bool:
    """True on every process if `flag` is true on any (a collective; e.g. a stop signal that
    reached only one host must stop all of them at the same step)."""
    return any(allgather_objects(bool(flag)))


def _devices_by_process() -> list[list[Any]]:
    import jax

    by: dict[int, list[Any]] = {}
    for d in jax.devices():
        by.setdefault(d.process_index, []).append(d)
    groups = [sorted(by[p], key=lambda d: d.id) for p in sorted(by)]
    if len({len(g) for g in groups}) != 1:
        raise ValueError(f"processes hold different device counts {[len(g) for g in groups]}; "
                         "process-local meshes need the same count on every process")
    return groups


def local_mesh_shape(mesh: Mesh, num_local: int) -> dict[str, int]:
    """Axis sizes of the process-local mesh that mirrors `mesh` on `num_local` devices: the same
    axis names, "tensor" as in `mesh` when it divides `num_local` (else 1), the remaining
    devices on "fsdp" (or on the first axis when there is no "fsdp"), every other axis 1."""
    names = list(mesh.axis_names)
    sizes = {n: 1 for n in names}
    tensor = mesh.shape.get("tensor", 1)
    if "tensor" in sizes and num_local % tensor == 0:
        sizes["tensor"] = tensor
    rest_axis = "fsdp" if "fsdp" in sizes else names[0]
    sizes[rest_axis] *= num_local // math.prod(sizes.values())
    return sizes


def local_mesh(mesh: Mesh) -> Mesh:
    """This process's own mesh, mirroring `mesh` over its local devices (`local_mesh_shape`).
    Programs on it (the sampling engine) run on this process alone, without collectives across
    processes, so each process can generate for different prompts at its own pace."""
    import jax
    from jax.sharding import Mesh as _Mesh

    groups = _devices_by_process()
    sizes = local_mesh_shape(mesh, len(groups[0]))
    devices = np.array(groups[jax.process_index()], dtype=object).reshape(tuple(sizes.values()))
    return _Mesh(devices, tuple(sizes))


def to_local(tree: Any, local_shardings: Any) -> Any:
    """Process-local copies of the global arrays in `tree`, placed with `local_shardings`
    (NamedShardings on `local_mesh(...)`, same tree structure).

    Every process gets the whole value of each array, laid out over its own devices. The arrays
    are first resharded (one collective program, no host round trip) onto a mesh of all devices
    whose leading "process" axis is replicated and whose other axes are every process's local
    mesh; each process's shards of that are then exactly its local array. A collective: every
    process must call it at the same point. With one process the leaves are just `device_put`.
    """
    import jax
    from jax.sharding import Mesh as _Mesh
    from jax.sharding import NamedSharding

    if jax.process_count() == 1:
        return jax.device_put(tree, local_shardings)
    transfer_meshes: dict[Any, Mesh] = {}

    def transfer_mesh(lmesh: Mesh) -> Mesh:
        if lmesh not in transfer_meshes:
            groups = _devices_by_process()
            mine = list(lmesh.devices.flat)
            if mine != groups[jax.process_index()]:
                raise ValueError("to_local: the target sharding's mesh is not this process's "
                                 "local_mesh (its devices differ)")
            devices = np.array(groups, dtype=object).reshape((len(groups), *lmesh.devices.shape))
            transfer_meshes[lmesh] = _Mesh(devices, ("process", *lmesh.axis_names))
        return transfer_meshes[lmesh]

    def one(x, sharding):
        if not isinstance(x, jax.Array):
            return x
        tmesh = transfer_mesh(sharding.mesh)
        y = jax.device_put(x, NamedSharding(tmesh, sharding.spec))
        shards = sorted(y.addressable_shards, key=lambda s: s.device.id)
        return jax.make_array_from_single_device_arrays(x.shape, sharding, [s.data for s in shards])

    return jax.tree.map(one, tree, local_shardings)


def rows_per_process(sharding: Any, num_rows: int) -> int:
    """How many of `num_rows` rows of an array placed with `sharding` (rows on dim 0) each
    process holds, checking that every process holds its own distinct block of rows (rows are
    not replicated over processes); raises ValueError naming the layout otherwise."""
    import jax

    index_map = sharding.devices_indices_map((num_rows,))
    owners: dict[tuple[int, int], set[int]] = {}
    for device, idx in index_map.items():
        rows = idx[0].indices(num_rows)[:2]
        owners.setdefault(rows, set()).add(device.process_index)
    shared = [rows for rows, procs in owners.items() if len(procs) > 1]
    if shared:
        raise ValueError(
            f"the batch sharding {sharding} gives the same rows {shared[0]} to processes "
            f"{sorted(owners[shared[0]])}: with several processes the mesh's batch axes "
            "(data × fsdp) must split the rows across processes (put the tensor axis within a host)")
    per = {p: 0 for p in range(jax.process_count())}
    for (lo, hi), procs in owners.items():
        per[next(iter(procs))] += hi - lo
    if len(set(per.values())) != 1:
        raise ValueError(f"uneven rows per process {per} under {sharding}")
    return per[0]
