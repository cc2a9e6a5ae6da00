"""Adam optimizers and their learning-rate schedules.

Anchors and decoder get separate optimizers: each block owns the one of its anchors (it is resized by
growing and pruning, and leaves the device with the block), the decoder's is shared by all blocks.
"""

from __future__ import annotations

import torch

from momentumgs.config import OptimConfig
from momentumgs.model.anchors import AnchorField
from momentumgs.model.decoder import GaussianDecoder
from momentumgs.train.schedule import ExpSchedule

ADAM_EPS = 1e-15  # as 3DGS / Scaffold-GS: tiny gradients of rarely seen anchors still move them
EXPOSURE_EPS = 1.0  # the exposure rows' (decoder_optimizer)


def anchor_optimizer(field: AnchorField, lr: OptimConfig, spatial_scale: float) -> torch.optim.Adam:
    groups = [
        {"name": "features", "params": [field.features], "lr": lr.features},
        {"name": "offsets", "params": [field.offsets], "lr": lr.offsets_init * spatial_scale},
        {"name": "log_scales", "params": [field.log_scales], "lr": lr.log_scales},
    ]
    return torch.optim.Adam(groups, lr=0.0, eps=ADAM_EPS)


def decoder_optimizer(decoder: GaussianDecoder, lr: OptimConfig) -> torch.optim.Adam:
    groups = [
        {"name": "mlp_opacity", "params": list(decoder.mlp_opacity.parameters()), "lr": lr.mlp_opacity_init},
        {"name": "mlp_color", "params": list(decoder.mlp_color.parameters()), "lr": lr.mlp_color_init},
        {"name": "mlp_cov", "params": list(decoder.mlp_cov.parameters()), "lr": lr.mlp_cov_init},
    ]
    if decoder.appearance is not None:
        rows = list(decoder.appearance.parameters())
        if decoder.appearance_mode == "exposure":
            # A photo's row is sampled once in many steps; Adam's per-coordinate scaling would then move it
            # by a multiple of lr whatever its gradient, so a photo with nothing to correct drifts as far as
            # one with a real exposure change. With eps far above the rows' gradients (~0.1), Adam reduces
            # to momentum SGD: a row moves lr * gradient per sample.
            groups.append({"name": "exposure", "params": rows, "lr": lr.exposure_init, "eps": EXPOSURE_EPS})
        else:
            groups.append({"name": "appearance", "params": rows, "lr": lr.appearance_init})
    return torch.optim.Adam(groups, lr=0.0, eps=ADAM_EPS)


def lr_schedules(
    lr: OptimConfig, iterations: int, spatial_scale: float, hold_after: float = 1.0
) -> dict[str, ExpSchedule]:
    """Per param-group schedules over `iterations` (constant groups decay from x to x): each reaches its final
    rate at `hold_after` x `iterations` and holds it after (`train.lr_hold_after`)."""
    max_steps = max(1, round(hold_after * iterations))

    def span(init: float, final: float) -> ExpSchedule:
        return ExpSchedule(init, final, max_steps)

    return {
        "features": span(lr.features, lr.features),
        "offsets": span(lr.offsets_init * spatial_scale, lr.offsets_final * spatial_scale),
        "log_scales": span(lr.log_scales, lr.log_scales),
        "mlp_opacity": span(lr.mlp_opacity_init, lr.mlp_opacity_final),
        "mlp_color": span(lr.mlp_color_init, lr.mlp_color_final),
        "mlp_cov": span(lr.mlp_cov_init, lr.mlp_cov_final),
        "appearance": span(lr.appearance_init, lr.appearance_final),
        "exposure": span(lr.exposure_init, lr.exposure_final),
    }


def apply_schedules(optimizer: torch.optim.Optimizer, schedules: dict[str, ExpSchedule], step: int) -> None:
    for group in optimizer.param_groups:
        group["lr"] = schedules[group["name"]](step)
