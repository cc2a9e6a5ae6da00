"""Which SfM points each block's anchors start from (`partition.block_points`): its cell plus a margin
(`cell`), those plus every point its cameras see (`coverage`, as VastGaussian), the cell plus margin with the
rest of coverage thinned to a coarse grid (`coarse`: a block's cost stays bounded as the scene grows), or the
whole cloud (`all`, as the Momentum-GS code). Anchors outside the cell only serve training: the merge keeps
each block's own cell.
"""

from __future__ import annotations

import numpy as np

from momentumgs.data.scene import Scene
from momentumgs.partition.grid import Block
from momentumgs.partition.visibility import PointColumns, point_columns, points_seen

# block_points "coarse": beyond the cell plus margin, what the block's cameras see is thinned to one point
# per cube of 1/COARSE_CELLS of the cell per axis (contracted), so that a block's anchors grow with its
# cell, not with what its views reach (docs/method.md, Partitioning and merging, for the measurements)
COARSE_CELLS = 32


def start_point_ids(
    scene: Scene,
    block: Block,
    mode: str,
    columns: PointColumns | None = None,
    contracted: np.ndarray | None = None,
) -> np.ndarray:
    """The SfM points a block's anchors start from. -> [Q] int64 sorted ids into scene.points

    cell: its cell plus the margin (the least memory; its views show much that no anchor can explain);
    coverage: those plus every point one of its cameras sees (in the image, in front; no occlusion test), as
      VastGaussian's coverage-based selection: the block can explain its views, memory grows with them;
    coarse: cell's points, and coverage's beyond them thinned to a coarse grid (`coarse_point_ids`): the
      views are still explained, roughly away from the cell, at a cost that grows with the cell;
    all: the whole cloud, as the Momentum-GS code does.
    Anchors outside the cell only serve training: the merge keeps each block's own cell.
    `contracted` [P, 3] is scene.points contracted by the partition's AABB (needed by coarse)."""
    if mode == "cell":
        return block.point_ids
    if mode == "all":
        return np.arange(len(scene.points), dtype=np.int64)
    seen = coverage_mask(scene, block, columns)  # [P]
    if mode == "coverage":
        return np.flatnonzero(seen)
    if contracted is None:
        raise ValueError("start_point_ids: block_points coarse needs the contracted points")
    return coarse_point_ids(contracted, seen, block)


def coverage_mask(scene: Scene, block: Block, columns: PointColumns | None = None) -> np.ndarray:
    """The block's points (cell plus margin) and every point one of its cameras sees. -> [P] bool"""
    if columns is None:  # the points of a ground grid over x, y: any grid gives the same ids, only slower
        columns = point_columns(scene.points, (0, 1))
    seen = np.zeros(len(scene.points), dtype=bool)
    seen[block.point_ids] = True
    for cam_id in block.camera_ids:
        seen[points_seen(scene, int(cam_id), columns)] = True
    return seen


def coarse_point_ids(y: np.ndarray, seen: np.ndarray, block: Block) -> np.ndarray:
    """block_points "coarse" from the contracted points y [P, 3] and coverage's mask seen [P]: the block's
    own points (cell plus margin) and, of the seen points beyond them, the first in each cube of
    1 / COARSE_CELLS of the cell. The coarse points become sparse anchors whose initial scales (the
    distance to their neighbours) span the gaps, so the block's views keep a rough context without a
    full-density copy of it. In contracted space the grid also thins far points more, as it does the
    cells. -> [Q] int64 sorted ids"""
    keep = np.zeros(len(y), dtype=bool)  # [P]
    keep[block.point_ids] = True
    far = np.flatnonzero(seen & ~keep)  # [F]
    if len(far):
        size = block.cell_max - block.cell_min  # [3]
        cube = np.floor(y[far] / (size / COARSE_CELLS)).astype(np.int64)  # [F, 3]
        _, first = np.unique(cube, axis=0, return_index=True)
        keep[far[first]] = True
    return np.flatnonzero(keep)
