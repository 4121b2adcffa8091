"""Meshes for AOT compiles: `--mesh` parsing, a mesh over given devices, abstract arguments
carrying their shardings."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax

from ppp_jax.model import sharding as shd
from ppp_jax.scale.chips import AotError


def parse_mesh(text: str) -> shd.MeshConfig:
    """"data=1,fsdp=64,tensor=1" -> MeshConfig (axes in the order given; missing required ones
    get size 1). A size may be -1 (all remaining devices). "data=1,fsdp=16,sequence=4,tensor=1"
    adds the optional `sequence` axis: each sequence's tokens split 4 ways (context
    parallelism, see `ppp_jax.model.sharding`)."""
    sizes: dict[str, int] = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        if not name.strip() or not value.strip():
            raise AotError(f"--mesh {text!r}: each part must look like axis=size")
        try:
            sizes[name.strip()] = int(value)
        except ValueError:
            raise AotError(f"--mesh {text!r}: size of {name.strip()!r} is not an int") from None
    axes = tuple(sizes) + tuple(a for a in shd.REQUIRED_MESH_AXES if a not in sizes)
    return shd.MeshConfig(axes=axes, shape=tuple(sizes.get(a, 1) for a in axes))


def with_shardings(tree, shardings):
    """ShapeDtypeStructs of `tree` carrying the matching leaf of `shardings`."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)


def make_mesh_for(devices: Sequence[jax.Device], mesh_cfg: shd.MeshConfig) -> jax.sharding.Mesh:
    """`model.sharding.make_mesh` over every device of a TPU slice (a mesh must use the whole
    slice: the device-mesh layout of a TPU topology is defined only for all of its chips).
    Falls back to splitting physical torus axes when a mesh axis is not a product of them."""
    sizes = dict(zip(mesh_cfg.axes, mesh_cfg.shape))
    try:
        shape = mesh_cfg.resolved_shape(len(devices))
    except shd.ShardingError as e:
        raise AotError(f"mesh {sizes} does not fit the {len(devices)} chips: {e}") from None
    if math.prod(shape) != len(devices):
        raise AotError(f"mesh {sizes} uses {math.prod(shape)} devices but the slice has "
                       f"{len(devices)}; the axis sizes must multiply to {len(devices)} "
                       f"(or give one axis -1)")
    try:
        return shd.make_mesh(mesh_cfg, devices=devices)
    except Exception as first:  # mesh_utils raises AssertionError/ValueError for bad layouts
        # An axis that is not a product of whole physical axes (8-way on a 4x4x4 torus, 4-way on
        # 16x16) needs physical axes split, as MaxText's allow_split_physical_axes does.
        try:
            from jax.experimental import mesh_utils

            grid = mesh_utils.create_device_mesh(shape, devices=list(devices),
                                                 allow_split_physical_axes=True)
        except Exception:
            raise AotError(f"cannot lay mesh {sizes} out on the slice: {first}") from None
        return jax.sharding.Mesh(grid, mesh_cfg.axes,
                                 axis_types=(jax.sharding.AxisType.Auto,) * len(shape))
