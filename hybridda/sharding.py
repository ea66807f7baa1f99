"""Spread ensembles and batches over devices with `jax.sharding`.

Nothing in the DA code needs to change to run on several devices: place the inputs
with a sharding and `jit` does the rest. The compiler (GSPMD) propagates the placement
of the initial ensemble through the whole `lax.scan` of [`hybridda.assimilate`][] or
[`hybridda.cycled_loss`][]: each device forecasts its own members (the model
integration, the expensive part, is embarrassingly parallel), and the ensemble-space
matrices of the analysis (``N × N``, small) come from an all-reduce. The carried
ensemble stays split over the devices from cycle to cycle (checked in the tests on the
compiled program: per-device shape ``(N/devices, n)``). Gradients run the same way.

Two placements cover the library:

- [`shard_members`][]: the rows (members) of an ensemble ``(N, n)``, for every
  ensemble filter, the augmented (state + parameter) ensembles of online learning, and
  the IEnKS;
- [`shard_batch`][]: the leading axis of every leaf of a pytree, for a `vmap` over
  independent problems: 4D-Var windows, twin experiments with different seeds, training
  batches.

Meshes use `Auto` axes (`jax.make_mesh(..., axis_types=(AxisType.Auto,))`), under which
ordinary matrix products over a sharded axis are allowed; the default `Explicit` axes
of current JAX reject them. Results equal the single-device run to round-off (sums
over members are split into per-device partial sums), not bit for bit.

Typical use::

    mesh = hybridda.sharding.device_mesh()  # all devices, axis "members"
    E0 = hybridda.sharding.shard_members(E0, mesh)
    trajectory = eqx.filter_jit(hybridda.assimilate)(model, observation, method, y, E0, key)

On one CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (set before JAX is
imported) gives four host devices to try it; the tests do so.
"""

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Float, PyTree

MEMBERS = "members"
BATCH = "batch"


def device_mesh(devices: Sequence[jax.Device] | int | None = None, axis: str = MEMBERS) -> Mesh:
    """A one-axis device mesh named `axis`, with `Auto` axis type.

    **Arguments:**

    - `devices`: the devices to use (a sequence), their number (the first that many of
      `jax.devices()`), or ``None`` for all of them.
    - `axis`: the mesh axis name (``"members"`` or ``"batch"`` by convention).
    """
    available = jax.devices()
    if devices is None:
        devices = available
    elif isinstance(devices, int):
        if not 1 <= devices <= len(available):
            raise ValueError(
                f"`devices` asks for {devices} devices but {len(available)} are available "
                f"({available[0].platform}); on CPU, set XLA_FLAGS="
                f"--xla_force_host_platform_device_count={max(devices, 1)} before importing JAX."
            )
        devices = available[:devices]
    devices = list(devices)
    if not devices:
        raise ValueError("`devices` is empty: pass at least one device.")
    return jax.make_mesh((len(devices),), (axis,), axis_types=(AxisType.Auto,), devices=devices)


def _axis_size(mesh: Mesh, axis: str) -> int:
    if axis not in mesh.shape:
        raise ValueError(
            f"The mesh has no axis {axis!r} (its axes: {tuple(mesh.shape)}); build it with "
            f"device_mesh(axis={axis!r})."
        )
    return mesh.shape[axis]


def _check_divisible(size: int, devices: int, what: str, fix: str) -> None:
    if size % devices:
        raise ValueError(
            f"{what} ({size}) is not a multiple of the number of devices ({devices}): {fix}"
        )


def member_sharding(mesh: Mesh, axis: str = MEMBERS) -> NamedSharding:
    """The sharding that splits the rows (members) of an ``(N, n)`` ensemble over
    `axis` of `mesh` (each state replicated within a member)."""
    _axis_size(mesh, axis)
    return NamedSharding(mesh, PartitionSpec(axis, None))


def shard_members(
    E: Float[Array, "N n"], mesh: Mesh | None = None, axis: str = MEMBERS
) -> Float[Array, "N n"]:
    """Place the members (rows) of ensemble `E` on the devices of `mesh` (default: all
    devices), ``N / devices`` members each.

    `jit`-compiled DA code started from the result keeps the ensemble split that way
    (see the module docstring). The ensemble size must be a multiple of the number of
    devices: the error names both numbers.
    """
    if E.ndim != 2:
        raise ValueError(f"The ensemble `E` must have shape (N, n), got {E.shape}.")
    mesh = device_mesh(axis=axis) if mesh is None else mesh
    devices = _axis_size(mesh, axis)
    _check_divisible(
        E.shape[0],
        devices,
        "The ensemble size N",
        "choose N as a multiple of it, or a mesh over fewer devices "
        f"(device_mesh({np.gcd(E.shape[0], devices)}) fits N={E.shape[0]}).",
    )
    return jax.device_put(E, member_sharding(mesh, axis))


def shard_batch(tree: PyTree, mesh: Mesh | None = None, axis: str = BATCH) -> PyTree:
    """Place the leading (batch) axis of every array leaf of `tree` on the devices of
    `mesh` (default: all devices), for a `jax.vmap` over independent problems.

    Every leaf must have the same leading size, a multiple of the number of devices.
    Non-array leaves are left alone.
    """
    mesh = device_mesh(axis=axis) if mesh is None else mesh
    devices = _axis_size(mesh, axis)
    leaves = [leaf for leaf in jax.tree.leaves(tree) if hasattr(leaf, "shape")]
    sizes = {leaf.shape[0] if leaf.ndim else None for leaf in leaves}
    if None in sizes or len(sizes) != 1:
        raise ValueError(
            "Every array leaf of the batch must have the same leading (batch) axis, got "
            f"leading sizes {sorted(str(size) for size in sizes)}."
        )
    (size,) = sizes
    _check_divisible(
        size, devices, "The batch size", "choose a multiple of it, or a mesh over fewer devices."
    )

    def place(leaf):
        if not hasattr(leaf, "shape"):
            return leaf
        spec = PartitionSpec(axis, *([None] * (leaf.ndim - 1)))
        return jax.device_put(leaf, NamedSharding(mesh, spec))

    return jax.tree.map(place, tree)
