"""Scene bounds: the world's up axis (detected from the cameras), the AABB (given or estimated) and the
contraction of all of space into [0, 1]^3 that the grid of blocks splits (docs/method.md, Partitioning and
merging).

The up axis is detected (cameras are not rolled), not assumed. The contraction is CityGaussian's
`contract_to_unisphere` with the infinity norm: the AABB maps to [0.25, 0.75]^3 and the unbounded outside to
the rest of [0, 1]^3, so every point, however far, has a place in the grid.
"""

from __future__ import annotations

import numpy as np

from momentumgs.data.scene import Scene
from momentumgs.errors import UserError

AXIS_NAMES = "xyz"
UP_AXIS_MIN_COS = 0.9  # detected up must lie within ~26 degrees of a world axis
UP_AXIS_MIN_GAP = 0.05  # second-smallest eigenvalue of the camera x-axis scatter (trace 1) for a clear up
AABB_QUANTILE = 0.02  # robust box in the ground plane: 2% .. 98% of the SfM points and camera centres
AABB_UP_QUANTILE = 0.001  # along up: 0.1% .. 99.9% of the points (tall buildings are few of the points)
AABB_UP_PAD = 0.05  # ... widened by this fraction of its height on each side (the top roof's few points)
MAX_CAMERAS_OUTSIDE = 0.1  # fraction of train camera centres that may lie outside the AABB's ground plane


class PartitionError(UserError):
    """A partition that cannot be made as asked (bad AABB, grid, empty block) or a bad partition file."""


# --- up axis -------------------------------------------------------------------------------------


def parse_up_axis(text: str) -> tuple[int, int]:
    """'z', '+z', '-y', ... (as partition files write it) -> (axis index, sign)."""
    t = text.strip().lower()
    sign = -1 if t.startswith("-") else 1
    name = t.lstrip("+-")
    if len(name) != 1 or name not in AXIS_NAMES or t.count("-") + t.count("+") > 1:
        raise PartitionError(f"up axis: expected x, y, z, +x, +y, +z, -x, -y or -z, got {text!r}")
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
