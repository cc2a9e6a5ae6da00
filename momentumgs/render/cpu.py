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

Two passes. The first (no gradient), in bands of rows to bound memory, enumerates the (Gaussian, pixel)
pairs inside each box row's reachable columns, drops the culled ones, orders them by (camera, pixel, depth)
with one stable sort, and computes T in front of each pair with a per-pixel cumulative sum of
log(1 - alpha) (float64: the sum runs over a whole band); pairs past a pixel's stop are made inert
(alpha 0). It keeps alpha, T, dx and dy per pair, so the second pass only weighs and adds the colours. Its
backward is written by hand after gsplat's backward kernel (autograd through the same steps was several
times slower on the CPU). The test suite checks both with gradcheck and against a dense reference.
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from momentumgs.render.projection import ALPHA_THRESHOLD
from momentumgs.timing import phase

MAX_ALPHA = 0.999
LOG_STOP_TRANSMITTANCE = math.log(1e-4)  # the pixel stops once T would fall to 1e-4
DEFAULT_PAIR_BUDGET = 1_000_000  # (Gaussian, pixel) pairs enumerated at once in the first pass


def pixel_ends(pixel: Tensor, n_pixels: int) -> tuple[Tensor, Tensor]:
    """For pixel ids [K] sorted so that each pixel's pairs are adjacent: per pixel [n_pixels], the index of
    its first pair and one past its last (equal for pixels without pairs)."""
    counts = torch.bincount(pixel, minlength=n_pixels)
    ends = torch.cumsum(counts, 0)
    return ends - counts, ends


def segmented_log_transmittance(log_keep: Tensor, pixel: Tensor, n_pixels: int) -> tuple[Tensor, Tensor]:
    """Exclusive and inclusive per-pixel sums of log(1 - alpha) [K] over pixel-sorted pairs (float64)."""
    if pixel.numel() == 0:
        return log_keep, log_keep
    inclusive_all = torch.cumsum(log_keep, dim=0)
    first, _ = pixel_ends(pixel, n_pixels)
    first = first.clamp(max=max(pixel.numel() - 1, 0))  # pixels without pairs: any index will do
    before = inclusive_all.index_select(0, first) - log_keep.index_select(0, first)  # [n_pixels]
    inclusive = inclusive_all - before.index_select(0, pixel)
    return inclusive - log_keep, inclusive


def pixel_boxes(means2d: Tensor, radii: Tensor, width: int, height: int) -> tuple[Tensor, ...]:
    """Inclusive pixel ranges x0, x1, y0, y1 [E] whose centres lie within the radius box, clipped."""
    rx, ry = radii[:, 0].to(means2d.dtype), radii[:, 1].to(means2d.dtype)
    x0 = torch.ceil(means2d[:, 0] - rx - 0.5).clamp(min=0).long()
    x1 = torch.floor(means2d[:, 0] + rx - 0.5).clamp(max=width - 1).long()
    y0 = torch.ceil(means2d[:, 1] - ry - 0.5).clamp(min=0).long()
    y1 = torch.floor(means2d[:, 1] + ry - 0.5).clamp(max=height - 1).long()
    return x0, x1, y0, y1


def visible_by_camera_and_depth(depths: Tensor, radii: Tensor) -> Tensor:
    """Flat ids c * N + n [E] of the visible (camera, Gaussian) pairs of depths [C, N] and radii [C, N, 2],
    ordered by camera, then depth (ties by id): the order both compositors draw in."""
    C, N = depths.shape
    visible = torch.nonzero((radii > 0).all(dim=-1).reshape(-1)).squeeze(1)
    flat = visible[torch.argsort(depths.reshape(-1)[visible], stable=True)]
    if C > 1:  # stably by camera: each camera's entries stay in depth order
        flat = flat[torch.argsort(torch.div(flat, N, rounding_mode="floor"), stable=True)]
    return flat


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


