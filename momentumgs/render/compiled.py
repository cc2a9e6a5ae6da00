"""The compiled CPU compositor: `composite` with the numba tile kernels of `momentumgs.render.tiles`.

Same arguments, rules and return values as `momentumgs.render.cpu.composite`, which stays the reference the
tests compare with and the fallback (`MOMENTUMGS_RASTERIZER=torch`, or numba not installed). Torch does
the bookkeeping (which Gaussians are visible, their order and pixel boxes, the background, the conic
algebra of the backward); the kernels do the per-pixel work.
"""

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

from momentumgs.render.cpu import MAX_ALPHA, moment_gradients, pixel_boxes, visible_by_camera_and_depth
from momentumgs.render.projection import ALPHA_THRESHOLD
from momentumgs.timing import phase

BACKENDS = ("numba", "torch")
ENV_SWITCH = "MOMENTUMGS_RASTERIZER"


def cpu_backend() -> str:
    """The CPU compositor to use: `MOMENTUMGS_RASTERIZER` (numba | torch), else numba where it imports."""
    choice = os.environ.get(ENV_SWITCH, "").strip().lower()
    if choice and choice not in BACKENDS:
        raise ValueError(f"{ENV_SWITCH}={choice!r}: expected one of {', '.join(BACKENDS)}")
    if choice:
        return choice
    try:
        import numba  # noqa: F401
    except ImportError:
        return "torch"
    return "numba"


class TileSet:
    """The visible entries of one render, ordered by (camera, depth), binned into tiles (no gradient)."""

    def __init__(self, means2d, conics, opacities, depths, radii, width: int, height: int):
        import momentumgs.render.tiles as tiles

        C, N = depths.shape
        flat = visible_by_camera_and_depth(depths, radii)  # [E'] the reference's drawing order
        boxes = torch.stack(
            pixel_boxes(means2d.reshape(-1, 2)[flat], radii.reshape(-1, 2)[flat], width, height), 1
        )
        nonempty = (boxes[:, 1] >= boxes[:, 0]) & (boxes[:, 3] >= boxes[:, 2])
        flat, boxes = flat[nonempty], boxes[nonempty]
        camera = torch.div(flat, N, rounding_mode="floor")

        self.flat_ids = flat  # [E]
        self.shape = (C, N, width, height)
        columns = (means2d.reshape(-1, 2), conics.reshape(-1, 3), opacities.reshape(-1, 1))
        self.params = torch.cat([x.index_select(0, flat) for x in columns], dim=1).numpy()  # [E, 6]
        self.boxes = boxes.to(torch.int32).numpy()  # [E, 4]
        dtype = self.params.dtype
        self.consts = np.array([0.5, ALPHA_THRESHOLD, MAX_ALPHA, 0.0], dtype=dtype)
        self.coords = np.arange(max(width, height, 1), dtype=dtype)
        opacity = self.params[:, 5].astype(np.float64)
        self.log_levels = np.log(np.maximum(opacity / ALPHA_THRESHOLD, 1.0))  # [E] the largest sigma drawn
        self.tiles_x, self.tiles_y = math.ceil(width / tiles.TILE), math.ceil(height / tiles.TILE)
        cam_start = torch.searchsorted(camera, torch.arange(C + 1, device=camera.device)).numpy()
        self.offsets, self.ids = tiles.bin_tiles(self.boxes, cam_start, self.tiles_x, self.tiles_y)

    def kernel_args(self, colors: np.ndarray) -> tuple:
        C, N, width, height = self.shape
        return (
            self.params,
            colors,
            self.boxes,
            self.offsets,
            self.ids,
            width,
            height,
            self.tiles_x,
            self.tiles_y,
            self.consts,
            self.coords,
            self.log_levels,
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
) -> tuple[Tensor, Tensor]:
    """Alpha-composite projected Gaussians front to back: colours [C, H, W, D], alphas [C, H, W, 1].

    Differentiable w.r.t. means2d (in pixels), conics, opacities, colors and backgrounds; with absgrad,
    backward leaves the summed per-pixel absolute gradient of means2d in `means2d.absgrad` (as gsplat).
    """
    with torch.no_grad():
        tileset = TileSet(means2d, conics, opacities, depths, radii, width, height)
    if backgrounds is None:
        backgrounds = colors.new_zeros(depths.shape[0], colors.shape[-1])
    return _TileBlend.apply(means2d, conics, opacities, colors, backgrounds, tileset, absgrad)


def _entry_colors(colors: Tensor, flat_ids: Tensor) -> np.ndarray:
    C, N, D = colors.shape
    return colors.detach().reshape(C * N, D).index_select(0, flat_ids).numpy()  # [E, D]


