"""Scene and Camera: what every later stage reads. No file-format knowledge lives here.

Conventions: OpenCV camera axes (x right, y down, z forward), `viewmat` is world->camera (COLMAP's
cam_from_world as a 4x4), pixel centres at +0.5, K is the pinhole matrix of the (undistorted, downscaled)
image that `Scene.load_image` returns.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from momentumgs.errors import SceneError


@dataclass
class Camera:
    name: str  # image name relative to the image folder, e.g. "0003.png"
    K: np.ndarray  # [3, 3] float64 pinhole intrinsics of the image as loaded
    viewmat: np.ndarray  # [4, 4] float64 world -> camera
    width: int
    height: int
    image_path: Path  # file to decode (already undistorted where the model had distortion)
    downscale: int = 1  # the file is resized by this factor at load time

    @property
    def center(self) -> np.ndarray:
        """Camera centre in world coordinates, [3]."""
        R, t = self.viewmat[:3, :3], self.viewmat[:3, 3]
        return -R.T @ t

    @property
    def camtoworld(self) -> np.ndarray:
        return np.linalg.inv(self.viewmat)

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points [N, 3] -> pixel coordinates [N, 2] (centres at +0.5) and depths [N]."""
        cam = points @ self.viewmat[:3, :3].T + self.viewmat[:3, 3]
        depth = cam[:, 2]
        uv = cam @ self.K.T
        return uv[:, :2] / uv[:, 2:3], depth


class ImageCache:
    """Decoded uint8 images, least recently used evicted beyond `max_bytes`. Thread-safe."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._bytes = 0
        self.peak_nbytes = 0  # the most it has held after an eviction (for benchmarks: <= max_bytes)
        self._lock = threading.Lock()

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            img = self._items.get(key)
            if img is not None:
                self._items.move_to_end(key)
            return img

    def put(self, key: str, img: np.ndarray) -> None:
        if img.nbytes > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = img
            self._bytes += img.nbytes
            while self._bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.nbytes
            self.peak_nbytes = max(self.peak_nbytes, self._bytes)

    @property
    def nbytes(self) -> int:
        return self._bytes


def read_image(path: Path, width: int, height: int) -> np.ndarray:
    """Decode `path` as RGB uint8 [height, width, 3], resizing (area filter) when the file differs."""
    # COLMAP ignores EXIF orientation (poses and K are for the stored pixels); cv2 would apply it.
    img = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        if not path.exists():
            raise SceneError(f"{path}: image listed in the model but missing")
        raise SceneError(f"{path}: cannot decode image")
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img.shape[:2] != (height, width):
        img = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
    return img


@dataclass
class Scene:
    cameras: list[Camera]
    points: np.ndarray  # [P, 3] float32 SfM points (world)
    point_colors: np.ndarray  # [P, 3] uint8
    train_ids: list[int]
    test_ids: list[int]
    root: Path | None = None
    cache: ImageCache = field(default_factory=lambda: ImageCache(512 << 20))

    def load_image(self, index: int) -> np.ndarray:
        """RGB uint8 [H, W, 3] of camera `index`, decoded lazily and kept in the bounded cache."""
        cam = self.cameras[index]
        key = str(cam.image_path)
        img = self.cache.get(key)
        if img is None:
            img = read_image(cam.image_path, cam.width, cam.height)
            self.cache.put(key, img)
        return img

    @property
    def train_cameras(self) -> list[Camera]:
        return [self.cameras[i] for i in self.train_ids]

    @property
    def test_cameras(self) -> list[Camera]:
        return [self.cameras[i] for i in self.test_ids]

    def summary(self) -> str:
        if not self.cameras:
            return "empty scene"
        sizes = sorted({(c.width, c.height) for c in self.cameras})
        centers = np.stack([c.center for c in self.cameras])
        lo, hi = centers.min(0), centers.max(0)
        size_txt = ", ".join(f"{w}x{h}" for w, h in sizes[:3]) + (" ..." if len(sizes) > 3 else "")
        lines = [
            f"scene: {self.root}",
            f"  cameras: {len(self.cameras)} ({len(self.train_ids)} train, {len(self.test_ids)} test), "
            f"image size {size_txt}",
            f"  points:  {len(self.points)}",
            f"  camera centres span [{lo[0]:.2f}, {lo[1]:.2f}, {lo[2]:.2f}] .. "
            f"[{hi[0]:.2f}, {hi[1]:.2f}, {hi[2]:.2f}]",
        ]
        return "\n".join(lines)
