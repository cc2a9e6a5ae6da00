"""Front-to-back compositing of projected Gaussians on the CPU: vectorised, differentiable by autograd.

It follows the per-pixel rules of gsplat 1.5.3's `rasterize_to_pixels_3dgs_fwd_kernel`
(csrc/RasterizeToPixels3DGSFwd.cu), without tiles:

- a Gaussian is tried at the pixels whose centres (x + 0.5, y + 0.5) lie inside its radius box;
  gsplat tries every pixel of the 16x16 tiles the box touches, but outside the box
  alpha < 1/255 whenever opacity <= 1 (the box is where opacity * exp(-sigma) can reach 1/255),
  so the two agree;
- sigma = 0.5 (a dx^2 + c dy^2) + b dx dy with d = mean2d - pixel centre; skipped if sigma < 0;
  alpha = min(0.999, opacity exp(-sigma)); skipped if alpha < 1/255;
- front to back by depth; if T (1 - alpha) <= 1e-4 the pixel stops and that Gaussian is not added;
  colour += alpha T c; T *= 1 - alpha; background added as T_final * bg; render alpha = 1 - T_final.

Two passes: the first, without autograd and in bands of rows to bound memory, enumerates the
(Gaussian, pixel) pairs, drops the culled ones, orders them by (camera, pixel, depth) and applies the
stop rule; the second recomputes alpha for the surviving pairs only, with autograd, and composites
them with a segmented cumulative sum of log(1 - alpha) (in float64: the sum runs over all pairs).
"""

import math

import torch
from torch import Tensor

from momentumgs.render.projection import ALPHA_THRESHOLD

MAX_ALPHA = 0.999
LOG_STOP_TRANSMITTANCE = math.log(1e-4)  # the pixel stops once T would fall to 1e-4
DEFAULT_PAIR_BUDGET = 1_000_000  # (Gaussian, pixel) pairs enumerated at once in the first pass


def fragment_alpha(
    xy: Tensor,  # [P, 2] projected means
    conic: Tensor,  # [P, 3] upper triangle of the inverse 2D covariance
    opacity: Tensor,  # [P]
    px: Tensor,  # [P] pixel centre x
    py: Tensor,  # [P] pixel centre y
) -> tuple[Tensor, Tensor]:
    """sigma [P] and alpha [P] of each (Gaussian, pixel) pair, as gsplat's kernel computes them."""
    dx = xy[:, 0] - px
    dy = xy[:, 1] - py
    sigma = 0.5 * (conic[:, 0] * dx * dx + conic[:, 2] * dy * dy) + conic[:, 1] * dx * dy
    alpha = torch.clamp(opacity * torch.exp(-sigma), max=MAX_ALPHA)
    return sigma, alpha


def segment_starts(sorted_keys: Tensor) -> Tensor:
    """For keys sorted so that equal keys are adjacent: the index of each element's segment start [P]."""
    is_start = torch.ones_like(sorted_keys, dtype=torch.bool)
    is_start[1:] = sorted_keys[1:] != sorted_keys[:-1]
    positions = torch.arange(sorted_keys.numel(), device=sorted_keys.device)
    return torch.cummax(torch.where(is_start, positions, 0), dim=0).values


def segmented_log_transmittance(log_keep: Tensor, starts: Tensor) -> tuple[Tensor, Tensor]:
    """Exclusive and inclusive per-segment sums of log(1 - alpha) [P] (float64 in, float64 out)."""
    inclusive_all = torch.cumsum(log_keep, dim=0)
    exclusive_all = inclusive_all - log_keep
    before_segment = exclusive_all[starts]
    return exclusive_all - before_segment, inclusive_all - before_segment


def _pixel_boxes(means2d: Tensor, radii: Tensor, width: int, height: int) -> tuple[Tensor, ...]:
    """Inclusive pixel ranges x0, x1, y0, y1 [E] whose centres lie within the radius box, clipped."""
    rx, ry = radii[:, 0].to(means2d.dtype), radii[:, 1].to(means2d.dtype)
    x0 = torch.ceil(means2d[:, 0] - rx - 0.5).clamp(min=0).long()
    x1 = torch.floor(means2d[:, 0] + rx - 0.5).clamp(max=width - 1).long()
    y0 = torch.ceil(means2d[:, 1] - ry - 0.5).clamp(min=0).long()
    y1 = torch.floor(means2d[:, 1] + ry - 0.5).clamp(max=height - 1).long()
    return x0, x1, y0, y1


