"""An anchored branched transformer in the spirit of AB-SWIFT: anchors, branches, queries."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from .._checks import concrete, require_count
from ._layers import (
    AbstractMeshModel,
    Attention,
    FiLM,
    check_inputs,
    check_sizes,
    dtype_or_default,
    guard_finite,
    mask_rows,
    mlp,
    one_hot_type,
    rows,
)
from ._mesh import Mesh, NodeType

GEOMETRY_TYPES = (NodeType.WALL, NodeType.BUILDING)
"""Node types pooled into geometry tokens: the ground and the buildings."""


class Anchors(eqx.Module):
    """Node indices of the geometry and volume anchors, with masks for unused slots.

    Slots beyond the number of candidate nodes (a mesh with fewer geometry nodes than
    geometry anchors) are marked False and ignored by the model.
    """

    geometry: Int[Array, "*batch geometry"]
    volume: Int[Array, "*batch volume"]
    geometry_mask: Bool[Array, "*batch geometry"]
    volume_mask: Bool[Array, "*batch volume"]

    def __init__(self, geometry, volume, geometry_mask=None, volume_mask=None):
        self.geometry = jnp.asarray(geometry, dtype=jnp.int32)
        self.volume = jnp.asarray(volume, dtype=jnp.int32)
        self.geometry_mask = (
            jnp.ones(self.geometry.shape, bool) if geometry_mask is None else geometry_mask
        )
        self.volume_mask = jnp.ones(self.volume.shape, bool) if volume_mask is None else volume_mask

    def __check_init__(self):
        for name, mask_name in (("geometry", "geometry_mask"), ("volume", "volume_mask")):
            indices, mask = getattr(self, name), getattr(self, mask_name)
            if indices.ndim < 1 or mask.shape != indices.shape:
                raise ValueError(
                    f"`{name}` must be a vector of node indices and `{mask_name}` the same "
                    f"shape, got {indices.shape} and {mask.shape}."
                )


def farthest_point_sample(
    positions: Float[Array, "nodes dim"], candidates: Bool[Array, " nodes"], count: int
) -> tuple[Int[Array, " count"], Bool[Array, " count"]]:
    """`count` candidate nodes spread out by farthest-point sampling; pure JAX.

    Starts at the candidate farthest from the candidates' centroid (so the choice does
    not depend on the node order, barring ties), then repeatedly adds the candidate
    farthest from those chosen. Returns the indices and a mask that is False for slots
    beyond the number of candidates.
    """
    require_count("count", count, "points to sample")
    weights = candidates.astype(positions.dtype)
    centroid = weights @ positions / jnp.maximum(jnp.sum(weights), 1.0)
    spread = jnp.sum((positions - centroid[None, :]) ** 2, axis=-1)
    first = jnp.argmax(jnp.where(candidates, spread, -1.0))

    def add_farthest(k, state):
        indices, distance = state
        new = jnp.sum((positions - positions[indices[k - 1]][None, :]) ** 2, axis=-1)
        distance = jnp.where(candidates, jnp.minimum(distance, new), -1.0)
        return indices.at[k].set(jnp.argmax(distance).astype(indices.dtype)), distance

    indices = jnp.zeros(count, jnp.int32).at[0].set(first.astype(jnp.int32))
    distance = jnp.where(candidates, jnp.inf, -1.0).astype(positions.dtype)
    indices, _ = jax.lax.fori_loop(1, count, add_farthest, (indices, distance))
    return indices, jnp.arange(count) < jnp.sum(candidates)


def _random_subset(key, candidates, count):
    """`count` distinct candidates uniformly at random (Gumbel top-k)."""
    noise = jax.random.gumbel(key, candidates.shape)
    scores = jnp.where(candidates, noise, -jnp.inf)
    _, indices = jax.lax.top_k(scores, count)
    return indices.astype(jnp.int32), jnp.arange(count) < jnp.sum(candidates)


def select_anchors(
    mesh: Mesh, geometry: int, volume: int, *, key: PRNGKeyArray | None = None
) -> Anchors:
    """Anchors for one mesh: `geometry` ground/building nodes and `volume` fluid nodes.

    Geometry anchors are spread by farthest-point sampling over the `GEOMETRY_TYPES`
    nodes; volume anchors over the `FLUID` nodes, or, given `key`, drawn uniformly at
    random from them (AB-SWIFT trains on random anchor subsets). Pure JAX: works under
    `jit` and `jax.vmap`. `volume` must not exceed the mesh's node slots.
    """
    if mesh.positions.ndim != 2:
        raise ValueError("`select_anchors` takes one mesh; use `jax.vmap` over a batch.")
    require_count("geometry", geometry, "geometry anchors")
    require_count("volume", volume, "volume anchors")
    real = mesh.node_mask
    on_geometry = real & jnp.isin(mesh.node_type, jnp.asarray([int(t) for t in GEOMETRY_TYPES]))
    fluid = real & (mesh.node_type == NodeType.FLUID)
    geometry_indices, geometry_mask = farthest_point_sample(mesh.positions, on_geometry, geometry)
    if key is None:
        volume_indices, volume_mask = farthest_point_sample(mesh.positions, fluid, volume)
    else:
        if volume > mesh.num_nodes:
            raise ValueError(f"`volume` ({volume}) exceeds the mesh's {mesh.num_nodes} nodes.")
        volume_indices, volume_mask = _random_subset(key, fluid, volume)
    return Anchors(geometry_indices, volume_indices, geometry_mask, volume_mask)


class _SupernodePooling(eqx.Module):
    """Anchor tokens from their k nearest candidate nodes (supernode pooling).

    Each neighbour sends ``MLP([embedding, x_neighbour - x_anchor])``; the anchor's token
    is the mean over its real neighbours (Alkin et al. 2024, UPT; as in AB-SWIFT).
    """

    message: eqx.nn.MLP
    neighbours: int = eqx.field(static=True)

    def __init__(self, width, dim, neighbours, *, key, dtype):
        self.message = mlp(width + dim, width, width, 1, key=key, dtype=dtype)
        self.neighbours = neighbours

    def __call__(self, positions, embeddings, candidates, anchors):
        anchor_positions = positions[anchors]
        squared = jnp.sum((anchor_positions[:, None, :] - positions[None, :, :]) ** 2, axis=-1)
        scores = jnp.where(candidates[None, :], -squared, -jnp.inf)
        nearest, indices = jax.lax.top_k(scores, min(self.neighbours, positions.shape[0]))
        real = jnp.isfinite(nearest)  # (anchors, k): False where too few candidates
        offsets = positions[indices] - anchor_positions[:, None, :]
        messages = jax.vmap(jax.vmap(self.message))(
            jnp.concatenate([embeddings[indices], offsets], axis=-1)
        )
        messages = jnp.where(real[..., None], messages, jnp.zeros((), messages.dtype))
        counts = jnp.maximum(jnp.sum(real, axis=1), 1).astype(messages.dtype)
        return jnp.sum(messages, axis=1) / counts[:, None]


class _AnchorBlock(eqx.Module):
    """Tokens attend to ``[context; themselves]``, then an MLP; FiLM-conditioned pre-norms."""

    norm: eqx.nn.LayerNorm
    context_norm: eqx.nn.LayerNorm
    film: FiLM
    attention: Attention
    mlp_norm: eqx.nn.LayerNorm
    mlp_film: FiLM
    mlp: eqx.nn.MLP

    def __init__(self, width, heads, *, key, dtype):
        keys = jax.random.split(key, 4)
        self.norm = eqx.nn.LayerNorm(width, dtype=dtype)
        self.context_norm = eqx.nn.LayerNorm(width, dtype=dtype)
        self.film = FiLM(width, width, key=keys[0], dtype=dtype)
        self.attention = Attention(width, heads, key=keys[1], dtype=dtype)
        self.mlp_norm = eqx.nn.LayerNorm(width, dtype=dtype)
        self.mlp_film = FiLM(width, width, key=keys[2], dtype=dtype)
        self.mlp = mlp(width, width, 2 * width, 1, key=keys[3], dtype=dtype)

    def __call__(self, tokens, mask, context, context_mask, condition):
        normed = self.film(rows(self.norm, tokens), condition)
        keys = jnp.concatenate([rows(self.context_norm, context), normed])
        tokens = tokens + self.attention(normed, keys, jnp.concatenate([context_mask, mask]))
        return tokens + rows(self.mlp, self.mlp_film(rows(self.mlp_norm, tokens), condition))


class _QueryBlock(eqx.Module):
    """Query points cross-attend to anchor tokens, then an MLP (each query on its own)."""

    norm: eqx.nn.LayerNorm
    film: FiLM
    attention: Attention
    mlp_norm: eqx.nn.LayerNorm
    mlp: eqx.nn.MLP

    def __init__(self, width, heads, *, key, dtype):
        keys = jax.random.split(key, 3)
        self.norm = eqx.nn.LayerNorm(width, dtype=dtype)
        self.film = FiLM(width, width, key=keys[0], dtype=dtype)
        self.attention = Attention(width, heads, key=keys[1], dtype=dtype)
        self.mlp_norm = eqx.nn.LayerNorm(width, dtype=dtype)
        self.mlp = mlp(width, width, 2 * width, 1, key=keys[2], dtype=dtype)

    def __call__(self, queries, anchors, anchor_mask, condition):
        normed = self.film(rows(self.norm, queries), condition)
        queries = queries + self.attention(normed, anchors, anchor_mask)
        return queries + rows(self.mlp, rows(self.mlp_norm, queries))


class _Branch(eqx.Module):
    """One output field's branch: anchor blocks, then query blocks and a linear head."""

    anchor_blocks: tuple[_AnchorBlock, ...]
    anchor_norm: eqx.nn.LayerNorm
    query_blocks: tuple[_QueryBlock, ...]
    head_norm: eqx.nn.LayerNorm
    head: eqx.nn.Linear

    def __init__(self, width, heads, layers, decoder_layers, size, *, key, dtype):
        keys = jax.random.split(key, layers + decoder_layers + 1)
        self.anchor_blocks = tuple(
            _AnchorBlock(width, heads, key=k, dtype=dtype) for k in keys[:layers]
        )
        self.anchor_norm = eqx.nn.LayerNorm(width, dtype=dtype)
        self.query_blocks = tuple(
            _QueryBlock(width, heads, key=k, dtype=dtype) for k in keys[layers:-1]
        )
        self.head_norm = eqx.nn.LayerNorm(width, dtype=dtype)
        self.head = eqx.nn.Linear(width, size, key=keys[-1], dtype=dtype)

    def anchors(self, volume, volume_mask, geometry, geometry_mask, condition):
        for block in self.anchor_blocks:
            volume = block(volume, volume_mask, geometry, geometry_mask, condition)
        return rows(self.anchor_norm, jnp.concatenate([geometry, volume]))

    def decode(self, queries, anchors, anchor_mask, condition):
        for block in self.query_blocks:
            queries = block(queries, anchors, anchor_mask, condition)
        return rows(self.head, rows(self.head_norm, queries))


