"""Seam refinement after the merge: a short fit of the merged model's anchors near block borders to the
training photos, the shared decoder fixed (docs/method.md, Partitioning and merging).

Each block trained the Gaussians on its side of a border together with its own version of the other side
(its margin, dropped at the merge); the merged model puts the two sides together for the first time, and
the pixels they share render worse than the interiors. A few steps of the photometric loss with the real
neighbours in place close that gap. Only anchors with a kept neural Gaussian within a band around the
borders move; the rest of each block and the decoder stay as trained, so the refinement cannot overfit the
interiors. The learning rates are the training's (the offsets' at their final value), decayed linearly to
zero over the steps so that the last steps settle instead of stopping mid-move.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from momentumgs.anchor_render import render_anchor_view, visible_anchors
from momentumgs.config import TrainConfig
from momentumgs.data.scene import Scene
from momentumgs.merge import allowed_slots
from momentumgs.model.anchors import AnchorField
from momentumgs.model.decoder import GaussianDecoder
from momentumgs.partition import Partition
from momentumgs.render.view import View
from momentumgs.train.losses import photometric_loss, volume_loss
from momentumgs.train.measure import gt_image
from momentumgs.train.optimizers import anchor_optimizer
from momentumgs.train.sampler import ViewSampler


@dataclass
class SeamReport:
    steps: int
    band_width: float  # world units
    seam_anchors: int
    anchors: int
    views: int  # training views that see a seam anchor


def band_width(partition: Partition, band: float) -> float:
    """`band` times the smallest ground extent of a cell, in world units."""
    extent = (partition.aabb[3:] - partition.aabb[:3]) / partition.grid_shape  # [3]
    return band * float(min(extent[a] for a in partition.axes[:2]))


@torch.no_grad()
def seam_anchors(field: AnchorField, partition: Partition, width: float) -> torch.Tensor:
    """Anchors with a kept neural Gaussian less than `width` from another block's cell along a ground axis
    (the Gaussian's centre moved by +-width lands in another block). -> [N] bool"""
    allowed = allowed_slots(field).cpu()  # [N, K]
    means = field.slot_means().detach().cpu()[allowed].double().numpy()  # [S, 3]
    owner = partition.block_of_points(means)  # [S]
    near = np.zeros(len(means), dtype=bool)
    for axis in partition.axes[:2]:
        for sign in (-1.0, 1.0):
            moved = means.copy()
            moved[:, axis] += sign * width
            near |= partition.block_of_points(moved) != owner
    slot_near = torch.zeros_like(allowed)
    slot_near[allowed] = torch.from_numpy(near)
    return slot_near.any(dim=1).to(field.positions.device)


def refine_seams(
    field: AnchorField,
    decoder: GaussianDecoder,
    scene: Scene,
    views: dict[int, View],
    partition: Partition,
    train: TrainConfig,
    spatial_scale: float,
    steps: int,
    band: float,
    seed: int,
    progress: Callable[[int], None] | None = None,
) -> SeamReport:
    """Fit `field`'s anchors near the borders (in place) to the training `views` that see them, `steps`
    Adam steps of the training loss, one view per step (a fresh seeded permutation every epoch); `decoder`
    is left unchanged. `progress(step)` after each step."""
    width = band_width(partition, band)
    movable = seam_anchors(field, partition, width)  # [N]
    pool = [i for i, view in views.items() if bool((visible_anchors(field, view) & movable).any())]
    report = SeamReport(steps, width, int(movable.sum()), field.n_anchors, len(pool))
    if steps <= 0 or not pool:
        return replace(report, steps=0)

    params = field.params()
    decoder_grad = [p.requires_grad for p in decoder.parameters()]
    decoder.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    optimizer = anchor_optimizer(field, train.lr, spatial_scale)
    base_lr = {"features": train.lr.features, "offsets": train.lr.offsets_final * spatial_scale}
    base_lr["log_scales"] = train.lr.log_scales
    sampler = ViewSampler(pool, seed)
    try:
        for step in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = base_lr[group["name"]] * (1.0 - step / steps)
            index = sampler.next()
            render = render_anchor_view(field, decoder, views[index])
            gt = gt_image(scene, index, field.positions.device)
            loss = photometric_loss(render.image, gt, train.lambda_dssim).loss
            loss = loss + train.lambda_volume * volume_loss(render.gaussians.scales)
            if torch.isfinite(loss):
                loss.backward()
                for p in params.values():
                    if p.grad is not None:
                        p.grad[~movable] = 0  # Adam moves nothing whose gradient was always zero
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if progress is not None:
                progress(step + 1)
    finally:
        for p in params.values():
            p.requires_grad_(False)
        for p, flag in zip(decoder.parameters(), decoder_grad, strict=True):
            p.requires_grad_(flag)
    return report
