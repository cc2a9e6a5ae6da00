"""Compiled CPU compositing kernels (numba): the per-pixel rules of `momentumgs.render.cpu`, tile by tile.

`momentumgs.render.cpu` enumerates every (Gaussian, pixel) pair with tensor operations and sorts them; that
enumeration was most of a CPU training step. These kernels do what gsplat's CUDA kernels do instead: bin the
Gaussians' pixel boxes into square tiles (in depth order, so each tile's list is front to back), then walk
each pixel of a tile through its tile's list. The rules are the reference's (gsplat 1.5.3's `classic`
compositing), to rounding:

- a Gaussian is tried at the pixels inside its radius box (x0..x1, y0..y1, inclusive);
- dx and dy are formed as the reference forms them (dx from the box's first column, then minus the column
  offset) so that the culling tests see the same float values;
- sigma < 0 or alpha < 1/255 skips; alpha = min(0.999, raw alpha); the pixel stops before the Gaussian that
  would bring T to 1e-4 or below;
- T is carried in float64 (the reference sums log(1 - alpha) in float64), colours are summed in float64.

Within a tile the work is Gaussian by Gaussian (front to back), each touching only the pixels of its box in
the tile, with per-pixel T, colour and "last contributor" kept for the tile; a tile ends once all its pixels
have stopped. The backward goes back to front through the same lists, as gsplat's backward kernel does:
each pixel starts from its final T and its last contributor, and recovers the T in front of each earlier
contributor by dividing by (1 - alpha) (in float64, exact to rounding). It returns, per entry, the colour
gradient and the moments sum(v_sigma * (dx, dy, dx^2, dx dy, dy^2, 1)); the conic and the mean gradients
are formed from them in torch, once per Gaussian, as in the reference.

Arrays are plain numpy, one entry per visible (camera, Gaussian) with a non-empty box, entries sorted by
(camera, depth). Kernels compile once per dtype (float32, float64) and are cached on disk by numba.
"""

import numba
import numpy as np

TILE = 16  # pixels per tile side; any size gives the same images (the box test decides per pixel)
STOP_TRANSMITTANCE = 1e-4


