"""Render an anchor model from a camera: prefilter the anchors, decode neural Gaussians, rasterize.

This sits above both `model/` (anchors, decoder) and the rest of `render/` (the plain-tensor rasterizer): its
own layer in docs/architecture.md."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from momentumgs.model.anchors import AnchorField
from momentumgs.model.appearance import resolve_appearance
from momentumgs.model.decoder import (
    Appearance,
    GaussianDecoder,
    NeuralGaussians,
    VisibleAnchors,
    decode,
    gather_anchors,
)
from momentumgs.model.prefilter import anchor_radii, visible_anchor_mask
from momentumgs.render.view import NEAR_PLANE, View, rasterize_gaussians
from momentumgs.timing import phase


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


def render_anchor_view(
    field: AnchorField,
    decoder: GaussianDecoder,
    view: View,
    background: torch.Tensor | None = None,
    visible: torch.Tensor | None = None,
    appearance: Appearance = None,
) -> AnchorRender:
    """Decode the anchors visible from `view` with `decoder` and rasterize their neural Gaussians. A decoder
    with an appearance embedding uses `appearance`, by default the row of the view's own photo (training)."""
    with phase("prefilter"):
        if visible is None:
            visible = visible_anchors(field, view)
        anchors = gather_anchors(field, visible)
    if decoder.appearance is not None and appearance is None:
        appearance = view.index
    with phase("decode"):
        gaussians = decode(decoder, anchors, view.center, appearance=appearance)
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
def model_gaussians(model, view: View, appearance: Appearance = None) -> tuple[torch.Tensor, ...]:
    """The neural Gaussians of a trained `AnchorModel` seen from `view`, each block's anchors decoded by its
    own decoder when the model has per-block decoders (the independent-blocks ablation). -> means [M, 3],
    quats [M, 4], scales [M, 3], opacities [M], colors [M, 3]"""
    visible = visible_anchors(model.field, view)
    if model.block_decoders is None:
        groups = [(model.decoder, visible)]
    else:
        groups = [(d, visible & (model.anchor_block == b)) for b, d in enumerate(model.block_decoders)]
    parts = []
    for decoder, mask in groups:
        chosen = resolve_appearance(decoder, appearance, model.info)
        parts.append(decode(decoder, gather_anchors(model.field, mask), view.center, appearance=chosen))
    names = ("means", "quats", "scales", "opacities", "colors")
    return tuple(torch.cat([getattr(g, name) for g in parts]) for name in names)


@torch.no_grad()
def render_model_view(
    model, view: View, background: torch.Tensor | None = None, appearance: Appearance = None
) -> torch.Tensor:
    """The image [H, W, 3] of a trained `AnchorModel` (model/store.py) from `view`, without gradients (for
    viewing, evaluation and export), in the neutral appearance unless `appearance` names a photo's row or
    gives an embedding (model/appearance.py). Models with per-block decoders (the independent-blocks
    ablation) decode each block's anchors with its own decoder (`model_gaussians`)."""
    if model.block_decoders is None:
        chosen = resolve_appearance(model.decoder, appearance, model.info)
        return render_anchor_view(model.field, model.decoder, view, background, appearance=chosen).image
    image, _, _ = rasterize_gaussians(*model_gaussians(model, view, appearance), view, background)
    return image
