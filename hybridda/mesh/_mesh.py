"""The unstructured-mesh pytree, its padding to size buckets, and meshio conversion."""

import enum
import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from .._checks import concrete


class NodeType(enum.IntEnum):
    """What a mesh node is; a network one-hot encodes it (``PADDING`` encodes to zeros)."""

    PADDING = -1
    FLUID = 0
    WALL = 1  # the ground: no-slip
    BUILDING = 2  # a building's walls and roof: no-slip
    INFLOW = 3
    OUTFLOW = 4
    TOP = 5  # the channel's lid: free-slip

    @classmethod
    def count(cls) -> int:
        """Number of real node types (the width of a one-hot encoding)."""
        return len(cls) - 1


class Mesh(eqx.Module):
    """A triangle mesh as a graph, padded to fixed sizes so batches jit once per size.

    Real entries come first; padded nodes, edges and cells follow them, are marked
    ``False`` in the masks, and point at the last node slot (a padding node whenever the
    node count was padded). Every helper in `hybridda.mesh` honours the masks.

    Edges are directed and stored in both directions (one per neighbour pair and
    direction), sorted by receiver, for message passing from `senders` to `receivers`.

    A batch of meshes (from `stack`) has a leading batch axis on every field; use
    `jax.vmap` over it.

    **Fields:**

    - `positions`: node coordinates, ``(nodes, dim)``.
    - `node_type`: a `NodeType` per node, ``(nodes,)``.
    - `senders`, `receivers`: node indices of each edge, ``(edges,)``.
    - `cells`: node indices of each triangle, counter-clockwise, ``(cells, 3)``.
    - `node_mask`, `edge_mask`, `cell_mask`: ``True`` for real entries.
    """

    positions: Float[Array, "*batch nodes dim"]
    node_type: Int[Array, "*batch nodes"]
    senders: Int[Array, "*batch edges"]
    receivers: Int[Array, "*batch edges"]
    cells: Int[Array, "*batch cells 3"]
    node_mask: Bool[Array, "*batch nodes"]
    edge_mask: Bool[Array, "*batch edges"]
    cell_mask: Bool[Array, "*batch cells"]

    def __check_init__(self):
        _check_shapes(self)
        _check_values(self)

    @property
    def num_nodes(self) -> int:
        """Node slots (real + padding) per mesh."""
        return self.positions.shape[-2]

    @property
    def num_edges(self) -> int:
        """Edge slots (real + padding) per mesh."""
        return self.senders.shape[-1]

    @property
    def num_cells(self) -> int:
        """Cell slots (real + padding) per mesh."""
        return self.cells.shape[-2]

    @classmethod
    def from_cells(cls, positions, cells, node_type=None) -> "Mesh":
        """A mesh (no padding) from node positions and triangles; edges are derived.

        **Arguments:**

        - `positions`: ``(nodes, dim)`` coordinates, finite.
        - `cells`: ``(cells, 3)`` node indices of triangles.
        - `node_type`: ``(nodes,)`` `NodeType` values; all `FLUID` when omitted.
        """
        positions = np.asarray(positions, dtype=float)
        cells = np.asarray(cells)
        if positions.ndim != 2 or positions.shape[0] == 0:
            raise ValueError(f"`positions` must have shape (nodes, dim), got {positions.shape}.")
        if cells.ndim != 2 or cells.shape[1] != 3:
            raise ValueError(f"`cells` must have shape (cells, 3) (triangles), got {cells.shape}.")
        if not np.issubdtype(cells.dtype, np.integer):
            raise ValueError(f"`cells` must hold integer node indices, got dtype {cells.dtype}.")
        _require_in_range("cells", cells, len(positions))
        if node_type is None:
            node_type = np.full(len(positions), NodeType.FLUID)
        senders, receivers = cell_edges(cells)
        return cls(
            positions=jnp.asarray(positions),
            node_type=jnp.asarray(node_type, dtype=jnp.int32),
            senders=jnp.asarray(senders, dtype=jnp.int32),
            receivers=jnp.asarray(receivers, dtype=jnp.int32),
            cells=jnp.asarray(cells, dtype=jnp.int32),
            node_mask=jnp.ones(len(positions), dtype=bool),
            edge_mask=jnp.ones(len(senders), dtype=bool),
            cell_mask=jnp.ones(len(cells), dtype=bool),
        )

    def real_counts(self) -> tuple[int, int, int]:
        """``(nodes, edges, cells)`` that are real (not padding), for an unbatched mesh."""
        if self.positions.ndim != 2:
            raise ValueError("`real_counts` needs one mesh; index a stacked batch first.")
        return (
            int(np.sum(self.node_mask)),
            int(np.sum(self.edge_mask)),
            int(np.sum(self.cell_mask)),
        )

    def unpad(self) -> "Mesh":
        """The mesh without its padding (real entries come first, so this slices)."""
        nodes, edges, cells = self.real_counts()
        sizes = {"node": nodes, "edge": edges, "cell": cells}
        return Mesh(
            **{name: jnp.asarray(_host(self, name)[: sizes[_kind(name)]]) for name in _FIELDS}
        )

    def pad_to(self, nodes: int, edges: int, cells: int) -> "Mesh":
        """The mesh padded to `nodes`, `edges` and `cells` slots (each ≥ the real count)."""
        real_nodes, real_edges, real_cells = self.real_counts()
        for name, size, real in (
            ("nodes", nodes, real_nodes),
            ("edges", edges, real_edges),
            ("cells", cells, real_cells),
        ):
            if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < real:
                raise ValueError(
                    f"`{name}` must be an integer >= the mesh's {real} real {name}, got {size!r}."
                )
        sizes = {"node": nodes, "edge": edges, "cell": cells}
        fills = {"node_type": NodeType.PADDING, "node_mask": False, "edge_mask": False}
        fills["cell_mask"] = False
        sink = nodes - 1  # padded edges and cells point at the last node slot
        fills.update(senders=sink, receivers=sink, cells=sink)
        mesh = self.unpad()
        return Mesh(
            **{
                name: jnp.asarray(
                    pad_rows(_host(mesh, name), sizes[_kind(name)], fills.get(name, 0))
                )
                for name in _FIELDS
            }
        )

    def pad_to_bucket(self, steps_per_octave: int = 4, minimum: int = 64) -> "Mesh":
        """The mesh padded to the `bucket_size` of each of its real counts."""
        sizes = (bucket_size(c, steps_per_octave, minimum) for c in self.real_counts())
        return self.pad_to(*sizes)


