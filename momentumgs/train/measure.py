"""What the trainer measures outside the loss: ground-truth images, rendered PSNR / SSIM, the scene extent."""

from __future__ import annotations

import numpy as np
import torch

from momentumgs.anchor_render import render_anchor_view
from momentumgs.data.scene import Scene
from momentumgs.metrics import psnr, ssim
from momentumgs.model.anchors import AnchorField
from momentumgs.model.decoder import GaussianDecoder
from momentumgs.render.view import View


def spatial_scale(scene: Scene, view_ids: list[int]) -> float:
    """3DGS's scene extent: 1.1 x the largest distance of a training camera from their mean centre."""
    centers = np.stack([scene.cameras[i].center for i in view_ids])
    radius = float(np.linalg.norm(centers - centers.mean(0), axis=1).max())
    return 1.1 * max(radius, 1e-6)


def gt_image(scene: Scene, index: int, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(scene.load_image(index)).to(device=device, dtype=torch.float32) / 255.0


@torch.no_grad()
def view_metrics(
    field: AnchorField, decoder: GaussianDecoder, scene: Scene, views: list[View], ids: list[int]
) -> np.ndarray:
    """PSNR and SSIM of the anchor model on each of the views `ids`. -> [len(ids), 2] float64"""
    values = np.zeros((len(ids), 2))
    for row, i in enumerate(ids):
        image = render_anchor_view(field, decoder, views[i]).image.clamp(0, 1)
        gt = gt_image(scene, i, views[i].viewmat.device)
        values[row] = float(psnr(image, gt)), float(ssim(image, gt))
    return values


def view_quality(field, decoder, scene: Scene, views: list[View], ids: list[int]) -> tuple[float, float]:
    """Mean PSNR and SSIM of the anchor model over the views `ids` (for block weights)."""
    mean = view_metrics(field, decoder, scene, views, ids).mean(0)
    return float(mean[0]), float(mean[1])
