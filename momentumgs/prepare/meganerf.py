"""Mega-NeRF format (Mill-19 Building/Rubble, UrbanScene3D Campus/Residence/Sci-Art) -> known poses.

The format, as Mega-NeRF's own code writes and reads it (cmusatyalab/mega-nerf):

    SRC/coordinates.pt            torch.save({'origin_drb': tensor [3], 'pose_scale_factor': float})
                                  (scripts/colmap_to_mega_nerf.py; read in mega_nerf/runner.py)
    SRC/{train,val}/metadata/NAME.pt
                                  torch.save({'H': int, 'W': int, 'c2w': tensor [3, 4],
                                  'intrinsics': tensor [fx, fy, cx, cy], 'distortion': tensor [4]})
    SRC/{train,val}/rgbs/NAME.{jpg,JPG,png,PNG}
                                  the image of NAME.pt (runner._get_metadata_item tries these suffixes)
    SRC/mappings.txt              optional "original name,NAME.pt" lines

Conventions (scripts/colmap_to_mega_nerf.py builds them from a COLMAP model; mega_nerf/ray_utils.py uses
them):
  - world "DRB": x down, y right, z back, made from COLMAP's world by RDF_TO_DRB = [[0,1,0],[1,0,0],[0,0,-1]]
    applied to rotations (P R P^-1) and positions (P t); positions then centred and scaled:
    t_stored = (t_drb - origin_drb) / pose_scale_factor;
  - c2w columns: camera x right, y up, z back (OpenGL-like): the script stores [c1, -c0, c2, t] of the
    DRB-axes camera, and ray_utils casts rays along ((u - cx)/fx, -(v - cy)/fy, -1) through c2w[:, :3];
  - the rgbs are already undistorted (the script runs cv2.undistort with K and 'distortion' before saving),
    so the cameras are pinhole with 'intrinsics' and 'distortion' is informational only;
  - intrinsics are COLMAP's (pixel centres at +0.5), at the resolution W x H of the metadata.

The conversion inverts all of it: OpenCV camera axes [x, -y, -z] of the stored columns, t_drb = t *
pose_scale_factor + origin_drb, and back to COLMAP's world with P^-1 (= P). The result is the world of the
COLMAP model the dataset was made from (metric for Mill-19), the same frame CityGaussian's
tools/transform_pt2txt.py writes and the paper's AABBs are given in. `world="meganerf"` keeps Mega-NeRF's
normalised DRB coordinates instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from momentumgs.errors import UserError
from momentumgs.prepare.known_poses import PosedImage

RDF_TO_DRB = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])  # colmap_to_mega_nerf.py
GL_TO_CV = np.diag([1.0, -1.0, -1.0])  # camera axes (right, up, back) -> (right, down, forward)
RGB_SUFFIXES = (".jpg", ".JPG", ".png", ".PNG")  # runner._get_metadata_item's search order
METADATA_KEYS = ("H", "W", "c2w", "intrinsics")
WORLDS = ("colmap", "meganerf")


def _array(value, what: str, shape: tuple) -> np.ndarray:
    try:
        arr = np.asarray(value.numpy() if hasattr(value, "numpy") else value, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError(f"{what}: not numeric") from None
    if arr.shape != shape or not np.isfinite(arr).all():
        raise UserError(f"{what}: expected finite values of shape {list(shape)}, got {list(arr.shape)}")
    return arr


def _load_pt(path: Path) -> dict:
    """torch.load without running code from the file (weights_only); a dict or a UserError."""
    import pickle

    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if detail.startswith("Weights only load failed"):  # torch's advice to drop weights_only is not ours
            detail = "not a torch file of tensors and plain values"
        raise UserError(f"{path}: cannot read ({detail})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a dict, got {type(data).__name__}")
    return data


def read_coordinates(src: Path) -> tuple[np.ndarray, float]:
    path = src / "coordinates.pt"
    if not path.is_file():
        raise UserError(f"{path}: missing (not a Mega-NeRF dataset?)")
    data = _load_pt(path)
    for key in ("origin_drb", "pose_scale_factor"):
        if key not in data:
            raise UserError(f"{path}: missing key {key!r}")
    origin = _array(data["origin_drb"], f"{path}: origin_drb", (3,))
    scale = float(np.asarray(data["pose_scale_factor"]))
    if not np.isfinite(scale) or scale <= 0:
        raise UserError(f"{path}: pose_scale_factor must be a positive number, got {scale}")
    return origin, scale


def meganerf_c2w_to_viewmat(c2w: np.ndarray, origin: np.ndarray, scale: float, world: str = "colmap"):
    """Mega-NeRF c2w [3, 4] (DRB world, normalised; camera right/up/back) -> world->camera [4, 4] OpenCV."""
    R_cv = c2w[:, :3] @ GL_TO_CV  # columns: camera right, down, forward in the DRB world
    t = c2w[:, 3]
    if world == "colmap":
        P = RDF_TO_DRB  # orthogonal and symmetric: P^-1 = P
        R_cv = P.T @ R_cv
        t = P.T @ (t * scale + origin)
    viewmat = np.eye(4)
    viewmat[:3, :3] = R_cv.T
    viewmat[:3, 3] = -R_cv.T @ t
    return viewmat


def find_rgb(split_dir: Path, stem: str) -> Path:
    for suffix in RGB_SUFFIXES:
        cand = split_dir / "rgbs" / f"{stem}{suffix}"
        if cand.is_file():
            return cand
    raise UserError(f"{split_dir / 'rgbs' / stem}.jpg: image missing (also tried .JPG, .png, .PNG)")


def read_split(src: Path, split: str, origin, scale, world: str) -> list[PosedImage]:
    split_dir = src / split
    meta_dir = split_dir / "metadata"
    if not meta_dir.is_dir():
        raise UserError(f"{meta_dir}: missing (a Mega-NeRF dataset has train/ and val/ metadata folders)")
    images = []
    for path in sorted(meta_dir.glob("*.pt")):
        md = _load_pt(path)
        missing = [k for k in METADATA_KEYS if k not in md]
        if missing:
            raise UserError(f"{path}: missing key(s) {', '.join(map(repr, missing))}")
        width, height = int(md["W"]), int(md["H"])
        fx, fy, cx, cy = _array(md["intrinsics"], f"{path}: intrinsics", (4,))
        c2w = _array(md["c2w"], f"{path}: c2w", (3, 4))
        K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        rgb = find_rgb(split_dir, path.stem)
        viewmat = meganerf_c2w_to_viewmat(c2w, origin, scale, world)
        images.append(PosedImage(rgb.name, rgb, K, width, height, viewmat))
    if not images:
        raise UserError(f"{meta_dir}: no metadata .pt files")
    return images


def load_meganerf(src: str | Path, world: str = "colmap") -> tuple[list[PosedImage], list[PosedImage], dict]:
    """Train and val images with poses in our convention, and a description for converted.json."""
    if world not in WORLDS:
        raise UserError(f"world: expected one of {', '.join(WORLDS)}, got {world!r}")
    src = Path(src).expanduser()
    if not src.is_dir():
        raise UserError(f"{src}: dataset folder does not exist")
    origin, scale = read_coordinates(src)
    train = read_split(src, "train", origin, scale, world)
    val = read_split(src, "val", origin, scale, world)
    meta = {
        "format": "mega-nerf",
        "source": str(src.resolve()),
        "world": world,
        "origin_drb": origin.tolist(),
        "pose_scale_factor": scale,
        "conventions": "c2w (right, up, back) in DRB world -> OpenCV world->camera"
        + (
            " in the source COLMAP world (t * pose_scale_factor + origin_drb, P^-1)"
            if world == "colmap"
            else ""
        ),
    }
    return train, val, meta