class AnchorTokens(eqx.Module):
    """The encoded mesh: per-branch anchor tokens, their mask, the condition embedding."""

    branches: Float[Array, "fields anchors width"]
    mask: Bool[Array, " anchors"]
    condition: Float[Array, " width"]


class AnchoredBranchedTransformer(AbstractMeshModel):
    """Anchored branched transformer for flow fields, after AB-SWIFT.

    1. **Points:** every node is embedded by an MLP of its position (with Fourier
       features), node features and one-hot node type; the conditioning vector (the
       inflow profile's parameters) by its own MLP.
    2. **Anchors** (`Anchors`, by default from `select_anchors`): geometry tokens pool
       the k nearest ground/building nodes of `geometry_anchors` geometry nodes,
       volume tokens the k nearest nodes of `volume_anchors` fluid nodes (supernode
       pooling). Geometry tokens self-attend (`geometry_layers`); volume tokens attend
       to the geometry tokens and to each other (`layers` shared blocks). Every norm is
       FiLM-modulated by the condition embedding.
    3. **Branches:** one per output field (`field_sizes`, e.g. velocity (2), pressure
       (1), scalar (1)), each with `branch_layers` anchor blocks of its own.
    4. **Queries:** any points (`decode`) — the mesh nodes by default — cross-attend to
       a branch's anchor tokens (`decoder_layers` blocks) and a linear head gives the
       field. A query sees only the anchors, so its value does not depend on which or
       how many other points are evaluated with it, and any mesh size works.

    Outputs are the branches' fields concatenated in `field_sizes` order, zero at
    padding nodes. With the anchors fixed, the model is equivariant to node relabelling
    (anchor indices relabelled too) and blind to padding nodes.

    **Arguments:**

    - `in_features`: node feature width (0 for none); `condition_size`: conditioning width.
    - `field_sizes`: components per output field (one branch each); `dim`: 2.
    - `width`, `heads`: token width and attention heads.
    - `geometry_anchors`, `volume_anchors`: anchor counts when the anchors are selected
      by the model; `neighbours`: nodes pooled per anchor.
    - `geometry_layers`, `layers`, `branch_layers`, `decoder_layers`: blocks in the
      geometry encoder, the shared trunk, each branch, and each branch's query decoder.
    - `frequencies`: Fourier-feature octaves of the positions (0 for raw positions only).
    - `key`: PRNG key; `dtype`: parameter dtype (inputs are cast to it).

    **Reference:** A. de Villeroché, R.-S. Mouradi, V. Le Guen et al., "Anchored-Branched
    Steady-state WInd Flow Transformer (AB-SWIFT): a metamodel for 3D atmospheric flow
    in urban environments" (2025, code: github.com/cerea-daml/abswift); supernode pooling from
    B. Alkin, A. Fürst, S. Schmid et al., "Universal physics transformers", NeurIPS 2024.
    """

    point_embedding: eqx.nn.MLP
    condition_embedding: eqx.nn.MLP
    geometry_pooling: _SupernodePooling
    volume_pooling: _SupernodePooling
    geometry_blocks: tuple[_AnchorBlock, ...]
    trunk: tuple[_AnchorBlock, ...]
    branches: tuple[_Branch, ...]
    in_features: int = eqx.field(static=True)
    condition_size: int = eqx.field(static=True)
    field_sizes: tuple[int, ...] = eqx.field(static=True)
    dim: int = eqx.field(static=True)
    geometry_anchors: int = eqx.field(static=True)
    volume_anchors: int = eqx.field(static=True)
    frequencies: int = eqx.field(static=True)

    def __init__(
        self,
        in_features: int,
        condition_size: int = 1,
        field_sizes: tuple[int, ...] = (2, 1, 1),
        *,
        dim: int = 2,
        width: int = 64,
        heads: int = 4,
        geometry_anchors: int = 64,
        volume_anchors: int = 256,
        neighbours: int = 8,
        geometry_layers: int = 1,
        layers: int = 2,
        branch_layers: int = 1,
        decoder_layers: int = 1,
        frequencies: int = 6,
        key: PRNGKeyArray,
        dtype=None,
    ):
        field_sizes = tuple(field_sizes)
        if not field_sizes:
            raise ValueError("`field_sizes` needs at least one field (one branch each).")
        for size in field_sizes:
            require_count("field_sizes", size, "components of an output field")
        check_sizes("AnchoredBranchedTransformer", in_features, condition_size, 1, dim)
        for name, value, meaning in (
            ("width", width, "token width"),
            ("heads", heads, "attention heads"),
            ("geometry_anchors", geometry_anchors, "geometry tokens"),
            ("volume_anchors", volume_anchors, "volume tokens"),
            ("neighbours", neighbours, "nodes pooled per anchor"),
            ("layers", layers, "shared anchor blocks"),
            ("decoder_layers", decoder_layers, "query blocks per branch"),
        ):
            require_count(name, value, meaning)
        for name, value in (
            ("geometry_layers", geometry_layers),
            ("branch_layers", branch_layers),
            ("frequencies", frequencies),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"`{name}` must be an integer >= 0, got {value!r}.")
        dtype = dtype_or_default(dtype)
        keys = iter(jax.random.split(key, 4 + geometry_layers + layers + len(field_sizes)))
        point_inputs = dim * (1 + 2 * frequencies) + in_features + NodeType.count()
        self.point_embedding = mlp(point_inputs, width, 2 * width, 1, key=next(keys), dtype=dtype)
        self.condition_embedding = mlp(condition_size, width, width, 1, key=next(keys), dtype=dtype)
        self.geometry_pooling, self.volume_pooling = (
            _SupernodePooling(width, dim, neighbours, key=next(keys), dtype=dtype) for _ in range(2)
        )
        self.geometry_blocks = tuple(
            _AnchorBlock(width, heads, key=next(keys), dtype=dtype) for _ in range(geometry_layers)
        )
        self.trunk = tuple(
            _AnchorBlock(width, heads, key=next(keys), dtype=dtype) for _ in range(layers)
        )
        self.branches = tuple(
            _Branch(width, heads, branch_layers, decoder_layers, size, key=next(keys), dtype=dtype)
            for size in field_sizes
        )
        self.in_features, self.condition_size = in_features, condition_size
        self.field_sizes, self.dim = field_sizes, dim
        self.geometry_anchors, self.volume_anchors = geometry_anchors, volume_anchors
        self.frequencies = frequencies

    @property
    def out_size(self) -> int:
        """Output components per node: the sum of `field_sizes`."""
        return sum(self.field_sizes)

    def _points(self, positions, features, node_type):
        dtype = self.branches[0].head.weight.dtype
        positions = positions.astype(dtype)
        scales = (2.0 ** jnp.arange(self.frequencies, dtype=dtype)) * jnp.pi
        phases = (positions[:, :, None] * scales[None, None, :]).reshape(len(positions), -1)
        inputs = [positions, jnp.sin(phases), jnp.cos(phases), features.astype(dtype)]
        inputs.append(one_hot_type(node_type, dtype))
        return rows(self.point_embedding, jnp.concatenate(inputs, axis=-1))

    def encode(
        self,
        mesh: Mesh,
        features: Float[Array, "nodes in_features"],
        condition: Float[Array, " condition_size"],
        anchors: Anchors | None = None,
    ) -> AnchorTokens:
        """Anchor tokens of each branch for one mesh (anchors from `select_anchors` if None)."""
        check_inputs(self, mesh, features, condition)
        features, condition = guard_finite(features, condition, mesh.node_mask)
        if anchors is None:
            anchors = select_anchors(mesh, self.geometry_anchors, self.volume_anchors)
        _check_anchors(anchors, mesh.num_nodes)
        dtype = self.branches[0].head.weight.dtype
        embedding = self.condition_embedding(condition.astype(dtype))
        points = self._points(mesh.positions, features, mesh.node_type)
        geometry_types = jnp.asarray([int(t) for t in GEOMETRY_TYPES])
        on_geometry = mesh.node_mask & jnp.isin(mesh.node_type, geometry_types)
        geometry = self.geometry_pooling(mesh.positions, points, on_geometry, anchors.geometry)
        volume = self.volume_pooling(mesh.positions, points, mesh.node_mask, anchors.volume)
        nothing, none = geometry[:0], anchors.geometry_mask[:0]
        for block in self.geometry_blocks:
            geometry = block(geometry, anchors.geometry_mask, nothing, none, embedding)
        for block in self.trunk:
            volume = block(volume, anchors.volume_mask, geometry, anchors.geometry_mask, embedding)
        branches = jnp.stack(
            [
                branch.anchors(
                    volume, anchors.volume_mask, geometry, anchors.geometry_mask, embedding
                )
                for branch in self.branches
            ]
        )
        mask = jnp.concatenate([anchors.geometry_mask, anchors.volume_mask])
        return AnchorTokens(branches=branches, mask=mask, condition=embedding)

    def decode(
        self,
        tokens: AnchorTokens,
        positions: Float[Array, "queries dim"],
        features: Float[Array, "queries in_features"],
        node_type: Int[Array, " queries"],
    ) -> Float[Array, "queries out_size"]:
        """Fields at query points (any number) from the encoded anchors."""
        if tokens.branches.ndim != 3:
            raise ValueError("`decode` takes one mesh's tokens; use `jax.vmap` over a batch.")
        count = positions.shape[0]
        if positions.shape[1] != self.dim or features.shape != (count, self.in_features):
            raise ValueError(
                f"Query `positions` must be (queries, {self.dim}) and `features` (queries, "
                f"{self.in_features}); got {positions.shape} and {features.shape}."
            )
        if node_type.shape != (count,):
            raise ValueError(f"`node_type` must have shape ({count},), got {node_type.shape}.")
        queries = self._points(positions, features, node_type)
        fields = [
            branch.decode(queries, anchors, tokens.mask, tokens.condition)
            for branch, anchors in zip(self.branches, tokens.branches, strict=True)
        ]
        return jnp.concatenate(fields, axis=-1)

    def __call__(
        self,
        mesh: Mesh,
        features: Float[Array, "nodes in_features"],
        condition: Float[Array, " condition_size"],
        anchors: Anchors | None = None,
    ) -> Float[Array, "nodes out_size"]:
        tokens = self.encode(mesh, features, condition, anchors)
        out = self.decode(tokens, mesh.positions, features, mesh.node_type)
        return mask_rows(out, mesh.node_mask)


def _check_anchors(anchors: Anchors, nodes: int) -> None:
    if anchors.geometry.ndim != 1:
        raise ValueError("`anchors` must be one mesh's (vectors); use `jax.vmap` over a batch.")
    for name in ("geometry", "volume"):
        indices = concrete(getattr(anchors, name))
        if indices is not None and indices.size and (indices.min() < 0 or indices.max() >= nodes):
            raise ValueError(
                f"`anchors.{name}` holds node indices in [{indices.min()}, {indices.max()}] "
                f"but the mesh has {nodes} node slots."
            )