def _band_pairs(
    boxes: tuple[Tensor, ...],  # x0, x1, y0, y1 [E]
    entry_camera: Tensor,  # [E]
    entry_params: Tensor,  # [E, 6] mean x, mean y, conic a, b, c, opacity
    row0: int,
    row1: int,
    width: int,
    height: int,
) -> tuple[Tensor, Tensor]:
    """Contributing pairs of one band of rows [row0, row1), as entry indices [K] and pixel ids [K],
    ordered by (camera, pixel, depth). Entries must come sorted by (camera, depth)."""
    x0, x1, y0, y1 = boxes
    y0 = y0.clamp(min=row0)
    y1 = y1.clamp(max=row1 - 1)
    nx = (x1 - x0 + 1).clamp(min=0)
    counts = nx * (y1 - y0 + 1).clamp(min=0)  # [E]
    hit = torch.nonzero(counts).squeeze(1)  # [E']
    if hit.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long, device=counts.device)
        return empty, empty
    counts = counts[hit]
    entry = torch.repeat_interleave(hit, counts)  # [P]
    first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)  # [P]
    offset = torch.arange(entry.numel(), device=entry.device) - first
    nx_pair = nx[entry]
    row_in_box = torch.div(offset, nx_pair, rounding_mode="floor")
    col = x0[entry] + (offset - row_in_box * nx_pair)
    row = y0[entry] + row_in_box

    params = entry_params[entry]  # [P, 6]
    dtype = params.dtype
    sigma, alpha = fragment_alpha(
        params[:, 0:2], params[:, 2:5], params[:, 5], col.to(dtype) + 0.5, row.to(dtype) + 0.5
    )
    kept = torch.nonzero((sigma >= 0) & (alpha >= ALPHA_THRESHOLD)).squeeze(1)
    entry, alpha = entry[kept], alpha[kept]
    pixel = (entry_camera[entry] * height + row[kept]) * width + col[kept]  # [K]

    # Pairs were enumerated by (camera, depth); a stable sort by pixel makes them (camera, pixel, depth).
    key = pixel.to(torch.int32) if pixel.numel() and int(pixel.max()) < 2**31 else pixel
    order = torch.argsort(key, stable=True)
    entry, pixel, alpha = entry[order], pixel[order], alpha[order]

    log_keep = torch.log1p(-alpha.double())
    _, inclusive = segmented_log_transmittance(log_keep, segment_starts(pixel))
    alive = torch.nonzero(inclusive > LOG_STOP_TRANSMITTANCE).squeeze(1)
    return entry[alive], pixel[alive]


@torch.no_grad()
def contributing_pairs(
    means2d: Tensor,  # [C, N, 2]
    conics: Tensor,  # [C, N, 3]
    opacities: Tensor,  # [C, N]
    depths: Tensor,  # [C, N]
    radii: Tensor,  # [C, N, 2] int, 0 where culled
    width: int,
    height: int,
    pair_budget: int = DEFAULT_PAIR_BUDGET,
) -> tuple[Tensor, Tensor]:
    """The (Gaussian, pixel) pairs that gsplat's rules composite: flat ids c * N + n [K] and pixel ids
    c * H * W + y * W + x [K], each pixel's pairs adjacent and in front-to-back order."""
    C, N = depths.shape
    visible = torch.nonzero((radii > 0).all(dim=-1).reshape(-1)).squeeze(1)  # flat ids [E]
    # Order by (camera, depth): sort by depth, then stably by camera.
    by_depth = visible[torch.argsort(depths.reshape(-1)[visible], stable=True)]
    flat_ids = by_depth[torch.argsort(torch.div(by_depth, N, rounding_mode="floor"), stable=True)]
    camera = torch.div(flat_ids, N, rounding_mode="floor")

    boxes = _pixel_boxes(means2d.reshape(-1, 2)[flat_ids], radii.reshape(-1, 2)[flat_ids], width, height)
    params = torch.cat(
        [
            means2d.reshape(-1, 2)[flat_ids],
            conics.reshape(-1, 3)[flat_ids],
            opacities.reshape(-1, 1)[flat_ids],
        ],
        dim=1,
    )  # [E, 6]

    x0, x1, y0, y1 = boxes
    total = int(((x1 - x0 + 1).clamp(min=0) * (y1 - y0 + 1).clamp(min=0)).sum()) if flat_ids.numel() else 0
    n_bands = max(1, min(height, math.ceil(total / pair_budget)))
    band_rows = math.ceil(height / n_bands)
    entries, pixels = [], []
    for row0 in range(0, height, band_rows):
        entry, pixel = _band_pairs(boxes, camera, params, row0, min(height, row0 + band_rows), width, height)
        entries.append(flat_ids[entry])
        pixels.append(pixel)
    return torch.cat(entries), torch.cat(pixels)


