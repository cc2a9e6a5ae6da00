"""Small synthetic COLMAP scenes built with pycolmap's own API, for the loader tests."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pycolmap
from helpers import look_at


@dataclass
class SceneSpec:
    """What a synthetic scene holds; `cameras` maps camera id -> (model name, width, height, params)."""

    cameras: dict[int, tuple[str, int, int, list[float]]]
    views: list[tuple[str, int, np.ndarray]]  # (image name, camera id, viewmat [4, 4])
    points: np.ndarray  # [P, 3]
    colors: np.ndarray  # [P, 3] uint8
    image_ids: list[int] = field(default_factory=list)  # per view; default 1..N in reverse name order


def ring_spec(
    n_views: int = 4,
    model: str = "PINHOLE",
    width: int = 64,
    height: int = 48,
    params: list[float] | None = None,
    n_points: int = 20,
    seed: int = 0,
) -> SceneSpec:
    """`n_views` cameras on a ring looking at the origin, sharing camera 1; points in a small cube."""
    if params is None:
        params = {
            "SIMPLE_PINHOLE": [55.0, 30.5, 25.0],
            "PINHOLE": [55.0, 58.0, 30.5, 25.0],
            "SIMPLE_RADIAL": [55.0, 30.5, 25.0, -0.1],
            "RADIAL": [55.0, 30.5, 25.0, -0.1, 0.02],
            "OPENCV": [55.0, 58.0, 30.5, 25.0, -0.1, 0.02, 0.001, -0.002],
        }[model]
    rng = np.random.default_rng(seed)
    views = []
    for i in range(n_views):
        a = 2 * np.pi * i / n_views
        center = np.array([4 * np.cos(a), 4 * np.sin(a), 1.0 + 0.2 * i])
        views.append((f"img_{i:03d}.png", 1, look_at(center, np.zeros(3))))
    points = rng.uniform(-0.6, 0.6, size=(n_points, 3))
    colors = rng.integers(0, 256, size=(n_points, 3), dtype=np.uint8)
    return SceneSpec({1: (model, width, height, list(params))}, views, points, colors)


def build_reconstruction(spec: SceneSpec) -> pycolmap.Reconstruction:
    rec = pycolmap.Reconstruction()
    for cid, (model, width, height, params) in spec.cameras.items():
        cam = pycolmap.Camera.create_from_model_name(cid, model, 1.0, width, height)
        cam.params = params
        rec.add_camera_with_trivial_rig(cam)
    # Image ids deliberately not in name order: the loader must sort by name.
    ids = spec.image_ids or list(range(len(spec.views), 0, -1))
    for image_id, (name, cid, viewmat) in zip(ids, spec.views, strict=True):
        image = pycolmap.Image(name=name, camera_id=cid, image_id=image_id)
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(viewmat[:3, :3]), viewmat[:3, 3])
        rec.add_image_with_trivial_frame(image, pose)
    for xyz, rgb in zip(spec.points, spec.colors, strict=True):
        rec.add_point3D(np.asarray(xyz, dtype=np.float64), pycolmap.Track(), np.asarray(rgb, dtype=np.uint8))
    return rec


def write_model(
    rec: pycolmap.Reconstruction, model_dir: Path, fmt: str = "bin", legacy: bool = False
) -> Path:
    """Write `rec` as .bin or .txt; `legacy` drops rigs/frames files (models older than COLMAP 3.12)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    (rec.write_binary if fmt == "bin" else rec.write_text)(str(model_dir))
    if legacy:
        for name in ("rigs", "frames"):
            (model_dir / f"{name}.{fmt}").unlink(missing_ok=True)
    return model_dir


def noise_image(width: int, height: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def write_images(spec: SceneSpec, image_dir: Path, make=None) -> None:
    """One PNG per view; `make(name, camera_id, width, height)` gives RGB uint8, default noise."""
    image_dir.mkdir(parents=True, exist_ok=True)
    for i, (name, cid, _) in enumerate(spec.views):
        _, width, height, _ = spec.cameras[cid]
        img = make(name, cid, width, height) if make else noise_image(width, height, i)
        cv2.imwrite(str(image_dir / name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))


def make_scene(root: Path, spec: SceneSpec, fmt: str = "bin", legacy: bool = False, make=None) -> Path:
    """root/sparse/0 + root/images for `spec`."""
    write_model(build_reconstruction(spec), root / "sparse" / "0", fmt, legacy)
    write_images(spec, root / "images", make)
    return root


def blob_image(width: int, height: int, centers: np.ndarray, sigma: float = 1.2) -> np.ndarray:
    """RGB uint8 with a Gaussian blob at each pixel position in `centers` [N, 2] (centres at +0.5)."""
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    img = np.zeros((height, width))
    for cu, cv in centers:
        img += np.exp(-((u - cu) ** 2 + (v - cv) ** 2) / (2 * sigma**2))
    img = np.clip(img * 255, 0, 255).astype(np.uint8)
    return np.repeat(img[..., None], 3, axis=2)


def blob_centroid(img: np.ndarray, near: np.ndarray, radius: int = 4) -> np.ndarray:
    """Intensity centroid (pixel centres at +0.5) of the blob in a window around `near` [2]."""
    gray = img[..., 0].astype(np.float64)
    cu, cv = int(near[0]), int(near[1])
    v0, v1 = max(cv - radius, 0), min(cv + radius + 1, gray.shape[0])
    u0, u1 = max(cu - radius, 0), min(cu + radius + 1, gray.shape[1])
    win = gray[v0:v1, u0:u1]
    vv, uu = np.mgrid[v0:v1, u0:u1]
    w = win.sum()
    return np.array([((uu + 0.5) * win).sum() / w, ((vv + 0.5) * win).sum() / w])


def listing(*folders: Path) -> dict[str, tuple[int, int]]:
    """{path: (size, mtime_ns)} of every file and folder under `folders` (missing folders: empty)."""
    out = {}
    for folder in folders:
        if not folder.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(folder):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                st = p.stat()
                out[str(p)] = (st.st_size if p.is_file() else 0, st.st_mtime_ns if p.is_file() else 0)
    return out


def copy_scene(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def viewmats_by_name(rec: pycolmap.Reconstruction) -> dict[str, np.ndarray]:
    """World -> camera 4x4 of every posed image in `rec`, by image name."""
    out = {}
    for img in rec.images.values():
        if img.has_pose:
            m = np.eye(4)
            m[:3, :4] = img.cam_from_world().matrix()
            out[img.name] = m
    return out
