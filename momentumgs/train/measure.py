"""What the trainer measures outside the loss: ground-truth images, rendered PSNR / SSIM, the scene extent."""

from __future__ import annotations

import numpy as np
import torch

from momentumgs.data.scene import Scene
from momentumgs.metrics import psnr, ssim
from momentumgs.model.anchors import AnchorField
from momentumgs.model.decoder import GaussianDecoder
from momentumgs.render.anchors import render_anchor_view
from momentumgs.render.view import Crop, View, crop_image, crop_view


def spatial_scale(scene: Scene, view_ids: list[int]) -> float:
    """3DGS's scene extent: 1.1 x the largest distance of a training camera from their mean centre."""
    centers = np.stack([scene.cameras[i].center for i in view_ids])
    radius = float(np.linalg.norm(centers - centers.mean(0), axis=1).max())
    return 1.1 * max(radius, 1e-6)


def gt_image(scene: Scene, index: int, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(scene.load_image(index)).to(device=device, dtype=torch.float32) / 255.0


@torch.no_grad()
def view_metrics(
    field: AnchorField,
    decoder: GaussianDecoder,
    scene: Scene,
    views: list[View],
    ids: list[int],
    crops: dict[int, Crop] | None = None,
) -> np.ndarray:
    """PSNR and SSIM of the anchor model on each of the views `ids`, on the view's crop where `crops` has
    one. -> [len(ids), 2] float64"""
    values = np.zeros((len(ids), 2))
    for row, i in enumerate(ids):
        view, gt = views[i], gt_image(scene, i, views[i].viewmat.device)
        crop = (crops or {}).get(i)
        if crop is not None:
            view, gt = crop_view(view, crop), crop_image(gt, crop)
        image = render_anchor_view(field, decoder, view).image.clamp(0, 1)
        values[row] = float(psnr(image, gt)), float(ssim(image, gt))
    return values


def view_quality(
    field, decoder, scene: Scene, views: list[View], ids: list[int], crops: dict[int, Crop] | None = None
) -> tuple[float, float]:
    """Mean PSNR and SSIM of the anchor model over the views `ids` (for block weights), on the part of each
    view the block trains on (`crops`)."""
    mean = view_metrics(field, decoder, scene, views, ids, crops).mean(0)
    return float(mean[0]), float(mean[1])
