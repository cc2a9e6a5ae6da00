"""Cameras between viser and the renderer.

viser reports a client's camera as a pose (position, wxyz = R_world_camera in OpenCV axes: x right, y down,
z forward), a vertical field of view and the canvas aspect. The renderer takes a `View`: world->camera
matrix, pinhole K, image size. The image is rendered at a capped size with the canvas's aspect, so the
browser stretches it over the canvas without distortion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import viser.transforms as vtf

from momentumgs.data.scene import Camera
from momentumgs.render.view import View


@dataclass(frozen=True)
class ClientCamera:
    """A snapshot of a viser client's camera (copied off the handle, so a worker can use it later)."""

    position: tuple[float, float, float]
    wxyz: tuple[float, float, float, float]
    fov: float  # vertical, radians
    aspect: float  # width / height

    @classmethod
    def from_handle(cls, camera) -> ClientCamera:
        return cls(
            tuple(float(v) for v in camera.position),
            tuple(float(v) for v in camera.wxyz),
            float(camera.fov),
            float(camera.aspect),
        )


def capped_size(aspect: float, max_res: int) -> tuple[int, int]:
    """(width, height) with the longer side `max_res` and the given aspect (width / height)."""
    if aspect >= 1.0:
        return max_res, max(1, round(max_res / aspect))
    return max(1, round(max_res * aspect)), max_res


def intrinsics(fov_y: float, width: int, height: int) -> np.ndarray:
    """Pinhole K [3, 3] with square pixels and the principal point at the image centre."""
    f = 0.5 * height / math.tan(0.5 * fov_y)
    return np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])


def world_to_camera(position, wxyz) -> np.ndarray:
    """viewmat [4, 4] from a camera-to-world pose (OpenCV axes)."""
    R_wc = vtf.SO3(np.asarray(wxyz, dtype=np.float64)).as_matrix()
    viewmat = np.eye(4)
    viewmat[:3, :3] = R_wc.T
    viewmat[:3, 3] = -R_wc.T @ np.asarray(position, dtype=np.float64)
    return viewmat


def client_view(camera: ClientCamera, max_res: int, device: torch.device | str = "cpu") -> View:
    """The View that renders what the client sees, at most `max_res` pixels on its longer side."""
    width, height = capped_size(camera.aspect, max_res)
    viewmat = world_to_camera(camera.position, camera.wxyz)
    return View(
        viewmat=torch.as_tensor(viewmat, dtype=torch.float32, device=device),
        K=torch.as_tensor(intrinsics(camera.fov, width, height), dtype=torch.float32, device=device),
        center=torch.as_tensor(camera.position, dtype=torch.float32, device=device),
        width=width,
        height=height,
    )


@dataclass(frozen=True)
class CameraPose:
    """A scene camera as viser wants it: position, wxyz, vertical fov, aspect."""

    position: np.ndarray  # [3]
    wxyz: np.ndarray  # [4]
    fov: float
    aspect: float


def scene_camera_pose(cam: Camera) -> CameraPose:
    R_wc = cam.viewmat[:3, :3].T
    fov = 2.0 * math.atan(0.5 * cam.height / cam.K[1, 1])
    return CameraPose(cam.center, vtf.SO3.from_matrix(R_wc).wxyz, fov, cam.width / cam.height)


def move_client_to(
    client, pose: CameraPose, up: np.ndarray | None = None, look_distance: float = 1.0
) -> None:
    """Put a client's camera at `pose`, its orbit target `look_distance` ahead. The orbit controls turn
    about `up` (the scene's up; the camera's own image up when not given)."""
    R_wc = vtf.SO3(pose.wxyz).as_matrix()
    with client.atomic():
        client.camera.fov = pose.fov
        client.camera.up_direction = -R_wc[:, 1] if up is None else up
        client.camera.position = pose.position
        client.camera.look_at = pose.position + look_distance * R_wc[:, 2]
