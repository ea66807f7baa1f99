"""What a graph network needs from a `Mesh`: edge geometry, degrees, masked reductions.

All functions take one (unbatched) mesh and are pure JAX, so they jit and `jax.vmap`
over a stacked batch. Padding entries contribute nothing and come out as zeros.
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._mesh import Mesh


def _mask(values, mask):
    """`values` with the rows where `mask` is False set to zero (any trailing shape)."""
    mask = mask.reshape(mask.shape + (1,) * (values.ndim - 1))
    return jnp.where(mask, values, jnp.zeros((), values.dtype))


def edge_vectors(mesh: Mesh) -> Float[Array, "edges dim"]:
    """``positions[receiver] - positions[sender]`` per edge (zero for padded edges)."""
    vectors = mesh.positions[mesh.receivers] - mesh.positions[mesh.senders]
    return _mask(vectors, mesh.edge_mask)


def edge_lengths(mesh: Mesh) -> Float[Array, " edges"]:
    """Euclidean length of each edge (zero for padded edges, with a safe gradient)."""
    squared = jnp.sum(edge_vectors(mesh) ** 2, axis=-1)
    safe = jnp.where(mesh.edge_mask, squared, 1.0)
    return jnp.where(mesh.edge_mask, jnp.sqrt(safe), 0.0)


def segment_sum(mesh: Mesh, edge_values: Array) -> Array:
    """Sum of `edge_values` (``(edges, ...)``) over each node's incoming real edges."""
    return jax.ops.segment_sum(
        _mask(edge_values, mesh.edge_mask), mesh.receivers, num_segments=mesh.num_nodes
    )


def node_degree(mesh: Mesh) -> Array:
    """Number of real incoming edges per node (zero at padding nodes)."""
    return segment_sum(mesh, jnp.ones(mesh.num_edges, dtype=jnp.int32))


def segment_mean(mesh: Mesh, edge_values: Array) -> Array:
    """Mean of `edge_values` over each node's incoming real edges (zero where none)."""
    degree = node_degree(mesh)
    total = segment_sum(mesh, edge_values)
    degree = degree.reshape(degree.shape + (1,) * (total.ndim - 1))
    return total / jnp.maximum(degree, 1).astype(total.dtype)


def segment_max(mesh: Mesh, edge_values: Array) -> Array:
    """Maximum of `edge_values` over each node's incoming real edges (zero where none)."""
    fill = jnp.asarray(-jnp.inf, edge_values.dtype)
    mask = mesh.edge_mask.reshape(mesh.edge_mask.shape + (1,) * (edge_values.ndim - 1))
    maximum = jax.ops.segment_max(
        jnp.where(mask, edge_values, fill), mesh.receivers, num_segments=mesh.num_nodes
    )
    return jnp.where(jnp.isfinite(maximum), maximum, jnp.zeros((), edge_values.dtype))


def cell_areas(mesh: Mesh) -> Float[Array, " cells"]:
    """Signed area of each triangle (positive counter-clockwise; zero for padded cells)."""
    a, b, c = (mesh.positions[mesh.cells[:, k], :2] for k in range(3))
    ab, ac = b - a, c - a
    areas = 0.5 * (ab[:, 0] * ac[:, 1] - ab[:, 1] * ac[:, 0])
    return jnp.where(mesh.cell_mask, areas, 0.0)


def node_areas(mesh: Mesh) -> Float[Array, " nodes"]:
    """Lumped (barycentric) area per node: a third of each adjacent triangle's area.

    Sums to the mesh's area; weights for area-weighted errors and integrals on nodes.
    """
    thirds = jnp.repeat(jnp.abs(cell_areas(mesh))[:, None] / 3.0, 3, axis=1)
    return jax.ops.segment_sum(thirds.reshape(-1), mesh.cells.reshape(-1), mesh.num_nodes)
