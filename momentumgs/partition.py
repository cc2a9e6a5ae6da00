"""Scene partitioning (docs/method.md, Partitioning and merging): scene bounds, space contraction, a grid
of blocks, and which cameras and SfM points each block trains from.

The rules follow CityGaussian's `data_partition.py` and Momentum-GS's code that reuses it: the AABB is
mapped to [0.25, 0.75]^3 and the unbounded outside to the rest of [0, 1]^3, and [0, 1]^3 is split by a
regular grid. So every point of the cloud, however far, lies in exactly one block (border blocks own the
outside). Differences from them, and why:

- The up axis is detected (cameras are not rolled), not assumed, and `block_dim` is given as
  (horizontal 1, horizontal 2, up): the ground axes are the two world axes other than the up axis, in
  world order (up z -> (x, y), up y -> (x, z), up x -> (y, z)). The paper's 2x1x4 on the y-up Mill-19
  scenes is block_dim [2, 4, 1] here.
- The default camera assignment needs no coarse model: a camera trains block b if its centre lies in b's
  cell, or if at least `visibility_threshold` of b's (margin-expanded) SfM points project inside its image,
  in front of it. There is no occlusion test: a camera that looks at a block through a building still
  counts, which errs on the side of more views per block. CityGaussian's SSIM test on a rendered coarse
  model is `assign: ssim` (momentumgs/partition_ssim.py; it needs a trained model of the whole scene).
- The camera assignment is an object the caller may inject (`CameraAssigner`): this module holds the
  centre and visibility rules, which need nothing but the scene; the SSIM rule loads a model and renders
  on a device, so it lives in partition_ssim.py and is handed in (`partition_ssim.make_assigner`).
- Which SfM points a block starts from is `block_points`: its cell plus a margin (`cell`), those plus every
  point its cameras see (`coverage`, as VastGaussian), the cell plus margin with the rest of coverage
  thinned to a coarse grid (`coarse`: a block's cost stays bounded as the scene grows), or the whole cloud
  (`all`, as the Momentum-GS code). Anchors outside the cell only serve training: the merge keeps each
  block's own cell.
"""

from __future__ import annotations

import base64
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from momentumgs.data.scene import Scene
from momentumgs.errors import UserError
from momentumgs.io_utils import write_text_atomic

PARTITION_FORMAT = "momentumgs-partition"
PARTITION_VERSION = 1
AXIS_NAMES = "xyz"
ASSIGN_MODES = ("visibility", "center", "ssim")
BLOCK_POINTS = ("cell", "coverage", "coarse", "all")  # what each block starts from: start_point_ids

UP_AXIS_MIN_COS = 0.9  # detected up must lie within ~26 degrees of a world axis
UP_AXIS_MIN_GAP = 0.05  # second-smallest eigenvalue of the camera x-axis scatter (trace 1) for a clear up
AABB_QUANTILE = 0.02  # robust box in the ground plane: 2% .. 98% of the SfM points and camera centres
AABB_UP_QUANTILE = 0.001  # along up: 0.1% .. 99.9% of the points (tall buildings are few of the points)
AABB_UP_PAD = 0.05  # ... widened by this fraction of its height on each side (the top roof's few points)
MAX_CAMERAS_OUTSIDE = 0.1  # fraction of train camera centres that may lie outside the AABB's ground plane
MAX_VISIBILITY_POINTS = 20_000  # per block, a fixed random subset for the visibility test (cost bound)
MIN_CROP = 16  # pixels: a view's crop is at least this wide and high (the SSIM window is 11)
COLUMN_POINTS = 1024  # points per ground column of the view index (balances box tests against projections)
# block_points "coarse": beyond the cell plus margin, what the block's cameras see is thinned to one point
# per cube of 1/COARSE_CELLS of the cell per axis (contracted), so that a block's anchors grow with its
# cell, not with what its views reach (docs/method.md, Partitioning and merging, for the measurements)
COARSE_CELLS = 32


