"""What a camera sees of the SfM points: which points project into its image (in front of it, no occlusion
test), found fast through `PointColumns` (the points sorted into ground columns, so that a camera projects
only the columns its frustum reaches), and the rectangle of a view where a block's own cell lies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from momentumgs.data.scene import Scene
from momentumgs.partition.grid import Partition

MIN_CROP = 16  # pixels: a view's crop is at least this wide and high (the SSIM window is 11)
COLUMN_POINTS = 1024  # points per ground column of the view index (balances box tests against projections)


def points_in_view(scene: Scene, cam_id: int, points: np.ndarray) -> np.ndarray:
    """Which world points [P, 3] project into camera `cam_id`'s image, in front of it. -> [P] bool"""
    return in_image(scene.cameras[cam_id], points)


def in_image(cam, points: np.ndarray) -> np.ndarray:
    """Which world points [P, 3] project into `cam`'s image, in front of it. -> [P] bool"""
    return projected_in_image(cam, *cam.project(points))


def projected_in_image(cam, uv: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Which projections (pixel uv [P, 2], depth [P]) land in `cam`'s image, in front of it. -> [P] bool"""
    in_x = (uv[:, 0] >= 0) & (uv[:, 0] < cam.width)
    return (depth > 1e-6) & in_x & (uv[:, 1] >= 0) & (uv[:, 1] < cam.height)


@dataclass
class PointColumns:
    """The points sorted into columns of a grid over the ground, each with the box of its points, so that a
    camera's view test projects only the points of the columns its frustum reaches: one camera costs the
    points it sees plus a box test per column, not a projection of the whole cloud."""

    order: np.ndarray  # [P] int64 point ids, column after column
    points: np.ndarray  # [P, 3] float64 the points in that order (a column's points are contiguous)
    starts: np.ndarray  # [C + 1] int64 where each non-empty column begins in `order`
    lo: np.ndarray  # [C, 3] float64 box of each column's points (padded against rounding)
    hi: np.ndarray  # [C, 3]


def point_columns(points: np.ndarray, ground: tuple[int, int]) -> PointColumns:
    """Index world points [P, 3] by a square grid over the ground axes of ~COLUMN_POINTS points a column;
    the grid spans the 1%..99% quantiles, and the border columns hold everything beyond."""
    n = max(1, int(np.sqrt(len(points) / COLUMN_POINTS)))
    xy = np.asarray(points, dtype=np.float64)[:, list(ground)]  # [P, 2]
    if len(points):
        lo_q, hi_q = np.quantile(xy, [0.01, 0.99], axis=0)
    else:
        lo_q = hi_q = np.zeros(2)
    cell = np.clip(((xy - lo_q) / np.maximum(hi_q - lo_q, 1e-12) * n).astype(np.int64), 0, n - 1)
    key = cell[:, 0] * n + cell[:, 1]  # [P]
    order = np.argsort(key, kind="stable")
    key = key[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(points) else np.zeros(0, np.int64)
    sorted_points = np.asarray(points, dtype=np.float64)[order]  # [P, 3]
    if len(points):
        lo = np.minimum.reduceat(sorted_points, starts)  # [C, 3]
        hi = np.maximum.reduceat(sorted_points, starts)
    else:
        lo = hi = np.zeros((0, 3))
    pad = 1e-6 * (1.0 + float(np.abs(sorted_points).max(initial=0.0)))
    starts = np.r_[starts, len(points)].astype(np.int64)
    return PointColumns(order, sorted_points, starts, lo - pad, hi + pad)


def columns_in_view(cam, columns: PointColumns) -> np.ndarray:
    """Which columns' boxes may hold a point that projects into `cam`'s image, in front of it. -> [C] bool

    In camera coordinates p (z > 0), u = K[0].p / z lies in [0, W) iff K[0].p >= 0 and (W K[2] - K[0]).p > 0,
    and likewise for v: four planes through the centre, plus z > 0. A box lies outside when its largest
    value of one plane's function is below zero; a linear function peaks at the corner that takes, on each
    axis, the box's max where the function's world slope is positive and its min elsewhere."""
    K = cam.K
    planes = np.stack([K[0], cam.width * K[2] - K[0], K[1], cam.height * K[2] - K[1], [0.0, 0.0, 1.0]])
    R, t = cam.viewmat[:3, :3], cam.viewmat[:3, 3]
    slope = planes @ R  # [5, 3] each plane's function of world coordinates: slope . x + planes . t
    peak = columns.hi @ np.maximum(slope, 0).T + columns.lo @ np.minimum(slope, 0).T + planes @ t  # [C, 5]
    return (peak[:, :4] >= 0).all(axis=1) & (peak[:, 4] > 1e-6)


def points_seen(scene: Scene, cam_id: int, columns: PointColumns) -> np.ndarray:
    """Ids of scene points that project into camera `cam_id`'s image, in front of it (as `points_in_view`
    on the whole cloud, at the cost of the columns it reaches). -> [S] int64"""
    ids, near = points_near_view(scene.cameras[cam_id], columns)
    return ids[points_in_view(scene, cam_id, near)]


def points_near_view(cam, columns: PointColumns) -> tuple[np.ndarray, np.ndarray]:
    """Ids and coordinates of the points in the columns whose boxes `cam`'s image may reach
    (`columns_in_view`): a superset of the points it sees. -> [Q] int64, [Q, 3]"""
    reach = np.flatnonzero(columns_in_view(cam, columns))
    if len(reach) == 0:
        return np.zeros(0, np.int64), columns.points[:0]
    spans = [slice(columns.starts[c], columns.starts[c + 1]) for c in reach]
    ids = np.concatenate([columns.order[span] for span in spans])  # [Q]
    return ids, np.concatenate([columns.points[span] for span in spans])


def cell_rectangle(cam, cell_points: np.ndarray, pad: float) -> tuple[int, int, int, int]:
    """The pixel rectangle (x0, y0, x1, y1) of `cam`'s image where a block's own cell lies: the box of its
    cell's SfM points [Q, 3] that project into the image, widened by `pad` x the image size on each side
    and to at least MIN_CROP pixels. The whole image when none of them does."""
    size = np.array([cam.width, cam.height])
    uv, depth = cam.project(cell_points)  # [Q, 2], [Q]
    uv = uv[projected_in_image(cam, uv, depth)]  # [S, 2]
    if len(uv) == 0:
        return 0, 0, cam.width, cam.height
    lo = np.clip(np.floor(uv.min(axis=0) - pad * size), 0, size)  # [2]
    hi = np.clip(np.ceil(uv.max(axis=0) + pad * size), 0, size)
    least = np.minimum(MIN_CROP, size)
    hi = np.maximum(hi, lo + least)
    lo, hi = lo - np.maximum(hi - size, 0), np.minimum(hi, size)  # slide back inside, keeping the size
    return int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1])


def cell_rectangles(scene: Scene, part: Partition, pad: float) -> list[dict[int, tuple[int, int, int, int]]]:
    """For each block, the rectangle of each of its training views where its own cell lies
    (`cell_rectangle`): the pixels whose loss trains what the merge keeps of the block."""
    owner = part.block_of_points(scene.points)  # [P]
    rects = []
    for b in part.blocks:
        cell_points = scene.points[owner == b.index]
        columns = point_columns(cell_points, part.axes[:2])
        rect = {}
        for cam_id in b.camera_ids:
            cam = scene.cameras[int(cam_id)]
            rect[int(cam_id)] = cell_rectangle(cam, points_near_view(cam, columns)[1], pad)
        rects.append(rect)
    return rects
