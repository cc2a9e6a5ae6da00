"""Front-to-back compositing of projected Gaussians on the CPU: vectorised, differentiable.

It follows the per-pixel rules of gsplat 1.5.3's `rasterize_to_pixels_3dgs_fwd_kernel`
(csrc/RasterizeToPixels3DGSFwd.cu), without tiles:

- a Gaussian is tried at the pixels whose centres (x + 0.5, y + 0.5) lie inside its radius box;
  gsplat tries every pixel of the 16x16 tiles the box touches, but outside the box
  alpha < 1/255 whenever opacity <= 1 (the box is where opacity * exp(-sigma) can reach 1/255),
  so the two agree (with opacity > 1 gsplat may draw a little beyond the box, we do not);
- sigma = 0.5 (a dx^2 + c dy^2) + b dx dy with d = mean2d - pixel centre; skipped if sigma < 0;
  alpha = min(0.999, opacity exp(-sigma)); skipped if alpha < 1/255;
- front to back by depth; if T (1 - alpha) <= 1e-4 the pixel stops and that Gaussian is not added;
  colour += alpha T c; T *= 1 - alpha; background added as T_final * bg; render alpha = 1 - T_final.

Two passes: the first (no gradient), in bands of rows to bound memory, enumerates the
(Gaussian, pixel) pairs, drops the culled ones, orders them by (camera, pixel, depth) and applies the
stop rule; the second recomputes alpha for the surviving pairs only and composites them with a
segmented cumulative sum of log(1 - alpha) (in float64: the sum runs over a whole band). Its backward
is written by hand after gsplat's backward kernel: autograd through the same steps was several times
slower on the CPU. The test suite checks it with gradcheck and against a dense autograd reference.
"""

import math

import torch
from torch import Tensor

from momentumgs.render.projection import ALPHA_THRESHOLD
from momentumgs.timing import phase

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


