"""Real spherical harmonics in the 3DGS convention: colour = 0.5 + sum_j sh_j * Y_j(dir), dir = mean - camera
centre, clamped at 0 (INRIA 3DGS `eval_sh` + `SH2RGB`, gsplat's `spherical_harmonics`). The basis is gsplat's
own pure-torch one, so a baked model renders here exactly as gsplat and the INRIA viewers render it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from gsplat.cuda._torch_impl import _eval_sh_bases_fast

SH_C0 = 0.28209479177387814  # Y_0^0
MAX_SH_DEGREE = 3  # the INRIA PLY layout and the viewers stop at degree 3


def n_coeffs(degree: int) -> int:
    return (degree + 1) ** 2


def degree_for_coeffs(count: int) -> int:
    """Inverse of n_coeffs; ValueError for a count that is not (d + 1)^2."""
    degree = round(count**0.5) - 1
    if degree < 0 or n_coeffs(degree) != count:
        raise ValueError(f"{count} SH coefficients is not (d + 1)^2 for any degree d")
    return degree


def sh_bases(directions: torch.Tensor, degree: int) -> torch.Tensor:
    """SH basis functions at the (not necessarily unit) directions. [..., 3] -> [..., (degree + 1)^2]"""
    return _eval_sh_bases_fast(n_coeffs(degree), F.normalize(directions, dim=-1))


def eval_sh_colors(sh: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """RGB of each Gaussian seen along its direction: max(0.5 + sum_j sh_j Y_j(dir), 0).
    sh [M, B, 3], directions [M, 3] -> [M, 3]"""
    bases = sh_bases(directions, degree_for_coeffs(sh.shape[1]))  # [M, B]
    return (0.5 + torch.einsum("mb,mbc->mc", bases, sh)).clamp_min(0.0)


def fit_sh(
    bases: torch.Tensor,  # [S, V, B] basis values of each sample's direction
    targets: torch.Tensor,  # [S, V, 3] colours to reproduce
    weights: torch.Tensor,  # [S, V] >= 0
    ridge: float = 1e-2,
) -> torch.Tensor:
    """Weighted least-squares SH coefficients of S independent Gaussians, each from V samples: minimise
    sum_v w_v |0.5 + Y(dir_v) . sh - c_v|^2 + ridge * W * |sh_rest|^2 with W = sum_v w_v. The ridge keeps
    the higher bands small where the directions do not pin them down (few or clustered views), so the colour
    tends to the DC term away from the observed directions. -> [S, B, 3]"""
    s, _, b = bases.shape
    wb = bases * weights[..., None]  # [S, V, B]
    normal = wb.transpose(1, 2) @ bases  # [S, B, B]
    rhs = wb.transpose(1, 2) @ (targets - 0.5)  # [S, B, 3]
    total = weights.sum(dim=1).clamp_min(1e-12)  # [S]
    diag = torch.full((b,), ridge, dtype=bases.dtype, device=bases.device)
    diag[0] = 1e-6  # the DC term is always determined; a tiny ridge only guards W = 0
    normal = normal + torch.diag_embed(diag * total[:, None] * SH_C0**2)  # [S, B, B]
    return torch.linalg.solve(normal, rhs)
