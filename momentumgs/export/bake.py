"""Bake an anchor model into explicit Gaussians with SH colour (docs/formats.md, Exported Gaussians).

The decoder makes every neural Gaussian's colour, opacity and shape depend on the view direction
dhat = (x_v - c) / |x_v - c| (and which of the K slots exist: alpha > 0). A static 3DGS file has one opacity
and shape per Gaussian and view-dependent colour through SH only, so the bake samples each anchor from a set
of views and summarises:

- views: every training camera that sees the anchor (the prefilter's frustum test), plus a Fibonacci sphere
  of directions (cameras at infinity) with a small total weight, so directions no camera saw still get a
  plausible colour;
- one Gaussian per slot (anchor x offset) that is kept (alpha > 0) in at least one weighted view; its mean is
  view independent (x_v + O_v exp(l[0:3]));
- opacity: the alpha-weighted mean of alpha over the camera views, sum_v a_v^2 / sum_v a_v with
  a_v = max(alpha_v, 0) (views where the slot shows strongly count most) — "weighted", the default; or the
  expected alpha mean_v a_v (a slot the decoder drops in a view counts 0 there) — "mean"; or the mean over
  the views where it is kept — "kept";
- shape: decoded from the anchor's central view, the normalised mean of its camera directions — "central";
  or the alpha-weighted mean of log-scales and sign-aligned quaternions — "mean";
- colour: SH of `sh_degree` fitted by weighted least squares to the decoded colours, each sample weighted by
  its view weight times the slot's alpha in that view (a slot barely visible in a view barely constrains
  its colour there), SH directions from the Gaussian's mean as renderers evaluate them;
- Gaussians whose baked opacity is below `min_opacity` are dropped (1/255 by default: the rasterizer skips
  alpha < 1/255, so those never show).

`tools/bake_fidelity.py` measures the choices against the anchor model on the test views.
Anchors seen by no camera fall back to the sphere views alone. Models with per-block decoders bake each
block's anchors with its own decoder.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from momentumgs.data.scene import Camera, Scene
from momentumgs.export.gaussians import BakedGaussians
from momentumgs.export.sh import fit_sh, sh_bases
from momentumgs.model.anchors import slot_means
from momentumgs.model.appearance import resolve_appearance
from momentumgs.model.decoder import Appearance, DecoderOutput, GaussianDecoder
from momentumgs.model.prefilter import anchor_radii, visible_anchor_mask
from momentumgs.render.view import NEAR_PLANE

OPACITY_MODES = ("weighted", "mean", "kept")
SHAPE_MODES = ("central", "mean")


@dataclass
class BakeViews:
    """The camera views a bake samples: centres and frustum tests."""

    centers: torch.Tensor  # [C, 3]
    cameras: list[Camera]


def fibonacci_sphere(n: int) -> torch.Tensor:
    """n nearly uniform unit directions (golden-angle spiral). -> [n, 3]"""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1.0 - 2.0 * i / n
    r = torch.sqrt((1.0 - z * z).clamp_min(0.0))
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=1).float()


def bake_views(scene_or_cameras: Scene | Sequence[Camera] | None) -> BakeViews:
    """A Scene's training cameras, or the given cameras, or none."""
    if scene_or_cameras is None:
        cams = []
    elif isinstance(scene_or_cameras, Scene):
        cams = [scene_or_cameras.cameras[i] for i in scene_or_cameras.train_ids]
    else:
        cams = list(scene_or_cameras)
    centers = torch.tensor(np.array([c.center for c in cams]), dtype=torch.float32).reshape(-1, 3)
    return BakeViews(centers, cams)


