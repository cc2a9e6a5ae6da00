"""Baked Gaussians for the viewer: read from a PLY, or baked from the anchor model, and sent to the
browser's own splat renderer (which needs no GPU on the server). Uses the exporter (momentumgs.export);
without it these features report themselves unavailable."""

from __future__ import annotations

import importlib.util

import numpy as np
import torch

from momentumgs.errors import UserError

from .models import BACKGROUND, is_baked

BROWSER_SH_DEGREE = 0  # viser's splat renderer takes one RGB per Gaussian


def export_available() -> bool:
    return importlib.util.find_spec("momentumgs.export") is not None and all(
        importlib.util.find_spec(f"momentumgs.export.{m}") is not None for m in ("bake", "ply", "gaussians")
    )


def _require_export(what: str) -> None:
    if not export_available():
        raise UserError(f"{what} needs the exporter (momentumgs.export), which this installation lacks")


def read_baked(path) -> object:
    """The BakedGaussians of a 3DGS PLY file."""
    _require_export(f"{path}: viewing a PLY file")
    from momentumgs.export.ply import read_ply

    return read_ply(path)


def bake_for_browser(model, cameras, appearance: int | None = None) -> object:
    """BakedGaussians of an AnchorModel with view-averaged colour (SH degree 0), in the appearance of
    training photo row `appearance` (None: the neutral one)."""
    _require_export("browser splats")
    from momentumgs.export.bake import bake

    return bake(model, cameras or None, sh_degree=BROWSER_SH_DEGREE, n_directions=16, appearance=appearance)


def backdrop_image() -> np.ndarray:
    """A plain image of the renderer's background colour, to show behind the browser's splats: viser's
    canvas is transparent over the page's white, while the models are trained (and the server renders) over
    black and keep dim, faint Gaussians for dark surfaces, which over white come out as large pale blobs.
    viser stretches the background image over the view, so a few pixels do. -> uint8 [8, 8, 3]"""
    rgb = np.round(np.asarray(BACKGROUND) * 255).astype(np.uint8)  # [3]
    return np.broadcast_to(rgb, (8, 8, 3)).copy()


def browser_note(content) -> str:
    """What the browser's splats leave out of `content` (an AnchorModel or BakedGaussians), for the
    control panel: viser takes one RGB per Gaussian, so no view-dependent colour."""
    if not is_baked(content):
        return (
            "Browser splats: the model baked with one colour per Gaussian (viser's splat renderer has no "
            "spherical harmonics), averaged over the training views: no view-dependent colour."
        )
    if content.sh_degree > BROWSER_SH_DEGREE:
        return (
            f"Browser splats: SH degree {content.sh_degree} shown as its DC term alone (viser's splat "
            "renderer takes one colour per Gaussian): no view-dependent colour."
        )
    return "Browser splats: one colour per Gaussian (SH degree 0), as in the file."


def browser_splat_arrays(g) -> dict[str, np.ndarray]:
    """viser's add_gaussian_splats arguments: centres, covariances R S^2 R^T, RGB (the SH DC term)
    and opacities, in the conventions of viser's splat shader: world coordinates, linear scales,
    colour and opacity in [0, 1] (no sRGB step)."""
    from momentumgs.export.sh import eval_sh_colors

    with torch.no_grad():
        q = torch.nn.functional.normalize(g.quats.float(), dim=1)
        w, x, y, z = q.unbind(1)
        R = torch.stack(
            [
                1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
            ],
            dim=1,
        ).reshape(-1, 3, 3)  # fmt: skip
        S2 = g.scales.float() ** 2
        cov = (R * S2[:, None, :]) @ R.transpose(1, 2)
        dc_only = g.sh[:, :1].float()
        rgb = eval_sh_colors(dc_only, torch.ones_like(g.means)).clamp(0, 1)
    return {
        "centers": g.means.float().cpu().numpy(),
        "covariances": cov.cpu().numpy(),
        "rgbs": rgb.cpu().numpy(),
        "opacities": g.opacities.float().cpu().numpy()[:, None],
    }
