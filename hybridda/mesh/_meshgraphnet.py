"""MeshGraphNet: encode–process–decode message passing on the mesh's edges."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import require_count
from ._graph import edge_lengths, edge_vectors, segment_sum
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


class _NormedMLP(eqx.Module):
    """MLP followed by a layer norm (every MeshGraphNet MLP except the decoder's)."""

    network: eqx.nn.MLP
    norm: eqx.nn.LayerNorm

    def __init__(self, in_size, latent, depth, *, key, dtype):
        self.network = mlp(in_size, latent, latent, depth, key=key, dtype=dtype)
        self.norm = eqx.nn.LayerNorm(latent, dtype=dtype)

    def __call__(self, x):
        return self.norm(self.network(x))


class _Block(eqx.Module):
    """One message-passing step: residual edge update, then residual node update."""

    edge: _NormedMLP
    node: _NormedMLP

    def __init__(self, latent, depth, *, key, dtype):
        edge_key, node_key = jax.random.split(key)
        self.edge = _NormedMLP(3 * latent, latent, depth, key=edge_key, dtype=dtype)
        self.node = _NormedMLP(2 * latent, latent, depth, key=node_key, dtype=dtype)

    def __call__(self, mesh: Mesh, nodes, edges):
        pairs = jnp.concatenate(
            [edges, nodes[mesh.senders], nodes[mesh.receivers]], axis=-1
        )  # Pfaff et al. 2021, eq. 1: e'_ij = f^M(e_ij, v_i, v_j)
        edges = edges + rows(self.edge, pairs)
        # eq. 2: v'_i = f^V(v_i, Σ_j e'_ij), summing the real incoming edges only.
        incoming = segment_sum(mesh, edges)
        nodes = nodes + rows(self.node, jnp.concatenate([nodes, incoming], axis=-1))
        return nodes, edges


class MeshGraphNet(AbstractMeshModel):
    """Encode–process–decode graph network on a mesh's edges (Pfaff et al. 2021).

    - **Encode:** a node MLP on ``[features, one-hot node type, condition (, positions)]``
      and an edge MLP on ``[x_receiver - x_sender, |x_receiver - x_sender|]``, each
      followed by a layer norm, give `latent`-wide node and edge vectors.
    - **Process:** `steps` message-passing blocks, each a residual edge update from the
      edge and its two end nodes, then a residual node update from the node and the sum
      of its incoming edges (masked segment sums, so padding edges add nothing).
    - **Decode:** a node MLP (no norm) to `out_size` fields; zero at padding nodes.

    Pfaff et al. use relative positions only (translation invariance); here the absolute
    positions are node inputs by default (`absolute_positions`), since a steady flow in a
    fixed channel depends on where a node is and a few message-passing steps do not see
    the inlet. The conditioning vector (e.g. the inflow exponent) joins every node's
    input. The permutation equivariance and padding invariance of the original hold.

    **Arguments:**

    - `in_features`: node feature width (0 for none); `condition_size`: conditioning width.
    - `out_size`: output fields per node; `dim`: spatial dimension (2).
    - `latent`: width of node/edge vectors and MLP hidden layers (the paper: 128).
    - `steps`: message-passing blocks (the paper: 15); `mlp_depth`: hidden layers per
      MLP (the paper: 2).
    - `absolute_positions`: whether node positions join the node inputs.
    - `edge_scale`: edge vectors and lengths are divided by it before the edge encoder;
      a typical edge length makes them O(1) (Pfaff et al. normalise every input).
    - `key`: PRNG key; `dtype`: parameter dtype (inputs are cast to it).

    **Reference:** T. Pfaff, M. Fortunato, A. Sanchez-Gonzalez, P. W. Battaglia,
    "Learning mesh-based simulation with graph networks", ICLR 2021.
    """

    node_encoder: _NormedMLP
    edge_encoder: _NormedMLP
    blocks: tuple[_Block, ...]
    decoder: eqx.nn.MLP
    in_features: int = eqx.field(static=True)
    condition_size: int = eqx.field(static=True)
    out_size: int = eqx.field(static=True)
    dim: int = eqx.field(static=True)
    absolute_positions: bool = eqx.field(static=True)
    edge_scale: float = eqx.field(static=True)

    def __init__(
        self,
        in_features: int,
        condition_size: int = 1,
        out_size: int = 4,
        *,
        dim: int = 2,
        latent: int = 64,
        steps: int = 6,
        mlp_depth: int = 2,
        absolute_positions: bool = True,
        edge_scale: float = 1.0,
        key: PRNGKeyArray,
        dtype=None,
    ):
        check_sizes("MeshGraphNet", in_features, condition_size, out_size, dim)
        require_count("latent", latent, "width of the node and edge vectors")
        require_count("steps", steps, "message-passing blocks")
        require_count("mlp_depth", mlp_depth, "hidden layers per MLP")
        if not (isinstance(edge_scale, int | float) and edge_scale > 0):
            raise ValueError(f"`edge_scale` must be a number > 0, got {edge_scale!r}.")
        dtype = dtype_or_default(dtype)
        node_in = in_features + NodeType.count() + condition_size
        node_in += dim if absolute_positions else 0
        keys = jax.random.split(key, steps + 3)
        self.node_encoder = _NormedMLP(node_in, latent, mlp_depth, key=keys[0], dtype=dtype)
        self.edge_encoder = _NormedMLP(dim + 1, latent, mlp_depth, key=keys[1], dtype=dtype)
        self.blocks = tuple(_Block(latent, mlp_depth, key=k, dtype=dtype) for k in keys[3:])
        self.decoder = mlp(latent, out_size, latent, mlp_depth, key=keys[2], dtype=dtype)
        self.in_features, self.condition_size, self.out_size = in_features, condition_size, out_size
        self.dim, self.absolute_positions = dim, absolute_positions
        self.edge_scale = float(edge_scale)

    def __call__(
        self,
        mesh: Mesh,
        features: Float[Array, "nodes in_features"],
        condition: Float[Array, " condition_size"],
    ) -> Float[Array, "nodes out_size"]:
        check_inputs(self, mesh, features, condition)
        features, condition = guard_finite(features, condition, mesh.node_mask)
        dtype = self.decoder.layers[-1].weight.dtype
        inputs = [features.astype(dtype), one_hot_type(mesh.node_type, dtype)]
        inputs.append(jnp.broadcast_to(condition.astype(dtype), (mesh.num_nodes, len(condition))))
        if self.absolute_positions:
            inputs.append(mesh.positions.astype(dtype))
        nodes = rows(self.node_encoder, jnp.concatenate(inputs, axis=-1))
        vectors = (edge_vectors(mesh) / self.edge_scale).astype(dtype)
        lengths = (edge_lengths(mesh) / self.edge_scale).astype(dtype)
        edges = rows(self.edge_encoder, jnp.concatenate([vectors, lengths[:, None]], axis=-1))
        for block in self.blocks:
            nodes, edges = block(mesh, nodes, edges)
        return mask_rows(rows(self.decoder, nodes), mesh.node_mask)