def bake(
    model,
    scene_or_cameras: Scene | Sequence[Camera] | None,
    sh_degree: int = 3,
    n_directions: int = 64,
    min_opacity: float = 1.0 / 255.0,
    sphere_weight: float = 0.1,
    opacity: str = "weighted",
    shape: str = "central",
    ridge: float = 1e-2,
    chunk: int = 512,
    appearance: Appearance = None,
) -> BakedGaussians:
    """Explicit Gaussians of a trained AnchorModel (model/store.py), sampled from the training cameras of
    `scene_or_cameras` (a Scene, a list of Cameras, or None for the sphere alone) plus `n_directions` sphere
    directions weighing `sphere_weight` of the cameras in all. See the module doc for the choices. Colours
    are those of one appearance: `appearance` (a training photo's row or an embedding), by default the
    neutral one (model/appearance.py)."""
    _check_options(opacity, shape, sh_degree)
    views = bake_views(scene_or_cameras)
    if n_directions <= 0 and not views.cameras:
        raise ValueError("nothing to sample: no cameras and n_directions = 0")
    field = model.field
    device = field.positions.device
    options = _Options(sh_degree, min_opacity, sphere_weight, opacity, shape, ridge)
    sphere = fibonacci_sphere(max(n_directions, 0)).to(device)
    visible = _visibility(field, views, device)  # [C, N] bool

    parts, slots = [], 0
    with torch.no_grad():
        for decoder, ids in _decoder_groups(model, device):
            embedding = _embedding(decoder, appearance, model.info)
            for start in range(0, ids.numel(), chunk):
                sel = ids[start : start + chunk]
                parts.append(
                    _bake_chunk(field, decoder, embedding, sel, views, visible[:, sel], sphere, options)
                )
                slots += sel.numel() * field.n_offsets
    out = _concat(parts, sh_degree, device)
    out.info.update(
        {
            "anchors": field.n_anchors,
            "slots": slots,
            "gaussians": out.count,
            "cameras": len(views.cameras),
            "sphere_directions": int(sphere.shape[0]),
            "sh_degree": sh_degree,
            "opacity_mode": opacity,
            "shape_mode": shape,
            "min_opacity": min_opacity,
        }
    )
    return out


def _check_options(opacity: str, shape: str, sh_degree: int) -> None:
    if opacity not in OPACITY_MODES:
        raise ValueError(f"opacity mode {opacity!r}: choose one of {OPACITY_MODES}")
    if shape not in SHAPE_MODES:
        raise ValueError(f"shape mode {shape!r}: choose one of {SHAPE_MODES}")
    if not 0 <= sh_degree <= 3:
        raise ValueError(f"sh_degree {sh_degree}: the 3DGS formats hold degrees 0 to 3")


def _decoder_groups(model, device: torch.device) -> list[tuple[torch.nn.Module, torch.Tensor]]:
    """(decoder, the ids of the anchors it decodes) for the model's one decoder or each block's."""
    field = model.field
    if model.block_decoders is None:
        return [(model.decoder, torch.arange(field.n_anchors, device=device))]
    return [(d, (model.anchor_block == b).nonzero().squeeze(1)) for b, d in enumerate(model.block_decoders)]


@dataclass
class _Options:
    sh_degree: int
    min_opacity: float
    sphere_weight: float
    opacity: str
    shape: str
    ridge: float


def _visibility(field, views: BakeViews, device) -> torch.Tensor:
    """Which anchors each camera sees (the renderer's own prefilter). -> [C, N] bool"""
    if not views.cameras:
        return torch.zeros(0, field.n_anchors, dtype=torch.bool, device=device)
    radii = anchor_radii(field.offsets.detach(), field.log_scales.detach())
    return torch.stack(
        [
            visible_anchor_mask(
                field.positions, c.viewmat, c.K, c.width, c.height, radii=radii, near=NEAR_PLANE
            )
            for c in views.cameras
        ]
    )


def _run_decoder(
    decoder: GaussianDecoder,
    features: torch.Tensor,  # [A, F]
    dirs: torch.Tensor,  # [V, A, 3] unit
    dists: torch.Tensor,  # [V, A]
    appearance: torch.Tensor | None,  # [V, E] embedding per view, or None
) -> DecoderOutput:
    """The decoder's raw outputs for A anchors seen from V views. -> opacity [V, A, K], ..."""
    v, a = dirs.shape[:2]
    parts = [features.expand(v, a, -1), dirs]
    if decoder.use_distance:
        parts.append(dists[..., None])
    z = torch.cat(parts, dim=-1).reshape(v * a, -1)  # [V*A, in]
    rows = None
    if decoder.appearance is not None:
        rows = appearance[:, None, :].expand(v, a, -1).reshape(v * a, -1)  # [V*A, E]
    k = decoder.n_offsets
    return DecoderOutput(
        opacity=torch.tanh(decoder.mlp_opacity(z)).reshape(v, a, k),
        color=decoder.colors(z, rows).reshape(v, a, k, 3),
        cov=decoder.mlp_cov(z).reshape(v, a, k, 7),
    )


