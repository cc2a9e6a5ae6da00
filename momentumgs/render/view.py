"""A camera as tensors, and one view of explicit Gaussians through `rasterize` (gsplat on CUDA, ours on
the CPU). Nothing here knows about anchors: the anchor model's renderer is `momentumgs/render/anchors.py`."""

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


@dataclass(frozen=True)
class Crop:
    """The pixels [x0, x1) x [y0, y1) of a `width` x `height` image."""

    x0: int
    y0: int
    x1: int
    y1: int
    width: int  # of the whole image
    height: int

    @property
    def share(self) -> float:
        """The crop's share of the image's pixels."""
        return (self.x1 - self.x0) * (self.y1 - self.y0) / (self.width * self.height)


def crop_view(view: View, crop: Crop) -> View:
    """The camera that sees exactly `crop` of `view`'s image: the principal point moves by the crop's
    corner, so each kept pixel keeps its ray (its render equals that rectangle of the whole render)."""
    K = view.K.clone()
    K[0, 2] -= crop.x0
    K[1, 2] -= crop.y0
    return View(view.viewmat, K, view.center, crop.x1 - crop.x0, crop.y1 - crop.y0, view.index)


def crop_image(image: torch.Tensor, crop: Crop) -> torch.Tensor:
    """`crop` of an image [H, W, C]. -> [y1 - y0, x1 - x0, C]"""
    return image[crop.y0 : crop.y1, crop.x0 : crop.x1]


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
