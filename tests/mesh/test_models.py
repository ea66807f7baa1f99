"""The mesh models: shapes, node relabelling, padding, query independence, learning, errors.

Tiny widths keep every model to a few compilations: one single-mesh call (reused for
relabelled meshes and other conditions), one `jax.vmap` over a stacked batch, one
training step.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hybridda import mesh as hm
from hybridda.mesh import Mesh, NodeType

FEATURES, CONDITION, GEOMETRY, VOLUME = 2, 1, 4, 6
NAMES = ("meshgraphnet", "transolver", "abswift")


def channel_mesh(nx: int = 6, ny: int = 4, seed: int = 0) -> Mesh:
    """A jittered grid on [0, 2] x [0, 1] typed like a canopy (no distance ties)."""
    x, y = np.meshgrid(np.linspace(0, 2, nx), np.linspace(0, 1, ny), indexing="ij")
    positions = np.stack([x.ravel(), y.ravel()], axis=1)
    positions += 0.05 * np.random.default_rng(seed).uniform(-1, 1, positions.shape)
    x, y = x.ravel(), y.ravel()
    node_type = np.full(nx * ny, NodeType.FLUID)
    node_type[y == 1] = NodeType.TOP
    node_type[y == 0] = NodeType.WALL
    node_type[(y == 0) & (np.abs(x - 1) < 0.5)] = NodeType.BUILDING
    node_type[x == 0], node_type[x == 2] = NodeType.INFLOW, NodeType.OUTFLOW
    index = np.arange(nx * ny).reshape(nx, ny)
    a, b = index[:-1, :-1].ravel(), index[1:, :-1].ravel()
    c, d = index[1:, 1:].ravel(), index[:-1, 1:].ravel()
    cells = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    return Mesh.from_cells(positions, cells, node_type)


def relabel(mesh: Mesh, order: np.ndarray) -> Mesh:
    """The mesh with new node ``i`` the old node ``order[i]`` (edges re-derived)."""
    new_index = np.argsort(order)
    return Mesh.from_cells(
        np.asarray(mesh.positions)[order],
        new_index[np.asarray(mesh.cells)],
        np.asarray(mesh.node_type)[order],
    )


def build(name: str, key=None):
    """A tiny model with random parameters.

    The structure comes from `eqx.filter_eval_shape` (traced, not compiled) and the
    parameters from NumPy: drawing each parameter shape eagerly with JAX compiles one
    program per shape, which costs seconds on two cores. The properties tested hold for
    any parameters.
    """
    key = jax.random.key(0) if key is None else key
    if name == "meshgraphnet":
        make = functools.partial(hm.MeshGraphNet, latent=8, steps=2, mlp_depth=1)
    elif name == "transolver":
        make = functools.partial(hm.Transolver, width=8, layers=1, heads=2, slices=4)
    else:
        make = functools.partial(
            hm.AnchoredBranchedTransformer,
            field_sizes=(3, 1),
            width=8,
            heads=2,
            geometry_anchors=GEOMETRY,
            volume_anchors=VOLUME,
            neighbours=4,
            layers=1,
            frequencies=2,
        )
    shapes = eqx.filter_eval_shape(lambda k: make(FEATURES, CONDITION, key=k), key)
    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**30)))

    def draw(leaf):
        if not isinstance(leaf, jax.ShapeDtypeStruct):
            return leaf
        scale = 1 / np.sqrt(leaf.shape[-1]) if len(leaf.shape) > 1 else 0.3
        values = rng.uniform(-scale, scale, leaf.shape)
        return jnp.asarray(values + (len(leaf.shape) == 1), leaf.dtype)  # norms' scale ~ 1

    return jax.tree.map(draw, shapes, is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))


@eqx.filter_jit
def apply(model, mesh, features, condition, anchors=None):
    if anchors is None:
        return model(mesh, features, condition)
    return model(mesh, features, condition, anchors)


select_anchors = eqx.filter_jit(hm.select_anchors)


@pytest.fixture(scope="module")
def case():
    mesh = channel_mesh()
    features = jax.random.normal(jax.random.key(1), (mesh.num_nodes, FEATURES))
    condition = jnp.array([0.2])
    order = np.random.default_rng(3).permutation(mesh.num_nodes)
    return mesh, features, condition, order


@pytest.fixture(scope="module")
def models():
    return {name: build(name) for name in NAMES}


def anchors_for(name, mesh):
    """Explicit anchors for the anchored model (None for the others)."""
    return select_anchors(mesh, GEOMETRY, VOLUME) if name == "abswift" else None


@pytest.mark.parametrize("name", NAMES)
def test_shapes_relabelling_and_conditioning(name, case, models):
    mesh, features, condition, order = case
    model = models[name]
    anchors = anchors_for(name, mesh)
    out = apply(model, mesh, features, condition, anchors)
    assert out.shape == (mesh.num_nodes, model.out_size) == (mesh.num_nodes, 4)
    assert np.all(np.isfinite(out)) and np.std(out) > 0

    # Relabelling the nodes (edges re-derived, anchors relabelled) permutes the outputs.
    relabelled = relabel(mesh, order)
    new_index = np.argsort(order)
    if anchors is not None:
        anchors_relabelled = hm.Anchors(
            new_index[np.asarray(anchors.geometry)],
            new_index[np.asarray(anchors.volume)],
            anchors.geometry_mask,
            anchors.volume_mask,
        )
        assert np.array_equal(  # farthest-point sampling is relabelling-equivariant too
            select_anchors(relabelled, GEOMETRY, VOLUME).volume, anchors_relabelled.volume
        )
    else:
        anchors_relabelled = None
    out_relabelled = apply(model, relabelled, features[order], condition, anchors_relabelled)
    np.testing.assert_allclose(out_relabelled, out[order], rtol=1e-9, atol=1e-11)

    # The conditioning vector (inflow exponent) changes the output.
    other = apply(model, mesh, features, jnp.array([0.35]), anchors)
    assert np.max(np.abs(other - out)) > 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_padded_batches_and_gradient_steps(name, case, models):
    """`jax.vmap` over a padded batch matches single meshes; Adam steps lower the loss."""
    mesh, features, condition, order = case
    model = models[name]
    batch = hm.stack([mesh, relabel(mesh, order)])
    assert batch.num_nodes > mesh.num_nodes
    batch_features = jnp.stack(
        [hm.pad_rows(np.asarray(f), batch.num_nodes) for f in (features, features[order])]
    )
    conditions = jnp.stack([condition, condition + 0.1])
    targets = jnp.repeat(jnp.sin(3 * batch.positions[..., :1]), 4, axis=-1)
    optimiser = optax.adam(1e-2)

    def loss(model):
        # Default anchors for the anchored model: selected inside, per padded mesh.
        out = jax.vmap(model)(batch, batch_features, conditions)
        squared = jnp.where(batch.node_mask[..., None], (out - targets) ** 2, 0.0)
        return jnp.sum(squared) / (4 * jnp.sum(batch.node_mask)), out

    @eqx.filter_jit
    def step(model, state):
        (value, out), grads = eqx.filter_value_and_grad(loss, has_aux=True)(model)
        updates, state = optimiser.update(grads, state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), state, value, out

    state = optimiser.init(eqx.filter(model, eqx.is_array))
    losses = []
    trained = model
    for k in range(3):
        trained, state, value, out = step(trained, state)
        losses.append(float(value))
        if k == 0:
            batched = out  # the outputs of the untrained model
    assert np.isfinite(losses).all() and losses[-1] < losses[0]

    # Padding changes nothing on the real nodes and outputs zeros on the padding nodes.
    n = mesh.num_nodes
    single = apply(model, mesh, features, condition, anchors_for(name, mesh))
    np.testing.assert_allclose(batched[0, :n], single, rtol=1e-9, atol=1e-11)
    single = apply(model, mesh, features, condition + 0.1, anchors_for(name, mesh))
    np.testing.assert_allclose(batched[1, :n], single[order], rtol=1e-9, atol=1e-11)
    assert np.all(batched[:, n:] == 0)


def test_anchored_queries_do_not_depend_on_how_many_are_evaluated(case, models):
    mesh, features, condition, _ = case
    model = models["abswift"]
    subset = np.array([5, 0, 17, 9, 9])

    @eqx.filter_jit
    def evaluate(model, mesh, features, condition):
        tokens = model.encode(mesh, features, condition)
        everything = model.decode(tokens, mesh.positions, features, mesh.node_type)
        some = model.decode(
            tokens, mesh.positions[subset], features[subset], mesh.node_type[subset]
        )
        # Points that are not mesh nodes (a finer mesh's) evaluate too.
        elsewhere = model.decode(
            tokens, jnp.full((3, 2), 0.5), jnp.zeros((3, FEATURES)), jnp.zeros(3, int)
        )
        return tokens, everything, some, elsewhere

    tokens, everything, some, elsewhere = evaluate(model, mesh, features, condition)
    assert tokens.branches.shape[:2] == (2, GEOMETRY + VOLUME)
    np.testing.assert_allclose(some, everything[subset], rtol=1e-10, atol=1e-12)
    assert elsewhere.shape == (3, 4) and np.all(np.isfinite(elsewhere))


def test_anchor_selection():
    positions = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.1, 0.0], [0.5, 0.6], [9.0, 9.0]])
    candidates = jnp.array([True, True, True, True, False])
    indices, valid = hm.farthest_point_sample(positions, candidates, 5)
    assert set(np.asarray(indices[:4]).tolist()) == {0, 1, 2, 3}  # each candidate once
    assert np.asarray(valid).tolist() == [True] * 4 + [False]
    assert int(indices[0]) == 1  # farthest from the candidates' centroid
    mesh = channel_mesh()
    anchors = select_anchors(mesh, GEOMETRY, VOLUME, key=jax.random.key(0))
    fluid = np.asarray(mesh.node_type)[np.asarray(anchors.volume)]
    assert np.all(fluid == NodeType.FLUID) and len(set(np.asarray(anchors.volume))) == VOLUME
    geometry = np.asarray(mesh.node_type)[np.asarray(anchors.geometry)]
    assert np.all(np.isin(geometry, [NodeType.WALL, NodeType.BUILDING]))


def test_bad_input_gives_clear_errors(case, models):
    mesh, features, condition, _ = case
    for model in models.values():
        with pytest.raises(ValueError, match="takes one mesh"):
            model(hm.stack([mesh, mesh]), features, condition)
        with pytest.raises(ValueError, match="`features` must have shape"):
            model(mesh, features[:-1], condition)
        with pytest.raises(ValueError, match="`features` must have shape"):
            model(mesh, jnp.zeros((mesh.num_nodes, 3)), condition)
        with pytest.raises(ValueError, match="`condition` must have shape"):
            model(mesh, features, jnp.zeros(2))
    transolver = models["transolver"]
    with pytest.raises(ValueError, match="dim=3"):
        three_d = eqx.filter_eval_shape(
            hm.Transolver, FEATURES, CONDITION, dim=3, width=8, heads=2, key=jax.random.key(0)
        )
        three_d(mesh, features, condition)
    # Non-finite node features fail at run time, under jit (the compiled call is reused).
    with pytest.raises(Exception, match="NaN or infinite"):
        jax.block_until_ready(apply(transolver, mesh, features.at[3, 0].set(jnp.nan), condition))
    anchored = models["abswift"]
    with pytest.raises(ValueError, match="anchors.volume"):
        anchored(mesh, features, condition, hm.Anchors(jnp.arange(4), jnp.array([0, 99])))
    for kwargs, match in (
        ({"heads": 3}, "multiple of `heads`"),
        ({"field_sizes": ()}, "at least one field"),
        ({"volume_anchors": 0}, "volume_anchors"),
    ):
        with pytest.raises(ValueError, match=match):
            hm.AnchoredBranchedTransformer(FEATURES, key=jax.random.key(0), **kwargs)
    with pytest.raises(ValueError, match="in_features"):
        hm.MeshGraphNet(-1, key=jax.random.key(0))
    with pytest.raises(ValueError, match="edge_scale"):
        hm.MeshGraphNet(FEATURES, edge_scale=0.0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="slices"):
        hm.Transolver(FEATURES, slices=0, key=jax.random.key(0))
