"""A pycolmap camera or image as numpy: pinhole K, world -> camera pose, whether it is distorted, and K
of a resized image."""

from __future__ import annotations

import numpy as np

PINHOLE_MODELS = ("SIMPLE_PINHOLE", "PINHOLE")
DISTORTED_MODELS = ("SIMPLE_RADIAL", "RADIAL", "OPENCV")


def cam_from_world(image) -> np.ndarray:
    """World -> camera 4x4 float64 of a pycolmap image (method in pycolmap 3.12+, property before)."""
    pose = image.cam_from_world
    pose = pose() if callable(pose) else pose
    viewmat = np.eye(4)
    viewmat[:3, :] = pose.matrix()
    return viewmat


def pinhole_K(camera) -> np.ndarray:
    """[3, 3] pinhole K of a camera's focal length and principal point (distortion ignored)."""
    return np.array(
        [
            [camera.focal_length_x, 0.0, camera.principal_point_x],
            [0.0, camera.focal_length_y, camera.principal_point_y],
            [0.0, 0.0, 1.0],
        ]
    )


def is_distorted(camera) -> bool:
    """True when the model has distortion terms and any of them is non-zero."""
    if camera.model.name in PINHOLE_MODELS:
        return False
    idxs = list(camera.extra_params_idxs())
    return bool(np.any(np.asarray(camera.params)[idxs] != 0.0))


def scaled_size(width: int, height: int, downscale: int) -> tuple[int, int]:
    """round(W/d), round(H/d) with halves rounded up (Python's round() would round 32.5 to 32)."""
    return max(1, int(width / downscale + 0.5)), max(1, int(height / downscale + 0.5))


def scale_K(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """K of an image resized by (sx, sy) over its full extent (pixel centres at +0.5)."""
    return np.diag([sx, sy, 1.0]) @ K
