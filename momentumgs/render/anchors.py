"""Render an anchor model from a camera: prefilter the anchors, decode neural Gaussians, rasterize."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from momentumgs.data.scene import Camera
from momentumgs.model.anchors import AnchorField
from momentumgs.model.decoder import (
    GaussianDecoder,
    NeuralGaussians,
    VisibleAnchors,
    decode,
    gather_anchors,
)
from momentumgs.model.prefilter import anchor_radii, visible_anchor_mask
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
    index: int = -1  # camera index in the scene (appearance embedding id)


def camera_view(cam: Camera, device: torch.device | str = "cpu", index: int = -1) -> View:
    return View(
        viewmat=torch.as_tensor(cam.viewmat, dtype=torch.float32, device=device),
        K=torch.as_tensor(cam.K, dtype=torch.float32, device=device),
        center=torch.as_tensor(cam.center, dtype=torch.float32, device=device),
        width=cam.width,
        height=cam.height,
        index=index,
    )


@dataclass
class AnchorRender:
    image: torch.Tensor  # [H, W, 3]
    alpha: torch.Tensor  # [H, W, 1]
    anchors: VisibleAnchors  # the decoded anchors (a teacher decodes the same ones)
    gaussians: NeuralGaussians
    meta: dict


def visible_anchors(field: AnchorField, view: View) -> torch.Tensor:
    """Anchors whose neural Gaussians can reach the image. -> [N] bool"""
    with torch.no_grad():
        radii = anchor_radii(field.offsets, field.log_scales)
        return visible_anchor_mask(
            field.positions, view.viewmat, view.K, view.width, view.height, radii=radii, near=NEAR_PLANE
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


def render_anchor_view(
    field: AnchorField,
    decoder: GaussianDecoder,
    view: View,
    background: torch.Tensor | None = None,
    visible: torch.Tensor | None = None,
) -> AnchorRender:
    """Decode the anchors visible from `view` with `decoder` and rasterize their neural Gaussians."""
    with phase("prefilter"):
        if visible is None:
            visible = visible_anchors(field, view)
        anchors = gather_anchors(field, visible)
    appearance_id = view.index if decoder.appearance is not None else None
    with phase("decode"):
        gaussians = decode(decoder, anchors, view.center, appearance_id=appearance_id)
    image, alpha, meta = rasterize_gaussians(
        gaussians.means,
        gaussians.quats,
        gaussians.scales,
        gaussians.opacities,
        gaussians.colors,
        view,
        background,
    )
    return AnchorRender(image, alpha, anchors, gaussians, meta)


@torch.no_grad()
def render_model_view(model, view: View, background: torch.Tensor | None = None) -> torch.Tensor:
    """The image [H, W, 3] of a trained `AnchorModel` (model/store.py) from `view`, without gradients (for
    viewing, evaluation and export). Models with per-block decoders (the independent-blocks ablation)
    decode each block's anchors with its own decoder."""
    if model.block_decoders is None:
        return render_anchor_view(model.field, model.decoder, view, background).image
    visible = visible_anchors(model.field, view)
    parts = []
    for b, decoder in enumerate(model.block_decoders):
        anchors = gather_anchors(model.field, visible & (model.anchor_block == b))
        appearance_id = view.index if decoder.appearance is not None else None
        parts.append(decode(decoder, anchors, view.center, appearance_id=appearance_id))
    image, _, _ = rasterize_gaussians(
        *(
            torch.cat([getattr(g, name) for g in parts])
            for name in ("means", "quats", "scales", "opacities", "colors")
        ),
        view,
        background,
    )
    return image
