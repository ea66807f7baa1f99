"""Randomised 2-D urban canopies: a channel with rectangular buildings on the ground.

Geometry and triangulation only (NumPy + the `triangle` package, a wrapper of Shewchuk's
Triangle); the flow on these meshes is solved in `hybridda.mesh.fem`.
"""

import dataclasses

import numpy as np

from ._mesh import NodeType

# Triangle's boundary markers for the input segments (0 is reserved for interior points).
_MARKERS = {
    NodeType.WALL: 1,
    NodeType.BUILDING: 2,
    NodeType.INFLOW: 3,
    NodeType.OUTFLOW: 4,
    NodeType.TOP: 5,
}


@dataclasses.dataclass(frozen=True)
class Canopy:
    """A channel ``[0, length] x [0, height]`` with rectangular buildings on its floor.

    **Arguments:**

    - `length`, `height`: the channel's size (the height is the Reynolds number's length).
    - `buildings`: ``(left, width, building_height)`` per building, left to right, not
      touching each other, the inflow or the outflow, and lower than the channel.
    """

    length: float = 6.0
    height: float = 1.0
    buildings: tuple[tuple[float, float, float], ...] = ()

    def __post_init__(self):
        if not (self.length > 0 and self.height > 0):
            raise ValueError(f"Canopy size must be > 0, got {self.length} x {self.height}.")
        right_of_previous = 0.0
        for left, width, building_height in self.buildings:
            if not (width > 0 and 0 < building_height < self.height):
                raise ValueError(
                    f"Building at x = {left} needs width > 0 and 0 < height < {self.height}, "
                    f"got width {width}, height {building_height}."
                )
            if not (left > right_of_previous and left + width < self.length):
                raise ValueError(
                    "Buildings must lie strictly inside (0, length), left to right and apart;"
                    f" the one at x = {left} (width {width}) does not."
                )
            right_of_previous = left + width

    def outline(self) -> np.ndarray:
        """The fluid domain's boundary, counter-clockwise from the origin: ``(k, 2)``."""
        points = [(0.0, 0.0)]
        for left, width, building_height in self.buildings:
            points += [(left, 0.0), (left, building_height)]
            points += [(left + width, building_height), (left + width, 0.0)]
        points += [(self.length, 0.0), (self.length, self.height), (0.0, self.height)]
        return np.asarray(points, dtype=float)


def random_canopy(
    rng: np.random.Generator,
    *,
    length: float = 6.0,
    height: float = 1.0,
    max_buildings: int = 4,
    region: tuple[float, float] = (1.0, 3.5),
    width_range: tuple[float, float] = (0.15, 0.5),
    height_range: tuple[float, float] = (0.1, 0.4),
    min_gap: float = 0.1,
) -> Canopy:
    """Between 1 and `max_buildings` random buildings with left/right ends in `region`.

    The region keeps buildings away from the inflow (the profile develops) and leaves
    room behind them for the wakes to reattach before the do-nothing outflow.
    """
    count = int(rng.integers(1, max_buildings + 1))
    widths = rng.uniform(*width_range, size=count)
    # Shrink widths until the buildings and the gaps between them fit into the region.
    room = region[1] - region[0]
    needed = widths.sum() + min_gap * (count - 1)
    if needed > room:
        widths *= (room - min_gap * (count - 1)) / widths.sum()
    slack = room - widths.sum() - min_gap * (count - 1)
    # Random free space split over the count + 1 gaps (sorted uniform cut points).
    cuts = np.sort(rng.uniform(0.0, slack, size=count))
    lefts = region[0] + cuts + np.concatenate([[0.0], np.cumsum(widths[:-1] + min_gap)])
    heights = rng.uniform(*height_range, size=count)
    buildings = tuple(
        (float(a), float(w), float(h)) for a, w, h in zip(lefts, widths, heights, strict=True)
    )
    return Canopy(length=length, height=height, buildings=buildings)


def triangulate(
    canopy: Canopy,
    *,
    max_area: float = 4e-3,
    wall_spacing: float = 0.03,
    min_angle: float = 30.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A quality triangle mesh of the canopy's fluid domain.

    Building walls are split into pieces of length ≤ `wall_spacing` before meshing, so
    the quality constraint (`min_angle`) grades the mesh from that size at the
    buildings to `max_area` away from them.

    **Returns:** ``(positions (n, 2), triangles (m, 3), node_type (n,))``, NumPy arrays;
    triangles are counter-clockwise.
    """
    import triangle

    outline = canopy.outline()
    vertices, segments, markers = [], [], []
    for start, end in zip(outline, np.roll(outline, -1, axis=0), strict=True):
        marker = _MARKERS[_side_type(canopy, start, end)]
        spacing = wall_spacing if marker == _MARKERS[NodeType.BUILDING] else np.inf
        pieces = max(1, int(np.ceil(np.linalg.norm(end - start) / spacing)))
        for k in range(pieces):
            vertices.append(start + (end - start) * k / pieces)
            markers.append(marker)
    count = len(vertices)
    segments = np.stack([np.arange(count), (np.arange(count) + 1) % count], axis=1)
    result = triangle.triangulate(
        {
            "vertices": np.asarray(vertices),
            "segments": segments,
            "segment_markers": np.asarray(markers, dtype=np.int32),
        },
        f"pq{min_angle}a{max_area}",
    )
    positions = result["vertices"]
    triangles = result["triangles"].astype(np.int32)
    node_type = _classify(canopy, positions)
    return positions, triangles, node_type


def _side_type(canopy: Canopy, start: np.ndarray, end: np.ndarray) -> NodeType:
    if start[0] == end[0] == 0.0:
        return NodeType.INFLOW
    if start[0] == end[0] == canopy.length:
        return NodeType.OUTFLOW
    if start[1] == end[1] == canopy.height:
        return NodeType.TOP
    if start[1] == end[1] == 0.0:
        return NodeType.WALL
    return NodeType.BUILDING


def _classify(canopy: Canopy, positions: np.ndarray) -> np.ndarray:
    """Node types from positions (exact: Triangle splits axis-aligned segments exactly).

    Where boundaries meet, walls win (no-slip), then inflow, top and outflow, in the
    order a flow solver imposes their conditions.
    """
    x, y = positions[:, 0], positions[:, 1]
    node_type = np.full(len(positions), NodeType.FLUID, dtype=np.int32)
    node_type[x == canopy.length] = NodeType.OUTFLOW
    node_type[y == canopy.height] = NodeType.TOP
    node_type[x == 0.0] = NodeType.INFLOW
    node_type[y == 0.0] = NodeType.WALL
    for left, width, building_height in canopy.buildings:
        on_sides = ((x == left) | (x == left + width)) & (y <= building_height)
        on_roof = (y == building_height) & (x >= left) & (x <= left + width)
        node_type[on_sides | on_roof] = NodeType.BUILDING
    return node_type
