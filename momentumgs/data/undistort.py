"""Undistorted copies of the photos of distorted cameras (SIMPLE_RADIAL, RADIAL, OPENCV), in a cache.

Distorted cameras are undistorted once into a cache folder under $MOMENTUMGS_CACHE (default
~/.cache/momentumgs, `data/cache.py`), never into the scene folder. The undistorted pinhole camera is
pycolmap's `undistort_camera` (COLMAP's own choice of focal length, size and principal point); the pixels
are resampled with one OpenCV remap per camera, its map built from pycolmap's own `img_from_cam`. This
keeps COLMAP's distortion formulas exact while undistorting only the images that need it (pycolmap's
`undistort_images` rewrites the whole model and every image) and writing each cached image atomically,
so an interrupted run leaves a usable partial cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pycolmap

from momentumgs.data.cache import cache_root
from momentumgs.data.colmap_cameras import pinhole_K
from momentumgs.errors import SceneError
from momentumgs.io_utils import write_bytes_atomic, write_text_atomic

UNDISTORT_VERSION = 1  # bump when the cached pixels would change


@dataclass
class ModelView:
    """One registered image of a COLMAP model."""

    name: str  # image name in the model
    camera_id: int
    viewmat: np.ndarray  # [4, 4] world -> camera


def undistorted_camera(camera, width: int, height: int):
    """pycolmap PINHOLE camera of `camera` (rescaled to width x height first), as COLMAP chooses it."""
    src = pycolmap.Camera(camera.todict())
    if (src.width, src.height) != (width, height):
        src.rescale(width, height)
    return src, pycolmap.undistort_camera(pycolmap.UndistortCameraOptions(), src)


def undistortion_maps(src, pinhole, rows_per_block: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """cv2.remap maps [h, w] float32: for each undistorted pixel, where to sample the distorted image.

    Built in blocks of rows so that a 50-megapixel camera needs tens of MB of scratch, not gigabytes.
    """
    w, h = pinhole.width, pinhole.height
    K = pinhole_K(pinhole)
    map_x = np.empty((h, w), np.float32)
    map_y = np.empty((h, w), np.float32)
    x = (np.arange(w) + 0.5 - K[0, 2]) / K[0, 0]  # [w] pixel centres -> normalised coordinates
    for r0 in range(0, h, rows_per_block):
        r1 = min(r0 + rows_per_block, h)
        y = (np.arange(r0, r1) + 0.5 - K[1, 2]) / K[1, 1]  # [b]
        xx, yy = np.meshgrid(x, y)  # [b, w]
        rays = np.stack([xx, yy, np.ones_like(xx)], -1).reshape(-1, 3)
        src_uv = np.asarray(src.img_from_cam(rays, check_cheirality=False)).reshape(r1 - r0, w, 2)
        map_x[r0:r1] = src_uv[..., 0] - 0.5  # COLMAP puts pixel centres at +0.5, cv2 at 0
        map_y[r0:r1] = src_uv[..., 1] - 0.5
    return map_x, map_y


def _read_bgr(path: Path, width: int, height: int) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)  # as COLMAP does
    if img is None:
        raise SceneError(f"{path}: cannot decode image")
    if img.shape[:2] != (height, width):
        img = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
    return img


def _undistort_one(src_path: Path, dst_path: Path, size: tuple[int, int], maps) -> None:
    img = _read_bgr(src_path, *size)
    out = cv2.remap(img, maps[0], maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    ok, data = cv2.imencode(".png", out, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise SceneError(f"{src_path}: cannot encode the undistorted image")
    write_bytes_atomic(dst_path, data.tobytes())


def _file_stamp(path: Path) -> list:
    st = path.stat()
    return [path.name, st.st_size, st.st_mtime_ns]


def undistorted_cache(model_dir: Path, source_dir: Path, views: list[ModelView], maps_for: dict) -> dict:
    """Undistort `views` into the cache once; return {name: cached path}. Reused while nothing changed."""
    model_files = sorted(p for p in model_dir.iterdir() if p.suffix in (".bin", ".txt") and p.is_file())
    key_data = {
        "version": UNDISTORT_VERSION,
        "model_dir": str(model_dir.resolve()),
        "model_files": [_file_stamp(p) for p in model_files],
        "source_dir": str(source_dir.resolve()),
        "images": [[v.name, *_file_stamp(source_dir / v.name)[1:]] for v in views],
        "cameras": {
            str(cid): [np.asarray(src.params).tolist(), src.width, src.height]
            for cid, (src, _) in maps_for.items()
        },
    }
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:20]
    folder = cache_root() / "undistorted" / key
    paths = {v.name: folder / "images" / (v.name + ".png") for v in views}
    done = folder / "done.json"
    if done.is_file() and all(p.is_file() for p in paths.values()):
        return paths

    todo = [v for v in views if not paths[v.name].is_file()]
    # Work in chunks of images sharing a camera: each chunk builds its camera's maps once, and at most
    # `workers` maps are alive at a time (scenes with one camera per image stay bounded in memory).
    workers = min(4, os.cpu_count() or 1)
    chunks = []
    for cid in sorted({v.camera_id for v in todo}):
        group = [v for v in todo if v.camera_id == cid]
        size = max(1, min(32, -(-len(group) // workers)))
        chunks += [(cid, group[i : i + size]) for i in range(0, len(group), size)]

    def work(chunk) -> None:
        cid, group = chunk
        src, pinhole = maps_for[cid]
        maps = undistortion_maps(src, pinhole)
        for v in group:
            _undistort_one(source_dir / v.name, paths[v.name], (src.width, src.height), maps)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(work, chunks))  # list() re-raises the first error
    write_text_atomic(done, json.dumps(key_data, indent=1))
    return paths
