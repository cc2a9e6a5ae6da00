"""Pieces both synthetic scenes (the city, the survey) build on: textured boxes packed into one atlas,
the sun, and drone cameras that look down.

A scene module describes its boxes as `BoxSpec`s and paints each one's unrolled walls and roof; `box_atlas`
packs the paintings into the atlas the ray caster (momentumgs/demo/raycast.py) samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from momentumgs.demo.raycast import Boxes, Texture

ATLAS_WIDTH = 2048  # texels
ATLAS_PAD = 8  # texels of replicated border around each tile (mip-mapping blurs across tiles otherwise)


@dataclass
class BoxSpec:
    kind: str  # what the box is (building, car, tree_crown, house, barn, ...): decides its texture
    center: tuple[float, float, float]
    half: tuple[float, float, float]
    yaw: float


def pack_atlas(sizes: list[tuple[int, int]], width: int, pad: int) -> tuple[list[tuple[int, int]], int]:
    """Shelf packing of (w, h) rectangles (each padded by `pad`) into rows of `width`; -> origins, height."""
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i][1])
    origins: list[tuple[int, int]] = [(0, 0)] * len(sizes)
    x = y = row_h = 0
    for i in order:
        w, h = sizes[i][0] + 2 * pad, sizes[i][1] + 2 * pad
        if x + w > width:
            x, y, row_h = 0, y + row_h, 0
        origins[i] = (x + pad, y + pad)
        x, row_h = x + w, max(row_h, h)
    return origins, y + row_h


def tile_sizes(b: BoxSpec, texel: float) -> tuple[tuple[int, int], tuple[int, int]]:
    """Texel sizes (w, h) of a box's unrolled walls (the perimeter by the height) and of its roof."""
    hx, hy, hz = b.half
    side = (max(4, round(4 * (hx + hy) / texel)), max(4, round(2 * hz / texel)))
    top = (max(4, round(2 * hx / texel)), max(4, round(2 * hy / texel)))
    return side, top


# paint(box, (side w, side h), (top w, top h)) -> (walls [side h, side w, 3], roof [top h, top w, 3])
PaintBox = Callable[[BoxSpec, tuple[int, int], tuple[int, int]], tuple[np.ndarray, np.ndarray]]


def box_atlas(specs: list[BoxSpec], texel: float, paint: PaintBox) -> tuple[Boxes, Texture]:
    """Paint every box (in order) and pack the paintings into one atlas: the ray caster's boxes and atlas."""
    tiles, sizes = [], []
    for b in specs:
        side_size, top_size = tile_sizes(b, texel)
        side, top = paint(b, side_size, top_size)
        tiles += [side, top]
        sizes += [side_size, top_size]
    pad = ATLAS_PAD
    origins, atlas_h = pack_atlas(sizes, ATLAS_WIDTH, pad)
    atlas = np.zeros((max(atlas_h, 1), ATLAS_WIDTH, 3), np.float32)
    for (x, y), tile in zip(origins, tiles, strict=True):
        h, w = tile.shape[:2]
        padded = cv2.copyMakeBorder(tile, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        atlas[y - pad : y + h + pad, x - pad : x + w + pad] = padded
    rects = np.array(
        [(x, y, w, h) for (x, y), (w, h) in zip(origins, sizes, strict=True)], dtype=np.float64
    ).reshape(-1, 2, 4)
    boxes = Boxes(
        center=np.array([b.center for b in specs], dtype=np.float64).reshape(-1, 3),
        half=np.array([b.half for b in specs], dtype=np.float64).reshape(-1, 3),
        yaw=np.array([b.yaw for b in specs], dtype=np.float64),
        side_rect=rects[:, 0],
        top_rect=rects[:, 1],
    )
    return boxes, Texture.from_image(atlas, texel)


def sun_direction(elevation_deg: float, azimuth_deg: float) -> np.ndarray:
    """Unit vector [3] towards the sun (azimuth from +x towards +y)."""
    el, az = math.radians(elevation_deg), math.radians(azimuth_deg)
    return np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])


# --- cameras -------------------------------------------------------------------------------------


def look_down_viewmat(eye: np.ndarray, heading: float, tilt: float) -> np.ndarray:
    """World->camera [4, 4] (OpenCV axes) for a camera at `eye` facing `heading` (radians from +x),
    its optical axis `tilt` radians from straight down; the image top points along the heading."""
    forward = np.array(
        [math.sin(tilt) * math.cos(heading), math.sin(tilt) * math.sin(heading), -math.cos(tilt)]
    )
    right = np.array([math.sin(heading), -math.cos(heading), 0.0])
    down = np.cross(forward, right)
    R = np.stack([right, down, forward])  # rows: camera axes in world coordinates
    viewmat = np.eye(4)
    viewmat[:3, :3] = R
    viewmat[:3, 3] = -R @ eye
    return viewmat


def pinhole_intrinsics(focal: float, width: int, height: int) -> np.ndarray:
    """K [3, 3], fx = fy = focal, principal point at the image centre."""
    return np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]], dtype=np.float64)
