"""Unstructured meshes: the mesh pytree, graph helpers, and urban-canopy flow data.

`Mesh` holds a triangle mesh as a padded graph (positions, node types, edges in both
directions, cells, masks); `stack` batches meshes of different sizes into one size
bucket so a jitted model compiles once per bucket. `hybridda.mesh.urban` builds random
channel-with-buildings geometries and their triangle meshes, and `hybridda.mesh.fem`
solves steady Navier–Stokes and a passive scalar on them (scikit-fem, Taylor–Hood).

Three surrogate models map a mesh, node features and a conditioning vector to node
fields: `MeshGraphNet` (message passing on the edges), `Transolver` (physics attention
over learnt slices) and `AnchoredBranchedTransformer` (anchor tokens, one branch per
field, queries by cross-attention), all subclasses of `AbstractMeshModel`.
"""

from . import fem as fem
from . import urban as urban
from ._abswift import GEOMETRY_TYPES as GEOMETRY_TYPES
from ._abswift import AnchoredBranchedTransformer as AnchoredBranchedTransformer
from ._abswift import Anchors as Anchors
from ._abswift import AnchorTokens as AnchorTokens
from ._abswift import farthest_point_sample as farthest_point_sample
from ._abswift import select_anchors as select_anchors
from ._graph import cell_areas as cell_areas
from ._graph import edge_lengths as edge_lengths
from ._graph import edge_vectors as edge_vectors
from ._graph import node_areas as node_areas
from ._graph import node_degree as node_degree
from ._graph import segment_max as segment_max
from ._graph import segment_mean as segment_mean
from ._graph import segment_sum as segment_sum
from ._layers import AbstractMeshModel as AbstractMeshModel
from ._mesh import Mesh as Mesh
from ._mesh import NodeType as NodeType
from ._mesh import bucket_size as bucket_size
from ._mesh import cell_edges as cell_edges
from ._mesh import from_meshio as from_meshio
from ._mesh import pad_rows as pad_rows
from ._mesh import stack as stack
from ._mesh import to_meshio as to_meshio
from ._meshgraphnet import MeshGraphNet as MeshGraphNet
from ._transolver import PhysicsAttention as PhysicsAttention
from ._transolver import Transolver as Transolver

__all__ = [
    "AbstractMeshModel",
    "AnchorTokens",
    "AnchoredBranchedTransformer",
    "Anchors",
    "GEOMETRY_TYPES",
    "Mesh",
    "MeshGraphNet",
    "NodeType",
    "PhysicsAttention",
    "Transolver",
    "bucket_size",
    "cell_areas",
    "cell_edges",
    "edge_lengths",
    "edge_vectors",
    "farthest_point_sample",
    "fem",
    "from_meshio",
    "node_areas",
    "node_degree",
    "pad_rows",
    "segment_max",
    "segment_mean",
    "segment_sum",
    "select_anchors",
    "stack",
    "to_meshio",
    "urban",
]
