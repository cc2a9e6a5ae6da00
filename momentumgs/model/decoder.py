"""The shared Gaussian decoder (three small MLPs), its momentum teacher and the consistency loss
(docs/method.md, Representation and Momentum teacher).

Formulas follow Scaffold-GS's `generate_neural_gaussians` and Momentum-GS's
`generate_neural_gaussians_and_momentum_gaussians` / `render_with_consistency_loss`:

    d = x_v - c, dhat = d / |d|, z = [f_v, dhat (, |d|)]
    alpha = tanh(MLP_a(z))            [V, K], keep alpha > 0
    colour = sigmoid(MLP_c(z, app))   [V, K, 3]
    r = MLP_s(z)                      [V, K, 7]
    scale = exp(l[3:6]) * sigmoid(r[:3]),  quat = normalize(r[3:7]),  mean = x_v + O_v * exp(l[0:3])

The decoder is a plain nn.Module mapping z to raw outputs; `decode` turns them into Gaussians, so
the teacher decodes the same anchors through its own weights by calling `decode` with the student's
keep mask.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci
from torch import nn

from momentumgs.config import ConsistencyShape, OpacitySlots
from momentumgs.model.anchors import AnchorField, slot_means

# An image index into the decoder's embedding table, an embedding [A], or None (decoders without one).
Appearance = int | torch.Tensor | None
APPEARANCE_MODES = ("exposure", "embedding")  # what a row of the per-image table does (GaussianDecoder)


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


@dataclass
class DecoderOutput:
    """Raw per-anchor outputs of the decoder, before masking."""

    opacity: torch.Tensor  # [V, K] tanh outputs, in (-1, 1)
    color: torch.Tensor  # [V, K, 3] in (0, 1); times the photo's gain with an exposure table
    cov: torch.Tensor  # [V, K, 7] raw: 3 scale logits, 4 quaternion (w, x, y, z) values


class GaussianDecoder(nn.Module):
    """Opacity, colour and covariance MLPs: Linear(in, hidden) -> ReLU -> Linear(hidden, out)
    with out = K (tanh), 3K (sigmoid), 7K (none). in = feat_dim + 3 (+1 with `use_distance`).
    With `appearance_dim > 0` a per-image table [appearance_count, appearance_dim] is learnt here and acts
    on the colours only, as `appearance_mode` says:
    - "exposure": each row is its photo's log-gain per channel (A = 3): colours x exp(row). A camera's
      exposure and white balance scale the image (under a power-law tone curve too), and a per-photo gain
      cannot absorb anything a view sees, so a capture without such changes keeps its rows near zero.
    - "embedding": each row is an embedding fed to the colour MLP with the anchor's feature (Scaffold-GS):
      it can model any per-photo change, including light, and also per-view corrections."""

    def __init__(
        self,
        feat_dim: int = 32,
        n_offsets: int = 10,
        hidden_dim: int = 32,
        use_distance: bool = False,
        appearance_dim: int = 0,
        appearance_count: int = 0,
        appearance_mode: str = "embedding",
    ):
        super().__init__()
        if appearance_dim > 0 and appearance_count <= 0:
            raise ValueError("appearance_dim > 0 needs appearance_count (number of images) > 0")
        if appearance_mode not in APPEARANCE_MODES:
            raise ValueError(f"appearance_mode {appearance_mode!r}: one of {', '.join(APPEARANCE_MODES)}")
        if appearance_dim > 0 and appearance_mode == "exposure" and appearance_dim != 3:
            raise ValueError("appearance_mode 'exposure' has rows of 3 log-gains (appearance_dim 3)")
        self.n_offsets = n_offsets
        self.use_distance = use_distance
        self.appearance_dim = appearance_dim
        self.appearance_mode = appearance_mode
        in_dim = feat_dim + 3 + int(use_distance)
        color_in = in_dim + (appearance_dim if appearance_mode == "embedding" else 0)
        self.mlp_opacity = _mlp(in_dim, hidden_dim, n_offsets)
        self.mlp_color = _mlp(color_in, hidden_dim, 3 * n_offsets)
        self.mlp_cov = _mlp(in_dim, hidden_dim, 7 * n_offsets)
        self.appearance = None
        if appearance_dim > 0:
            # Zeros, not nn.Embedding's N(0, 1): every photo starts from one shared appearance and moves only
            # as far as its photo needs, so the neutral appearance (the mean of the trained rows) stays an
            # input the colour MLP was trained on. Random rows (norm ~sqrt(A)) average to a vector far from
            # all of them (norm ~sqrt(A / photos)). Given as `_weight`, so that nothing is drawn from the
            # random stream: the rest of the run starts as it would without the table.
            self.appearance = nn.Embedding(
                appearance_count, appearance_dim, _weight=torch.zeros(appearance_count, appearance_dim)
            )

    def forward(self, z: torch.Tensor, appearance: Appearance = None) -> DecoderOutput:
        """z [V, in_dim] -> raw outputs for V anchors. `appearance`: a row of the embedding table (an image
        index) or an embedding [A] itself (a test-time one, model/appearance.py)."""
        v, k = z.shape[0], self.n_offsets
        row = None
        if self.appearance is not None:
            if appearance is None:
                raise ValueError("this decoder has an appearance embedding: pass an appearance")
            row = self.appearance.weight[appearance] if isinstance(appearance, int) else appearance  # [A]
        return DecoderOutput(
            opacity=torch.tanh(self.mlp_opacity(z)),  # [V, K]
            color=self.colors(z, row).view(v, k, 3),
            cov=self.mlp_cov(z).view(v, k, 7),
        )

    def colors(self, z: torch.Tensor, row: torch.Tensor | None) -> torch.Tensor:
        """Colours [M, 3K] of inputs z [M, in_dim] in the appearance `row` ([A], or [M, A] per input; None
        for a decoder without a table)."""
        if row is None:
            return torch.sigmoid(self.mlp_color(z))
        if self.appearance_mode == "embedding":
            return torch.sigmoid(self.mlp_color(torch.cat([z, row.expand(z.shape[0], -1)], dim=-1)))
        colors = torch.sigmoid(self.mlp_color(z)).view(z.shape[0], self.n_offsets, 3)  # [M, K, 3]
        gains = torch.exp(row).unsqueeze(-2)  # [1, 3] or [M, 1, 3]: the photo's gain per channel
        return (colors * gains).view(z.shape[0], -1)


@dataclass
class VisibleAnchors:
    """The anchors one view decodes: global ids and the rows of the field's tensors (gathered
    with autograd, so gradients reach the field's Parameters)."""

    ids: torch.Tensor  # [V] long, indices into the field
    positions: torch.Tensor  # [V, 3]
    features: torch.Tensor  # [V, F]
    offsets: torch.Tensor  # [V, K, 3]
    log_scales: torch.Tensor  # [V, 6]
    slot_mask: torch.Tensor | None = None  # [V, K] bool, the slots that may decode (None: all)


