"""A top view of a partition (cv2 drawing): block regions, cell outlines, SfM points, cameras.

The view looks down the up axis onto the ground plane (horizontal 1 to the right). Each block's region is
tinted by sampling the exact block lookup on a pixel grid at the median point height, so the curved
borders of the outer (contracted) cells show as they are; the AABB-interior parts of the cells are outlined
in world coordinates. Camera centres are coloured by the block they stand in; optional lines join each
camera to the cells of the other blocks it trains.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from momentumgs.data.scene import Scene
from momentumgs.io_utils import atomic_path
from momentumgs.partition.bounds import AXIS_NAMES, PartitionError, parse_up_axis
from momentumgs.partition.grid import Partition


def block_colors(n: int) -> np.ndarray:
    """n distinct saturated BGR colours. -> [n, 3] uint8"""
    hues = (np.arange(n) * 180 / max(n, 1) + 10).astype(np.uint8)  # OpenCV hue range is 0..179
    hsv = np.stack([hues, np.full(n, 220, np.uint8), np.full(n, 230, np.uint8)], axis=1)[None]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0]


class TopView:
    """World ground-plane coordinates <-> pixels of a square-pixel image of about `size` pixels."""

    def __init__(self, part: Partition, lo: np.ndarray, hi: np.ndarray, size: int, pad: int = 30):
        up, sign = parse_up_axis(part.up_axis)
        self.h1, self.h2, self.up = part.axes
        # looking down from +up, h1 to the right: h2 points up in the image when (h1, h2, up) is right-handed
        e = np.eye(3)
        self.flip = float(np.cross(e[self.h1], e[self.h2]) @ e[up]) * sign > 0
        self.lo, self.hi = lo, hi  # [2] ground-plane bounds shown
        self.scale = (size - 2 * pad) / float((hi - lo).max())
        self.pad = pad
        w, h = np.ceil((hi - lo) * self.scale).astype(int) + 2 * pad
        self.width, self.height = int(w), int(h)

    def pixels(self, g: np.ndarray) -> np.ndarray:
        """Ground-plane points [N, 2] -> integer pixels [N, 2]."""
        p = (g - self.lo) * self.scale + self.pad
        if self.flip:
            p[:, 1] = self.height - p[:, 1]
        return np.round(p).astype(np.int32)

    def ground(self, px: np.ndarray) -> np.ndarray:
        """Pixel centres [N, 2] -> ground-plane points [N, 2]."""
        p = px.astype(np.float64).copy()
        if self.flip:
            p[:, 1] = self.height - p[:, 1]
        return (p - self.pad) / self.scale + self.lo


def draw_partition(part: Partition, scene: Scene, size: int = 800, lines: bool = False) -> np.ndarray:
    """The top view as a BGR uint8 image [H, W, 3]."""
    points = np.asarray(scene.points, dtype=np.float64)  # [P, 3]
    centres = np.stack([c.center for c in scene.cameras])  # [N, 3]
    view = fit_view(part, points, centres, size)
    colors = block_colors(len(part.blocks))  # [B, 3]
    region = block_regions(part, view, points)  # [H, W]
    img = (255 - 0.25 * (255 - colors[region].astype(np.float32))).astype(np.uint8)
    draw_points(img, part, view, points)
    draw_cells(img, part, view)
    draw_cameras(img, part, view, centres, colors, lines)
    draw_labels(img, part, view, region, colors)
    return img


def fit_view(part: Partition, points: np.ndarray, centres: np.ndarray, size: int) -> TopView:
    """The top view showing the AABB and the points [P, 3] and camera centres [N, 3], bar their outliers."""
    h1, h2, _ = part.axes
    box_lo, box_hi = part.aabb[[h1, h2]], part.aabb[[h1 + 3, h2 + 3]]
    shown = np.concatenate([points[:, [h1, h2]], centres[:, [h1, h2]], [box_lo, box_hi]])
    lo, hi = np.quantile(shown, 0.005, axis=0), np.quantile(shown, 0.995, axis=0)
    lo, hi = np.minimum(lo, box_lo), np.maximum(hi, box_hi)
    margin = 0.05 * (hi - lo).max()
    return TopView(part, lo - margin, hi + margin, size)


def block_regions(part: Partition, view: TopView, points: np.ndarray) -> np.ndarray:
    """The block of each pixel, from the exact lookup at the median point height. -> [H, W] int64"""
    h1, h2, up = part.axes
    ys, xs = np.mgrid[0 : view.height, 0 : view.width]
    g = view.ground(np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], axis=1))  # [HW, 2]
    world = np.zeros((len(g), 3))
    world[:, [h1, h2]] = g
    world[:, up] = np.median(points[:, up]) if len(points) else part.aabb[up]
    return part.block_of_points(world).reshape(view.height, view.width)


def draw_points(img: np.ndarray, part: Partition, view: TopView, points: np.ndarray) -> None:
    """SfM points [P, 3] in grey, darker when higher (so buildings stand out), drawn low to high."""
    h1, h2, up = part.axes
    height = points[:, up] * parse_up_axis(part.up_axis)[1]  # [P]
    order = np.argsort(height)
    px = view.pixels(points[order][:, [h1, h2]])
    h_lo, h_hi = np.quantile(height, [0.02, 0.98]) if len(height) else (0.0, 1.0)
    grey = 170 - 150 * np.clip((height[order] - h_lo) / max(h_hi - h_lo, 1e-9), 0, 1)  # [P]
    ok = (px[:, 0] >= 0) & (px[:, 0] < view.width) & (px[:, 1] >= 0) & (px[:, 1] < view.height)
    img[px[ok, 1], px[ok, 0]] = grey[ok, None].astype(np.uint8)


def draw_cells(img: np.ndarray, part: Partition, view: TopView) -> None:
    """The AABB-interior parts of the cells, and the AABB."""
    h1, h2, _ = part.axes
    for b in part.blocks:
        if b.world_min is not None:
            a, c = view.pixels(np.array([b.world_min[[h1, h2]], b.world_max[[h1, h2]]]))
            cv2.rectangle(img, tuple(map(int, a)), tuple(map(int, c)), (60, 60, 60), 1, cv2.LINE_AA)
    box = np.array([part.aabb[[h1, h2]], part.aabb[[h1 + 3, h2 + 3]]])
    a, c = view.pixels(box)
    cv2.rectangle(img, tuple(map(int, a)), tuple(map(int, c)), (0, 0, 0), 2, cv2.LINE_AA)


def draw_cameras(
    img: np.ndarray, part: Partition, view: TopView, centres: np.ndarray, colors: np.ndarray, lines: bool
) -> None:
    """Cameras [N, 3] coloured by the block they stand in (train views filled, test views hollow); with
    `lines`, a line from each to the other blocks it trains."""
    h1, h2, _ = part.axes
    cam_px = view.pixels(centres[:, [h1, h2]])
    home = part.block_of_points(centres)  # [N]
    if lines:
        for b in part.blocks:
            if b.world_min is None:  # a cell wholly outside the AABB has no finite centre to point at
                continue
            mid = view.pixels(((b.world_min + b.world_max) / 2)[None, [h1, h2]])[0]
            for i in b.camera_ids:
                if home[i] != b.index:
                    cv2.line(
                        img, tuple(map(int, cam_px[i])), tuple(map(int, mid)), colors[b.index].tolist(), 1
                    )
    train = set(int(i) for b in part.blocks for i in b.camera_ids)
    for i, p in enumerate(cam_px):
        colour = colors[home[i]].tolist()
        cv2.circle(img, tuple(map(int, p)), 5, colour, -1 if i in train else 2, cv2.LINE_AA)
        cv2.circle(img, tuple(map(int, p)), 5, (0, 0, 0), 1, cv2.LINE_AA)


def draw_labels(
    img: np.ndarray, part: Partition, view: TopView, region: np.ndarray, colors: np.ndarray
) -> None:
    """Each block's label with its view count at the centre of its region, and the legend."""
    for b in part.blocks:
        mask = region == b.index
        if not mask.any():
            continue
        yy, xx = np.nonzero(mask)
        at = (int(np.median(xx)) - 30, int(np.median(yy)))
        text = f"{b.index}: {len(b.camera_ids)} views"
        cv2.putText(img, text, at, cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 3, cv2.LINE_AA)
        cv2.putText(img, text, at, cv2.FONT_HERSHEY_SIMPLEX, 0.5, colors[b.index].tolist(), 1, cv2.LINE_AA)
    h1, h2, _ = part.axes
    arrow = "up" if view.flip else "down"
    legend = (
        f"top view (up {part.up_axis}): {AXIS_NAMES[h1]} right, {AXIS_NAMES[h2]} {arrow}; "
        f"black box = AABB; filled dots = train views"
    )
    cv2.putText(img, legend, (8, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)


def write_preview(
    path: str | Path, part: Partition, scene: Scene, size: int = 800, lines: bool = False
) -> None:
    suffix = check_preview_path(path)
    img = draw_partition(part, scene, size=size, lines=lines)
    with atomic_path(path) as tmp:
        ok, data = cv2.imencode(suffix, img)
        if not ok:
            raise PartitionError(f"{path}: cannot write a preview image of this type (use .png)")
        tmp.write_bytes(data.tobytes())


def check_preview_path(path: str | Path) -> str:
    """The image suffix a preview at `path` is encoded with (.png without one); PartitionError when OpenCV
    has no writer for it (cv2 would raise its own multi-line error)."""
    suffix = Path(path).suffix or ".png"
    if not cv2.haveImageWriter(f"preview{suffix}"):
        raise PartitionError(f"{path}: cannot write a preview image of this type (use .png)")
    return suffix
