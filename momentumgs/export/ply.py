"""PLY in the INRIA 3DGS layout (Kerbl et al. 2023, `GaussianModel.save_ply`), the file SIBR, SuperSplat,
PlayCanvas splat-transform, nerfstudio and most other 3DGS tools open.

One `vertex` element of float32 properties, in this order:
    x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 f_rest_0 .. f_rest_{3 (B - 1) - 1} opacity scale_0 scale_1 scale_2
    rot_0 rot_1 rot_2 rot_3
with B = (degree + 1)^2 SH coefficients, normals zero, opacity as a logit, scales as logs, the quaternion
(w, x, y, z) and f_rest channel-major: all R coefficients 1..B-1, then all G, then all B (the INRIA code
stores features_rest as [M, 3, B - 1] flattened). gsplat's `export_splats` leaves the normals out, which
the SIBR viewer needs, so the file is written here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from plyfile import PlyData, PlyElement

from momentumgs.errors import UserError
from momentumgs.export.gaussians import BakedGaussians
from momentumgs.export.sh import MAX_SH_DEGREE, n_coeffs
from momentumgs.io_utils import atomic_path

_OPACITY_EPS = 1e-6  # keeps the logit finite for opacities of exactly 0 or 1


def ply_property_names(sh_degree: int) -> list[str]:
    """The INRIA property order for SH degree `sh_degree`."""
    n_rest = 3 * (n_coeffs(sh_degree) - 1)
    return [
        *("x", "y", "z", "nx", "ny", "nz"),
        *(f"f_dc_{i}" for i in range(3)),
        *(f"f_rest_{i}" for i in range(n_rest)),
        "opacity",
        *(f"scale_{i}" for i in range(3)),
        *(f"rot_{i}" for i in range(4)),
    ]


def _logit(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(_OPACITY_EPS, 1.0 - _OPACITY_EPS)
    return torch.log(p) - torch.log1p(-p)


def ply_columns(g: BakedGaussians) -> np.ndarray:
    """The Gaussians as the INRIA PLY's columns. -> [M, P] float32, P = len(ply_property_names(degree))"""
    m = g.count
    sh = g.sh.detach().float().cpu()
    columns = [
        g.means.detach().float().cpu(),  # [M, 3]
        torch.zeros(m, 3),  # normals
        sh[:, 0, :],  # [M, 3] f_dc
        sh[:, 1:, :].transpose(1, 2).reshape(m, -1),  # [M, 3 (B - 1)] channel-major f_rest
        _logit(g.opacities.detach().float().cpu())[:, None],  # [M, 1]
        torch.log(g.scales.detach().float().cpu().clamp_min(1e-30)),  # [M, 3]
        g.quats.detach().float().cpu(),  # [M, 4] wxyz
    ]
    return torch.cat(columns, dim=1).numpy().astype(np.float32)


def write_ply(path: str | Path, g: BakedGaussians) -> Path:
    """Write `g` as an INRIA 3DGS PLY (binary little endian), atomically. -> the path"""
    if g.sh_degree > MAX_SH_DEGREE:
        raise ValueError(f"the INRIA PLY layout stops at SH degree {MAX_SH_DEGREE}, got {g.sh_degree}")
    names = ply_property_names(g.sh_degree)
    values = ply_columns(g)
    if not np.isfinite(values).all():
        raise ValueError("refusing to write non-finite Gaussian parameters")
    vertices = np.empty(g.count, dtype=[(name, "<f4") for name in names])
    for i, name in enumerate(names):
        vertices[name] = values[:, i]
    ply = PlyData([PlyElement.describe(vertices, "vertex")], text=False, byte_order="<")
    path = Path(path)
    with atomic_path(path) as tmp:
        ply.write(str(tmp))
    return path


def read_ply(path: str | Path) -> BakedGaussians:
    """Read a 3DGS PLY (INRIA layout; normals optional, SH degree 0..3 from the f_rest count), checking
    property names, counts and finite values. A malformed file raises a one-line UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such PLY file")
    try:
        ply = PlyData.read(str(path))
    except Exception as exc:  # plyfile raises several types for a damaged header or body
        raise UserError(f"{path}: not a readable PLY file ({_one_line(exc)})") from None
    if "vertex" not in [e.name for e in ply.elements]:
        raise UserError(f"{path}: no 'vertex' element (not a 3DGS PLY)")
    vertex = ply["vertex"]
    names = [p.name for p in vertex.properties]
    n_rest = sum(1 for n in names if n.startswith("f_rest_"))
    degree = next((d for d in range(MAX_SH_DEGREE + 1) if 3 * (n_coeffs(d) - 1) == n_rest), None)
    if degree is None:
        raise UserError(f"{path}: {n_rest} f_rest properties; a 3DGS PLY has 0, 9, 24 or 45")
    required = [n for n in ply_property_names(degree) if n not in ("nx", "ny", "nz")]
    missing = [n for n in required if n not in names]
    if missing:
        raise UserError(f"{path}: missing propert{'y' if len(missing) == 1 else 'ies'} {', '.join(missing)}")
    m = vertex.count
    if m == 0:
        raise UserError(f"{path}: holds no Gaussians")
    try:
        data = {n: np.asarray(vertex[n], dtype=np.float64) for n in required}
    except Exception as exc:
        raise UserError(f"{path}: unreadable vertex data ({_one_line(exc)})") from None
    for name in required:
        if data[name].shape != (m,):
            raise UserError(f"{path}: property {name} has {data[name].shape[0]} values for {m} vertices")
        bad = ~np.isfinite(data[name])
        if bad.any():
            raise UserError(f"{path}: {int(bad.sum())} non-finite value(s) in property {name}")
    return _from_columns(path, data, degree)


def _from_columns(path: Path, data: dict[str, np.ndarray], degree: int) -> BakedGaussians:
    def stack(names: list[str]) -> torch.Tensor:
        return torch.from_numpy(np.stack([data[n] for n in names], axis=1)).float()

    m, b = data["x"].shape[0], n_coeffs(degree)
    quats = stack([f"rot_{i}" for i in range(4)])
    norms = quats.norm(dim=1)
    if (norms == 0).any():
        raise UserError(f"{path}: {int((norms == 0).sum())} Gaussian(s) with a zero quaternion")
    log_scales = stack([f"scale_{i}" for i in range(3)])
    if (log_scales > 80).any():  # exp overflows float32: a broken or foreign file, not a Gaussian
        raise UserError(f"{path}: log-scales above 80 (not a 3DGS PLY with log scales?)")
    dc = stack([f"f_dc_{i}" for i in range(3)])  # [M, 3]
    rest = torch.zeros(m, 0, 3)
    if b > 1:
        rest = stack([f"f_rest_{i}" for i in range(3 * (b - 1))]).reshape(m, 3, b - 1).transpose(1, 2)
    return BakedGaussians(
        means=stack(["x", "y", "z"]),
        quats=quats / norms[:, None],
        scales=torch.exp(log_scales),
        opacities=torch.sigmoid(torch.from_numpy(data["opacity"]).float()),
        sh=torch.cat([dc[:, None, :], rest], dim=1),
        info={"source": str(path)},
    )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] or type(exc).__name__
