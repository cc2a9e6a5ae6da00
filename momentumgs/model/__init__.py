"""Anchor field, shared Gaussian decoder with its momentum teacher, prefilter and densification."""

from momentumgs.model.anchors import AnchorField, choose_voxel_size, init_anchors_from_points, voxelize
from momentumgs.model.decoder import (
    DecoderOutput,
    GaussianDecoder,
    MomentumTeacher,
    NeuralGaussians,
    VisibleAnchors,
    consistency_loss,
    decode,
    gather_anchors,
)
from momentumgs.model.densify import (
    AdjustReport,
    DensifyOptions,
    DensifyStats,
    adjust_anchors,
    grow_anchors,
    prune_mask,
)
from momentumgs.model.optim import extend_params, keep_rows
from momentumgs.model.prefilter import anchor_radii, visible_anchor_mask

__all__ = [
    "AdjustReport",
    "AnchorField",
    "DecoderOutput",
    "DensifyOptions",
    "DensifyStats",
    "GaussianDecoder",
    "MomentumTeacher",
    "NeuralGaussians",
    "VisibleAnchors",
    "adjust_anchors",
    "anchor_radii",
    "choose_voxel_size",
    "consistency_loss",
    "decode",
    "extend_params",
    "gather_anchors",
    "grow_anchors",
    "init_anchors_from_points",
    "keep_rows",
    "prune_mask",
    "visible_anchor_mask",
    "voxelize",
]