class PartitionError(UserError):
    """A partition that cannot be made as asked (bad AABB, grid, empty block) or a bad partition file."""


# --- up axis -------------------------------------------------------------------------------------


def parse_up_axis(text: str) -> tuple[int, int]:
    """'z', '+z', '-y', ... -> (axis index, sign)."""
    t = text.strip().lower()
    sign = -1 if t.startswith("-") else 1
    name = t.lstrip("+-")
    if len(name) != 1 or name not in AXIS_NAMES or t.count("-") + t.count("+") > 1:
        raise PartitionError(f"partition.up_axis: expected auto, x, y, z, -x, -y or -z, got {text!r}")
    return AXIS_NAMES.index(name), sign


def format_up_axis(axis: int, sign: int) -> str:
    return ("+" if sign > 0 else "-") + AXIS_NAMES[axis]


def up_vector_estimate(viewmats: np.ndarray) -> tuple[np.ndarray, float]:
    """World up from camera orientations [N, 4, 4] (world->camera, OpenCV axes) -> (unit [3], eigen gap).

    People and drones keep their cameras level, so every camera's x axis (image right) is horizontal and
    up is the direction most orthogonal to all of them: the smallest eigenvector of their scatter. (The
    mean image-up vector -y alone fails on nadir views, whose image up is horizontal.) The sign comes from
    image up (-y) and the viewing direction (z, which looks down on aerial views) together. When the x
    axes span only one direction (one flight line, one heading), the scatter leaves a plane of candidates:
    then up is the direction in that plane closest to mean(-y - z).
    """
    R = viewmats[:, :3, :3]  # rows: camera axes in world coordinates
    right, down, forward = R[:, 0], R[:, 1], R[:, 2]  # [N, 3] each
    scatter = right.T @ right / len(right)  # [3, 3], trace 1
    evals, evecs = np.linalg.eigh(scatter)  # ascending
    hint = (-down - forward).mean(0)  # [3] points up for level cameras that look sideways or down
    if evals[1] >= UP_AXIS_MIN_GAP:
        up = evecs[:, 0]
    else:
        plane = evecs[:, :2]  # [3, 2]
        up = plane @ (plane.T @ hint)
        if np.linalg.norm(up) < 1e-9:
            return evecs[:, 0], 0.0
        up = up / np.linalg.norm(up)
    if up @ hint < 0:
        up = -up
    return up, float(evals[1])


def detect_up_axis(scene: Scene) -> str:
    """The world axis that is up for `scene`'s cameras, snapped to ± x/y/z: '+z', '-y', ...

    Raises PartitionError when the cameras do not say it clearly (tilted world frame, rolled cameras).
    """
    if not scene.cameras:
        raise PartitionError("partition.up_axis: no cameras to detect the up axis from")
    viewmats = np.stack([c.viewmat for c in scene.cameras])  # [N, 4, 4]
    up, gap = up_vector_estimate(viewmats)
    axis = int(np.argmax(np.abs(up)))
    sign = 1 if up[axis] > 0 else -1
    hint = -(viewmats[:, 1, :3] + viewmats[:, 2, :3]).mean(0)  # [3]
    if abs(up[axis]) < UP_AXIS_MIN_COS or abs(hint @ up) < 0.1:
        raise PartitionError(
            f"partition.up_axis: cannot tell the up axis from the cameras (estimate "
            f"[{up[0]:.2f}, {up[1]:.2f}, {up[2]:.2f}] is not close to a world axis); "
            "set it, e.g. --set partition.up_axis=z"
        )
    return format_up_axis(axis, sign)


def ground_axes(up_axis: int) -> tuple[int, int]:
    """The two horizontal world axes, in world order."""
    a, b = (i for i in range(3) if i != up_axis)
    return a, b


# --- scene bounds and contraction ----------------------------------------------------------------


