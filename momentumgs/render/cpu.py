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


def segment_starts(sorted_keys: Tensor) -> Tensor:
    """For keys sorted so that equal keys are adjacent: the index of each element's segment start [P]."""
    is_start = torch.ones_like(sorted_keys, dtype=torch.bool)
    is_start[1:] = sorted_keys[1:] != sorted_keys[:-1]
    starts = torch.nonzero(is_start).squeeze(1)  # [S]
    lengths = torch.diff(starts, append=starts.new_tensor([sorted_keys.numel()]))
    return torch.repeat_interleave(starts, lengths)


def segmented_log_transmittance(log_keep: Tensor, starts: Tensor) -> tuple[Tensor, Tensor]:
    """Exclusive and inclusive per-segment sums of log(1 - alpha) [P] (float64 in, float64 out)."""
    inclusive_all = torch.cumsum(log_keep, dim=0)
    exclusive_all = inclusive_all - log_keep
    before_segment = exclusive_all.index_select(0, starts)
    return exclusive_all - before_segment, inclusive_all - before_segment


def _pixel_boxes(means2d: Tensor, radii: Tensor, width: int, height: int) -> tuple[Tensor, ...]:
    """Inclusive pixel ranges x0, x1, y0, y1 [E] whose centres lie within the radius box, clipped."""
    rx, ry = radii[:, 0].to(means2d.dtype), radii[:, 1].to(means2d.dtype)
    x0 = torch.ceil(means2d[:, 0] - rx - 0.5).clamp(min=0).long()
    x1 = torch.floor(means2d[:, 0] + rx - 0.5).clamp(max=width - 1).long()
    y0 = torch.ceil(means2d[:, 1] - ry - 0.5).clamp(min=0).long()
    y1 = torch.floor(means2d[:, 1] + ry - 0.5).clamp(max=height - 1).long()
    return x0, x1, y0, y1


def _ranges(lengths: Tensor) -> tuple[Tensor, Tensor]:
    """For lengths [R]: the owner r [P] and the position 0..lengths[r]-1 [P] of each of sum(lengths) items."""
    owner = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths)
    first = torch.cumsum(lengths, 0) - lengths
    position = torch.arange(owner.numel(), device=lengths.device) - first.index_select(0, owner)
    return owner, position


def _band_pairs(
    boxes: tuple[Tensor, ...],  # x0, x1, y0, y1 [E]
    entry_camera: Tensor,  # [E]
    entry_params: Tensor,  # [6, E] mean x, mean y, conic a, b, c, opacity (columns gather fastest)
    row0: int,
    row1: int,
    width: int,
    height: int,
) -> tuple[Tensor, Tensor]:
    """Contributing pairs of one band of rows [row0, row1), as entry indices [K] and pixel ids [K],
    ordered by (camera, pixel, depth). Entries must come sorted by (camera, depth)."""
    x0, x1, y0, y1 = boxes
    y0 = y0.clamp(min=row0)
    ny = (y1.clamp(max=row1 - 1) - y0 + 1).clamp(min=0)
    nx = (x1 - x0 + 1).clamp(min=0)
    hit = torch.nonzero(nx * ny).squeeze(1)  # [E']
    if hit.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long, device=x0.device)
        return empty, empty

    # Box rows first (R of them, about box-width times fewer than pairs): along a row dy is constant, so
    # sigma = (a/2 dx + b dy) dx + c/2 dy^2 with dx = dx0 - k at the k-th pixel of the row.
    owner, row_in_box = _ranges(ny.index_select(0, hit))
    entry = hit.index_select(0, owner)  # [R]
    row = y0.index_select(0, entry) + row_in_box  # [R]
    x_first = x0.index_select(0, entry)  # [R]
    mx, my, a, b, c, opacity = entry_params.index_select(1, entry)  # [R] each
    dtype = mx.dtype
    dy = my - (row.to(dtype) + 0.5)
    dx0 = mx - (x_first.to(dtype) + 0.5)
    row_terms = torch.stack([dx0, 0.5 * a, b * dy, 0.5 * c * dy * dy, opacity])  # [5, R]
    row_pixel = (entry_camera.index_select(0, entry) * height + row) * width + x_first  # [R]

    pair_row, k = _ranges(nx.index_select(0, entry))  # [P]
    dx0, half_a, b_dy, half_c_dy2, opacity = row_terms.index_select(1, pair_row)  # [P] each
    dx = dx0 - k.to(dtype)
    sigma = (half_a * dx + b_dy) * dx + half_c_dy2
    alpha = torch.clamp(opacity * torch.exp(-sigma), max=MAX_ALPHA)
    kept = torch.nonzero((sigma >= 0) & (alpha >= ALPHA_THRESHOLD)).squeeze(1)  # [K]
    pair_row = pair_row.index_select(0, kept)
    alpha = alpha.index_select(0, kept)
    pixel = row_pixel.index_select(0, pair_row) + k.index_select(0, kept)  # [K]

    # Pairs were enumerated by (camera, depth); a stable sort by pixel makes them (camera, pixel, depth).
    key = pixel.to(torch.int32) if pixel.numel() and int(pixel.max()) < 2**31 else pixel
    order = torch.argsort(key, stable=True)
    pair_row = pair_row.index_select(0, order)
    pixel = pixel.index_select(0, order)
    alpha = alpha.index_select(0, order)

    log_keep = torch.log1p(-alpha.double())
    _, inclusive = segmented_log_transmittance(log_keep, segment_starts(pixel))
    alive = torch.nonzero(inclusive > LOG_STOP_TRANSMITTANCE).squeeze(1)
    return entry.index_select(0, pair_row.index_select(0, alive)), pixel.index_select(0, alive)


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
    params = torch.cat([means2d.reshape(-1, 2), conics.reshape(-1, 3), opacities.reshape(-1, 1)], dim=1)
    params = params.index_select(0, flat_ids).T.contiguous()  # [6, E]

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
    if backgrounds is None:
        backgrounds = colors.new_zeros(depths.shape[0], colors.shape[-1])
    return _Blend.apply(
        means2d, conics, opacities, colors, backgrounds, flat_ids, pixel_ids, width, height, absgrad
    )