def gather_anchors(field: AnchorField, visible: torch.Tensor | None = None) -> VisibleAnchors:
    """Rows of `field` selected by a bool mask [N] or an index tensor [V]; all anchors if None."""
    if visible is None:
        ids = torch.arange(field.n_anchors, device=field.positions.device)
    elif visible.dtype == torch.bool:
        ids = visible.nonzero().squeeze(1)
    else:
        ids = visible.long()
    return VisibleAnchors(
        ids=ids,
        positions=field.positions.index_select(0, ids),
        features=field.features.index_select(0, ids),
        offsets=field.offsets.index_select(0, ids),
        log_scales=field.log_scales.index_select(0, ids),
        slot_mask=None if field.slot_mask is None else field.slot_mask.index_select(0, ids),
    )


def decoder_input(anchors: VisibleAnchors, cam_center: torch.Tensor, use_distance: bool) -> torch.Tensor:
    """z = [f_v, dhat (, |d|)] with d = x_v - c. -> [V, F + 3 (+1)]"""
    d = anchors.positions - cam_center.to(anchors.positions)  # [V, 3]
    dist = d.norm(dim=-1, keepdim=True)  # [V, 1]
    parts = [anchors.features, d / dist]
    if use_distance:
        parts.append(dist)
    return torch.cat(parts, dim=-1)


