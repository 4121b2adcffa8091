"""Meshes and logical-axis sharding rules (MaxText style), as data.

Every parameter of the model carries *logical* axis names in its metadata (`"vocab"`, `"embed"`,
`"heads"`, `"kv_heads"`, `"head_dim"`, `"mlp"`, `"layers"`), never mesh axes. A rules table maps
each logical name onto a mesh axis, a tuple of mesh axes, or `None` (replicated). Changing the
parallelism strategy therefore means editing a YAML list, not code:

```yaml
sharding:
  mesh: {axes: [data, fsdp, tensor], shape: [1, -1, 4]}   # -1: all remaining devices
  rules:
    - [activation_batch, [data, fsdp]]
    - [embed, fsdp]
    - [heads, tensor]
    - [kv_heads, tensor]
    - [kv_heads, null]        # fallback when the entry above cannot be used
    ...
```

How a rule table is resolved for one tensor (same idea as MaxText's `logical_axis_rules`): for
dimension i with logical name n, the entries for n are tried in table order; the first one whose
mesh axes are not already used by an earlier dimension of the same tensor, and whose mesh-axis
size divides the dimension, wins. (So `[D, V]` and `[V, D]` both work with `vocab -> tensor,
embed -> fsdp`; two logical names that map to the same mesh axis never shard one tensor twice; and
`[kv_heads, tensor]` followed by `[kv_heads, null]` replicates the 8 kv heads when tensor = 16.)
A logical name absent from the table is an error, so a typo cannot silently replicate a 36B model
onto every chip. When no rule for a name divides the dimension, the error names the tensor, the
dimension and the mesh axis.

Meshes use `AxisType.Auto` (GSPMD propagation). The weights' and the inputs' shardings drive
the partitioning, and inside `using_mesh` the model also pins its activations at a few places
(embeddings out, each layer's residual stream, q/k/v, the MLP hidden, the lm_head input and
logits) with `constrain`, which resolves *activation* logical names (`activation_batch`,
`activation_length`, ...) through the same rules table. Outside `using_mesh` `constrain` is a
no-op, so single-device code and callers that never set the rules see no change.

Sequence (context) sharding: a mesh may carry an optional `sequence` axis. The default rules put
`activation_length` on it (the token dim of the residual stream, q, the MLP hidden and the
logits) and keep `activation_kv_length` (the token dim of k/v) unsharded, so each device computes
attention for its block of queries against the all-gathered keys and values (context parallelism
as in MaxText). Weights' `embed` dim goes over `[fsdp, sequence]`, so the sequence devices also
share parameters and optimizer state. A rule naming `sequence` on a mesh without that axis
resolves as if the axis had size 1, so the same table serves meshes with and without it.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from ppp_jax.model.axes import SHARDING_METADATA_KEY

# One rule: logical axis name -> mesh axis, tuple of mesh axes, or None (replicated).
Rule = tuple[str, "str | tuple[str, ...] | None"]

REQUIRED_MESH_AXES = ("data", "fsdp", "tensor")
# Mesh axes a rule may name even when the mesh lacks them (treated as size 1 there).
OPTIONAL_MESH_AXES = ("sequence",)

# Metadata key under which every Variable carries its logical axis names (flax 0.12's standard
# `out_sharding`; see `ppp_jax.model.axes`). The model creates its params with eager sharding off.
LOGICAL_AXES_KEY = SHARDING_METADATA_KEY


class ShardingError(ValueError):
    """A mesh or rules table does not fit a tensor (wrong divisibility, unknown name, ...)."""


# ----------------------------------------------------------------------------------------------
# Mesh
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Named device-mesh axes and their sizes.

    axes:  mesh axis names, outermost first. Must include "data", "fsdp" and "tensor"; may add
           "sequence" (context parallelism, see the module docstring) or other axes that rules
           use.
    shape: size per axis, same order. At most one -1, which takes all remaining devices.
    """

    axes: tuple[str, ...] = REQUIRED_MESH_AXES
    shape: tuple[int, ...] = (1, -1, 1)

    def __post_init__(self):
        if len(self.axes) != len(self.shape):
            raise ShardingError(f"mesh axes {self.axes} and shape {self.shape} differ in length")
        if len(set(self.axes)) != len(self.axes):
            raise ShardingError(f"mesh axes {self.axes} repeat a name")
        missing = [a for a in REQUIRED_MESH_AXES if a not in self.axes]
        if missing:
            raise ShardingError(f"mesh axes {self.axes} lack {missing}; required: {REQUIRED_MESH_AXES}")
        if sum(s == -1 for s in self.shape) > 1:
            raise ShardingError(f"mesh shape {self.shape}: at most one axis may be -1")
        bad = [s for s in self.shape if s != -1 and s < 1]
        if bad:
            raise ShardingError(f"mesh shape {self.shape}: sizes must be >= 1 or -1")

    def resolved_shape(self, num_devices: int) -> tuple[int, ...]:
        """The shape with -1 filled in so that the product is `num_devices`."""
        fixed = math.prod(s for s in self.shape if s != -1)
        if -1 in self.shape:
            if num_devices % fixed:
                raise ShardingError(
                    f"mesh shape {dict(zip(self.axes, self.shape))}: {num_devices} devices are not "
                    f"divisible by the fixed axes' product {fixed}"
                )
            return tuple(num_devices // fixed if s == -1 else s for s in self.shape)
        if fixed > num_devices:
            raise ShardingError(
                f"mesh shape {dict(zip(self.axes, self.shape))} needs {fixed} devices, "
                f"only {num_devices} available"
            )
        return tuple(self.shape)


def make_mesh(
    cfg: MeshConfig | Mapping[str, int] | Sequence[int] | None = None,
    *,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """Builds a `jax.sharding.Mesh` with Auto axis types.

    cfg: a MeshConfig; or a mapping axis -> size (`{"data": 2, "fsdp": 2, "tensor": 2}`, missing
         required axes get size 1); or sizes for ("data", "fsdp", "tensor"); None = all devices on
         fsdp. Uses the first prod(shape) of `devices` (default: all devices).
    """
    if cfg is None:
        cfg = MeshConfig()
    elif isinstance(cfg, Mapping):
        axes = tuple(cfg) + tuple(a for a in REQUIRED_MESH_AXES if a not in cfg)
        cfg = MeshConfig(axes=axes, shape=tuple(int(cfg.get(a, 1)) for a in axes))
    elif not isinstance(cfg, MeshConfig):
        cfg = MeshConfig(shape=tuple(int(s) for s in cfg))
    devices = list(jax.devices() if devices is None else devices)
    shape = cfg.resolved_shape(len(devices))
    return jax.make_mesh(
        shape, cfg.axes, axis_types=(AxisType.Auto,) * len(shape), devices=devices[: math.prod(shape)]
    )


# ----------------------------------------------------------------------------------------------
# Rules
# ----------------------------------------------------------------------------------------------

# FSDP x tensor (x sequence) parallelism: weights' model dim over fsdp (and sequence, when the
# mesh has it), heads / mlp / vocab over tensor; the batch of activations over data and fsdp,
# their token dim over sequence, k/v's token dim whole (all-gathered). Activations fall back to
# replicated where an axis does not divide them (decode's T = 1, 8 kv heads on tensor = 16).
# The stacked-layers axis is never sharded here (pipelining would use it).
FSDP_TP_RULES: tuple[Rule, ...] = (
    ("activation_batch", ("data", "fsdp")),
    ("activation_batch", None),
    ("activation_length", "sequence"),
    ("activation_length", None),
    ("activation_kv_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_heads", None),
    ("activation_kv_heads", "tensor"),
    ("activation_kv_heads", None),
    ("activation_head_dim", None),
    ("activation_mlp", "tensor"),
    ("activation_mlp", None),
    ("activation_vocab", "tensor"),
    ("activation_vocab", None),
    ("vocab", "tensor"),
    ("embed", ("fsdp", "sequence")),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("layers", None),
    ("norm", None),
)

# For sampling: no FSDP on weights (each step would all-gather every weight), tensor only; the
# fsdp devices act as extra data parallelism for the batch.
SAMPLING_RULES: tuple[Rule, ...] = tuple(dict.fromkeys(
    (name, None) if name == "embed" else (name, axes) for name, axes in FSDP_TP_RULES
))

# Everything replicated (single device, or debugging).
REPLICATED_RULES: tuple[Rule, ...] = tuple(dict.fromkeys((name, None) for name, _ in FSDP_TP_RULES))


def normalize_rules(rules: Sequence[Any]) -> tuple[Rule, ...]:
    """Checks a rules table (e.g. lists from YAML) and returns it as tuples.

    Each rule is `[logical_name, target]` with target a mesh axis name, a list of mesh axis
    names, or null.
    """
    out = []
    for i, rule in enumerate(rules):
        ok = isinstance(rule, (list, tuple)) and len(rule) == 2 and isinstance(rule[0], str)
        target = rule[1] if ok else None
        if ok and isinstance(target, (list, tuple)):
            ok = all(isinstance(a, str) for a in target)
            target = tuple(target)
        elif ok:
            ok = target is None or isinstance(target, str)
        if not ok:
            raise ShardingError(
                f"rule {i} {rule!r} must be [logical_name, mesh_axis | [mesh_axes] | null]"
            )
        out.append((rule[0], target))
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class ShardingConfig:
    """What a run config says about parallelism: the mesh and the logical-axis rules.

    rules: ordered [logical name, mesh axis | [mesh axes] | null] pairs; see the module docstring
           for how they resolve. Defaults to FSDP_TP_RULES. (Typed loosely for the YAML loader and
           checked by `normalize_rules` here.)
    """

    mesh: MeshConfig = MeshConfig()
    rules: tuple[Any, ...] = FSDP_TP_RULES

    def __post_init__(self):
        object.__setattr__(self, "rules", normalize_rules(self.rules))


def _axes_of(target: str | Sequence[str] | None) -> tuple[str, ...]:
    if target is None:
        return ()
    if isinstance(target, str):
        return (target,)
    return tuple(target)


def _present_axes(target: str | Sequence[str] | None, mesh: Mesh) -> tuple[str, ...]:
    """The mesh axes of a rule target, minus optional axes (`sequence`) this mesh lacks."""
    return tuple(a for a in _axes_of(target)
                 if a in mesh.axis_names or a not in OPTIONAL_MESH_AXES)


def check_rules(rules: Sequence[Rule], mesh: Mesh) -> None:
    """Raises ShardingError if a rule names a mesh axis the mesh does not have (optional axes
    such as `sequence` excepted: a mesh without them treats them as size 1)."""
    for name, target in rules:
        unknown = [a for a in _present_axes(target, mesh) if a not in mesh.axis_names]
        if unknown:
            raise ShardingError(
                f"rule {name!r} -> {target!r} names mesh axes {unknown} absent from the mesh "
                f"{dict(mesh.shape)}"
            )


def logical_to_spec(
    logical: Sequence[str | None],
    shape: Sequence[int],
    mesh: Mesh,
    rules: Sequence[Rule] = FSDP_TP_RULES,
    *,
    name: str = "<tensor>",
) -> PartitionSpec:
    """Resolves one tensor's logical axes to a PartitionSpec on `mesh` (see module docstring).

    logical: one logical name (or None = replicated) per dimension of `shape`.
    name:    the tensor's name, used in error messages.
    """
    if len(logical) != len(shape):
        raise ShardingError(
            f"{name}: logical axes {tuple(logical)} have {len(logical)} names but the tensor has "
            f"shape {tuple(shape)}"
        )
    known = {n for n, _ in rules}
    used: set[str] = set()
    spec: list[str | tuple[str, ...] | None] = []
    for dim, (lname, size) in enumerate(zip(logical, shape)):
        if lname is None:
            spec.append(None)
            continue
        if lname not in known:
            raise ShardingError(
                f"{name}: dim {dim} has logical axis {lname!r}, which the rules table does not "
                f"mention; it mentions {sorted(known)}"
            )
        chosen: tuple[str, ...] = ()
        failure = None
        for rname, target in rules:
            axes = _present_axes(target, mesh)
            if rname != lname or set(axes) & used:
                continue
            for a in axes:
                if a not in mesh.shape:
                    raise ShardingError(
                        f"{name}: rule {lname!r} -> {target!r} names mesh axis {a!r} absent from "
                        f"the mesh {dict(mesh.shape)}"
                    )
            parts = math.prod(mesh.shape[a] for a in axes)
            if size % parts:  # try the next rule for this name, if any
                failure = failure or (
                    f"{name}: dim {dim} ({lname!r}, size {size}) is not divisible by mesh axis "
                    f"{axes if len(axes) > 1 else axes[0]!r} of size {parts} (mesh "
                    f"{dict(mesh.shape)}); change the mesh, or the rule for {lname!r}, or add a "
                    f"fallback rule after it (e.g. [{lname}, null])"
                )
                continue
            chosen, failure = axes, None
            break
        if failure:
            raise ShardingError(failure)
        used.update(chosen)
        spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else chosen)
    while spec and spec[-1] is None:
        spec.pop()
    return PartitionSpec(*spec)


def flax_rules(rules: Sequence[Rule], mesh: Mesh | None = None) -> tuple[tuple[str, Any], ...]:
    """The first entry per logical name, in the `(name, axes)` form flax's
    `flax.core.spmd.logical_axis_rules` context expects. With `mesh`, optional axes it lacks
    are dropped from the targets."""
    out: dict[str, Any] = {}
    for name, target in rules:
        if mesh is not None and target is not None:
            axes = _present_axes(target, mesh)
            target = None if not axes else axes[0] if len(axes) == 1 else axes
        out.setdefault(name, target)
    return tuple(out.items())


# ----------------------------------------------------------------------------------------------
# Model state
# ----------------------------------------------------------------------------------------------


def variable_logical_axes(var: nnx.Variable) -> tuple[str | None, ...] | None:
    """The logical axis names a Variable carries in its metadata, or None if it has none."""
    value = var.get_metadata().get(LOGICAL_AXES_KEY)
    return tuple(value) if value else None


def path_name(path: Sequence[Any]) -> str:
    """`("layers", "attn", "q_proj", "kernel")` -> `"layers.attn.q_proj.kernel"`."""
    return ".".join(str(getattr(p, "key", getattr(p, "name", p))) for p in path)


def _is_var(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def state_partition_specs(state: nnx.State, mesh: Mesh, rules: Sequence[Rule] = FSDP_TP_RULES) -> nnx.State:
    """A State like `state` whose Variables hold a PartitionSpec instead of an array.

    Variables without logical axes must be scalars (they are replicated); a non-scalar without
    names is an error, since silently replicating it could blow up memory at scale.
    """
    check_rules(rules, mesh)

    def spec(path, var):
        value = var.get_value()
        shape = tuple(getattr(value, "shape", ()))
        logical = variable_logical_axes(var)
        if logical is None:
            if shape and math.prod(shape) > 1:
                raise ShardingError(
                    f"{path_name(path)}: shape {shape} carries no logical axis names (metadata key "
                    f"{LOGICAL_AXES_KEY!r}); cannot shard it"
                )
            return var.replace(PartitionSpec())
        return var.replace(logical_to_spec(logical, shape, mesh, rules, name=path_name(path)))

    return jax.tree_util.tree_map_with_path(spec, state, is_leaf=_is_var)


def state_shardings(state: nnx.State, mesh: Mesh, rules: Sequence[Rule] = FSDP_TP_RULES) -> nnx.State:
    """A State like `state` whose Variables hold the NamedSharding of each parameter."""
    specs = state_partition_specs(state, mesh, rules)
    return jax.tree.map(lambda v: v.replace(NamedSharding(mesh, v.get_value())), specs, is_leaf=_is_var)


def abstract_model(init_fn: Callable[[], nnx.Module]) -> nnx.Module:
    """The model `init_fn()` would build, with ShapeDtypeStructs instead of arrays (no memory).

    Flax's eager sharding is switched off while tracing: the logical names in the metadata are not
    mesh axes, and the shardings are applied by `create_sharded` from the rules instead.
    """
    with nnx.use_eager_sharding(False):
        return nnx.eval_shape(init_fn)


def create_sharded(
    init_fn: Callable[[], nnx.Module], mesh: Mesh, rules: Sequence[Rule] = FSDP_TP_RULES
) -> nnx.Module:
    """Builds the model `init_fn()` directly into sharded arrays: every device materializes only
    its own shard (the initializer is jitted with `out_shardings`), never the whole model."""
    abstract = abstract_model(init_fn)
    graphdef, abs_state = nnx.split(abstract)
    shardings = state_shardings(abs_state, mesh, rules)

    def init():
        with nnx.use_eager_sharding(False):
            return nnx.state(init_fn())

    state = jax.jit(init, out_shardings=shardings)()
    return nnx.merge(graphdef, state)


def split_abstract(init_fn: Callable[[], nnx.Module]) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graphdef, abstract Param state, abstract other state) of `init_fn()`; no memory used."""
    return nnx.split(abstract_model(init_fn), nnx.Param, ...)


def materialize_rest(init_fn: Callable[[], nnx.Module], abs_rest: nnx.State, mesh: Mesh) -> nnx.State:
    """The non-Param state (RNG counters, ...) of a fresh `init_fn()`, replicated on `mesh`.
    Returns `abs_rest` unchanged when the model has no such state."""
    if not jax.tree.leaves(abs_rest):
        return abs_rest

    def init():
        with nnx.use_eager_sharding(False):
            return nnx.state(init_fn(), nnx.Not(nnx.Param))

    return jax.jit(init, out_shardings=NamedSharding(mesh, PartitionSpec()))()


def shard_state(state: nnx.State, mesh: Mesh, rules: Sequence[Rule] = FSDP_TP_RULES) -> nnx.State:
    """`state` moved onto `mesh` (a resharding copy where shardings differ)."""
    return jax.device_put(state, state_shardings(state, mesh, rules))


def shard_model(model: nnx.Module, mesh: Mesh, rules: Sequence[Rule] = FSDP_TP_RULES) -> nnx.Module:
    """Reshards `model`'s parameters onto `mesh` in place; returns the model."""
    nnx.update(model, shard_state(nnx.state(model), mesh, rules))
    return model


def activation_sharding(
    logical: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Sequence[Rule] = FSDP_TP_RULES,
    *, name: str = "activation",
) -> NamedSharding:
    """NamedSharding for an input/activation, e.g. tokens [B, T] with
    `("activation_batch", "activation_length")`."""
    return NamedSharding(mesh, logical_to_spec(logical, shape, mesh, rules, name=name))


def describe(state: nnx.State) -> dict[str, str]:
    """`{param name: "shape dtype spec"}` for logging and golden dumps of a sharded state."""
    out = {}
    for path, var in nnx.to_flat_state(state):
        value = var.get_value()
        sharding = getattr(value, "sharding", None)
        spec = getattr(sharding, "spec", None)
        out[path_name(path)] = f"{tuple(value.shape)} {np.dtype(value.dtype).name} {spec}"
    return out


# The rules `constrain` resolves activation names with; set by `using_mesh`, None outside it.
_ACTIVATION_RULES: contextvars.ContextVar[tuple[Rule, ...] | None] = contextvars.ContextVar(
    "ppp_activation_rules", default=None)


def with_default_activation_rules(rules: Sequence[Rule]) -> tuple[Rule, ...]:
    """`rules` plus `FSDP_TP_RULES`' entries for every `activation_*` name `rules` does not
    mention, so a custom table written for the parameters alone (as before activations were
    constrained) keeps working; parameter names stay required to be in the table."""
    rules = tuple(rules)
    named = {name for name, _ in rules}
    return rules + tuple(r for r in FSDP_TP_RULES
                         if r[0].startswith("activation_") and r[0] not in named)


@contextlib.contextmanager
def using_mesh(mesh: Mesh, rules: Sequence[Rule] = FSDP_TP_RULES) -> Iterator[Mesh]:
    """Sets `mesh` as the current mesh and `rules` as the table the model's activation
    constraints (`constrain`) resolve through; also sets them as flax's logical-axis rules.

    Programs must be traced (first call of a jitted function, `.lower`) inside the block for the
    constraints to be part of them.
    """
    from flax.core import spmd

    rules = with_default_activation_rules(rules)
    check_rules(rules, mesh)
    token = _ACTIVATION_RULES.set(rules)
    try:
        with jax.set_mesh(mesh), spmd.logical_axis_rules(flax_rules(rules, mesh)):
            yield mesh
    finally:
        _ACTIVATION_RULES.reset(token)


@contextlib.contextmanager
def no_activation_constraints() -> Iterator[None]:
    """Switches `constrain` off inside the block (the weights' shardings still apply). The model
    uses it for calls with a KV cache: the engine's layout is set by its cache and batch
    placement, and decode's one-token rows have no sequence to split."""
    token = _ACTIVATION_RULES.set(None)
    try:
        yield
    finally:
        _ACTIVATION_RULES.reset(token)


def constrain(x: jax.Array, logical: Sequence[str | None], *, name: str = "activation") -> jax.Array:
    """`jax.lax.with_sharding_constraint(x, spec)` with `spec` resolved from the activation's
    logical axis names (one per dim of x) through the rules of the enclosing `using_mesh`.

    The identity when no `using_mesh` is active (or under `no_activation_constraints`) or the
    current mesh is empty, so the model runs unchanged on one device and in the engine.
    """
    rules = _ACTIVATION_RULES.get()
    if rules is None:
        return x
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return x
    spec = logical_to_spec(logical, x.shape, mesh, rules, name=name)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
