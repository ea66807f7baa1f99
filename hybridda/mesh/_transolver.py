"""Transolver: physics attention over learnt soft slices of the mesh nodes."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from .._checks import require_count
from ._layers import (
    AbstractMeshModel,
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


class PhysicsAttention(eqx.Module):
    """Slice – attend – deslice (Wu et al. 2024, section 3.1, eqs. 1-4).

    Per head, every node is softly assigned to `slices` slices (a softmax over slices of
    a learnt projection, sharpened by a learnt temperature); a slice token is the
    assignment-weighted mean of the nodes' features; the tokens attend to each other;
    each node gets back the assignment-weighted combination of the attended tokens.
    Nodes outside `node_mask` get no weight in any token, so padding changes nothing.
    """

    features: eqx.nn.Linear
    assignment_input: eqx.nn.Linear
    assignment: eqx.nn.Linear
    log_temperature: Float[Array, " heads"]
    query: eqx.nn.Linear
    key: eqx.nn.Linear
    value: eqx.nn.Linear
    output: eqx.nn.Linear
    heads: int = eqx.field(static=True)

    def __init__(self, width: int, heads: int, slices: int, *, key: PRNGKeyArray, dtype):
        if width % heads:
            raise ValueError(f"`width` ({width}) must be a multiple of `heads` ({heads}).")
        head = width // heads
        keys = jax.random.split(key, 7)
        self.features = eqx.nn.Linear(width, width, key=keys[0], dtype=dtype)
        self.assignment_input = eqx.nn.Linear(width, width, key=keys[1], dtype=dtype)
        self.assignment = eqx.nn.Linear(head, slices, key=keys[2], dtype=dtype)
        self.log_temperature = jnp.full(heads, jnp.log(0.5), dtype=dtype)  # paper's init
        self.query, self.key, self.value = (
            eqx.nn.Linear(head, head, use_bias=False, key=k, dtype=dtype) for k in keys[3:6]
        )
        self.output = eqx.nn.Linear(width, width, key=keys[6], dtype=dtype)
        self.heads = heads

    def __call__(
        self, x: Float[Array, "nodes width"], node_mask: Bool[Array, " nodes"]
    ) -> Float[Array, "nodes width"]:
        nodes, width = x.shape
        values = rows(self.features, x).reshape(nodes, self.heads, -1)
        hidden = rows(self.assignment_input, x).reshape(nodes, self.heads, -1)
        logits = jax.vmap(jax.vmap(self.assignment))(hidden)  # (nodes, heads, slices)
        temperature = jnp.exp(self.log_temperature)[None, :, None]
        weights = jax.nn.softmax(logits / temperature, axis=-1)
        weights = jnp.where(node_mask[:, None, None], weights, jnp.zeros((), weights.dtype))
        # eq. 2: slice tokens are weighted means of the node features.
        totals = jnp.sum(weights, axis=0)  # (heads, slices)
        tokens = jnp.einsum("nhs,nhd->hsd", weights, values) / (totals[..., None] + 1e-5)
        # eq. 3: attention among the slice tokens of each head.
        q, k, v = (jax.vmap(jax.vmap(f))(tokens) for f in (self.query, self.key, self.value))
        scores = jnp.einsum("hsd,htd->hst", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
        tokens = jnp.einsum("hst,htd->hsd", jax.nn.softmax(scores, axis=-1), v)
        # eq. 4: deslice, each node a weighted combination of its slices' tokens.
        out = jnp.einsum("nhs,hsd->nhd", weights, tokens).reshape(nodes, width)
        return rows(self.output, out)


class _Layer(eqx.Module):
    """Pre-norm residual layer: physics attention, then an MLP."""

    attention_norm: eqx.nn.LayerNorm
    attention: PhysicsAttention
    mlp_norm: eqx.nn.LayerNorm
    mlp: eqx.nn.MLP

    def __init__(self, width, heads, slices, mlp_ratio, *, key, dtype):
        attention_key, mlp_key = jax.random.split(key)
        self.attention_norm = eqx.nn.LayerNorm(width, dtype=dtype)
        self.attention = PhysicsAttention(width, heads, slices, key=attention_key, dtype=dtype)
        self.mlp_norm = eqx.nn.LayerNorm(width, dtype=dtype)
        self.mlp = mlp(width, width, mlp_ratio * width, 1, key=mlp_key, dtype=dtype)

    def __call__(self, x, node_mask):
        x = x + self.attention(rows(self.attention_norm, x), node_mask)
        return x + rows(self.mlp, rows(self.mlp_norm, x))


class Transolver(AbstractMeshModel):
    """A transformer with physics attention on the mesh nodes (Wu et al. 2024).

    Node inputs ``[positions, features, one-hot node type, condition]`` are embedded by
    an MLP; `layers` pre-norm residual layers each apply `PhysicsAttention` (soft
    assignment of the nodes to `slices` learnt slices, attention among the slice tokens,
    deslicing) and an MLP; a final layer norm and linear map give `out_size` fields per
    node. Cost is linear in the node count; the result is equivariant to node
    relabelling and blind to padding nodes (they get no slice weight; outputs there are
    zero). The mesh's edges are not used.

    **Arguments:**

    - `in_features`: node feature width (0 for none); `condition_size`: conditioning width.
    - `out_size`: output fields per node; `dim`: spatial dimension (2).
    - `width`: token width; `layers`: physics-attention layers; `heads`: attention heads
      (each with its own slices); `slices`: slices per head (the paper: 32 or 64);
      `mlp_ratio`: hidden width of the MLPs over `width`.
    - `key`: PRNG key; `dtype`: parameter dtype (inputs are cast to it).

    **Reference:** H. Wu, H. Luo, H. Wang, J. Wang, M. Long, "Transolver: a fast
    transformer solver for PDEs on general geometries", ICML 2024.
    """

    embedding: eqx.nn.MLP
    layers: tuple[_Layer, ...]
    final_norm: eqx.nn.LayerNorm
    head: eqx.nn.Linear
    in_features: int = eqx.field(static=True)
    condition_size: int = eqx.field(static=True)
    out_size: int = eqx.field(static=True)
    dim: int = eqx.field(static=True)

    def __init__(
        self,
        in_features: int,
        condition_size: int = 1,
        out_size: int = 4,
        *,
        dim: int = 2,
        width: int = 64,
        layers: int = 4,
        heads: int = 4,
        slices: int = 32,
        mlp_ratio: int = 2,
        key: PRNGKeyArray,
        dtype=None,
    ):
        check_sizes("Transolver", in_features, condition_size, out_size, dim)
        for name, value, meaning in (
            ("width", width, "token width"),
            ("layers", layers, "physics-attention layers"),
            ("heads", heads, "attention heads"),
            ("slices", slices, "slices per head"),
            ("mlp_ratio", mlp_ratio, "MLP hidden width over `width`"),
        ):
            require_count(name, value, meaning)
        dtype = dtype_or_default(dtype)
        keys = jax.random.split(key, layers + 2)
        inputs = dim + in_features + NodeType.count() + condition_size
        self.embedding = mlp(inputs, width, 2 * width, 1, key=keys[0], dtype=dtype)
        self.layers = tuple(
            _Layer(width, heads, slices, mlp_ratio, key=k, dtype=dtype) for k in keys[2:]
        )
        self.final_norm = eqx.nn.LayerNorm(width, dtype=dtype)
        self.head = eqx.nn.Linear(width, out_size, key=keys[1], dtype=dtype)
        self.in_features, self.condition_size, self.out_size = in_features, condition_size, out_size
        self.dim = dim

    def __call__(
        self,
        mesh: Mesh,
        features: Float[Array, "nodes in_features"],
        condition: Float[Array, " condition_size"],
    ) -> Float[Array, "nodes out_size"]:
        check_inputs(self, mesh, features, condition)
        features, condition = guard_finite(features, condition, mesh.node_mask)
        dtype = self.head.weight.dtype
        condition = jnp.broadcast_to(condition.astype(dtype), (mesh.num_nodes, len(condition)))
        inputs = [mesh.positions.astype(dtype), features.astype(dtype)]
        inputs += [one_hot_type(mesh.node_type, dtype), condition]
        x = rows(self.embedding, jnp.concatenate(inputs, axis=-1))
        for layer in self.layers:
            x = layer(x, mesh.node_mask)
        out = rows(self.head, rows(self.final_norm, x))
        return mask_rows(out, mesh.node_mask)
