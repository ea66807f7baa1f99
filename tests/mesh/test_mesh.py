"""The mesh pytree: construction checks, meshio round trip, padding, buckets, batching."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import meshio
import numpy as np
import pytest

from hybridda import mesh as hm
from hybridda.mesh import Mesh, NodeType


def grid_mesh(nx: int, ny: int, jitter: float = 0.0, seed: int = 0) -> Mesh:
    """A structured triangle mesh of the unit square; boundary nodes typed WALL."""
    x, y = np.meshgrid(np.linspace(0, 1, nx), np.linspace(0, 1, ny), indexing="ij")
    positions = np.stack([x.ravel(), y.ravel()], axis=1)
    interior = (x > 0) & (x < 1) & (y > 0) & (y < 1)
    positions[interior.ravel()] += jitter * np.random.default_rng(seed).uniform(
        -1, 1, (interior.sum(), 2)
    )
    index = np.arange(nx * ny).reshape(nx, ny)
    a, b = index[:-1, :-1].ravel(), index[1:, :-1].ravel()
    c, d = index[1:, 1:].ravel(), index[:-1, 1:].ravel()
    cells = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    node_type = np.where(interior.ravel(), NodeType.FLUID, NodeType.WALL)
    return Mesh.from_cells(positions, cells, node_type)


def test_edges_are_both_directions_of_each_triangle_side():
    mesh = grid_mesh(3, 3)
    pairs = set(
        zip(np.asarray(mesh.senders).tolist(), np.asarray(mesh.receivers).tolist(), strict=True)
    )
    # 3x3 grid split into 8 triangles: 16 undirected sides.
    assert len(pairs) == mesh.num_edges == 32
    assert all((r, s) in pairs for s, r in pairs)
    assert np.all(np.diff(np.asarray(mesh.receivers)) >= 0)  # sorted by receiver
    # Interior node of a 3x3 grid with this diagonal pattern has 6 neighbours.
    assert int(hm.node_degree(mesh)[4]) == 6


def test_graph_helpers_on_a_known_mesh():
    mesh = grid_mesh(3, 3)

    @jax.jit
    def helpers(mesh):
        lengths = hm.edge_lengths(mesh)
        return {
            "lengths": lengths,
            "cell_areas": hm.cell_areas(mesh),
            "node_areas": hm.node_areas(mesh),
            "vector_sum": hm.segment_sum(mesh, hm.edge_vectors(mesh)),
            "mean_of_ones": hm.segment_mean(mesh, jnp.ones((mesh.num_edges, 2))),
            "max_length": hm.segment_max(mesh, lengths),
        }

    out = helpers(mesh)
    np.testing.assert_allclose(np.unique(np.round(out["lengths"], 12)), [0.5, np.sqrt(0.5)])
    np.testing.assert_allclose(out["cell_areas"], 0.125)  # counter-clockwise
    np.testing.assert_allclose(np.sum(out["node_areas"]), 1.0)
    np.testing.assert_allclose(out["vector_sum"][4], 0.0, atol=1e-15)  # symmetric star
    np.testing.assert_allclose(out["mean_of_ones"], 1.0)
    np.testing.assert_allclose(out["max_length"][4], np.sqrt(0.5))


def test_meshio_round_trip(tmp_path):
    mesh = grid_mesh(5, 4, jitter=0.05)
    velocity = np.random.default_rng(1).normal(size=(mesh.num_nodes, 2))
    converted = hm.to_meshio(mesh.pad_to_bucket(), point_data={"velocity": velocity})
    path = tmp_path / "mesh.vtu"
    converted.write(path)
    loaded = meshio.read(path)
    back = hm.from_meshio(loaded)
    for name in ("positions", "node_type", "senders", "receivers", "cells"):
        np.testing.assert_array_equal(getattr(back, name), getattr(mesh, name), err_msg=name)
    np.testing.assert_allclose(loaded.point_data["velocity"], velocity)


def test_padding_leaves_masked_quantities_unchanged():
    mesh = grid_mesh(6, 5, jitter=0.08)
    padded = mesh.pad_to(mesh.num_nodes + 13, mesh.num_edges + 40, mesh.num_cells + 7)
    assert padded.real_counts() == (mesh.num_nodes, mesh.num_edges, mesh.num_cells)
    assert np.all(np.asarray(padded.node_type)[mesh.num_nodes :] == NodeType.PADDING)
    features = jnp.asarray(np.random.default_rng(2).normal(size=(mesh.num_edges, 3)))
    padded_features = hm.pad_rows(features, padded.num_edges, fill=jnp.nan)

    def quantities(m, edge_features):
        lengths = hm.edge_lengths(m)[:, None]
        return {
            "degree": hm.node_degree(m),
            "sum": hm.segment_sum(m, edge_features * lengths),
            "mean": hm.segment_mean(m, edge_features),
            "max": hm.segment_max(m, edge_features),
            "areas": hm.node_areas(m),
        }

    quantities = jax.jit(quantities)
    reference = quantities(mesh, features)
    result = quantities(padded, padded_features)  # NaN padding must not leak
    n = mesh.num_nodes
    for name in reference:
        np.testing.assert_allclose(result[name][:n], reference[name], err_msg=name)
        np.testing.assert_array_equal(result[name][n:], 0, err_msg=name)
    np.testing.assert_array_equal(padded.unpad().cells, mesh.cells)

    # Gradients through edge lengths are finite despite zero-length padded edges.
    def total_length(positions):
        return jnp.sum(hm.edge_lengths(eqx.tree_at(lambda m: m.positions, padded, positions)))

    assert np.all(np.isfinite(jax.jit(jax.grad(total_length))(padded.positions)))


def test_bucket_sizes():
    assert hm.bucket_size(0) == hm.bucket_size(64) == 64
    sizes = [hm.bucket_size(n) for n in range(1, 5000)]
    assert np.all(np.diff(sizes) >= 0) and all(s % 8 == 0 for s in sizes)
    assert all(
        s >= n and s <= 1.2 * n + 8 for n, s in zip(range(65, 5000), sizes[64:], strict=True)
    )
    assert len(set(sizes)) < 30  # few buckets, few compilations


def test_one_compilation_per_bucket_and_vmap_over_a_stack():
    # 72 / 70 nodes, 366 / 354 edges, 112 / 108 cells: one bucket (80, 368, 128).
    meshes = [grid_mesh(8, 9, 0.05, seed=0), grid_mesh(10, 7, 0.05, seed=1)]
    assert meshes[0].real_counts() != meshes[1].real_counts()
    traces = []

    @jax.jit
    def area_plus_length(mesh):
        traces.append(mesh.num_nodes)  # runs once per trace
        return jnp.sum(hm.node_areas(mesh)) + jnp.sum(hm.edge_lengths(mesh))

    def expected(mesh):  # NumPy oracle: the unit square's area + the edges' lengths
        positions = np.asarray(mesh.positions)
        vectors = positions[np.asarray(mesh.receivers)] - positions[np.asarray(mesh.senders)]
        return 1.0 + np.sum(np.linalg.norm(vectors, axis=1))

    padded = [m.pad_to_bucket() for m in meshes]
    assert len({(p.num_nodes, p.num_edges, p.num_cells) for p in padded}) == 1
    values = [float(area_plus_length(p)) for p in padded]
    assert len(traces) == 1
    np.testing.assert_allclose(values, [expected(m) for m in meshes])
    area_plus_length(grid_mesh(20, 20).pad_to_bucket())  # a bigger bucket compiles again
    assert len(traces) == 2

    meshes.append(grid_mesh(9, 9))  # 81 nodes: the stack pads all to the next bucket
    batch = hm.stack(meshes)
    assert batch.positions.shape == (3, hm.bucket_size(81), 2)
    np.testing.assert_allclose(
        jax.jit(jax.vmap(area_plus_length))(batch), [expected(m) for m in meshes]
    )


def test_bad_input_gives_clear_errors():
    positions = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.3, 0.3]])
    cells = np.array([[0, 1, 3], [1, 2, 3], [2, 0, 3]])
    Mesh.from_cells(positions, cells)  # valid
    with pytest.raises(ValueError, match="valid: 0 to 3"):
        Mesh.from_cells(positions, cells + 1)
    with pytest.raises(ValueError, match=r"\(cells, 3\)"):
        Mesh.from_cells(positions, cells[:, :2])
    with pytest.raises(ValueError, match="integer"):
        Mesh.from_cells(positions, cells.astype(float))
    with pytest.raises(ValueError, match="NaN"):
        Mesh.from_cells(np.where(positions == 1.0, np.nan, positions), cells)
    with pytest.raises(ValueError, match="no fluid"):
        Mesh.from_cells(positions, cells, np.full(4, NodeType.WALL))
    with pytest.raises(ValueError, match="NodeType"):
        Mesh.from_cells(positions, cells, np.full(4, 17))
    mesh = Mesh.from_cells(positions, cells)
    # Shape errors: ValueError, or jaxtyping's TypeCheckError (a TypeError) under its hook.
    with pytest.raises((ValueError, TypeError), match="edges"):
        dataclasses.replace(mesh, senders=mesh.senders[:-1])
    with pytest.raises(ValueError, match="receivers"):
        dataclasses.replace(mesh, receivers=mesh.receivers.at[0].set(9))
    with pytest.raises(ValueError, match="`edges` must be"):
        mesh.pad_to(8, 4, 8)
    with pytest.raises(ValueError, match="triangle"):
        hm.from_meshio(meshio.Mesh(positions, [("line", np.array([[0, 1]]))]))
