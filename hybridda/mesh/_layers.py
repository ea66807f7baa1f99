"""Pieces shared by the mesh models: input checks, per-row layers, masked attention.

Every model takes one (unbatched) `Mesh`, node features ``(nodes, in_features)`` and a
conditioning vector ``(condition_size,)``, and returns ``(nodes, out_size)``; a stacked
batch goes through `jax.vmap`. Layers here act on one row (`eqx.nn` style) or on a set
of rows (the attention), and padded rows are excluded through explicit masks.
"""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from .._checks import require_count
from ._mesh import Mesh, NodeType


class AbstractMeshModel(eqx.Module):
    """A network from a mesh, node features and a conditioning vector to node outputs.

    **Call:** ``model(mesh, features, condition) -> (nodes, out_size)`` for one mesh;
    outputs are zero at padding nodes. Use ``jax.vmap(model)`` over a `stack`ed batch
    (node features padded with `pad_rows` to the batch's node count).
    """

    in_features: eqx.AbstractVar[int]
    condition_size: eqx.AbstractVar[int]
    out_size: eqx.AbstractVar[int]
    dim: eqx.AbstractVar[int]

    @abc.abstractmethod
    def __call__(
        self,
        mesh: Mesh,
        features: Float[Array, "nodes in_features"],
        condition: Float[Array, " condition_size"],
    ) -> Float[Array, "nodes out_size"]:
        """Per-node outputs of the network on one mesh."""


def check_sizes(name: str, in_features, condition_size, out_size, dim) -> None:
    """Construction checks common to the models (feature width may be 0)."""
    if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 0:
        raise ValueError(f"`in_features` must be an integer >= 0, got {in_features!r}.")
    require_count("condition_size", condition_size, f"{name}'s conditioning width")
    require_count("out_size", out_size, f"{name}'s output fields per node")
    require_count("dim", dim, "spatial dimension of the mesh")


def check_inputs(model: AbstractMeshModel, mesh: Mesh, features, condition) -> None:
    """Trace-time shape checks with messages that name the fix."""
    name = type(model).__name__
    if mesh.positions.ndim != 2:
        raise ValueError(
            f"{name} takes one mesh, got a batch (positions {mesh.positions.shape}); "
            "apply it with `jax.vmap(model)(meshes, features, conditions)`."
        )
    if mesh.positions.shape[1] != model.dim:
        raise ValueError(
            f"{name} was built for dim={model.dim} coordinates, the mesh has "
            f"{mesh.positions.shape[1]}."
        )
    if features.shape != (mesh.num_nodes, model.in_features):
        raise ValueError(
            f"`features` must have shape (nodes, in_features) = ({mesh.num_nodes}, "
            f"{model.in_features}), got {features.shape}; pad node data to the mesh's node "
            "slots with `pad_rows(values, mesh.num_nodes)`."
        )
    if condition.shape != (model.condition_size,):
        raise ValueError(
            f"`condition` must have shape ({model.condition_size},) (condition_size), got "
            f"{condition.shape}."
        )


def guard_finite(features, condition, node_mask):
    """`features` and `condition`, with a runtime error if a real entry is not finite."""
    finite = jnp.all(jnp.isfinite(jnp.where(node_mask[:, None], features, 0.0)))
    features = eqx.error_if(features, ~finite, "`features` has NaN or infinite values.")
    condition = eqx.error_if(
        condition, ~jnp.all(jnp.isfinite(condition)), "`condition` has NaN or infinite values."
    )
    return features, condition


def one_hot_type(node_type, dtype) -> Array:
    """``(nodes, NodeType.count())``; padding nodes (type -1) encode to zeros."""
    return jax.nn.one_hot(node_type, NodeType.count(), dtype=dtype)


def rows(layer, x: Array) -> Array:
    """A one-row layer applied to every row of `x`."""
    return jax.vmap(layer)(x)


def mask_rows(values: Array, mask: Bool[Array, " n"]) -> Array:
    """`values` with the rows where `mask` is False set to zero."""
    return jnp.where(mask[:, None], values, jnp.zeros((), values.dtype))


def dtype_or_default(dtype):
    return jnp.result_type(float) if dtype is None else dtype


def mlp(in_size, out_size, width, depth, *, key, dtype, activation=jax.nn.gelu) -> eqx.nn.MLP:
    """An `eqx.nn.MLP` with `depth` hidden layers of `width`."""
    return eqx.nn.MLP(in_size, out_size, width, depth, activation, dtype=dtype, key=key)


class Attention(eqx.Module):
    """Multi-head scaled dot-product attention with a mask over the keys.

    Keys whose mask is False get no weight (a query with no valid key gets a uniform
    average, never NaN).
    """

    query: eqx.nn.Linear
    key: eqx.nn.Linear
    value: eqx.nn.Linear
    output: eqx.nn.Linear
    heads: int = eqx.field(static=True)

    def __init__(self, width: int, heads: int, *, key: PRNGKeyArray, dtype):
        if width % heads:
            raise ValueError(f"`width` ({width}) must be a multiple of `heads` ({heads}).")
        keys = jax.random.split(key, 4)
        self.query, self.key, self.value, self.output = (
            eqx.nn.Linear(width, width, key=k, dtype=dtype) for k in keys
        )
        self.heads = heads

    def __call__(
        self,
        queries: Float[Array, "q width"],
        keys: Float[Array, "k width"],
        key_mask: Bool[Array, " k"],
    ) -> Float[Array, "q width"]:
        def split(layer, x):
            return rows(layer, x).reshape(x.shape[0], self.heads, -1)

        q, k, v = split(self.query, queries), split(self.key, keys), split(self.value, keys)
        logits = jnp.einsum("qhd,khd->hqk", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
        logits = jnp.where(key_mask[None, None, :], logits, jnp.finfo(logits.dtype).min)
        weights = jax.nn.softmax(logits, axis=-1)
        attended = jnp.einsum("hqk,khd->qhd", weights, v).reshape(queries.shape)
        return rows(self.output, attended)


class FiLM(eqx.Module):
    """Feature-wise modulation ``x (1 + γ(c)) + β(c)`` by a conditioning embedding c.

    Perez et al. 2018, "FiLM: visual reasoning with a general conditioning layer"; used
    after layer norms as in adaptive layer norm (Peebles & Xie 2023).
    """

    projection: eqx.nn.Linear

    def __init__(self, width: int, condition_width: int, *, key: PRNGKeyArray, dtype):
        self.projection = eqx.nn.Linear(condition_width, 2 * width, key=key, dtype=dtype)

    def __call__(self, x: Float[Array, "n width"], embedding: Float[Array, " c"]) -> Array:
        scale, shift = jnp.split(self.projection(embedding), 2)
        return x * (1 + scale[None, :]) + shift[None, :]