def _embedding(decoder: GaussianDecoder, appearance: Appearance, info: dict) -> torch.Tensor | None:
    """The one embedding [E] every sampled view is decoded with; None for a decoder without one."""
    chosen = resolve_appearance(decoder, appearance, info)
    if isinstance(chosen, int):
        return decoder.appearance.weight[chosen]
    return chosen


def _view_embeddings(embedding: torch.Tensor | None, n_views: int) -> torch.Tensor | None:
    return None if embedding is None else embedding[None].expand(n_views, -1)  # [V, E]


def _bake_chunk(field, decoder, embedding, ids, views: BakeViews, visible, sphere, o: _Options):
    """Bake anchors `ids` [A] with `decoder` (and `embedding` [E] or None), keeping the slots kept in some
    view and opaque enough. -> BakedGaussians"""
    slots, ever_kept = _bake_slots(field, decoder, embedding, ids, views, visible, sphere, o)
    allowed = ever_kept & (slots.opacities >= o.min_opacity)  # [A*K]
    if field.slot_mask is not None:  # a merged model's slots outside their block's cell
        allowed &= field.slot_mask[ids].reshape(-1)
    return slots.subset(allowed)


def _bake_slots(field, decoder, embedding, ids, views: BakeViews, visible, sphere, o: _Options):
    """Every slot of anchors `ids` [A] baked with `decoder` (anchor-major, A * K Gaussians) and whether the
    decoder keeps it in some weighted view. visible [C, A] bool; sphere [S, 3]. -> BakedGaussians, [A*K]"""
    pos = field.positions[ids]  # [A, 3]
    feats = field.features[ids]  # [A, F]
    log_scales = field.log_scales[ids]  # [A, 6]
    means = slot_means(pos, field.offsets[ids], log_scales)  # [A, K, 3]
    a, k = means.shape[:2]
    n_cam, n_sph = visible.shape[0], sphere.shape[0]
    centers = views.centers.to(pos)

    # Sampled views: cameras [C] then sphere directions [S]; direction, distance and weight per anchor.
    to_anchor = pos[None] - centers[:, None]  # [C, A, 3]
    cam_dist = to_anchor.norm(dim=-1).clamp_min(1e-9)  # [C, A]
    cam_dirs = to_anchor / cam_dist[..., None]
    w_cam = visible.float()  # [C, A]
    n_seen = w_cam.sum(dim=0)  # [A]
    seen = n_seen > 0
    fallback_dist = cam_dist.mean(0) if n_cam else torch.ones_like(n_seen)  # [A]
    mean_dist = torch.where(seen, (cam_dist * w_cam).sum(0) / n_seen.clamp_min(1), fallback_dist)
    dirs = torch.cat([cam_dirs, sphere[:, None, :].expand(n_sph, a, 3)])  # [V, A, 3]
    dists = torch.cat([cam_dist, mean_dist.expand(n_sph, a)])  # [V, A]
    # The sphere weighs `sphere_weight` of the cameras in all; alone (weight 1) for anchors no camera sees.
    w_sph = torch.where(seen, o.sphere_weight * n_seen, torch.ones_like(n_seen)) / max(n_sph, 1)  # [A]
    weights = torch.cat([w_cam, w_sph.expand(n_sph, a)])  # [V, A]
    # Opacity and shape come from the cameras only (the views a viewer's users start from), unless unseen.
    w_shape = torch.cat([w_cam, (~seen).float().expand(n_sph, a) / max(n_sph, 1)])  # [V, A]

    raw = _run_decoder(decoder, feats, dirs, dists, _view_embeddings(embedding, n_cam + n_sph))
    alpha = raw.opacity.clamp_min(0.0)  # [V, A, K] (dropped slots count 0)
    kept = (raw.opacity > 0).float()
    opacity = _opacity(alpha, kept, w_shape, o.opacity)  # [A, K]

    # Colour: SH fitted per slot; directions from the Gaussian mean (cameras) or the sphere direction.
    sh_dirs = torch.cat(
        [means[None] - centers[:, None, None, :], sphere[:, None, None, :].expand(n_sph, a, k, 3)]
    )  # [V, A, K, 3]
    bases = sh_bases(sh_dirs, o.sh_degree)  # [V, A, K, B]
    fit_w = weights[..., None] * alpha  # [V, A, K]
    sh = fit_sh(
        bases.permute(1, 2, 0, 3).reshape(a * k, -1, bases.shape[-1]),
        raw.color.permute(1, 2, 0, 3).reshape(a * k, -1, 3),
        fit_w.permute(1, 2, 0).reshape(a * k, -1),
        o.ridge,
    )  # [A*K, B, 3]

    scales, quats = _shape(decoder, embedding, feats, log_scales, raw, alpha, w_shape, dirs, dists, o.shape)
    ever_kept = (w_shape[..., None] * kept).sum(0).reshape(-1) > 0  # [A*K]
    slots = BakedGaussians(
        means=means.reshape(-1, 3),
        quats=quats.reshape(-1, 4),
        scales=scales.reshape(-1, 3),
        opacities=opacity.reshape(-1),
        sh=sh,
    )
    return slots, ever_kept


