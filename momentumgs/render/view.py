"""A camera as tensors, and one view of explicit Gaussians through `rasterize` (gsplat on CUDA, ours on
the CPU). Nothing here knows about anchors: the anchor model's renderer is `momentumgs/anchor_render.py`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from momentumgs.data.scene import Camera
from momentumgs.render.rasterize import rasterize
from momentumgs.timing import phase

NEAR_PLANE = 0.2


@dataclass
class View:
    """A camera as tensors on the device the model lives on."""

    viewmat: torch.Tensor  # [4, 4] world -> camera
    K: torch.Tensor  # [3, 3]
    center: torch.Tensor  # [3] camera centre in world coordinates
    width: int
    height: int
    index: int = -1  # camera index in the scene (its row of a per-photo appearance table)


def camera_view(cam: Camera, device: torch.device | str = "cpu", index: int = -1) -> View:
    return View(
        viewmat=torch.as_tensor(cam.viewmat, dtype=torch.float32, device=device),
        K=torch.as_tensor(cam.K, dtype=torch.float32, device=device),
        center=torch.as_tensor(cam.center, dtype=torch.float32, device=device),
        width=cam.width,
        height=cam.height,
        index=index,
    )


def rasterize_gaussians(
    means: torch.Tensor,  # [M, 3]
    quats: torch.Tensor,  # [M, 4]
    scales: torch.Tensor,  # [M, 3]
    opacities: torch.Tensor,  # [M]
    colors: torch.Tensor,  # [M, 3]
    view: View,
    background: torch.Tensor | None = None,  # [3]
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """One view of explicit Gaussians. -> image [H, W, 3], alpha [H, W, 1], meta."""
    with phase("rasterize"):
        image, alpha, meta = rasterize(
            means,
            quats,
            scales,
            opacities,
            colors[None],
            view.viewmat[None],
            view.K[None],
            view.width,
            view.height,
            near_plane=NEAR_PLANE,
            backgrounds=None if background is None else background[None],
        )
    return image[0], alpha[0], meta