def check_aabb(values) -> np.ndarray:
    """A config AABB [min x, min y, min z, max x, max y, max z] -> [6] float64, or PartitionError."""
    try:
        aabb = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise PartitionError(f"partition.aabb: expected 6 numbers, got {values!r}") from None
    if aabb.shape != (6,):
        raise PartitionError(
            f"partition.aabb: expected 6 numbers (min x, min y, min z, max x, max y, max z), got {len(aabb)}"
        )
    if not np.isfinite(aabb).all():
        raise PartitionError(f"partition.aabb: values must be finite, got {list(values)}")
    bad = [AXIS_NAMES[i] for i in range(3) if aabb[i] >= aabb[i + 3]]
    if bad:
        raise PartitionError(f"partition.aabb: min must be below max on every axis ({', '.join(bad)} is not)")
    return aabb


def estimate_aabb(scene: Scene, up: str) -> np.ndarray:
    """Scene bounds [6] (min xyz, max xyz) from the SfM points and the camera centres.

    The paper's rule takes centre = the point the camera axes focus on, extent = the median camera distance
    per axis. On aerial captures that box is too small in the ground plane (cameras look at far more than
    their median spacing) and too tall (it reaches up to the flight altitude, so a vertical split falls
    above every roof). So: in the ground plane the 2%..98% quantiles of the SfM points, widened to the
    same quantiles of the train camera centres (the box must hold where the views are taken from); along
    up the 0.1%..99.9% quantiles of the points alone, plus 5% (the cameras' altitude is left out; roofs of
    tall buildings are a small fraction of the points, which a 2% cut would lose). Outliers beyond the
    quantiles still land in the border blocks through the contraction.
    """
    up_axis, _ = parse_up_axis(up)
    centres = np.stack([scene.cameras[i].center for i in scene.train_ids or range(len(scene.cameras))])
    points = np.asarray(scene.points, dtype=np.float64)  # [P, 3]
    source = points if len(points) else centres
    q = (AABB_QUANTILE, 1 - AABB_QUANTILE)
    lo, hi = np.quantile(source, q, axis=0)  # [3] each
    c_lo, c_hi = np.quantile(centres, q, axis=0)
    for a in ground_axes(up_axis):
        lo[a], hi[a] = min(lo[a], c_lo[a]), max(hi[a], c_hi[a])
    lo[up_axis], hi[up_axis] = np.quantile(source[:, up_axis], (AABB_UP_QUANTILE, 1 - AABB_UP_QUANTILE))
    pad_up = AABB_UP_PAD * (hi[up_axis] - lo[up_axis])
    lo[up_axis], hi[up_axis] = lo[up_axis] - pad_up, hi[up_axis] + pad_up
    # a flat cloud (or a single camera) must not give a zero-size axis
    min_size = 0.01 * max(float((hi - lo).max()), 1e-6)
    pad = np.maximum(min_size - (hi - lo), 0) / 2
    return np.concatenate([lo - pad, hi + pad])


def contract(x: np.ndarray, aabb: np.ndarray) -> np.ndarray:
    """World points [..., 3] -> [0, 1]^3: the AABB to [0.25, 0.75]^3, the unbounded outside to the rest.

    u = 2(x - a_min)/(a_max - a_min) - 1; if |u|_inf > 1: u <- (2 - 1/|u|_inf) u/|u|_inf; x' = u/4 + 0.5
    (CityGaussian's `contract_to_unisphere` with the infinity norm; docs/method.md, Partitioning and merging).
    """
    a_min, a_max = aabb[:3], aabb[3:]
    u = 2 * (np.asarray(x, dtype=np.float64) - a_min) / (a_max - a_min) - 1  # [..., 3]
    n = np.abs(u).max(axis=-1, keepdims=True)  # [..., 1]
    outside = n > 1
    safe_n = np.where(outside, n, 1.0)
    u = np.where(outside, (2 - 1 / safe_n) * u / safe_n, u)
    return u / 4 + 0.5