def _pair_geometry(means2d, conics, opacities, flat_ids, pixel_ids, width, height):
    """Per pair: dx, dy (mean - pixel centre), conic a, b, c, opacity, vis = exp(-sigma) [K] each."""
    C, N = opacities.shape
    # Gathering rows of a [K, 6] table is slow on the CPU; columns of a [6, C*N] one are fast.
    table = torch.cat([means2d.reshape(C * N, 2), conics.reshape(C * N, 3), opacities.reshape(C * N, 1)], 1)
    x, y, a, b, c, opacity = table.T.contiguous().index_select(1, flat_ids)
    local = pixel_ids % (height * width)
    row = torch.div(local, width, rounding_mode="floor")
    dx = x - ((local - row * width).to(x.dtype) + 0.5)
    dy = y - (row.to(x.dtype) + 0.5)
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    return dx, dy, a, b, c, opacity, torch.exp(-sigma)


def _scatter_rows(rows: Tensor, index: Tensor, size: int) -> Tensor:
    """Sum the columns of rows [R, K] into [R, size] by index [K], one 1D index_add per row (fastest)."""
    out = rows.new_zeros(rows.shape[0], size)
    for r in range(rows.shape[0]):
        out[r].index_add_(0, index, rows[r])
    return out


class _Blend(torch.autograd.Function):
    """Front-to-back blending of given (Gaussian, pixel) pairs with a hand-written backward.

    The backward follows gsplat's `rasterize_to_pixels_3dgs_bwd_kernel`: with w_k = alpha_k T_k,
    dL/dalpha_k = T_k c_k.v - (sum_{j behind k} w_j c_j.v + T_final bg.v - T_final v_alpha) / (1 - alpha_k),
    and no gradient through alpha where opacity * vis > 0.999 (the clamp).
    """

    @staticmethod
    def forward(
        ctx, means2d, conics, opacities, colors, backgrounds, flat_ids, pixel_ids, width, height, absgrad
    ):
        C, N = opacities.shape
        D = colors.shape[-1]
        n_pixels = C * height * width
        starts = segment_starts(pixel_ids)
        _, _, _, _, _, opacity, vis = _pair_geometry(
            means2d, conics, opacities, flat_ids, pixel_ids, width, height
        )
        alpha = torch.clamp(opacity * vis, max=MAX_ALPHA)  # [K]
        log_keep = torch.log1p(-alpha.double())  # [K]
        exclusive, _ = segmented_log_transmittance(log_keep, starts)
        transmittance = torch.exp(exclusive).to(alpha.dtype)  # [K] T before each pair
        weight = alpha * transmittance  # [K]
        colors_t = colors.reshape(C * N, D).T.contiguous().index_select(1, flat_ids)  # [D, K]
        image = _scatter_rows(colors_t * weight, pixel_ids, n_pixels)  # [D, C*H*W]
        log_final = torch.zeros(n_pixels, dtype=torch.float64, device=alpha.device)
        final_t = torch.exp(log_final.index_add_(0, pixel_ids, log_keep)).to(alpha.dtype)  # [C*H*W]

        image = image.T.reshape(C, height * width, D) + final_t.reshape(C, -1, 1) * backgrounds[:, None, :]
        ctx.save_for_backward(means2d, conics, opacities, colors, backgrounds, flat_ids, pixel_ids, starts)
        ctx.blend = (transmittance, final_t, width, height, absgrad)
        render_alphas = (1.0 - final_t).reshape(C, height, width, 1)
        return image.reshape(C, height, width, D), render_alphas

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, v_image, v_alphas):
        means2d, conics, opacities, colors, backgrounds, flat_ids, pixel_ids, starts = ctx.saved_tensors
        transmittance, final_t, width, height, absgrad = ctx.blend
        C, N = opacities.shape
        D = colors.shape[-1]
        n_pixels = C * height * width
        v_image = v_image.reshape(C, height * width, D)
        v_alphas = v_alphas.reshape(n_pixels)

        dx, dy, a, b, c, opacity, vis = _pair_geometry(
            means2d, conics, opacities, flat_ids, pixel_ids, width, height
        )
        raw_alpha = opacity * vis
        alpha = torch.clamp(raw_alpha, max=MAX_ALPHA)
        weight = alpha * transmittance  # [K]
        colors_t = colors.reshape(C * N, D).T.contiguous().index_select(1, flat_ids)  # [D, K]
        v_pixel = v_image.reshape(n_pixels, D).T.contiguous().index_select(1, pixel_ids)  # [D, K]
        v_colors = _scatter_rows(v_pixel * weight, flat_ids, C * N).T.reshape(C, N, D)

        # What lies behind each pair, dotted with the pixel's incoming gradient: the other pairs...
        c_dot_v = (colors_t * v_pixel).sum(0)  # [K]
        own = (weight * c_dot_v).double()  # [K]
        inclusive_all = torch.cumsum(own, 0)
        inclusive = inclusive_all - (inclusive_all - own).index_select(0, starts)
        pixel_total = torch.zeros(n_pixels, dtype=torch.float64, device=own.device).index_add_(
            0, pixel_ids, own
        )
        behind = (pixel_total.index_select(0, pixel_ids) - inclusive).to(alpha.dtype)  # [K]
        # ...then the background, and the alpha output (1 - T_final).
        bg_dot_v = (v_image * backgrounds[:, None, :]).sum(-1).reshape(n_pixels)  # [C*H*W]
        tail = final_t * (bg_dot_v - v_alphas)  # [C*H*W]
        behind = behind + tail.index_select(0, pixel_ids)
        v_alpha = transmittance * c_dot_v - behind / (1.0 - alpha)  # [K]

        v_raw = torch.where(raw_alpha <= MAX_ALPHA, v_alpha, 0.0)
        v_opacity = vis * v_raw
        v_sigma = -raw_alpha * v_raw
        v_x = v_sigma * (a * dx + b * dy)
        v_y = v_sigma * (b * dx + c * dy)
        rows = torch.stack(
            [v_x, v_y, 0.5 * v_sigma * dx * dx, v_sigma * dx * dy, 0.5 * v_sigma * dy * dy, v_opacity]
        )
        grads = _scatter_rows(rows, flat_ids, C * N)  # [6, C*N]
        v_means2d = grads[0:2].T.reshape(C, N, 2)
        v_conics = grads[2:5].T.reshape(C, N, 3)
        v_opacities = grads[5].reshape(C, N)
        v_backgrounds = (v_image * final_t.reshape(C, -1, 1)).sum(1)  # [C, D]
        if absgrad:
            means2d.absgrad = _scatter_rows(torch.stack([v_x.abs(), v_y.abs()]), flat_ids, C * N).T.reshape(
                C, N, 2
            )
        return v_means2d, v_conics, v_opacities, v_colors, v_backgrounds, None, None, None, None, None
