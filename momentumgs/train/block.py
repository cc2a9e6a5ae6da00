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
from momentumgs.render.anchors import render_anchor_view
from momentumgs.render.view import Crop, View, crop_image, crop_view
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
        self.schedules = lr_schedules(cfg.lr, cfg.iterations, spatial_scale, cfg.lr_hold_after)
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
        balance: float = 0.0,
        crop: Crop | None = None,
        cap_anchors: bool = False,
    ) -> StepResult:
        """Render `view` (only its `crop` when given), compute the block's loss, backpropagate (gradients
        accumulate into the anchors and the decoder), and collect densification statistics. A non-finite
        loss backpropagates nothing. `balance` > 0 caps the consistency gradient on each decoder head at
        `balance` times the image's, and on the anchors too with `cap_anchors` (`balanced_backward`); 0
        backpropagates the sum as it is (the paper)."""
        # The loss is a mean over the crop's pixels; the densifier's thresholds are for the whole image's,
        # where the same pixels weigh `share` times less: its pixel-to-NDC scale takes that factor.
        share = 1.0 if crop is None else crop.share
        ndc_width, ndc_height = share * view.width, share * view.height
        if crop is not None:
            view, gt = crop_view(view, crop), crop_image(gt, crop)
        apply_schedules(self.optimizer, self.schedules, self.iteration)
        render = render_anchor_view(self.field, decoder, view)
        photo, image_loss, cons, loss = self._losses(render, view, gt, teacher, lambda_consistency, terms)
        loss = weight * loss
        finite = bool(torch.isfinite(loss))
        if finite:
            with phase("backward"):
                if balance > 0 and cons.requires_grad:
                    image, consistency = weight * image_loss, weight * lambda_consistency * cons
                    balanced_backward(image, consistency, decoder, self.field, balance, cap_anchors)
                else:
                    loss.backward()
            self.densifier.after_backward(
                self.iteration + 1, render.gaussians, render.meta, ndc_width, ndc_height
            )
        return _step_result(render, gt, photo, loss, cons, finite)

    def _losses(self, render, view: View, gt: torch.Tensor, teacher, lambda_consistency: float, terms):
        """The photometric loss's parts, the image loss (photometric + volume), the consistency loss against
        the `teacher` (a constant 0 without one) and their weighted sum. -> (PhotometricLoss, image loss,
        consistency, loss)"""
        cfg = self.cfg
        with phase("loss"):
            photo = photometric_loss(render.image, gt, cfg.lambda_dssim)
            image_loss = photo.loss + cfg.lambda_volume * volume_loss(render.gaussians.scales)
        cons = torch.zeros(())
        if teacher is not None and lambda_consistency > 0:
            with phase("teacher_decode"):
                appearance = view.index if teacher.appearance is not None else None
                target = decode_targets(teacher, render.anchors, view.center, render.gaussians, appearance)
            with phase("consistency"):
                cons = consistency_loss(render.gaussians, target, terms)
                return photo, image_loss, cons, image_loss + lambda_consistency * cons
        return photo, image_loss, cons, image_loss

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
        cfg = self.cfg
        self.schedules = lr_schedules(cfg.lr, cfg.iterations, self.spatial_scale, cfg.lr_hold_after)
        self.densifier.load_state_dict(state)
        self.sampler.load_state_dict(state["sampler"])


def _step_result(render, gt: torch.Tensor, photo, loss: torch.Tensor, cons: torch.Tensor, finite: bool):
    """The numbers of one step on a block (its loss, PSNR of the render, sizes)."""
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


def decoder_heads(decoder: GaussianDecoder) -> list[list[torch.nn.Parameter]]:
    """The decoder's parameters by head: opacity MLP, colour MLP (with the appearance table that acts on
    it), covariance MLP."""
    colour = list(decoder.mlp_color.parameters())
    if decoder.appearance is not None:
        colour += list(decoder.appearance.parameters())
    return [list(decoder.mlp_opacity.parameters()), colour, list(decoder.mlp_cov.parameters())]


def balanced_backward(
    image_loss: torch.Tensor,
    consistency: torch.Tensor,
    decoder: GaussianDecoder,
    field,
    balance: float,
    cap_anchors: bool = False,
) -> None:
    """Backpropagate image_loss + consistency, the consistency's part scaled down on each decoder head (its
    opacity, colour and covariance MLPs) to at most `balance` times the norm of the image's part there.
    The teacher then steadies what the image trains and cannot outweigh it: on a head the image barely
    constrains (e.g. the rotation of round Gaussians) the paper's sum lets a lagging teacher decide.
    The anchors take the consistency gradient as it is, or capped the same way (all their parameters as
    one group) with `cap_anchors`. Gradients of other workers already in the decoder's `.grad` (one process
    emulating several) are set aside, then added first, in the order a process group's sum adds them."""
    heads = decoder_heads(decoder)
    params = [p for head in heads for p in head]
    anchor_params = [p for p in field.params().values() if p.requires_grad]
    grads = torch.autograd.grad(consistency, params + anchor_params, retain_graph=True, allow_unused=True)
    cons_of = {id(p): g for p, g in zip(params + anchor_params, grads, strict=True)}
    others = {id(p): p.grad for p in params}
    for p in params:
        p.grad = None
    image_loss.backward()  # the anchors accumulate as usual; the decoder's .grad is this view's image part
    for head in heads:
        scale = _capped_scale(head, cons_of, balance)
        for p in head:
            own = p.grad if p.grad is not None else torch.zeros_like(p)
            if cons_of[id(p)] is not None:
                own = own + scale * cons_of[id(p)]
            p.grad = own if others[id(p)] is None else others[id(p)] + own
    # the anchors belong to this block alone: their .grad holds this view's image part only
    scale = _capped_scale(anchor_params, cons_of, balance) if cap_anchors and anchor_params else 1.0
    for p in anchor_params:
        if cons_of[id(p)] is not None:
            p.grad = scale * cons_of[id(p)] if p.grad is None else p.grad + scale * cons_of[id(p)]


def _capped_scale(group: list[torch.Tensor], cons_of: dict, balance: float) -> torch.Tensor:
    """The factor (<= 1) that brings the consistency's gradient on `group` (by parameter id in `cons_of`)
    down to at most `balance` times the image's, which the group's .grad holds."""
    image = _norm([p.grad for p in group], like=group[0])
    cons = _norm([cons_of[id(p)] for p in group], like=group[0])
    return torch.clamp(balance * image / cons.clamp(min=1e-30), max=1.0)


def _norm(tensors: list[torch.Tensor | None], like: torch.Tensor) -> torch.Tensor:
    """The joint L2 norm of the tensors present (0 on `like`'s device when none is)."""
    present = [t.square().sum() for t in tensors if t is not None]
    return torch.sqrt(torch.stack(present).sum()) if present else like.new_zeros(())