def uncontract(y: np.ndarray, aabb: np.ndarray) -> np.ndarray:
    """Inverse of `contract` for y in the open cube (0, 1)^3 ([..., 3] -> [..., 3])."""
    a_min, a_max = aabb[:3], aabb[3:]
    v = 4 * (np.asarray(y, dtype=np.float64) - 0.5)  # [..., 3], |v|_inf < 2
    m = np.abs(v).max(axis=-1, keepdims=True)  # [..., 1]
    outside = m > 1
    n = 1 / (2 - np.where(outside, m, 1.0))  # |u|_inf before contraction
    u = np.where(outside, v * n / np.where(outside, m, 1.0), v)
    return (u + 1) / 2 * (a_max - a_min) + a_min


# --- the partition -------------------------------------------------------------------------------


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
    block_points: str = "cell"  # which points each block starts from: one of BLOCK_POINTS
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


def check_block_dim(values) -> tuple[int, int, int]:
    ok = (
        isinstance(values, (list, tuple))
        and len(values) == 3
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in values)
    )
    if not ok:
        raise PartitionError(
            f"partition.block_dim: expected 3 positive integers (horizontal, horizontal, up), got {values!r}"
        )
    return int(values[0]), int(values[1]), int(values[2])


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


def blocks_per_camera(part: Partition, n_cameras: int) -> np.ndarray:
    """How many blocks each scene camera trains. -> [n_cameras] int"""
    counts = np.zeros(n_cameras, dtype=np.int64)
    for b in part.blocks:
        np.add.at(counts, b.camera_ids, 1)
    return counts


# --- files ---------------------------------------------------------------------------------------


def _encode_ids(ids: np.ndarray) -> str:
    """int ids -> base64 of little-endian int32 (compact: point ids run to millions)."""
    return base64.b64encode(np.asarray(ids, dtype="<i4").tobytes()).decode("ascii")


def _decode_ids(text: str, count: int) -> np.ndarray:
    ids = np.frombuffer(base64.b64decode(text.encode("ascii"), validate=True), dtype="<i4")
    if len(ids) != count:
        raise ValueError(f"expected {count} ids, found {len(ids)}")
    return ids.astype(np.int64)


def _list(v: np.ndarray | None):
    return None if v is None else [float(x) for x in v]


def partition_to_dict(p: Partition) -> dict:
    return {
        "format": PARTITION_FORMAT,
        "version": PARTITION_VERSION,
        "aabb": _list(p.aabb),
        "up_axis": p.up_axis,
        "block_dim": list(p.block_dim),
        "margin": p.margin,
        "assign": p.assign,
        "block_points": p.block_points,
        "num_points": p.num_points,
        "camera_names": p.camera_names,
        "blocks": [
            {
                "index": b.index,
                "grid_index": list(b.grid_index),
                "cell_min": _list(b.cell_min),
                "cell_max": _list(b.cell_max),
                "world_min": _list(b.world_min),
                "world_max": _list(b.world_max),
                "camera_ids": [int(i) for i in b.camera_ids],
                "num_point_ids": len(b.point_ids),
                "point_ids_int32_b64": _encode_ids(b.point_ids),
                "n_cell_points": b.n_cell_points,
            }
            for b in p.blocks
        ],
    }


def _array(v) -> np.ndarray | None:
    return None if v is None else np.asarray(v, dtype=np.float64)