@dataclass
class PairSet:
    """The (Gaussian, pixel) pairs that gsplat's rules composite, each pixel's pairs adjacent and front to
    back, with what pass 1 learnt about them (so that the blend and its backward need not recompute it)."""

    gaussian: Tensor  # [K] flat ids c * N + n
    pixel: Tensor  # [K] flat pixel ids c * H * W + y * W + x
    dx: Tensor  # [K] mean2d x minus the pixel centre's x
    dy: Tensor  # [K]
    raw_alpha: Tensor  # [K] opacity * exp(-sigma), before the 0.999 clamp; 0 past a pixel's stop (inert)
    transmittance: Tensor  # [K] T in front of the pair
    final_log_t: Tensor  # [C * H * W] float64 log T behind each pixel's last pair
    chunk_sizes: list[int]  # consecutive chunks (bands of rows) that share no pixel


def _band_pairs(
    boxes: tuple[Tensor, ...],  # x0, x1, y0, y1 [E]
    entry_camera: Tensor,  # [E]
    entry_params: Tensor,  # [6, E] mean x, mean y, conic a, b, c, opacity (columns gather fastest)
    row0: int,
    row1: int,
    width: int,
    height: int,
) -> tuple[Tensor, ...]:
    """Contributing pairs of one band of rows [row0, row1), ordered by (camera, pixel, depth): entry indices,
    pixel ids, dx, dy, raw alpha (0 for the pairs the stop rule removes), T in front of the pair and
    log(1 - alpha) [K] each. Entries must come sorted by (camera, depth)."""
    x0, x1, y0, y1 = boxes
    y0 = y0.clamp(min=row0)
    ny = (y1.clamp(max=row1 - 1) - y0 + 1).clamp(min=0)
    nx = (x1 - x0 + 1).clamp(min=0)
    hit = torch.nonzero(nx * ny).squeeze(1)  # [E']
    dtype = entry_params.dtype
    if hit.numel() == 0:
        index = torch.zeros(0, dtype=torch.long, device=x0.device)
        value = torch.zeros(0, dtype=dtype, device=x0.device)
        return index, index, value, value, value, value, value.double()

    # Box rows first (R of them, about box-width times fewer than pairs): along a row dy is constant, so
    # sigma = (a/2 dx + b dy) dx + c/2 dy^2 with dx = dx0 - k at the k-th pixel of the row.
    owner, row_in_box = _ranges(ny.index_select(0, hit))
    entry = hit.index_select(0, owner)  # [R]
    row = y0.index_select(0, entry) + row_in_box  # [R]
    x_first = x0.index_select(0, entry)  # [R]
    mx, my, a, b, c, opacity = entry_params.index_select(1, entry)  # [R] each
    dy = my - (row.to(dtype) + 0.5)
    dx0 = mx - (x_first.to(dtype) + 0.5)
    row_terms = torch.stack([dx0, 0.5 * a, b * dy, 0.5 * c * dy * dy, opacity])  # [5, R]
    k_first, k_count = _reachable_columns(row_terms, nx.index_select(0, entry))  # [R]
    row_pixel = (entry_camera.index_select(0, entry) * height + row) * width + x_first  # [R]
    n_pixels = (int(entry_camera.max()) + 1) * height * width
    pair_row, pixel, dx, raw_alpha, order = _row_pairs(row_terms, row_pixel, k_first, k_count, n_pixels)

    log_keep = torch.log1p(-torch.clamp(raw_alpha, max=MAX_ALPHA)).double()
    exclusive, inclusive = segmented_log_transmittance(log_keep, pixel, n_pixels)
    # The stop rule: pairs from where T would fall to 1e-4 on are not drawn. Rather than removed, they are
    # made inert (alpha 0: no colour, no change of T, no gradient), which is cheaper than compacting.
    stopped = inclusive <= LOG_STOP_TRANSMITTANCE
    raw_alpha.masked_fill_(stopped, 0.0)
    log_keep.masked_fill_(stopped, 0.0)
    pair_row = pair_row.index_select(0, order)
    transmittance = torch.exp(exclusive).to(dtype)
    entry, dx, dy = entry.index_select(0, pair_row), dx.index_select(0, order), dy.index_select(0, pair_row)
    return entry, pixel, dx, dy, raw_alpha, transmittance, log_keep