@dataclass
class NeuralGaussians:
    """The kept neural Gaussians of one view, plus what densification and the consistency loss need."""

    means: torch.Tensor  # [M, 3]
    quats: torch.Tensor  # [M, 4] unit (w, x, y, z)
    scales: torch.Tensor  # [M, 3]
    opacities: torch.Tensor  # [M] alpha of the kept Gaussians, in (0, 1)
    colors: torch.Tensor  # [M, 3]
    keep: torch.Tensor  # [V * K] bool, anchor-major: slot v * K + j
    raw_opacity: torch.Tensor  # [V, K] tanh outputs of all slots (kept or not)
    anchor_ids: torch.Tensor  # [V] long, field indices of the decoded anchors
    parent: torch.Tensor  # [M] long, index into anchor_ids of each kept Gaussian
    kept: torch.Tensor  # [M] long, slot v * K + j of each kept Gaussian

    @property
    def n_offsets(self) -> int:
        return self.raw_opacity.shape[1]

    @property
    def slot_ids(self) -> torch.Tensor:
        """Field-wide slot index anchor_id * K + j of each kept Gaussian. [M]"""
        k = self.n_offsets
        return self.anchor_ids[self.kept // k] * k + self.kept % k


def _kept_attributes(raw: DecoderOutput, anchors: VisibleAnchors, kept: torch.Tensor, parent: torch.Tensor):
    """Colours [M, 3], unit quaternions [M, 4] and scales [M, 3] of the kept slots `kept` [M] (v * K + j)."""
    v, k = raw.opacity.shape
    gauss_scale = torch.exp(anchors.log_scales[:, 3:])  # [V, 3]
    cov = raw.cov.reshape(v * k, 7).index_select(0, kept)  # [M, 7]
    colors = raw.color.reshape(v * k, 3).index_select(0, kept)
    return (
        colors,
        F.normalize(cov[:, 3:7], dim=-1),
        gauss_scale.index_select(0, parent) * torch.sigmoid(cov[:, :3]),
    )


def decode(
    decoder: GaussianDecoder,
    anchors: VisibleAnchors,
    cam_center: torch.Tensor,
    appearance: Appearance = None,
    keep: torch.Tensor | None = None,
) -> NeuralGaussians:
    """Neural Gaussians of `anchors` seen from `cam_center` [3]: the slots with alpha > 0 that the
    anchors' slot mask allows. `keep` [V*K] overrides that choice (the teacher uses the student's mask so
    both outputs align)."""
    z = decoder_input(anchors, cam_center, decoder.use_distance)  # [V, in]
    raw = decoder(z, appearance)
    v, k = raw.opacity.shape
    if keep is None:
        on = raw.opacity > 0  # [V, K]
        if anchors.slot_mask is not None:
            on = on & anchors.slot_mask
        keep = on.reshape(-1)  # [V*K]
    # index_select with the kept slots' indices: its backward (index_add) is much cheaper on the CPU than
    # that of boolean-mask indexing
    kept = keep.nonzero().squeeze(1)  # [M] v * K + j
    parent = torch.div(kept, k, rounding_mode="floor")  # [M]
    colors, quats, scales = _kept_attributes(raw, anchors, kept, parent)
    means = slot_means(anchors.positions, anchors.offsets, anchors.log_scales)  # [V, K, 3]
    return NeuralGaussians(
        means=means.reshape(v * k, 3).index_select(0, kept),
        quats=quats,
        scales=scales,
        opacities=raw.opacity.reshape(-1).index_select(0, kept),
        colors=colors,
        keep=keep,
        raw_opacity=raw.opacity,
        anchor_ids=anchors.ids,
        parent=parent,
        kept=kept,
    )


@dataclass
class ConsistencyTargets:
    """What the consistency loss compares, decoded by the teacher for the student's kept slots."""

    colors: torch.Tensor  # [M, 3]
    quats: torch.Tensor  # [M, 4]
    scales: torch.Tensor  # [M, 3]
    raw_opacity: torch.Tensor  # [V, K]
    keep: torch.Tensor  # [V * K] the student's mask


def decode_targets(
    decoder: GaussianDecoder,
    anchors: VisibleAnchors,
    cam_center: torch.Tensor,
    student: NeuralGaussians,
    appearance: Appearance = None,
) -> ConsistencyTargets:
    """`decoder`'s (the teacher's) outputs for the student's kept slots: the part of `decode(decoder, ...,
    keep=student.keep)` that the consistency loss reads (no means, the student's indices reused)."""
    raw = decoder(decoder_input(anchors, cam_center, decoder.use_distance), appearance)
    colors, quats, scales = _kept_attributes(raw, anchors, student.kept, student.parent)
    return ConsistencyTargets(colors, quats, scales, raw.opacity, student.keep)


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.numel() == 0:  # no kept Gaussian: the mean of nothing would be NaN
        return a.sum() * 0.0 + b.sum() * 0.0
    return F.mse_loss(a, b)


@dataclass(frozen=True)
class ConsistencyTerms:
    """Which consistency terms compare what (`experimental.consistency_opacity`,
    `experimental.consistency_shape`; the config's schema checks the choices)."""

    opacity_slots: OpacitySlots = "all"  # "all" V*K slots (the paper) or the student's "kept" ones
    shape: ConsistencyShape = "quaternion"  # quaternion + scale MSEs (the paper) or the "covariance" MSE


PAPER_TERMS = ConsistencyTerms()


def covariances(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The upper triangle (xx, xy, xz, yy, yz, zz) of R(q) diag(s)^2 R(q)^T. [M, 4], [M, 3] -> [M, 6]"""
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=False, triu=True)
    return covars


def consistency_loss(
    student: NeuralGaussians,
    teacher: NeuralGaussians | ConsistencyTargets,
    terms: ConsistencyTerms = PAPER_TERMS,
) -> torch.Tensor:
    """Sum of MSEs (Momentum-GS): colour over the student's kept Gaussians; their shape, as unit quaternion
    plus scale (`terms.shape="quaternion"`, the paper) or as covariance ("covariance": a rotation that the
    image cannot see, e.g. of a round Gaussian, is left free instead of pinned to the lagging teacher's);
    raw (tanh) opacity over all V*K slots (`terms.opacity_slots="all"`, the paper) or over the kept ones
    only ("kept": a lagging teacher then cannot hold back slots that are turning on). `teacher` must be
    decoded with keep=student.keep. Neither side is detached: the gradient reaches the anchors through
    both."""
    if not torch.equal(student.keep, teacher.keep):
        raise ValueError("teacher must be decoded with the student's keep mask")
    s_opacity, t_opacity = student.raw_opacity, teacher.raw_opacity  # [V, K]
    if terms.opacity_slots == "kept":
        s_opacity, t_opacity = s_opacity.reshape(-1)[student.keep], t_opacity.reshape(-1)[student.keep]  # [M]
    if terms.shape == "covariance":
        shape = _mse(covariances(student.quats, student.scales), covariances(teacher.quats, teacher.scales))
    else:
        shape = _mse(student.quats, teacher.quats) + _mse(student.scales, teacher.scales)
    return _mse(student.colors, teacher.colors) + shape + _mse(s_opacity, t_opacity)


class MomentumTeacher:
    """A frozen copy of the decoder updated by EMA: theta_t <- m * theta_t + (1 - m) * theta_s.
    Call `update` every iteration before the forward pass."""

    def __init__(self, student: nn.Module):
        self.module = copy.deepcopy(student)
        self.module.requires_grad_(False)

    @torch.no_grad()
    def update(self, student: nn.Module, momentum: float) -> None:
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
        for p_t, p_s in zip(self.module.parameters(), student.parameters(), strict=True):
            p_t.mul_(momentum).add_(p_s.detach(), alpha=1.0 - momentum)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
