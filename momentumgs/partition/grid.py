"""The grid of blocks: `Partition` (the bounds, the grid, and each `Block`'s cell, cameras and start points),
which block a point lies in, the cells' bounds, and the checks on a finished partition.

[0, 1]^3 (the contracted space, partition/bounds.py) is split by a regular grid of `block_dim` cells, given as
(horizontal 1, horizontal 2, up): the ground axes are the two world axes other than the up axis, in world
order (up z -> (x, y), up y -> (x, z), up x -> (y, z)). The paper's 2x1x4 on the y-up Mill-19 scenes is
block_dim [2, 4, 1] here. Cells are half-open and the border cells own the outside, so every point lies in
exactly one block.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from momentumgs.partition.bounds import AXIS_NAMES, PartitionError, contract, ground_axes, parse_up_axis


@dataclass
class Block:
    index: int
    grid_index: tuple[int, int, int]  # along (horizontal 1, horizontal 2, up), as block_dim
    cell_min: np.ndarray  # [3] contracted space, world axis order
    cell_max: np.ndarray  # [3]
    world_min: np.ndarray | None  # [3] the cell's part inside the AABB, in world; None if it has none
    world_max: np.ndarray | None  # [3]
    camera_ids: np.ndarray  # [C] int64 scene camera indices (train views only) that train this block
    point_ids: np.ndarray  # [Q] int64 indices into scene.points the block starts from (see block_points)
    n_cell_points: int  # how many of the scene's points lie in the cell itself


@dataclass
class Partition:
    aabb: np.ndarray  # [6] min xyz, max xyz
    up_axis: str  # '+z', '-y', ...
    block_dim: tuple[int, int, int]  # (horizontal 1, horizontal 2, up)
    margin: float
    assign: str
    blocks: list[Block] = field(default_factory=list)
    block_points: str = "cell"  # which points each block starts from (partition.block_points)
    num_points: int = 0  # size of the point cloud the point ids index
    camera_names: list[str] = field(default_factory=list)  # the scene's cameras, for a consistency check

    @property
    def axes(self) -> tuple[int, int, int]:
        """World axis index of each block_dim entry."""
        up, _ = parse_up_axis(self.up_axis)
        return (*ground_axes(up), up)

    @property
    def grid_shape(self) -> np.ndarray:
        """Number of cells along world x, y, z. -> [3] int"""
        shape = np.ones(3, dtype=np.int64)
        for axis, n in zip(self.axes, self.block_dim, strict=True):
            shape[axis] = n
        return shape

    def contract(self, points: np.ndarray) -> np.ndarray:
        return contract(points, self.aabb)

    def block_of_points(self, points: np.ndarray) -> np.ndarray:
        """The one block holding each world point [P, 3] (half-open cells; far points in border blocks).

        -> [P] int64"""
        return block_of_contracted(contract(points, self.aabb), self.grid_shape, self.axes, self.block_dim)

    def summary(self) -> str:
        names = "".join(AXIS_NAMES[a] for a in self.axes)
        a = self.aabb
        lines = [
            f"partition: {len(self.blocks)} blocks, block_dim {list(self.block_dim)} along {names} "
            f"(up {self.up_axis}), assign {self.assign}, margin {self.margin:g}, "
            f"block points {self.block_points}",
            f"  aabb: [{a[0]:.2f}, {a[1]:.2f}, {a[2]:.2f}] .. [{a[3]:.2f}, {a[4]:.2f}, {a[5]:.2f}]",
            "  block  grid       cameras  points(cell)  points(start)",
        ]
        for b in self.blocks:
            grid = "(" + ",".join(map(str, b.grid_index)) + ")"
            lines.append(
                f"  {b.index:5d}  {grid:9s}  {len(b.camera_ids):7d}  {b.n_cell_points:12d}  "
                f"{len(b.point_ids):13d}"
            )
        return "\n".join(lines)


def block_of_contracted(y: np.ndarray, grid_shape: np.ndarray, axes, block_dim) -> np.ndarray:
    """Contracted points [P, 3] -> block index [P] (row-major over block_dim's order)."""
    cell = np.clip(np.floor(y * grid_shape).astype(np.int64), 0, grid_shape - 1)  # [P, 3]
    return np.ravel_multi_index(tuple(cell[:, a] for a in axes), block_dim)


def cell_bounds(grid_index, axes, block_dim) -> tuple[np.ndarray, np.ndarray]:
    """Contracted bounds [3], [3] of one cell."""
    lo, hi = np.zeros(3), np.ones(3)
    for axis, i, n in zip(axes, grid_index, block_dim, strict=True):
        lo[axis], hi[axis] = i / n, (i + 1) / n
    return lo, hi


def world_bounds(cell_min, cell_max, aabb) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The part of a contracted cell inside the AABB ([0.25, 0.75]^3, where contraction is linear), in world
    coordinates: ([3], [3]), or (None, None) for a cell wholly outside."""
    lo, hi = np.maximum(cell_min, 0.25), np.minimum(cell_max, 0.75)
    if (hi <= lo).any():
        return None, None
    scale = (aabb[3:] - aabb[:3]) * 2  # contracted 0.25 -> a_min, 0.75 -> a_max
    return aabb[:3] + (lo - 0.25) * scale, aabb[:3] + (hi - 0.25) * scale


def points_in_box(y: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Closed-box test on contracted points [P, 3] -> [P] bool."""
    return ((y >= lo) & (y <= hi)).all(axis=1)


def blocks_per_camera(part: Partition, n_cameras: int) -> np.ndarray:
    """How many blocks each scene camera trains. -> [n_cameras] int"""
    counts = np.zeros(n_cameras, dtype=np.int64)
    for b in part.blocks:
        np.add.at(counts, b.camera_ids, 1)
    return counts


def check_blocks(part: Partition) -> None:
    """Every block needs cameras and points of its own: an empty block is an error, never silently kept."""
    for b in part.blocks:
        if len(b.camera_ids) == 0 or b.n_cell_points == 0:
            raise PartitionError(
                f"partition: block {b.index} (grid {list(b.grid_index)}) is empty: {len(b.camera_ids)} "
                f"cameras, {b.n_cell_points} points in its cell ({len(b.point_ids)} with the margin); use "
                "fewer blocks (partition.block_dim) or another partition.aabb"
            )


def few_view_warnings(part: Partition, min_views: int) -> list[str]:
    """One line per block trained by fewer than `min_views` views (partition.min_views; 0 = none)."""
    return [
        f"block {b.index} is trained by only {len(b.camera_ids)} views (partition.min_views {min_views})"
        for b in part.blocks
        if len(b.camera_ids) < min_views
    ]