def bucket_size(count: int, steps_per_octave: int = 4, minimum: int = 64) -> int:
    """The smallest bucket size ≥ `count`.

    Buckets are `steps_per_octave` geometric steps per doubling, rounded up to multiples
    of 8: with the default 4 steps at most ~19 % of the slots are padding, and meshes
    within the same bucket share one compiled program.
    """
    if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 0:
        raise ValueError(f"`count` must be an integer >= 0, got {count!r}.")
    if count <= minimum:
        return minimum
    # Start one step low: rounding up to a multiple of 8 may already cover `count`.
    step = max(math.floor(steps_per_octave * math.log2(count / minimum)) - 1, 0)
    while True:
        size = 8 * math.ceil(minimum * 2 ** (step / steps_per_octave) / 8)
        if size >= count:
            return size
        step += 1


def stack(meshes: Sequence[Mesh], steps_per_octave: int = 4, minimum: int = 64) -> Mesh:
    """One batched mesh: every mesh padded to the bucket of the largest counts, stacked.

    Node data (fields on the nodes) must be padded to the same node count with
    `pad_rows(values, batch.num_nodes)` before stacking them.
    """
    if len(meshes) == 0:
        raise ValueError("`stack` needs at least one mesh.")
    counts = np.max([mesh.real_counts() for mesh in meshes], axis=0)
    sizes = [bucket_size(int(c), steps_per_octave, minimum) for c in counts]
    padded = [mesh.pad_to(*sizes) for mesh in meshes]
    return jax.tree.map(lambda *leaves: jnp.asarray(np.stack(leaves)), *padded)


def pad_rows(values, size: int, fill=0):
    """`values` with rows of `fill` appended along the first axis up to `size` rows.

    Padding is data preparation: NumPy in, NumPy out (no compilation per shape); JAX
    arrays come back as JAX arrays.
    """
    is_jax = isinstance(values, jax.Array)
    values = np.asarray(values)
    if values.shape[0] > size:
        raise ValueError(f"Cannot pad {values.shape[0]} rows down to {size}.")
    padding = np.full((size - values.shape[0],) + values.shape[1:], fill, dtype=values.dtype)
    padded = np.concatenate([values, padding])
    return jnp.asarray(padded) if is_jax else padded


_FIELDS = (
    "positions",
    "node_type",
    "senders",
    "receivers",
    "cells",
    "node_mask",
    "edge_mask",
    "cell_mask",
)


def _kind(name: str) -> str:
    """Which count a field's first axis runs over: "node", "edge" or "cell"."""
    if name in ("positions", "node_type", "node_mask"):
        return "node"
    return "cell" if name.startswith("cell") else "edge"