def partition_from_dict(d: dict) -> Partition:
    if d.get("format") != PARTITION_FORMAT:
        raise ValueError(f"not a partition file (format {d.get('format')!r})")
    if d.get("version") != PARTITION_VERSION:
        raise ValueError(f"partition format version {d.get('version')!r}, expected {PARTITION_VERSION}")
    part = Partition(
        aabb=check_aabb(d["aabb"]),
        up_axis=format_up_axis(*parse_up_axis(d["up_axis"])),
        block_dim=check_block_dim(d["block_dim"]),
        margin=float(d["margin"]),
        assign=str(d["assign"]),
        block_points=str(d.get("block_points", "cell")),  # files written before the option: their cells
        num_points=int(d["num_points"]),
        camera_names=[str(n) for n in d["camera_names"]],
    )
    for b in d["blocks"]:
        point_ids = _decode_ids(b["point_ids_int32_b64"], int(b["num_point_ids"]))
        camera_ids = np.asarray(b["camera_ids"], dtype=np.int64)
        if (point_ids < 0).any() or (point_ids >= part.num_points).any():
            raise ValueError(f"block {b['index']}: point ids outside the cloud of {part.num_points}")
        if (camera_ids < 0).any() or (camera_ids >= len(part.camera_names)).any():
            raise ValueError(f"block {b['index']}: camera ids outside the {len(part.camera_names)} cameras")
        part.blocks.append(
            Block(
                index=int(b["index"]),
                grid_index=tuple(int(i) for i in b["grid_index"]),
                cell_min=_array(b["cell_min"]),
                cell_max=_array(b["cell_max"]),
                world_min=_array(b["world_min"]),
                world_max=_array(b["world_max"]),
                camera_ids=camera_ids,
                point_ids=point_ids,
                n_cell_points=int(b["n_cell_points"]),
            )
        )
    if [b.index for b in part.blocks] != list(range(int(np.prod(part.block_dim)))):
        raise ValueError(f"expected blocks 0..{int(np.prod(part.block_dim)) - 1} in order")
    return part


def save_partition(path: str | Path, p: Partition) -> None:
    """Write `p` as JSON, atomically (a crash leaves the old file or the new one)."""
    write_text_atomic(path, json.dumps(partition_to_dict(p), indent=1) + "\n")