def _opacity(alpha: torch.Tensor, kept: torch.Tensor, w: torch.Tensor, mode: str) -> torch.Tensor:
    """alpha, kept [V, A, K], w [V, A] -> [A, K]"""
    wk = w[..., None]
    if mode == "weighted":
        return (wk * alpha * alpha).sum(0) / (wk * alpha).sum(0).clamp_min(1e-12)
    if mode == "mean":
        return (wk * alpha).sum(0) / w.sum(0).clamp_min(1e-12)[:, None]
    return (wk * alpha).sum(0) / (wk * kept).sum(0).clamp_min(1e-12)


def _shape(decoder, embedding, feats, log_scales, raw, alpha, w, dirs, dists, mode):
    """Scales [A, K, 3] and unit wxyz quaternions [A, K, 4] of each slot."""
    gauss_scale = torch.exp(log_scales[:, 3:])[:, None, :]  # [A, 1, 3]
    # The central view: the anchor's mean sampled direction (weights w), decoded once more.
    central = F.normalize((w[..., None] * dirs).sum(0), dim=-1)  # [A, 3]
    degenerate = central.norm(dim=-1) < 0.5
    central[degenerate] = dirs[0, degenerate]
    mean_dist = (w * dists).sum(0) / w.sum(0).clamp_min(1e-12)
    center_raw = _run_decoder(decoder, feats, central[None], mean_dist[None], _view_embeddings(embedding, 1))
    q_central = F.normalize(center_raw.cov[0, ..., 3:7], dim=-1)  # [A, K, 4]
    if mode == "central":
        return gauss_scale * torch.sigmoid(center_raw.cov[0, ..., :3]), q_central
    # "mean": alpha-weighted means of log-scale and of quaternions sign-aligned with the central one.
    wk = w[..., None] * alpha  # [V, A, K]
    total = wk.sum(0).clamp_min(1e-12)[..., None]  # [A, K, 1]
    log_s = (wk[..., None] * F.logsigmoid(raw.cov[..., :3])).sum(0) / total  # [A, K, 3]
    q = F.normalize(raw.cov[..., 3:7], dim=-1)  # [V, A, K, 4]
    q = q * torch.sign((q * q_central[None]).sum(-1, keepdim=True) + 1e-12)
    q_mean = F.normalize((wk[..., None] * q).sum(0), dim=-1)
    bad = ~torch.isfinite(q_mean).all(-1) | (total[..., 0] <= 1e-12)
    q_mean[bad] = q_central[bad]
    return gauss_scale * torch.exp(log_s), q_mean


def _concat(parts: list[BakedGaussians], sh_degree: int, device) -> BakedGaussians:
    if not parts:
        b = (sh_degree + 1) ** 2
        z = torch.zeros
        return BakedGaussians(z(0, 3), z(0, 4), z(0, 3), z(0), z(0, b, 3)).to(device)
    return BakedGaussians(
        *(torch.cat([getattr(p, n) for p in parts]) for n in ("means", "quats", "scales", "opacities", "sh"))
    )
