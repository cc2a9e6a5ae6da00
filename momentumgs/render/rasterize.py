"""One rasterization entry with gsplat 1.5.3's signature: CUDA tensors go to gsplat, CPU tensors to ours.

On the CPU, gsplat's CUDA wrappers must never be called (each call tries a JIT build and fails), so the
CPU path is our projection (momentumgs.render.projection) and compositor (compiled:
momentumgs.render.compiled; the torch reference momentumgs.render.cpu with MOMENTUMGS_RASTERIZER=torch),
glued as `gsplat.rasterization` glues its kernels, with the same return values and meta keys.
"""

from typing import Any

import torch
from torch import Tensor

from momentumgs.render.compiled import composite as composite_tiles
from momentumgs.render.compiled import cpu_backend
from momentumgs.render.cpu import DEFAULT_PAIR_BUDGET, composite
from momentumgs.render.projection import project_gaussians

RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")
# gsplat options the CPU path accepts and ignores: they only tune gsplat's tiling and channel chunking.
_CPU_IGNORED_OPTIONS = ("tile_size", "channel_chunk", "segmented")
# gsplat options the CPU path accepts only at their default value.
_CPU_DEFAULT_ONLY = {
    "sh_degree": None,
    "sparse_grad": False,
    "distributed": False,
    "camera_model": "pinhole",
    "covars": None,
    "with_ut": False,
    "with_eval3d": False,
    "radial_coeffs": None,
    "tangential_coeffs": None,
    "thin_prism_coeffs": None,
    "ftheta_coeffs": None,
    "viewmats_rs": None,
}


def rasterize(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4] wxyz, need not be normalised
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [C, N, D] or [N, D], post-activation
    viewmats: Tensor,  # [C, 4, 4] world -> camera (OpenCV axes)
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    near_plane: float = 0.2,
    far_plane: float = 1e10,
    backgrounds: Tensor | None = None,  # [C, D]
    eps2d: float = 0.3,
    radius_clip: float = 0.0,
    absgrad: bool = False,
    packed: bool = False,
    render_mode: str = "RGB",
    rasterize_mode: str = "classic",
    **kwargs: Any,
) -> tuple[Tensor, Tensor, dict]:
    """Render C views of N Gaussians: colours [C, H, W, X], alphas [C, H, W, 1] and gsplat's meta dict.

    X is D for "RGB", 1 for "D"/"ED", D + 1 for "RGB+D"/"RGB+ED" (depth last). meta["means2d"] [C, N, 2]
    keeps its gradient after backward (in pixels), meta["radii"] is [C, N, 2] int32 (0 where culled).
    On the CPU, gsplat options that only tune its kernels are ignored, options for other camera models,
    SH colours, packing or distribution are refused, and `pair_budget` (kwarg) bounds the torch
    reference's memory: the number of (Gaussian, pixel) pairs handled at once (the compiled compositor
    holds no pairs and ignores it).
    """
    options = dict(
        near_plane=near_plane,
        far_plane=far_plane,
        backgrounds=backgrounds,
        eps2d=eps2d,
        radius_clip=radius_clip,
        absgrad=absgrad,
        packed=packed,
        render_mode=render_mode,
        rasterize_mode=rasterize_mode,
    )
    gaussians = (means, quats, scales, opacities, colors, viewmats, Ks, width, height)
    if means.is_cuda:
        return _rasterize_gsplat(*gaussians, **options, **kwargs)
    _check_cpu_options(packed, render_mode, rasterize_mode, kwargs)
    return _rasterize_cpu(*gaussians, **options, pair_budget=kwargs.get("pair_budget", DEFAULT_PAIR_BUDGET))


def _rasterize_gsplat(
    means, quats, scales, opacities, colors, viewmats, Ks, width, height, **options
) -> tuple[Tensor, Tensor, dict]:
    import gsplat  # imported here: CPU-only callers never touch gsplat's CUDA side

    options.pop("pair_budget", None)
    options.setdefault("sh_degree", None)
    render_colors, render_alphas, meta = gsplat.rasterization(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height, **options
    )
    if meta["means2d"].requires_grad:
        meta["means2d"].retain_grad()
    return render_colors, render_alphas, meta


def _check_cpu_options(packed: bool, render_mode: str, rasterize_mode: str, kwargs: dict) -> None:
    if packed:
        raise ValueError("packed=True is not supported on the CPU; use packed=False")
    if render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode must be one of {RENDER_MODES}, got {render_mode!r}")
    if rasterize_mode not in ("classic", "antialiased"):
        raise ValueError(f"rasterize_mode must be 'classic' or 'antialiased', got {rasterize_mode!r}")
    for name, value in kwargs.items():
        if name in _CPU_IGNORED_OPTIONS or name == "pair_budget":
            continue
        if name == "rolling_shutter":
            if getattr(value, "name", "GLOBAL") != "GLOBAL":
                raise ValueError("rolling shutter is not supported on the CPU")
            continue
        if name not in _CPU_DEFAULT_ONLY:
            raise TypeError(f"rasterize() got an unexpected keyword argument {name!r}")
        if value is not _CPU_DEFAULT_ONLY[name] and value != _CPU_DEFAULT_ONLY[name]:
            raise ValueError(
                f"{name}={value!r} is not supported on the CPU (only {_CPU_DEFAULT_ONLY[name]!r})"
            )