def composite(
    means2d: Tensor,  # [C, N, 2]
    conics: Tensor,  # [C, N, 3]
    opacities: Tensor,  # [C, N]
    colors: Tensor,  # [C, N, D]
    depths: Tensor,  # [C, N]
    radii: Tensor,  # [C, N, 2] int, 0 where culled
    width: int,
    height: int,
    backgrounds: Tensor | None = None,  # [C, D]
    absgrad: bool = False,
    pair_budget: int = DEFAULT_PAIR_BUDGET,
) -> tuple[Tensor, Tensor]:
    """Alpha-composite projected Gaussians front to back: colours [C, H, W, D], alphas [C, H, W, 1].

    Differentiable w.r.t. means2d (in pixels), conics, opacities, colors and backgrounds. With absgrad,
    backward leaves the summed per-pixel absolute gradient of means2d in `means2d.absgrad` (as gsplat).
    """
    C, N = depths.shape
    D = colors.shape[-1]
    n_pixels = C * height * width
    flat_ids, pixel_ids = contributing_pairs(
        means2d.detach(),
        conics.detach(),
        opacities.detach(),
        depths.detach(),
        radii,
        width,
        height,
        pair_budget,
    )

    xy = means2d.reshape(C * N, 2)[flat_ids]  # [K, 2]
    if absgrad and xy.requires_grad:
        xy.register_hook(_absgrad_hook(means2d, flat_ids))
    local = pixel_ids % (height * width)
    row = torch.div(local, width, rounding_mode="floor")
    col = local - row * width
    _, alpha = fragment_alpha(
        xy,
        conics.reshape(C * N, 3)[flat_ids],
        opacities.reshape(C * N)[flat_ids],
        col.to(xy.dtype) + 0.5,
        row.to(xy.dtype) + 0.5,
    )  # [K]

    log_keep = torch.log1p(-alpha.double())  # [K]
    exclusive, _ = segmented_log_transmittance(log_keep, segment_starts(pixel_ids))
    weight = alpha * torch.exp(exclusive).to(alpha.dtype)  # [K]
    image = torch.zeros(n_pixels, D, dtype=colors.dtype, device=colors.device)
    image = image.index_add(0, pixel_ids, weight[:, None] * colors.reshape(C * N, D)[flat_ids])
    log_final = torch.zeros(n_pixels, dtype=torch.float64, device=colors.device)
    final_t = torch.exp(log_final.index_add(0, pixel_ids, log_keep)).to(colors.dtype)  # [C*H*W]

    image = image.reshape(C, height, width, D)
    final_t = final_t.reshape(C, height, width, 1)
    if backgrounds is not None:
        image = image + final_t * backgrounds[:, None, None, :]
    return image, 1.0 - final_t


def _absgrad_hook(means2d: Tensor, flat_ids: Tensor):
    """Backward hook on the per-pair means that sums their absolute gradients per Gaussian (AbsGS)."""

    def hook(grad: Tensor) -> None:  # grad [K, 2]
        total = torch.zeros(means2d.shape[0] * means2d.shape[1], 2, dtype=grad.dtype, device=grad.device)
        means2d.absgrad = total.index_add(0, flat_ids, grad.abs()).reshape(means2d.shape)

    return hook
