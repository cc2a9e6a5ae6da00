"""One block's trainable state and one training step on it.

A `Block` owns its anchors, their Adam optimizer, its densifier (anchor growing and pruning, with its
statistics and RNG), its view sampler and its iteration count (each block follows its own schedules). The
decoder is not part of a block: it is shared, and the caller steps its optimizer (after averaging gradients
across workers in multi-block runs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from momentumgs.anchor_render import render_anchor_view
from momentumgs.config import TrainConfig
from momentumgs.model.anchors import AnchorField
from momentumgs.model.decoder import (
    PAPER_TERMS,
    ConsistencyTerms,
    GaussianDecoder,
    consistency_loss,
    decode_targets,
)
from momentumgs.model.densify import AdjustReport, AnchorDensifier, ScaffoldDensifier
from momentumgs.render.view import View
from momentumgs.timing import phase
from momentumgs.train.losses import photometric_loss, volume_loss
from momentumgs.train.optimizers import anchor_optimizer, apply_schedules, lr_schedules
from momentumgs.train.sampler import ViewSampler


@dataclass
class StepResult:
    loss: float
    l1: float
    ssim: float
    psnr: float
    consistency: float
    n_gaussians: int
    n_visible_anchors: int
    finite: bool


class Block:
    def __init__(
        self,
        field: AnchorField,
        view_ids: list[int],
        cfg: TrainConfig,
        spatial_scale: float,
        seed: int,
        densifier: AnchorDensifier | None = None,  # None: Scaffold-GS growing/pruning on cfg.densify
    ):
        self.field = field
        self.cfg = cfg
        self.spatial_scale = spatial_scale
        self.optimizer = anchor_optimizer(field, cfg.lr, spatial_scale)
        self.schedules = lr_schedules(cfg.lr, cfg.iterations, spatial_scale)
        self.densifier = ScaffoldDensifier(cfg.densify, field, seed + 1) if densifier is None else densifier
        self.sampler = ViewSampler(view_ids, seed)
        self.iteration = 0  # completed steps

    # --- one step ---------------------------------------------------------------------------------

    def forward_backward(
        self,
        decoder: GaussianDecoder,
        view: View,
        gt: torch.Tensor,  # [H, W, 3] in [0, 1]
        teacher: GaussianDecoder | None = None,
        lambda_consistency: float = 0.0,
        terms: ConsistencyTerms = PAPER_TERMS,
        weight: float = 1.0,
    ) -> StepResult:
        """Render `view`, compute the block's loss, backpropagate (gradients accumulate into the anchors and
        the decoder), and collect densification statistics. A non-finite loss backpropagates nothing."""
        cfg = self.cfg
        apply_schedules(self.optimizer, self.schedules, self.iteration)
        render = render_anchor_view(self.field, decoder, view)
        with phase("loss"):
            photo = photometric_loss(render.image, gt, cfg.lambda_dssim)
            loss = photo.loss + cfg.lambda_volume * volume_loss(render.gaussians.scales)
        cons = torch.zeros(())
        if teacher is not None and lambda_consistency > 0:
            with phase("teacher_decode"):
                appearance_id = view.index if teacher.appearance is not None else None
                target = decode_targets(teacher, render.anchors, view.center, render.gaussians, appearance_id)
            with phase("consistency"):
                cons = consistency_loss(render.gaussians, target, terms)
                loss = loss + lambda_consistency * cons
        loss = weight * loss
        finite = bool(torch.isfinite(loss))
        if finite:
            with phase("backward"):
                loss.backward()
            self.densifier.after_backward(
                self.iteration + 1, render.gaussians, render.meta, view.width, view.height
            )
        with torch.no_grad():
            mse = (render.image.detach().clamp(0, 1) - gt).square().mean()
        return StepResult(
            loss=float(loss.detach()),
            l1=photo.l1,
            ssim=photo.ssim,
            psnr=float(-10 * torch.log10(mse)) if mse > 0 else math.inf,
            consistency=float(cons.detach()),
            n_gaussians=int(render.gaussians.means.shape[0]),
            n_visible_anchors=int(render.anchors.ids.shape[0]),
            finite=finite,
        )

    def step(self, finite: bool = True) -> AdjustReport | None:
        """Apply the anchor gradients (unless the loss was not finite), then grow/prune when due."""
        with phase("optimizer"):
            if finite and self._grads_finite():
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.iteration += 1
        return self.densifier.after_step(self.iteration, self.field, self.optimizer)

    def _grads_finite(self) -> bool:
        return all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in self.field.params().values())

    # --- state ------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "iteration": self.iteration,
            "spatial_scale": self.spatial_scale,
            "anchors": self.field.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            **self.densifier.state_dict(),  # "densify_stats", "densify_rng" for the default densifier
            "sampler": self.sampler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.iteration = int(state["iteration"])
        self.spatial_scale = float(state["spatial_scale"])
        self.field.load_state_dict(state["anchors"])
        # The field's Parameters were replaced: rebuild the optimizer around them, then restore its moments.
        self.optimizer = anchor_optimizer(self.field, self.cfg.lr, self.spatial_scale)
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedules = lr_schedules(self.cfg.lr, self.cfg.iterations, self.spatial_scale)
        self.densifier.load_state_dict(state)
        self.sampler.load_state_dict(state["sampler"])