def _row_pairs(
    row_terms: Tensor,  # [5, R] dx0, a/2, b dy, c/2 dy^2, opacity
    row_pixel: Tensor,  # [R] pixel id of each box row's first column
    k_first: Tensor,  # [R] first reachable column of the row
    k_count: Tensor,  # [R] reachable columns
    n_pixels: int,
) -> tuple[Tensor, ...]:
    """The (box row, pixel) pairs of the rows' reachable pixels, enumerated row after row (P of them), and
    those that pass the culling tests sorted by pixel, stably (K of them). -> the row of each pair [P],
    the kept pairs' pixel ids [K], dx [P], the kept pairs' raw alpha [K], and `order` [K]: the
    enumeration index of each kept pair"""
    dtype = row_terms.dtype
    # The pairs: the reachable pixels of every row, row after row. With s = sum of the counts before a
    # row, the i-th pair overall (i = s + j) is pixel k_first + j of its row, so per pair only row-constant
    # offsets need gathering: k = i - (s - k_first) and dx = dx0 - k.
    pair_row = torch.repeat_interleave(torch.arange(k_count.numel(), device=k_count.device), k_count)  # [P]
    # pixel ids in int32 where they fit: cheaper to gather, and the sort below is twice as fast
    index_dtype = torch.int32 if n_pixels + pair_row.numel() < 2**31 else torch.long
    shift = ((torch.cumsum(k_count, 0) - k_count) - k_first).to(index_dtype)  # [R] s - k_first
    offset = shift.index_select(0, pair_row)  # [P]
    k = torch.arange(pair_row.numel(), device=k_count.device, dtype=index_dtype) - offset
    dx0, half_a, b_dy, half_c_dy2, opacity = row_terms.index_select(1, pair_row)  # [P] each
    dx = dx0 - k.to(dtype)
    sigma = (half_a * dx + b_dy) * dx + half_c_dy2
    raw_alpha = opacity * torch.exp(-sigma)
    culled = (sigma < 0) | (raw_alpha < ALPHA_THRESHOLD)

    # Pairs were enumerated by (camera, depth); a stable sort by pixel makes them (camera, pixel, depth).
    # Culled pairs get a key past every pixel, so they sort to the end and are cut off.
    key = (row_pixel.to(index_dtype).index_select(0, pair_row) + k).masked_fill_(culled, n_pixels)  # [P]
    n_kept = pair_row.numel() - int(culled.sum())
    pixel, order = torch.sort(key, stable=True)
    pixel, order = pixel[:n_kept].long(), order[:n_kept]  # [K]
    return pair_row, pixel, dx, raw_alpha.index_select(0, order), order