def _host(mesh: Mesh, name: str) -> np.ndarray:
    return np.asarray(getattr(mesh, name))


def cell_edges(cells) -> tuple[np.ndarray, np.ndarray]:
    """Directed edges of a triangle mesh, both directions, sorted by (receiver, sender)."""
    cells = np.asarray(cells)
    pairs = np.concatenate([cells[:, [0, 1]], cells[:, [1, 2]], cells[:, [2, 0]]])
    pairs = np.concatenate([pairs, pairs[:, ::-1]])
    pairs = np.unique(pairs, axis=0)  # lexicographic: (sender, receiver)
    order = np.lexsort((pairs[:, 0], pairs[:, 1]))
    return pairs[order, 0], pairs[order, 1]


def to_meshio(mesh: Mesh, point_data: dict | None = None):
    """A `meshio.Mesh` of the real nodes and triangles; node types go in its point data.

    `point_data` maps names to arrays over the nodes (real or padded slots).
    """
    import meshio

    mesh = mesh.unpad()
    nodes = mesh.num_nodes
    data = {"node_type": np.asarray(mesh.node_type)}
    for name, values in (point_data or {}).items():
        data[name] = np.asarray(values)[:nodes]
    return meshio.Mesh(
        points=np.asarray(mesh.positions),
        cells=[("triangle", np.asarray(mesh.cells))],
        point_data=data,
    )


def from_meshio(meshio_mesh) -> Mesh:
    """A `Mesh` from the triangles of a `meshio.Mesh` (other cell types are ignored).

    Node types come from the point data ``"node_type"`` when present (else all `FLUID`);
    a third coordinate that is zero everywhere is dropped.
    """
    triangles = [block.data for block in meshio_mesh.cells if block.type == "triangle"]
    if not triangles:
        raise ValueError("The meshio mesh has no triangle cells; only triangles are supported.")
    points = np.asarray(meshio_mesh.points, dtype=float)
    if points.ndim == 2 and points.shape[1] == 3 and np.all(points[:, 2] == 0):
        points = points[:, :2]
    node_type = meshio_mesh.point_data.get("node_type")
    return Mesh.from_cells(points, np.concatenate(triangles), node_type)


def _require_in_range(name: str, indices: np.ndarray, nodes: int) -> None:
    if indices.size and (indices.min() < 0 or indices.max() >= nodes):
        raise ValueError(
            f"`{name}` holds node indices in [{indices.min()}, {indices.max()}] but the mesh "
            f"has {nodes} nodes (valid: 0 to {nodes - 1})."
        )


def _check_shapes(mesh: Mesh) -> None:
    batch = mesh.positions.shape[:-2]
    if mesh.positions.ndim < 2:
        raise ValueError(f"`positions` must be (nodes, dim), got shape {mesh.positions.shape}.")
    nodes, edges, cells = mesh.num_nodes, mesh.senders.shape[-1], mesh.cells.shape[-2]
    expected = {
        "node_type": batch + (nodes,),
        "senders": batch + (edges,),
        "receivers": batch + (edges,),
        "cells": batch + (cells, 3),
        "node_mask": batch + (nodes,),
        "edge_mask": batch + (edges,),
        "cell_mask": batch + (cells,),
    }
    for name, shape in expected.items():
        actual = getattr(mesh, name).shape
        if actual != shape:
            raise ValueError(f"`{name}` must have shape {shape} to match the mesh, got {actual}.")


def _check_values(mesh: Mesh) -> None:
    """Value checks on concrete meshes (skipped under tracing, e.g. inside `jax.vmap`)."""
    positions = concrete(mesh.positions)
    if positions is None:
        return
    node_mask = np.asarray(mesh.node_mask)
    if not np.all(np.isfinite(positions[node_mask])):
        raise ValueError("`positions` has NaN or infinite coordinates at real nodes.")
    for name in ("senders", "receivers", "cells"):
        _require_in_range(name, np.asarray(getattr(mesh, name)), mesh.num_nodes)
    node_type = np.asarray(mesh.node_type)
    real_types = node_type[node_mask]
    if not np.all(np.isin(real_types, [int(t) for t in NodeType if t != NodeType.PADDING])):
        raise ValueError(f"`node_type` must hold NodeType values, got {np.unique(real_types)}.")
    fluid_per_mesh = np.sum((node_type == NodeType.FLUID) & node_mask, axis=-1)
    if np.any(fluid_per_mesh == 0):
        raise ValueError(
            "The mesh has no fluid (interior) nodes; refine it so that some nodes are off the "
            "boundary, or give `node_type` (all nodes are FLUID when it is omitted)."
        )