def _rasterize_cpu(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [C, N, D] or [N, D]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    *,
    near_plane: float,
    far_plane: float,
    backgrounds: Tensor | None,  # [C, D]
    eps2d: float,
    radius_clip: float,
    absgrad: bool,
    packed: bool,
    render_mode: str,
    rasterize_mode: str,
    pair_budget: int,
) -> tuple[Tensor, Tensor, dict]:
    """`rasterize` on the CPU: project, append the depth channel the render mode asks for, composite."""
    _check_shapes(means, quats, scales, opacities, colors, viewmats, Ks)
    C, N = viewmats.shape[0], means.shape[0]
    radii, means2d, depths, conics, compensations = project_gaussians(
        means,
        quats,
        scales,
        opacities,
        viewmats,
        Ks,
        width,
        height,
        eps2d=eps2d,
        near_plane=near_plane,
        far_plane=far_plane,
        radius_clip=radius_clip,
        calc_compensations=rasterize_mode == "antialiased",
    )
    if means2d.requires_grad:
        means2d.retain_grad()  # the trainer reads meta["means2d"].grad for densification
    view_opacities = opacities[None, :].expand(C, N)  # [C, N]
    if compensations is not None:
        view_opacities = view_opacities * compensations

    colors, backgrounds = _render_channels(colors, depths, backgrounds, render_mode)
    projected = (means2d, conics, view_opacities, colors, depths, radii, width, height)
    if cpu_backend() == "numba":
        render_colors, render_alphas = composite_tiles(*projected, backgrounds=backgrounds, absgrad=absgrad)
    else:
        render_colors, render_alphas = composite(
            *projected, backgrounds=backgrounds, absgrad=absgrad, pair_budget=pair_budget
        )
    if render_mode in ("ED", "RGB+ED"):
        expected_depth = render_colors[..., -1:] / render_alphas.clamp(min=1e-10)
        render_colors = torch.cat([render_colors[..., :-1], expected_depth], dim=-1)
    meta = _cpu_meta(radii, means2d, depths, conics, view_opacities, width, height)
    return render_colors, render_alphas, meta


def _check_shapes(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
) -> None:
    N = means.shape[0]
    C = viewmats.shape[0]
    if means.shape != (N, 3) or quats.shape != (N, 4) or scales.shape != (N, 3) or opacities.shape != (N,):
        raise ValueError(
            "expected means [N, 3], quats [N, 4], scales [N, 3], opacities [N] (no batch dimensions), got "
            f"{tuple(means.shape)}, {tuple(quats.shape)}, {tuple(scales.shape)}, {tuple(opacities.shape)}"
        )
    if viewmats.shape != (C, 4, 4) or Ks.shape != (C, 3, 3):
        raise ValueError(
            f"expected viewmats [C, 4, 4] and Ks [C, 3, 3], got {tuple(viewmats.shape)}, {tuple(Ks.shape)}"
        )
    if colors.shape[:-1] not in ((N,), (C, N)) or colors.dim() not in (2, 3):
        raise ValueError(f"expected colors [C, N, D] or [N, D] with N={N}, C={C}, got {tuple(colors.shape)}")


def _render_channels(
    colors: Tensor,  # [C, N, D] or [N, D]
    depths: Tensor,  # [C, N]
    backgrounds: Tensor | None,  # [C, D]
    render_mode: str,
) -> tuple[Tensor, Tensor | None]:
    """The channels to composite for `render_mode` and their backgrounds: the colours, the depth (a zero
    background) or both, depth last. -> [C, N, X], [C, X] or None"""
    C, N = depths.shape
    if colors.dim() == 2:
        colors = colors[None].expand(C, N, colors.shape[-1])  # [C, N, D]
    if render_mode in ("RGB+D", "RGB+ED"):
        colors = torch.cat([colors, depths[..., None]], dim=-1)
        if backgrounds is not None:
            backgrounds = torch.cat([backgrounds, backgrounds.new_zeros(C, 1)], dim=-1)
    elif render_mode in ("D", "ED"):
        colors = depths[..., None]
        if backgrounds is not None:
            backgrounds = backgrounds.new_zeros(C, 1)
    return colors, backgrounds


def _cpu_meta(
    radii: Tensor, means2d: Tensor, depths: Tensor, conics: Tensor, opacities: Tensor, width: int, height: int
) -> dict:
    """gsplat's meta dict for an unpacked render; the CPU compositors keep none of its tile bookkeeping."""
    return {
        "batch_ids": None,
        "camera_ids": None,
        "gaussian_ids": None,
        "radii": radii,
        "means2d": means2d,
        "depths": depths,
        "conics": conics,
        "opacities": opacities,
        "tile_width": None,
        "tile_height": None,
        "tiles_per_gauss": None,
        "isect_ids": None,
        "flatten_ids": None,
        "isect_offsets": None,
        "width": width,
        "height": height,
        "tile_size": None,
        "n_batches": 1,
        "n_cameras": depths.shape[0],
    }