def _reachable_columns(row_terms: Tensor, nx: Tensor) -> tuple[Tensor, Tensor]:
    """First column k [R] and count [R] of the pixels of each box row where alpha may reach 1/255.

    opacity exp(-sigma) >= 1/255 is sigma <= ln(255 opacity), and sigma is a convex quadratic in dx, so
    those pixels form an interval. It is solved in float64 and widened by one pixel on each side; the
    exact per-pixel test comes afterwards, so this only saves work (an ellipse fills <= pi/4 of its box).
    """
    dx0, half_a, b_dy, half_c_dy2, opacity = row_terms.double()
    level = torch.log(torch.clamp(opacity / ALPHA_THRESHOLD, min=1.0))
    disc = b_dy * b_dy - 4.0 * half_a * (half_c_dy2 - level)
    # Rows whose smallest sigma exceeds the level by more than rounding could explain are empty.
    reaches = disc >= -4.0 * half_a * 1e-4
    centre = dx0 + b_dy / (2.0 * half_a)  # the k where sigma is smallest along the row
    half_width = torch.sqrt(torch.clamp(disc, min=0.0)) / (2.0 * half_a)
    k_first = torch.clamp(torch.ceil(centre - half_width) - 1, min=0)
    k_last = torch.minimum(torch.floor(centre + half_width) + 1, (nx - 1).double())
    count = torch.where(reaches, torch.clamp(k_last - k_first + 1, min=0), 0.0)
    return k_first.long(), count.long()


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
    k_first, k_count = _reachable_columns(row_terms, nx.index_select(0, entry))  # [R]
    row_pixel = (entry_camera.index_select(0, entry) * height + row) * width + x_first  # [R]

    pair_row, k = _ranges(k_count)  # [P]
    k = k + k_first.index_select(0, pair_row)
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
) -> tuple[Tensor, Tensor, list[int]]:
    """The (Gaussian, pixel) pairs that gsplat's rules composite: flat ids c * N + n [K] and pixel ids
    c * H * W + y * W + x [K], each pixel's pairs adjacent and in front-to-back order; and the sizes of
    the consecutive chunks (bands of rows) they came in, which share no pixel."""
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
    return torch.cat(entries), torch.cat(pixels), [p.numel() for p in pixels]


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
    flat_ids, pixel_ids, chunk_sizes = contributing_pairs(
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
    pairs = (flat_ids, pixel_ids, chunk_sizes)
    return _Blend.apply(means2d, conics, opacities, colors, backgrounds, pairs, width, height, absgrad)


def _pair_geometry(table_t, flat_ids, pixel_ids, width, height):
    """Per pair, from the per-Gaussian table [6, C*N] (x, y, conic a, b, c, opacity): dx, dy (mean minus
    pixel centre), a, b, c, opacity and vis = exp(-sigma) [K] each."""
    x, y, a, b, c, opacity = table_t.index_select(1, flat_ids)
    local = pixel_ids % (height * width)
    row = torch.div(local, width, rounding_mode="floor")
    dx = x - ((local - row * width).to(x.dtype) + 0.5)
    dy = y - (row.to(x.dtype) + 0.5)
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    return dx, dy, a, b, c, opacity, torch.exp(-sigma)


def _gaussian_table(means2d: Tensor, conics: Tensor, opacities: Tensor) -> Tensor:
    """[6, C*N]: gathering columns of this is much faster on the CPU than gathering rows of [C*N, 6]."""
    C, N = opacities.shape
    table = torch.cat([means2d.reshape(C * N, 2), conics.reshape(C * N, 3), opacities.reshape(C * N, 1)], 1)
    return table.T.contiguous()


def _scatter_rows(out: Tensor, index: Tensor, rows: Tensor) -> None:
    """out[r].index_add_(0, index, rows[r]) for every row r: one 1D index_add per row is the fastest."""
    for r in range(rows.shape[0]):
        out[r].index_add_(0, index, rows[r])


def _chunks(sizes: list[int]):
    start = 0
    for size in sizes:
        yield start, start + size
        start += size


class _Blend(torch.autograd.Function):
    """Front-to-back blending of given (Gaussian, pixel) pairs with a hand-written backward.

    The backward follows gsplat's `rasterize_to_pixels_3dgs_bwd_kernel`: with w_k = alpha_k T_k,
    dL/dalpha_k = T_k c_k.v - (sum_{j behind k} w_j c_j.v + T_final bg.v - T_final v_alpha) / (1 - alpha_k),
    and no gradient through alpha where opacity * vis > 0.999 (the clamp). Both passes run chunk by chunk
    (chunks share no pixel) so that the temporaries stay small; only ids and T per pair are kept.
    """

    @staticmethod
    def forward(ctx, means2d, conics, opacities, colors, backgrounds, pairs, width, height, absgrad):
        flat_ids, pixel_ids, chunk_sizes = pairs
        C, N = opacities.shape
        D = colors.shape[-1]
        n_pixels = C * height * width
        table_t = _gaussian_table(means2d, conics, opacities)
        colors_t = colors.reshape(C * N, D).T.contiguous()  # [D, C*N]
        image = colors.new_zeros(D, n_pixels)
        log_final = torch.zeros(n_pixels, dtype=torch.float64, device=colors.device)
        transmittance = colors.new_empty(flat_ids.numel())  # [K] T in front of each pair
        for lo, hi in _chunks(chunk_sizes):
            f, p = flat_ids[lo:hi], pixel_ids[lo:hi]
            *_, opacity, vis = _pair_geometry(table_t, f, p, width, height)
            alpha = torch.clamp(opacity * vis, max=MAX_ALPHA)
            log_keep = torch.log1p(-alpha.double())
            exclusive, _ = segmented_log_transmittance(log_keep, segment_starts(p))
            t = torch.exp(exclusive).to(alpha.dtype)
            transmittance[lo:hi] = t
            _scatter_rows(image, p, colors_t.index_select(1, f) * (alpha * t))
            log_final.index_add_(0, p, log_keep)
        final_t = torch.exp(log_final).to(colors.dtype)  # [C*H*W]

        image = image.T.reshape(C, height * width, D) + final_t.reshape(C, -1, 1) * backgrounds[:, None, :]
        ctx.save_for_backward(
            means2d, conics, opacities, colors, backgrounds, flat_ids, pixel_ids, transmittance
        )
        ctx.blend = (chunk_sizes, final_t, width, height, absgrad)
        render_alphas = (1.0 - final_t).reshape(C, height, width, 1)
        return image.reshape(C, height, width, D), render_alphas

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, v_image, v_alphas):
        with phase("rasterize_backward"):
            return _Blend._backward(ctx, v_image, v_alphas)

    @staticmethod
    def _backward(ctx, v_image, v_alphas):
        means2d, conics, opacities, colors, backgrounds, flat_ids, pixel_ids, transmittance = (
            ctx.saved_tensors
        )
        chunk_sizes, final_t, width, height, absgrad = ctx.blend
        C, N = opacities.shape
        D = colors.shape[-1]
        n_pixels = C * height * width
        v_image = v_image.reshape(C, height * width, D)
        # Per pixel: what lies behind every pair through the background and the alpha output (1 - T_final).
        bg_dot_v = (v_image * backgrounds[:, None, :]).sum(-1).reshape(n_pixels)
        tail = final_t * (bg_dot_v - v_alphas.reshape(n_pixels))  # [C*H*W]
        v_image_t = v_image.reshape(n_pixels, D).T.contiguous()  # [D, C*H*W]
        table_t = _gaussian_table(means2d, conics, opacities)
        colors_t = colors.reshape(C * N, D).T.contiguous()  # [D, C*N]
        v_colors_t = colors.new_zeros(D, C * N)
        v_table = colors.new_zeros(6, C * N)  # x, y, conic a, b, c, opacity
        v_abs = colors.new_zeros(2, C * N) if absgrad else None
        pixel_total = torch.zeros(n_pixels, dtype=torch.float64, device=colors.device)

        for lo, hi in _chunks(chunk_sizes):
            f, p, t = flat_ids[lo:hi], pixel_ids[lo:hi], transmittance[lo:hi]
            dx, dy, a, b, c, opacity, vis = _pair_geometry(table_t, f, p, width, height)
            raw_alpha = opacity * vis
            alpha = torch.clamp(raw_alpha, max=MAX_ALPHA)
            weight = alpha * t
            v_pixel = v_image_t.index_select(1, p)  # [D, K]
            _scatter_rows(v_colors_t, f, v_pixel * weight)

            # sum over the pairs behind this one (same pixel, later in order) of w_j c_j.v
            c_dot_v = (colors_t.index_select(1, f) * v_pixel).sum(0)  # [K]
            own = (weight * c_dot_v).double()  # [K]
            inclusive_all = torch.cumsum(own, 0)
            inclusive = inclusive_all - (inclusive_all - own).index_select(0, segment_starts(p))
            pixel_total.zero_().index_add_(0, p, own)
            behind = (pixel_total.index_select(0, p) - inclusive).to(alpha.dtype) + tail.index_select(0, p)
            v_alpha = t * c_dot_v - behind / (1.0 - alpha)

            v_raw = torch.where(raw_alpha <= MAX_ALPHA, v_alpha, 0.0)
            v_sigma = -raw_alpha * v_raw
            v_x = v_sigma * (a * dx + b * dy)
            v_y = v_sigma * (b * dx + c * dy)
            half_v_sigma = 0.5 * v_sigma
            rows = [v_x, v_y, half_v_sigma * dx * dx, v_sigma * dx * dy, half_v_sigma * dy * dy, vis * v_raw]
            _scatter_rows(v_table, f, torch.stack(rows))
            if v_abs is not None:
                _scatter_rows(v_abs, f, torch.stack([v_x.abs(), v_y.abs()]))

        if v_abs is not None:
            means2d.absgrad = v_abs.T.reshape(C, N, 2)
        v_means2d = v_table[0:2].T.reshape(C, N, 2)
        v_conics = v_table[2:5].T.reshape(C, N, 3)
        v_opacities = v_table[5].reshape(C, N)
        v_colors = v_colors_t.T.reshape(C, N, D)
        v_backgrounds = (v_image * final_t.reshape(C, -1, 1)).sum(1)  # [C, D]
        return v_means2d, v_conics, v_opacities, v_colors, v_backgrounds, None, None, None, None