@torch.no_grad()
def find_pairs(
    means2d: Tensor,  # [C, N, 2]
    conics: Tensor,  # [C, N, 3]
    opacities: Tensor,  # [C, N]
    depths: Tensor,  # [C, N]
    radii: Tensor,  # [C, N, 2] int, 0 where culled
    width: int,
    height: int,
    pair_budget: int = DEFAULT_PAIR_BUDGET,
) -> PairSet:
    """Pass 1: the pairs that composite, in bands of rows of at most about `pair_budget` box pixels."""
    C, N = depths.shape
    flat_ids = visible_by_camera_and_depth(depths, radii)  # [E]
    camera = torch.div(flat_ids, N, rounding_mode="floor")

    boxes = pixel_boxes(means2d.reshape(-1, 2)[flat_ids], radii.reshape(-1, 2)[flat_ids], width, height)
    params = torch.cat([means2d.reshape(-1, 2), conics.reshape(-1, 3), opacities.reshape(-1, 1)], dim=1)
    params = params.index_select(0, flat_ids).T.contiguous()  # [6, E]

    x0, x1, y0, y1 = boxes
    total = int(((x1 - x0 + 1).clamp(min=0) * (y1 - y0 + 1).clamp(min=0)).sum()) if flat_ids.numel() else 0
    n_bands = max(1, min(height, math.ceil(total / pair_budget)))
    band_rows = math.ceil(height / n_bands)
    bands = [
        _band_pairs(boxes, camera, params, row0, min(height, row0 + band_rows), width, height)
        for row0 in range(0, height, band_rows)
    ]
    entry, pixel, dx, dy, raw_alpha, transmittance, log_keep = (
        torch.cat(parts) for parts in zip(*bands, strict=True)
    )
    final_log_t = torch.zeros(C * height * width, dtype=torch.float64, device=means2d.device)
    final_log_t.index_add_(0, pixel, log_keep)
    return PairSet(
        gaussian=flat_ids.index_select(0, entry),
        pixel=pixel,
        dx=dx,
        dy=dy,
        raw_alpha=raw_alpha,
        transmittance=transmittance,
        final_log_t=final_log_t,
        chunk_sizes=[band[0].numel() for band in bands],
    )


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
    pairs = find_pairs(
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
    return _Blend.apply(means2d, conics, opacities, colors, backgrounds, pairs, width, height, absgrad)


def moment_gradients(moments: Tensor, conics: Tensor, opacities: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of means2d [C, N, 2], conics [C, N, 3] and opacities [C, N] from each Gaussian's sums of
    v_sigma times (dx, dy, dx^2, dx dy, dy^2, 1) [6, C * N] (v_sigma = dL/dsigma per composited pair)."""
    C, N = opacities.shape
    # sigma = 0.5 (a dx^2 + c dy^2) + b dx dy, dx = mean x - pixel x: dsigma/dmean x = a dx + b dy, ...
    a, b, c = conics.reshape(C * N, 3).T
    s_dx, s_dy, s_dxdx, s_dxdy, s_dydy, s_1 = moments
    v_means2d = torch.stack([a * s_dx + b * s_dy, b * s_dx + c * s_dy], dim=-1).reshape(C, N, 2)
    v_conics = torch.stack([0.5 * s_dxdx, s_dxdy, 0.5 * s_dydy], dim=-1).reshape(C, N, 3)
    # alpha = opacity * vis, so dL/dopacity = sum vis v_alpha = -sum v_sigma / opacity (Gaussians with
    # pairs have opacity >= 1/255; the others have s_1 = 0)
    v_opacities = -(s_1 / opacities.reshape(C * N).clamp(min=1e-30)).reshape(C, N)
    return v_means2d, v_conics, v_opacities


def _scatter_rows(out: Tensor, index: Tensor, rows: Tensor | list[Tensor]) -> None:
    """out[r].index_add_(0, index, rows[r]) for every row r: one 1D index_add per row is the fastest."""
    for r in range(len(rows)):
        out[r].index_add_(0, index, rows[r])


def _chunks(sizes: list[int]):
    """(start, end) of each non-empty chunk."""
    start = 0
    for size in sizes:
        if size > 0:
            yield start, start + size
        start += size


class _Blend(torch.autograd.Function):
    """Front-to-back blending of the pairs of pass 1 with a hand-written backward.

    The forward only weighs and adds the colours: alpha and T per pair come from pass 1. The backward follows
    gsplat's `rasterize_to_pixels_3dgs_bwd_kernel`: with w_k = alpha_k T_k,
    dL/dalpha_k = T_k c_k.v - (sum_{j behind k} w_j c_j.v + T_final bg.v - T_final v_alpha) / (1 - alpha_k),
    and no gradient through alpha where opacity * vis > 0.999 (the clamp). Per pair it accumulates the
    Gaussian's sums of dL/dsigma times dx, dy, dx^2, dx dy, dy^2; the conic then turns them into the
    gradients of the mean and the conic once per Gaussian. Both passes run chunk by chunk (chunks share no
    pixel) so that the temporaries stay small.
    """

    @staticmethod
    def forward(ctx, means2d, conics, opacities, colors, backgrounds, pairs: PairSet, width, height, absgrad):
        C, N = opacities.shape
        D = colors.shape[-1]
        colors_t = colors.reshape(C * N, D).T.contiguous()  # [D, C*N]
        image = colors.new_zeros(D, C * height * width)
        for lo, hi in _chunks(pairs.chunk_sizes):
            f, p = pairs.gaussian[lo:hi], pairs.pixel[lo:hi]
            weight = torch.clamp(pairs.raw_alpha[lo:hi], max=MAX_ALPHA) * pairs.transmittance[lo:hi]
            _scatter_rows(image, p, colors_t.index_select(1, f) * weight)
        final_t = torch.exp(pairs.final_log_t).to(colors.dtype)  # [C*H*W]

        image = image.T.reshape(C, height * width, D) + final_t.reshape(C, -1, 1) * backgrounds[:, None, :]
        ctx.save_for_backward(conics, opacities, colors, backgrounds)
        ctx.blend = (pairs, final_t, width, height, absgrad, means2d)
        render_alphas = (1.0 - final_t).reshape(C, height, width, 1)
        return image.reshape(C, height, width, D), render_alphas

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, v_image, v_alphas):
        with phase("rasterize_backward"):
            return _Blend._backward(ctx, v_image, v_alphas)

    @staticmethod
    def _backward(ctx, v_image, v_alphas):
        conics, opacities, colors, backgrounds = ctx.saved_tensors
        pairs, final_t, width, height, absgrad, means2d = ctx.blend
        C, N = opacities.shape
        D = colors.shape[-1]
        n_pixels = C * height * width
        v_image = v_image.reshape(C, height * width, D)
        # Per pixel: what lies behind every pair through the background and the alpha output (1 - T_final).
        bg_dot_v = (v_image * backgrounds[:, None, :]).sum(-1).reshape(n_pixels)
        tail = (final_t * (bg_dot_v - v_alphas.reshape(n_pixels))).double()  # [C*H*W]
        v_image_t = v_image.reshape(n_pixels, D).T.contiguous()  # [D, C*H*W]
        colors_t = colors.reshape(C * N, D).T.contiguous()  # [D, C*N]
        v_colors_t = colors.new_zeros(D, C * N)
        # per Gaussian: sums of v_sigma * (dx, dy, dx^2, dx dy, dy^2, 1)
        moments = colors.new_zeros(6, C * N)
        v_abs = colors.new_zeros(2, C * N) if absgrad else None
        conic_t = conics.reshape(C * N, 3).T.contiguous() if absgrad else None  # [3, C*N]

        for lo, hi in _chunks(pairs.chunk_sizes):
            f, p, t = pairs.gaussian[lo:hi], pairs.pixel[lo:hi], pairs.transmittance[lo:hi]
            dx, dy, raw_alpha = pairs.dx[lo:hi], pairs.dy[lo:hi], pairs.raw_alpha[lo:hi]
            alpha = torch.clamp(raw_alpha, max=MAX_ALPHA)
            weight = alpha * t
            v_pixel = v_image_t.index_select(1, p)  # [D, K]
            _scatter_rows(v_colors_t, f, v_pixel * weight)

            # sum over the pairs behind this one (same pixel, later in order) of w_j c_j.v, plus the tail
            c_dot_v = (colors_t.index_select(1, f) * v_pixel).sum(0)  # [K]
            own = (weight * c_dot_v).double()  # [K]
            inclusive_all = torch.cumsum(own, 0)
            _, ends = pixel_ends(p, n_pixels)
            pixel_end = inclusive_all.index_select(0, (ends - 1).clamp(min=0)) + tail  # [C*H*W]
            behind = (pixel_end.index_select(0, p) - inclusive_all).to(alpha.dtype)
            v_alpha = t * c_dot_v - behind / (1.0 - alpha)

            v_sigma = -raw_alpha * torch.where(raw_alpha <= MAX_ALPHA, v_alpha, 0.0)
            v_sigma_dx, v_sigma_dy = v_sigma * dx, v_sigma * dy
            rows = [v_sigma_dx, v_sigma_dy, v_sigma_dx * dx, v_sigma_dx * dy, v_sigma_dy * dy, v_sigma]
            _scatter_rows(moments, f, rows)
            if v_abs is not None:
                a, b, c = conic_t.index_select(1, f)
                v_x, v_y = a * v_sigma_dx + b * v_sigma_dy, b * v_sigma_dx + c * v_sigma_dy
                _scatter_rows(v_abs, f, [v_x.abs(), v_y.abs()])

        v_means2d, v_conics, v_opacities = moment_gradients(moments, conics, opacities)
        if v_abs is not None:
            means2d.absgrad = v_abs.T.reshape(C, N, 2)
        v_colors = v_colors_t.T.reshape(C, N, D)
        v_backgrounds = (v_image * final_t.reshape(C, -1, 1)).sum(1)  # [C, D]
        return v_means2d, v_conics, v_opacities, v_colors, v_backgrounds, None, None, None, None
