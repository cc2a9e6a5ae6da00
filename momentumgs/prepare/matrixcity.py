"""MatrixCity transforms JSON (NeRF / Blender style) -> known poses.

Two flavours of the same JSON, both handled:

  - the prepared split files `pose/<block>/transforms_{train,test}.json` that MatrixCity's
    scripts/load_aerial.py writes and CityGaussian / Momentum-GS read: top-level "camera_angle_x" and
    "fl_x", "fl_y", "cx", "cy", "w", "h" (k1..k4, p1, p2 all zero), frames {"file_path": path relative
    to the JSON's folder, "transform_matrix": 4x4 camera-to-world};
  - the raw per-block `transforms.json`: "camera_angle_x", frames {"frame_index", "rot_mat"}, where
    rot_mat is camera-to-world whose rotation part is stored divided by 100 (MatrixCity README: "the
    rotation matrix needs to be multiplied by 100 to normalize it"; load_aerial.py does c2w[:3, :3] *= 100)
    and the image is <folder>/<frame_index:04d>.png (or rgb/<frame_index:04d>.png once the tar is unpacked).

Conventions (MatrixCity README: "the same pose coordinate system as the original NeRF repo: X right, Y up,
Z backwards"): camera axes OpenGL, so OpenCV's camera-to-world is c2w @ diag(1, -1, -1, 1) (as in
CityGaussian's tools/transform_json2txt_mc_aerial.py). Intrinsics: fl_x/fl_y/cx/cy when present (per frame
overrides the top level, as nerfstudio allows), else fx = fy = 0.5 w / tan(0.5 camera_angle_x) with the
principal point at the image centre (w/2, h/2), w and h from the file when the JSON lacks them. Positions
stay in the JSON's units (the prepared files: raw metres / 100, the frame of the paper's configs) times
`scale`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from momentumgs.errors import UserError
from momentumgs.prepare.images import read_header
from momentumgs.prepare.known_poses import PosedImage, unique_names

GL_TO_CV = np.diag([1.0, -1.0, -1.0])
ROT_MAT_SCALE = 100.0  # MatrixCity's raw rot_mat stores the rotation divided by 100
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".PNG", ".JPG")
DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")


def _matrix(value, where: str) -> np.ndarray:
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError(f"{where}: transform is not a 4x4 matrix of numbers") from None
    if m.shape not in ((4, 4), (3, 4)) or not np.isfinite(m).all():
        raise UserError(f"{where}: transform must be a finite 4x4 matrix, got shape {list(m.shape)}")
    return m


def find_image(json_dir: Path, frame: dict, where: str) -> Path:
    if "file_path" in frame:
        base = json_dir / str(frame["file_path"])
        cands = [base] + [base.with_name(base.name + s) for s in IMAGE_SUFFIXES]  # Blender omits the suffix
    elif "frame_index" in frame:
        stem = f"{int(frame['frame_index']):04d}"
        cands = [json_dir / f"{stem}.png", json_dir / "rgb" / f"{stem}.png"]
    else:
        raise UserError(f"{where}: missing key 'file_path' (or 'frame_index')")
    for cand in cands:
        if cand.is_file():
            return cand
    raise UserError(f"{where}: image {cands[0]} not found")


def frame_intrinsics(data: dict, frame: dict, image: Path, where: str) -> tuple[np.ndarray, int, int]:
    """K [3, 3], width, height of one frame (frame keys override the top level)."""

    def get(key):
        return frame.get(key, data.get(key))

    for key in DISTORTION_KEYS:
        if float(get(key) or 0.0) != 0.0:
            raise UserError(
                f"{where}: distortion {key}={get(key)} is not supported (undistort the images first)"
            )
    w, h = get("w"), get("h")
    if w is None or h is None:
        w, h, _ = read_header(image)
    w, h = int(round(float(w))), int(round(float(h)))
    if get("fl_x") is not None:
        fx = float(get("fl_x"))
        fy = float(get("fl_y") if get("fl_y") is not None else fx)
    elif get("camera_angle_x") is not None:
        fx = 0.5 * w / math.tan(0.5 * float(get("camera_angle_x")))
        angle_y = get("camera_angle_y")
        fy = 0.5 * h / math.tan(0.5 * float(angle_y)) if angle_y is not None else fx
    else:
        raise UserError(f"{where}: missing key 'camera_angle_x' (or 'fl_x')")
    cx = float(get("cx") if get("cx") is not None else w / 2)
    cy = float(get("cy") if get("cy") is not None else h / 2)
    if not all(math.isfinite(v) and v > 0 for v in (fx, fy)):
        raise UserError(f"{where}: focal length must be positive, got fx={fx}, fy={fy}")
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]), w, h


def c2w_gl_to_viewmat(c2w: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Camera-to-world [3|4, 4] with OpenGL camera axes -> world->camera [4, 4] with OpenCV axes."""
    R = c2w[:3, :3] @ GL_TO_CV
    t = c2w[:3, 3] * scale
    viewmat = np.eye(4)
    viewmat[:3, :3] = R.T
    viewmat[:3, 3] = -R.T @ t
    return viewmat