@numba.njit(cache=True, nogil=True)
def bin_tiles(boxes, cam_start, tiles_x, tiles_y):  # pragma: no cover - compiled
    """Tile lists: offsets [C * tiles + 1] and entry ids, each tile's entries in entry (depth) order.

    boxes [E, 4] int32 x0, x1, y0, y1 (inclusive, clipped, non-empty); cam_start [C + 1] entry offsets.
    """
    n_cams = cam_start.shape[0] - 1
    n_tiles = tiles_x * tiles_y
    counts = np.zeros(n_cams * n_tiles + 1, dtype=np.int64)
    for cam in range(n_cams):
        for e in range(cam_start[cam], cam_start[cam + 1]):
            for ty in range(boxes[e, 2] // TILE, boxes[e, 3] // TILE + 1):
                for tx in range(boxes[e, 0] // TILE, boxes[e, 1] // TILE + 1):
                    counts[cam * n_tiles + ty * tiles_x + tx + 1] += 1
    offsets = np.cumsum(counts)
    fill = offsets[:-1].copy()
    ids = np.empty(offsets[-1], dtype=np.int32)
    for cam in range(n_cams):
        for e in range(cam_start[cam], cam_start[cam + 1]):
            for ty in range(boxes[e, 2] // TILE, boxes[e, 3] // TILE + 1):
                for tx in range(boxes[e, 0] // TILE, boxes[e, 1] // TILE + 1):
                    t = cam * n_tiles + ty * tiles_x + tx
                    ids[fill[t]] = e
                    fill[t] += 1
    return offsets, ids


@numba.njit(cache=True, nogil=True, inline="always")
def _row_terms(params, consts, coords, e, x0, y):  # pragma: no cover - compiled
    """Entry e along row y, in the params' dtype and the reference's float steps: dx at the box's first
    column x0, a/2, b dy, c/2 dy^2 and dy, so that sigma = (a/2 dx + b dy) dx + c/2 dy^2 with dx = dx0 - k
    at column x0 + k. coords [max(W, H)] holds 0, 1, 2, ... in that dtype (integers convert without
    leaving it)."""
    half = consts[0]
    dx0 = params[e, 0] - (coords[x0] + half)
    dy = params[e, 1] - (coords[y] + half)
    return dx0, half * params[e, 2], params[e, 3] * dy, half * params[e, 4] * dy * dy, dy


@numba.njit(cache=True, nogil=True, inline="always")
def _raw_alpha(opacity, half_a, b_dy, half_c_dy2, dx, consts):  # pragma: no cover - compiled
    """opacity exp(-sigma) at dx along a row, 0 where the pair is culled (sigma < 0, alpha < 1/255)."""
    zero = consts[3]
    sigma = (half_a * dx + b_dy) * dx + half_c_dy2
    if sigma < zero:
        return zero
    raw = opacity * np.exp(-sigma)
    return raw if raw >= consts[1] else zero


@numba.njit(cache=True, nogil=True, inline="always")
def _row_span(params, e, y, x_lo, x_hi, log_levels):  # pragma: no cover - compiled
    """The columns [first, last] of row y within [x_lo, x_hi] where entry e may reach alpha 1/255.

    sigma <= ln(255 opacity) is an interval of a convex quadratic along the row; it is solved in float64
    and widened by one pixel on each side, as the reference does (the exact per-pixel test follows, so this
    only skips work: an ellipse fills at most pi/4 of its box).
    """
    half_a = 0.5 * np.float64(params[e, 2])
    dy = np.float64(params[e, 1]) - (y + 0.5)
    b_dy = np.float64(params[e, 3]) * dy
    rest = 0.5 * np.float64(params[e, 4]) * dy * dy - log_levels[e]
    disc = b_dy * b_dy - 4.0 * half_a * rest
    if disc < -4.0 * half_a * 1e-4:  # the row's smallest sigma is above the level beyond rounding
        return 1, 0
    half_width = np.sqrt(max(disc, 0.0)) / (2.0 * half_a)
    # dx = mean x - (x + 0.5) is smallest-sigma at dx = -b dy / a
    centre = np.float64(params[e, 0]) - 0.5 + b_dy / (2.0 * half_a)
    first = max(x_lo, int(np.ceil(centre - half_width)) - 1)
    last = min(x_hi, int(np.floor(centre + half_width)) + 1)
    return first, last


@numba.njit(cache=True, nogil=True, inline="always")
def _tile_rect(t, tiles_x, tiles_y, width, height):  # pragma: no cover - compiled
    """Camera, first column, first row, columns and rows of tile t."""
    cam = t // (tiles_x * tiles_y)
    ty, tx = divmod(t % (tiles_x * tiles_y), tiles_x)
    return cam, tx * TILE, ty * TILE, min(TILE, width - tx * TILE), min(TILE, height - ty * TILE)


@numba.njit(cache=True, nogil=True)
def forward(
    params,
    colors,
    boxes,
    offsets,
    ids,
    width,
    height,
    tiles_x,
    tiles_y,
    consts,
    coords,
    log_levels,
    tile_lo,
    tile_hi,
    image,
    final_t,
    last,
):  # pragma: no cover - compiled
    """Composite tiles [tile_lo, tile_hi) into image [C, H, W, D] (no background; zeros beforehand), T
    behind each pixel final_t [C, H, W] (float64; ones beforehand) and last [C, H, W] (-1 beforehand), the
    position in its tile's list of each pixel's last contributor. Tile ranges share no pixel, so ranges
    may run at once on several threads (the kernel holds no GIL).

    params [E, 6] mean x, mean y, conic a, b, c, opacity; colors [E, D]; consts [4]: 0.5, 1/255, 0.999, 0
    in the params' dtype; log_levels [E] float64: ln(max(1, 255 opacity)), the largest sigma drawn.
    """
    D = colors.shape[1]
    T = np.empty((TILE, TILE), dtype=np.float64)
    acc = np.empty((TILE, TILE, D), dtype=np.float64)
    done = np.empty((TILE, TILE), dtype=np.bool_)
    entries = (params, colors, boxes, consts, coords, log_levels)
    for t in range(tile_lo, tile_hi):
        lo, hi = offsets[t], offsets[t + 1]
        if lo == hi:
            continue
        cam, px, py, nx, ny = rect = _tile_rect(t, tiles_x, tiles_y, width, height)
        T[:] = 1.0
        acc[:] = 0.0
        done[:] = False
        _blend_tile(entries, ids, lo, hi, rect, T, acc, done, last)
        for ly in range(ny):
            for lx in range(nx):
                final_t[cam, py + ly, px + lx] = T[ly, lx]
                for d in range(D):
                    image[cam, py + ly, px + lx, d] = acc[ly, lx, d]


@numba.njit(cache=True, nogil=True)
def _blend_tile(entries, ids, lo, hi, rect, T, acc, done, last):  # pragma: no cover - compiled
    """Blend the entries ids[lo:hi] front to back into tile `rect` (camera, first column, first row,
    columns, rows): its T, colour sums acc and stopped pixels done, and each pixel's last contributor.
    entries: `forward`'s params, colors, boxes, consts, coords and log_levels."""
    params, colors, boxes, consts, coords, log_levels = entries
    cam, px, py, nx, ny = rect
    D = colors.shape[1]
    max_alpha = consts[2]
    n_done = 0
    for i in range(lo, hi):
        e = ids[i]
        x0 = boxes[e, 0]
        x_lo, x_hi = max(x0, px), min(boxes[e, 1], px + nx - 1)
        opacity = params[e, 5]
        for y in range(max(boxes[e, 2], py), min(boxes[e, 3], py + ny - 1) + 1):
            first, last_x = _row_span(params, e, y, x_lo, x_hi, log_levels)
            dx0, half_a, b_dy, half_c_dy2, _ = _row_terms(params, consts, coords, e, x0, y)
            for x in range(first, last_x + 1):
                ly, lx = y - py, x - px
                if done[ly, lx]:
                    continue
                raw = _raw_alpha(opacity, half_a, b_dy, half_c_dy2, dx0 - coords[x - x0], consts)
                if raw == 0.0:
                    continue
                alpha = min(raw, max_alpha)
                next_t = T[ly, lx] * (1.0 - alpha)
                if next_t <= STOP_TRANSMITTANCE:
                    done[ly, lx] = True
                    n_done += 1
                    continue
                weight = alpha * T[ly, lx]
                for d in range(D):
                    acc[ly, lx, d] += weight * colors[e, d]
                T[ly, lx] = next_t
                last[cam, y, x] = i
        if n_done == nx * ny:
            break


@numba.njit(cache=True, nogil=True)
def backward(
    params,
    colors,
    boxes,
    offsets,
    ids,
    width,
    height,
    tiles_x,
    tiles_y,
    consts,
    coords,
    log_levels,
    final_t,
    last,
    v_image,
    tail,
    absgrad,
    tile_lo,
    tile_hi,
):  # pragma: no cover - compiled
    """Per entry, over the tiles [tile_lo, tile_hi): v_colors [E, D], moments [E, 6] = sums of v_sigma
    (dx, dy, dx^2, dx dy, dy^2, 1) and, with absgrad, the summed absolute screen-space mean gradients
    [E, 2] (all float64). Ranges run on several threads add their own sums afterwards.

    final_t, last: from `forward`; v_image [C, H, W, D]; tail [C, H, W] float64: T_final (background . v -
    v_alpha), what lies behind the last contributor of each pixel. dL/dalpha_k = T_k c_k.v - (sum behind k
    of w_j c_j.v + tail) / (1 - alpha_k); no gradient through alpha where the 0.999 clamp holds.
    """
    E, D = colors.shape
    grads = (
        np.zeros((E, D), dtype=np.float64),  # v_colors
        np.zeros((E, 6), dtype=np.float64),  # moments
        np.zeros((E if absgrad else 0, 2), dtype=np.float64),  # absolute mean gradients
    )
    T = np.empty((TILE, TILE), dtype=np.float64)
    behind = np.empty((TILE, TILE), dtype=np.float64)
    last_tile = np.empty((TILE, TILE), dtype=np.int32)
    entries = (params, colors, boxes, consts, coords, log_levels)
    for t in range(tile_lo, tile_hi):
        lo, hi = offsets[t], offsets[t + 1]
        if lo == hi:
            continue
        cam, px, py, nx, ny = rect = _tile_rect(t, tiles_x, tiles_y, width, height)
        last_in_tile = -1
        for ly in range(ny):
            for lx in range(nx):
                T[ly, lx] = final_t[cam, py + ly, px + lx]
                behind[ly, lx] = tail[cam, py + ly, px + lx]
                last_tile[ly, lx] = last[cam, py + ly, px + lx]
                last_in_tile = max(last_in_tile, last_tile[ly, lx])
        pixels = (T, behind, last_tile)
        _unblend_tile(entries, ids, lo, last_in_tile, rect, v_image, absgrad, pixels, grads)
    return grads


@numba.njit(cache=True, nogil=True)
def _unblend_tile(entries, ids, lo, last_in_tile, rect, v_image, absgrad, pixels, grads):  # pragma: no cover
    """Take the entries ids[lo:last_in_tile + 1] back out of tile `rect`, back to front (pixels: T, what
    lies behind, last contributor), adding each one's sums over the tile to grads (`backward`'s outputs)
    once, from registers. entries: `backward`'s params, colors, boxes, consts, coords and log_levels."""
    params, colors, boxes, consts, coords, log_levels = entries
    T, behind, last_tile = pixels
    v_colors, moments, v_abs = grads
    cam, px, py, nx, ny = rect
    D = colors.shape[1]
    v_color = np.empty(D, dtype=np.float64)
    max_alpha = consts[2]
    for i in range(last_in_tile, lo - 1, -1):
        e = ids[i]
        x0 = boxes[e, 0]
        x_lo, x_hi = max(x0, px), min(boxes[e, 1], px + nx - 1)
        opacity = params[e, 5]
        sums = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)  # v_sigma (dx, dy, dx^2, dx dy, dy^2, 1)
        abs_x = abs_y = 0.0
        v_color[:] = 0.0
        for y in range(max(boxes[e, 2], py), min(boxes[e, 3], py + ny - 1) + 1):
            first, last_x = _row_span(params, e, y, x_lo, x_hi, log_levels)
            dx0, half_a, b_dy, half_c_dy2, dy = _row_terms(params, consts, coords, e, x0, y)
            ly = y - py
            for x in range(first, last_x + 1):
                lx = x - px
                if i > last_tile[ly, lx]:
                    continue
                dx = dx0 - coords[x - x0]
                raw = _raw_alpha(opacity, half_a, b_dy, half_c_dy2, dx, consts)
                if raw == 0.0:
                    continue
                alpha = min(raw, max_alpha)
                keep = 1.0 / (1.0 - alpha)
                T_k = T[ly, lx] * keep
                weight = alpha * T_k
                c_dot_v = 0.0
                for d in range(D):
                    v = v_image[cam, y, x, d]
                    c_dot_v += colors[e, d] * v
                    v_color[d] += weight * v
                v_alpha = T_k * c_dot_v - behind[ly, lx] * keep
                behind[ly, lx] += weight * c_dot_v
                T[ly, lx] = T_k
                v_sigma = -raw * v_alpha if raw <= max_alpha else 0.0
                v_sigma_dx, v_sigma_dy = v_sigma * dx, v_sigma * dy
                sums = _add_moments(sums, v_sigma_dx, v_sigma_dy, v_sigma, dx, dy)
                if absgrad:
                    a, b, c = params[e, 2], params[e, 3], params[e, 4]
                    abs_x += abs(a * v_sigma_dx + b * v_sigma_dy)
                    abs_y += abs(b * v_sigma_dx + c * v_sigma_dy)
        for k in range(6):
            moments[e, k] += sums[k]
        for d in range(D):
            v_colors[e, d] += v_color[d]
        if absgrad:
            v_abs[e, 0] += abs_x
            v_abs[e, 1] += abs_y


@numba.njit(cache=True, nogil=True, inline="always")
def _add_moments(sums, v_sigma_dx, v_sigma_dy, v_sigma, dx, dy):  # pragma: no cover - compiled
    """sums + v_sigma (dx, dy, dx^2, dx dy, dy^2, 1), each product formed as (v_sigma dx) dx etc."""
    s_dx, s_dy, s_dxdx, s_dxdy, s_dydy, s_1 = sums
    return (
        s_dx + v_sigma_dx,
        s_dy + v_sigma_dy,
        s_dxdx + v_sigma_dx * dx,
        s_dxdy + v_sigma_dx * dy,
        s_dydy + v_sigma_dy * dy,
        s_1 + v_sigma,
    )