def load_partition(path: str | Path) -> Partition:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise PartitionError(f"{path}: partition file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PartitionError(f"{path}: not a readable partition file ({exc})") from None
    try:
        return partition_from_dict(data)
    except PartitionError as exc:
        raise PartitionError(f"{path}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        detail = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
        raise PartitionError(f"{path}: malformed partition file ({detail})") from None


def sample_ids(ids: np.ndarray, k: int, seed: int) -> np.ndarray:
    if len(ids) <= k:
        return ids
    return np.sort(np.random.default_rng(seed).choice(ids, size=k, replace=False))


class CameraAssigner(ABC):
    """Which train cameras train each block: called once the blocks' cells and point ids are known.

    An object rather than a mode string so that a rule needing more than the scene (a model, a device)
    is built by the caller and handed to `partition_scene`, which then depends on none of it."""

    name: ClassVar[str]  # recorded as the partition's `assign`

    @abstractmethod
    def assign(self, scene: Scene, part: Partition) -> list[np.ndarray]:
        """Train camera ids [C_b] (sorted int64) for each block of `part`, in block order. The blocks'
        `point_ids` (cell plus margin) are set; their `camera_ids` are not yet."""


def home_cameras(scene: Scene, part: Partition) -> list[set[int]]:
    """Per block, the train cameras whose centre lies in its cell: every rule keeps these."""
    train = np.asarray(scene.train_ids, dtype=np.int64)
    centres = np.stack([scene.cameras[i].center for i in train]) if len(train) else np.zeros((0, 3))
    home = part.block_of_points(centres)  # [T]
    return [set(train[home == b.index].tolist()) for b in part.blocks]


def sorted_ids(chosen: list[set[int]]) -> list[np.ndarray]:
    return [np.array(sorted(c), dtype=np.int64) for c in chosen]


def check_visibility_threshold(value: float) -> float:
    if not 0 < value <= 1:
        raise PartitionError(f"partition.visibility_threshold: expected a fraction in (0, 1], got {value}")
    return value


def check_ssim_options(coarse_model: str | Path, threshold: float) -> None:
    """The options of assign "ssim" (the rule itself is in partition_ssim.py)."""
    if not coarse_model:
        raise PartitionError("partition.assign=ssim needs partition.coarse_model (a trained model.ckpt)")
    if not 0 < threshold < 2:
        raise PartitionError(f"partition.ssim_threshold: expected a value in (0, 2), got {threshold}")


@dataclass(frozen=True)
class CenterAssigner(CameraAssigner):
    """A camera trains only the block its centre lies in."""

    name: ClassVar[str] = "center"

    def assign(self, scene: Scene, part: Partition) -> list[np.ndarray]:
        return sorted_ids(home_cameras(scene, part))


@dataclass(frozen=True)
class VisibilityAssigner(CameraAssigner):
    """The centre's block, plus every block of which at least `threshold` of the (margin-expanded) points
    project into the camera's image, in front of it. No occlusion test: a block seen through a building
    still counts (more views rather than fewer)."""

    threshold: float = 0.25
    name: ClassVar[str] = "visibility"

    def __post_init__(self):
        check_visibility_threshold(self.threshold)

    def assign(self, scene: Scene, part: Partition) -> list[np.ndarray]:
        chosen = home_cameras(scene, part)
        samples = [sample_ids(b.point_ids, MAX_VISIBILITY_POINTS, seed=b.index) for b in part.blocks]
        # What each camera sees, found once, gives every block's visible fraction of its sample.
        columns = point_columns(scene.points, part.axes[:2])
        seen = np.zeros(len(scene.points), dtype=bool)  # [P], cleared after each camera
        for cam_id in scene.train_ids:
            ids = points_seen(scene, cam_id, columns)
            seen[ids] = True
            for b, sample in zip(part.blocks, samples, strict=True):
                if len(sample) and seen[sample].mean() >= self.threshold:
                    chosen[b.index].add(int(cam_id))
            seen[ids] = False
        return sorted_ids(chosen)


def check_partition_config(cfg) -> tuple[int, int, int]:
    """The checks of a PartitionConfig that need no scene, in the order the user meets them.
    -> the block_dim"""
    if cfg.assign not in ASSIGN_MODES:
        modes = ", ".join(ASSIGN_MODES)
        raise PartitionError(f"partition.assign: expected one of {modes}, got {cfg.assign!r}")
    if not 0 <= cfg.margin < 1:
        raise PartitionError(f"partition.margin: expected a fraction of the cell in [0, 1), got {cfg.margin}")
    if cfg.block_points not in BLOCK_POINTS:
        choices = ", ".join(BLOCK_POINTS)
        raise PartitionError(f"partition.block_points: expected one of {choices}, got {cfg.block_points!r}")
    check_visibility_threshold(cfg.visibility_threshold)
    if cfg.assign == "ssim":
        check_ssim_options(cfg.coarse_model, cfg.ssim_threshold)
    return check_block_dim(cfg.block_dim)


def default_assigner(cfg) -> CameraAssigner:
    """The assigner `cfg.assign` names, for the rules that need nothing but the scene."""
    if cfg.assign == "center":
        return CenterAssigner()
    if cfg.assign == "visibility":
        return VisibilityAssigner(cfg.visibility_threshold)
    if cfg.assign == "ssim":
        raise PartitionError(
            "partition.assign=ssim renders a coarse model: pass partition_scene an assigner, "
            "momentumgs.partition_ssim.make_assigner(cfg.partition, device)"
        )
    modes = ", ".join(ASSIGN_MODES)
    raise PartitionError(f"partition.assign: expected one of {modes}, got {cfg.assign!r}")


def check_cameras_inside(scene: Scene, aabb: np.ndarray, up: str) -> None:
    """Most train camera centres must lie inside the AABB's ground-plane rectangle (aerial cameras fly above
    the scene, so the up axis is not checked)."""
    train = scene.train_ids or list(range(len(scene.cameras)))
    centres = np.stack([scene.cameras[i].center for i in train])  # [T, 3]
    a, b = ground_axes(parse_up_axis(up)[0])
    inside = np.ones(len(centres), dtype=bool)
    for axis in (a, b):
        inside &= (centres[:, axis] >= aabb[axis]) & (centres[:, axis] <= aabb[axis + 3])
    n_out = int((~inside).sum())
    if n_out > MAX_CAMERAS_OUTSIDE * len(centres):
        raise PartitionError(
            f"partition.aabb: {n_out} of {len(centres)} train camera centres lie outside it in the ground "
            f"plane ({AXIS_NAMES[a]}, {AXIS_NAMES[b]}); at most {MAX_CAMERAS_OUTSIDE:.0%} may. Give a box "
            "that covers the capture, or [] to estimate it"
        )


def check_blocks(part: Partition) -> None:
    """Every block needs cameras and points of its own: an empty block is an error, never silently kept."""
    for b in part.blocks:
        if len(b.camera_ids) == 0 or b.n_cell_points == 0:
            raise PartitionError(
                f"partition: block {b.index} (grid {list(b.grid_index)}) is empty: {len(b.camera_ids)} "
                f"cameras, {b.n_cell_points} points in its cell ({len(b.point_ids)} with the margin); use "
                "fewer blocks (partition.block_dim) or another partition.aabb"
            )


def partition_scene(scene: Scene, cfg, assigner: CameraAssigner | None = None) -> Partition:
    """Split `scene` as `cfg` (a PartitionConfig) asks. Raises PartitionError on bad input or empty blocks.

    `assigner` chooses each block's cameras; None builds the one `cfg.assign` names, which must then be
    "center" or "visibility" ("ssim" needs a model and a device: see partition_ssim.make_assigner)."""
    block_dim = check_partition_config(cfg)
    if assigner is None:
        assigner = default_assigner(cfg)
    elif not isinstance(assigner, CameraAssigner):  # e.g. a device, the third parameter before assigners
        raise TypeError(f"partition_scene: expected a CameraAssigner, got {assigner!r}")
    if not scene.train_ids:
        raise PartitionError("partition: the scene has no train views")
    if cfg.up_axis.strip().lower() == "auto":
        up = detect_up_axis(scene)
    else:
        up = format_up_axis(*parse_up_axis(cfg.up_axis))
    if cfg.aabb:
        aabb = check_aabb(cfg.aabb)
        check_cameras_inside(scene, aabb, up)
    else:
        aabb = estimate_aabb(scene, up)

    part = Partition(
        aabb=aabb,
        up_axis=up,
        block_dim=block_dim,
        margin=float(cfg.margin),
        assign=assigner.name,
        num_points=len(scene.points),
        camera_names=[c.name for c in scene.cameras],
    )
    y = contract(scene.points, aabb)  # [P, 3]
    owner = block_of_contracted(y, part.grid_shape, part.axes, block_dim)  # [P]
    for index, grid_index in enumerate(np.ndindex(*block_dim)):
        lo, hi = cell_bounds(grid_index, part.axes, block_dim)
        pad = cfg.margin * (hi - lo)
        ids = np.flatnonzero(points_in_box(y, lo - pad, hi + pad) | (owner == index))  # [Q]
        w_lo, w_hi = world_bounds(lo, hi, aabb)
        n_cell = int((owner == index).sum())
        part.blocks.append(
            Block(index, tuple(grid_index), lo, hi, w_lo, w_hi, np.zeros(0, np.int64), ids, n_cell)
        )
    cameras = assigner.assign(scene, part)
    if len(cameras) != len(part.blocks):
        raise ValueError(
            f"{type(assigner).__name__} gave cameras for {len(cameras)} of {len(part.blocks)} blocks"
        )
    for b, cams in zip(part.blocks, cameras, strict=True):
        b.camera_ids = np.asarray(cams, dtype=np.int64)
    check_blocks(part)
    part.block_points = cfg.block_points
    seen_based = cfg.block_points in ("coverage", "coarse")
    columns = point_columns(scene.points, part.axes[:2]) if seen_based else None
    for b in part.blocks:
        b.point_ids = start_point_ids(scene, b, cfg.block_points, columns, y)
    return part


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
