"""Training losses (docs/method.md, Loss): 0.8 L1 + 0.2 (1 - SSIM) on the image, a volume regulariser on
the kept neural Gaussians, and (in multi-block training) the momentum consistency term from the model
package."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from momentumgs.metrics import ssim


@dataclass
class PhotometricLoss:
    loss: torch.Tensor  # scalar, differentiable
    l1: float
    ssim: float


def photometric_loss(image: torch.Tensor, gt: torch.Tensor, lambda_dssim: float) -> PhotometricLoss:
    """(1 - lambda) L1 + lambda (1 - SSIM). image, gt: [H, W, 3] in [0, 1]."""
    l1 = (image - gt).abs().mean()
    s = ssim(image, gt)
    loss = (1.0 - lambda_dssim) * l1 + lambda_dssim * (1.0 - s)
    return PhotometricLoss(loss, float(l1.detach()), float(s.detach()))


def consistency_weight(
    iteration: int, iterations: int, lambda_consistency: float, ramp: list[float]
) -> float:
    """lambda_c at a block's `iteration` (of `iterations`): 0 before the ramp's start, its full value
    (`method.teacher.lambda_consistency`) after the ramp's end, linear between (`ramp`, fractions of the
    block's iterations: `experimental.consistency_ramp`)."""
    start, end = (f * iterations for f in ramp)
    if iteration >= end:
        return lambda_consistency
    if iteration < start:
        return 0.0
    return lambda_consistency * (iteration - start) / (end - start)


def volume_loss(scales: torch.Tensor) -> torch.Tensor:
    """Mean product of the three scales of the kept Gaussians [M, 3] (0 when none is kept)."""
    if scales.shape[0] == 0:
        return scales.sum() * 0.0
    return scales.prod(dim=1).mean()
