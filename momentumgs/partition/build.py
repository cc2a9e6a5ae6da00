"""`partition_scene`: a scene split as a PartitionConfig asks, in the order of the method (docs/method.md,
Partitioning and merging): the up axis and the AABB (partition/bounds.py), the grid of cells with each
block's points (cell plus margin; partition/grid.py), the cameras of each block (an injected
`CameraAssigner`, partition/assign.py), the checks that need the scene, and the points each block starts
from (partition/points.py).

The rules follow CityGaussian's `data_partition.py` and Momentum-GS's code that reuses it; where they differ
the module that holds the rule says why.
"""

from __future__ import annotations

import numpy as np

from momentumgs.config import check_config
from momentumgs.data.scene import Scene
from momentumgs.partition.assign import CameraAssigner, default_assigner
from momentumgs.partition.bounds import (
    PartitionError,
    check_cameras_inside,
    contract,
    detect_up_axis,
    estimate_aabb,
    format_up_axis,
    parse_up_axis,
)
from momentumgs.partition.grid import (
    Block,
    Partition,
    block_of_contracted,
    cell_bounds,
    check_blocks,
    points_in_box,
    world_bounds,
)
from momentumgs.partition.points import start_point_ids
from momentumgs.partition.visibility import point_columns


def partition_scene(scene: Scene, cfg, assigner: CameraAssigner | None = None) -> Partition:
    """Split `scene` as `cfg` (a PartitionConfig) asks. Raises ConfigError on a bad value of `cfg` (the
    schema's check), PartitionError on a scene it cannot split so (cameras outside the AABB, empty blocks).

    `assigner` chooses each block's cameras; None builds the one `cfg.assign` names, whose mode must then be
    "center" or "visibility" ("ssim" needs a model and a device: see partition.ssim.make_assigner)."""
    check_config(cfg, "partition.")
    if assigner is None:
        assigner = default_assigner(cfg)
    elif not isinstance(assigner, CameraAssigner):  # e.g. a device, the third parameter before assigners
        raise TypeError(f"partition_scene: expected a CameraAssigner, got {assigner!r}")
    if not scene.train_ids:
        raise PartitionError("partition: the scene has no train views")
    up = scene_up_axis(scene, cfg.up_axis)
    aabb = np.asarray(cfg.aabb, dtype=np.float64) if cfg.aabb else estimate_aabb(scene, up)
    if cfg.aabb:
        check_cameras_inside(scene, aabb, up)
    part = Partition(
        aabb=aabb,
        up_axis=up,
        block_dim=tuple(int(n) for n in cfg.block_dim),
        margin=float(cfg.margin),
        assign=assigner.name,
        num_points=len(scene.points),
        camera_names=[c.name for c in scene.cameras],
    )
    y = contract(scene.points, aabb)  # [P, 3]
    part.blocks = grid_blocks(part, y)
    assign_cameras(scene, part, assigner)
    check_blocks(part)
    part.block_points = cfg.block_points
    seen_based = cfg.block_points in ("coverage", "coarse")
    columns = point_columns(scene.points, part.axes[:2]) if seen_based else None
    for b in part.blocks:
        b.point_ids = start_point_ids(scene, b, cfg.block_points, columns, y)
    return part


def scene_up_axis(scene: Scene, up_axis: str) -> str:
    """partition.up_axis as a partition records it ('+z', '-y', ...): detected from the cameras for auto."""
    if up_axis == "auto":
        return detect_up_axis(scene)
    return format_up_axis(*parse_up_axis(up_axis))


def grid_blocks(part: Partition, y: np.ndarray) -> list[Block]:
    """The blocks of `part`'s grid, each with its cell and the points of the cell plus the margin (no
    cameras yet), from the scene's points contracted by the partition's AABB, y [P, 3]."""
    owner = block_of_contracted(y, part.grid_shape, part.axes, part.block_dim)  # [P]
    blocks = []
    for index, grid_index in enumerate(np.ndindex(*part.block_dim)):
        lo, hi = cell_bounds(grid_index, part.axes, part.block_dim)
        pad = part.margin * (hi - lo)
        ids = np.flatnonzero(points_in_box(y, lo - pad, hi + pad) | (owner == index))  # [Q]
        w_lo, w_hi = world_bounds(lo, hi, part.aabb)
        n_cell = int((owner == index).sum())
        blocks.append(Block(index, tuple(grid_index), lo, hi, w_lo, w_hi, np.zeros(0, np.int64), ids, n_cell))
    return blocks


def assign_cameras(scene: Scene, part: Partition, assigner: CameraAssigner) -> None:
    """Set each block's camera_ids as `assigner` chooses them."""
    cameras = assigner.assign(scene, part)
    if len(cameras) != len(part.blocks):
        raise ValueError(
            f"{type(assigner).__name__} gave cameras for {len(cameras)} of {len(part.blocks)} blocks"
        )
    for b, cams in zip(part.blocks, cameras, strict=True):
        b.camera_ids = np.asarray(cams, dtype=np.int64)