def tile_ranges(offsets: np.ndarray, parts: int) -> list[tuple[int, int]]:
    """Split the tiles into at most `parts` consecutive ranges of about equal work (tile-list entries)."""
    n_tiles = offsets.shape[0] - 1
    if parts <= 1 or offsets[-1] == 0:
        return [(0, n_tiles)]
    targets = offsets[-1] * np.arange(1, parts) / parts
    cuts = np.searchsorted(offsets, targets).tolist()
    bounds = sorted({0, n_tiles, *[min(max(c, 0), n_tiles) for c in cuts]})
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _on_threads(kernel, ranges: list[tuple[int, int]]) -> list:
    """kernel(lo, hi) for each range: on one thread per range when there are several (the kernels release
    the GIL), else here."""
    if len(ranges) == 1:
        return [kernel(*ranges[0])]
    with ThreadPoolExecutor(len(ranges)) as pool:
        return list(pool.map(lambda r: kernel(*r), ranges))


def _forward_tiles(tileset: TileSet, entry_colors: np.ndarray) -> tuple[np.ndarray, ...]:
    import momentumgs.render.tiles as tiles

    C, N, width, height = tileset.shape
    image = np.zeros((C, height, width, entry_colors.shape[1]), dtype=entry_colors.dtype)
    final_t = np.ones((C, height, width), dtype=np.float64)
    last = np.full((C, height, width), -1, dtype=np.int32)
    args = tileset.kernel_args(entry_colors)
    ranges = tile_ranges(tileset.offsets, torch.get_num_threads())
    _on_threads(lambda lo, hi: tiles.forward(*args, lo, hi, image, final_t, last), ranges)
    return image, final_t, last


def _backward_tiles(tileset: TileSet, entry_colors: np.ndarray, extra: tuple) -> tuple[np.ndarray, ...]:
    import momentumgs.render.tiles as tiles

    args = (*tileset.kernel_args(entry_colors), *extra)
    ranges = tile_ranges(tileset.offsets, torch.get_num_threads())
    parts = _on_threads(lambda lo, hi: tiles.backward(*args, lo, hi), ranges)
    totals = parts[0]  # with one thread: exactly the kernel's sums
    for part in parts[1:]:
        totals = tuple(a + b for a, b in zip(totals, part, strict=True))
    return totals


class _TileBlend(torch.autograd.Function):
    """Front-to-back blending by the tile kernels; backward by the kernel, then the conic algebra."""

    @staticmethod
    def forward(ctx, means2d, conics, opacities, colors, backgrounds, tileset: TileSet, absgrad: bool):
        C, N, width, height = tileset.shape
        entry_colors = _entry_colors(colors, tileset.flat_ids)
        image, final_t64, last = _forward_tiles(tileset, entry_colors)
        image = torch.from_numpy(image)  # [C, H, W, D]
        final_t = torch.from_numpy(final_t64).to(colors.dtype)  # [C, H, W]
        image = image + final_t[..., None] * backgrounds[:, None, None, :]
        ctx.save_for_backward(conics, opacities, colors, backgrounds)
        ctx.tiles = (tileset, entry_colors, final_t, final_t64, last, absgrad, means2d)
        return image, (1.0 - final_t)[..., None]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, v_image, v_alphas):
        with phase("rasterize_backward"):
            conics, opacities, colors, backgrounds = ctx.saved_tensors
            tileset, entry_colors, final_t, final_t64, last, absgrad, means2d = ctx.tiles
            C, N, width, height = tileset.shape
            D = colors.shape[-1]
            v_image = v_image.contiguous()
            # what lies behind each pixel's last contributor: the background and the alpha output
            bg_dot_v = (v_image * backgrounds[:, None, None, :]).sum(-1)  # [C, H, W]
            tail = (final_t * (bg_dot_v - v_alphas[..., 0])).double().contiguous()
            extra = (final_t64, last, v_image.numpy(), tail.numpy(), absgrad)
            v_entry_colors, entry_moments, entry_abs = _backward_tiles(tileset, entry_colors, extra)
            flat = tileset.flat_ids
            dtype = colors.dtype
            moments = colors.new_zeros(C * N, 6).index_copy_(
                0, flat, torch.from_numpy(entry_moments).to(dtype)
            )
            v_colors = colors.new_zeros(C * N, D).index_copy_(
                0, flat, torch.from_numpy(v_entry_colors).to(dtype)
            )
            v_means2d, v_conics, v_opacities = moment_gradients(moments.T, conics, opacities)
            if absgrad:
                v_abs = colors.new_zeros(C * N, 2).index_copy_(0, flat, torch.from_numpy(entry_abs).to(dtype))
                means2d.absgrad = v_abs.reshape(C, N, 2)
            v_backgrounds = (v_image * final_t[..., None]).sum((1, 2))  # [C, D]
            return v_means2d, v_conics, v_opacities, v_colors.reshape(C, N, D), v_backgrounds, None, None
