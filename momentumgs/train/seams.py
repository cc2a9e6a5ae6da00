"""Seam refinement after the merge: a short fit of the merged model's anchors near block borders to the
training photos, the shared decoder fixed (docs/method.md, Partitioning and merging).

Each block trained the Gaussians on its side of a border together with its own version of the other side
(its margin, dropped at the merge); the merged model puts the two sides together for the first time, and
the pixels they share render worse than the interiors. A few steps of the photometric loss with the real
neighbours in place close that gap. Only anchors with a kept neural Gaussian within a band around the
borders move; the rest of each block and the decoder stay as trained, so the refinement cannot overfit the
interiors. Their Gaussians' centres may move a little (offsets and scales learn); afterwards the merge's
cut is made again, so that every kept Gaussian still lies in its own block's cell: a slot whose centre
crossed into another cell is dropped (under 1 % of the seam anchors' slots on the demo scenes). The
learning rates are the training's at its end, decayed linearly to zero over the steps so that the last
steps settle instead of stopping mid-move.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from momentumgs.config import TrainConfig
from momentumgs.data.scene import Scene
from momentumgs.merge import allowed_slots, owner_of
from momentumgs.model.anchors import AnchorField
from momentumgs.model.decoder import GaussianDecoder
from momentumgs.partition import Partition
from momentumgs.render.anchors import render_anchor_view, visible_anchors
from momentumgs.render.view import View
from momentumgs.train.losses import photometric_loss, volume_loss
from momentumgs.train.measure import gt_image
from momentumgs.train.optimizers import ADAM_EPS
from momentumgs.train.sampler import ViewSampler


@dataclass
class SeamReport:
    steps: int
    band_width: float  # world units
    seam_anchors: int
    anchors: int
    views: int  # training views that see a seam anchor
    dropped_slots: int = 0  # slots whose centre left their block's cell (cut again)


def band_width(partition: Partition, band: float) -> float:
    """`band` times the AABB's extent per cell along the ground axis where that is smaller, in world units
    (for 2 cells along an axis, the part of each cell inside the AABB)."""
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
    rule: str = "gaussians",
) -> SeamReport:
    """Fit `field`'s anchors near the borders (in place) to the training `views` that see them, `steps`
    Adam steps of the training loss, one view per step (a fresh seeded permutation every epoch); then, for
    a model merged by Gaussian (`rule`, partition.merge), cut its slot mask again to the blocks' cells
    (merged by anchor, an anchor keeps all its slots wherever they lie). `decoder` is left unchanged;
    `spatial_scale` scales the offsets' learning rate as in training. `progress(step)` after each step."""
    width = band_width(partition, band)
    movable = seam_anchors(field, partition, width)  # [N]
    pool = [i for i, view in views.items() if bool((visible_anchors(field, view) & movable).any())]
    report = SeamReport(steps, width, int(movable.sum()), field.n_anchors, len(pool))
    if steps <= 0 or not pool:
        return replace(report, steps=0)
    block = anchor_blocks(field, partition) if rule == "gaussians" else None  # [N]
    decoder_grad = [p.requires_grad for p in decoder.parameters()]
    decoder.requires_grad_(False)
    for p in field.params().values():
        p.requires_grad_(True)
    try:
        fit = SeamFit(field, movable, train, spatial_scale, steps)
        sampler = ViewSampler(pool, seed)
        for step in range(steps):
            index = sampler.next()
            fit.step(step, decoder, views[index], gt_image(scene, index, field.positions.device))
            if progress is not None:
                progress(step + 1)
    finally:
        for p in field.params().values():  # handed back as a merged model is: rendered, not trained
            p.requires_grad_(False)
        for p, flag in zip(decoder.parameters(), decoder_grad, strict=True):
            p.requires_grad_(flag)
    if block is None:
        return report
    return replace(report, dropped_slots=cut_to_cells(field, partition, block))


class SeamFit:
    """Adam on the seam anchors (`movable`) of `field`: the training's learning rates at its end, decayed
    linearly to zero over `steps`; the other anchors' gradients are zeroed before every step."""

    def __init__(
        self, field: AnchorField, movable: torch.Tensor, train: TrainConfig, scale: float, steps: int
    ):
        self.field, self.movable, self.train, self.steps = field, movable, train, steps
        self.learning = field.params()
        self.base_lr = {
            "features": train.lr.features,
            "offsets": train.lr.offsets_final * scale,
            "log_scales": train.lr.log_scales,
        }
        groups = [{"name": n, "params": [p], "lr": self.base_lr[n]} for n, p in self.learning.items()]
        self.optimizer = torch.optim.Adam(groups, eps=ADAM_EPS)

    def step(self, step: int, decoder: GaussianDecoder, view: View, gt: torch.Tensor) -> None:
        """Step `step` of the fit: the training loss on one view (`gt`: its photo)."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.base_lr[group["name"]] * (1.0 - step / self.steps)
        render = render_anchor_view(self.field, decoder, view)
        loss = photometric_loss(render.image, gt, self.train.lambda_dssim).loss
        loss = loss + self.train.lambda_volume * volume_loss(render.gaussians.scales)
        if torch.isfinite(loss):
            loss.backward()
            for p in self.learning.values():
                if p.grad is not None:  # Adam moves nothing whose gradient was always zero
                    p.grad[~self.movable] = 0.0
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


@torch.no_grad()
def cut_to_cells(field: AnchorField, partition: Partition, block: torch.Tensor) -> int:
    """Cut `field`'s slot mask again to the cells of its anchors' blocks (`block`, [N]). -> slots dropped"""
    kept = allowed_slots(field)
    field.slot_mask = kept & (owner_of(field.slot_means(), partition) == block[:, None])  # [N, K]
    return int((kept & ~field.slot_mask).sum())


@torch.no_grad()
def anchor_blocks(field: AnchorField, partition: Partition) -> torch.Tensor:
    """The block each merged anchor came from: the cell of its kept slots (the merge keeps an anchor's
    slots in its own block's cell only). -> [N] long, -1 for an anchor without a kept slot"""
    owner = owner_of(field.slot_means(), partition)  # [N, K]
    return torch.where(allowed_slots(field), owner, torch.full_like(owner, -1)).max(dim=1).values