def read_transforms(path: Path, scale: float = 1.0) -> list[tuple[Path, np.ndarray, np.ndarray, int, int]]:
    """(image path, K, viewmat, width, height) for each frame of one transforms JSON."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: transforms file does not exist") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict) or "frames" not in data:
        raise UserError(f"{path}: missing key 'frames'")
    if not isinstance(data["frames"], list) or not data["frames"]:
        raise UserError(f"{path}: 'frames' must be a non-empty list")
    out = []
    for i, frame in enumerate(data["frames"]):
        where = f"{path}: frame {i}"
        if not isinstance(frame, dict):
            raise UserError(f"{where}: not an object")
        if "transform_matrix" in frame:
            c2w = _matrix(frame["transform_matrix"], where)
        elif "rot_mat" in frame:
            c2w = _matrix(frame["rot_mat"], where).copy()
            c2w[:3, :3] *= ROT_MAT_SCALE
        else:
            raise UserError(f"{where}: missing key 'transform_matrix' (or MatrixCity's 'rot_mat')")
        R = c2w[:3, :3]
        if np.abs(R.T @ R - np.eye(3)).max() > 1e-3 or np.linalg.det(R) < 0:
            raise UserError(
                f"{where}: the rotation of transform_matrix is not orthonormal (scaled or mirrored)"
            )
        image = find_image(path.parent, frame, where)
        K, w, h = frame_intrinsics(data, frame, image, where)
        out.append((image, K, c2w_gl_to_viewmat(c2w, scale), w, h))
    return out


def _posed(frames) -> list[PosedImage]:
    names = unique_names([f[0] for f in frames])
    return [PosedImage(n, img, K, w, h, vm) for n, (img, K, vm, w, h) in zip(names, frames, strict=True)]


def find_transforms(src: Path) -> tuple[Path, Path | None]:
    """(train JSON, test JSON or None) of a file or a folder."""
    if src.is_file():
        return src, None
    if not src.is_dir():
        raise UserError(f"{src}: no such file or folder")
    for train_name in ("transforms_train.json", "transforms.json"):
        if (src / train_name).is_file():
            test = src / "transforms_test.json"
            return src / train_name, (test if test.is_file() else None)
    raise UserError(f"{src}: no transforms_train.json or transforms.json")


def load_matrixcity(
    src: str | Path, test: str | Path | None = None, val_every: int = 8, scale: float = 1.0
) -> tuple[list[PosedImage], list[PosedImage], dict]:
    """Train and val images. Val comes from the test JSON (given, or transforms_test.json beside the train
    file); without one every `val_every`-th train frame is held out."""
    src = Path(src).expanduser()
    train_json, test_json = find_transforms(src)
    if test is not None:
        test_json = Path(test).expanduser()
    if not (math.isfinite(scale) and scale > 0):
        raise UserError(f"--scale {scale}: must be a positive number")
    train_frames = read_transforms(train_json, scale)
    if test_json is not None:
        val_frames = read_transforms(test_json, scale)
    else:
        if val_every < 2:
            raise UserError(f"--val-every {val_every}: must be at least 2")
        val_frames = train_frames[::val_every]
        train_frames = [f for i, f in enumerate(train_frames) if i % val_every]
    meta = {
        "format": "matrixcity",
        "source": str(train_json.resolve()),
        "test_source": str(test_json.resolve()) if test_json else f"every {val_every}th train frame",
        "scale": scale,
        "conventions": "c2w with OpenGL camera axes (x right, y up, z back) -> OpenCV world->camera",
    }
    return _posed(train_frames), _posed(val_frames), meta
