"""View-frustum prefilter: which anchors a camera can see, before decoding (docs/method.md, Representation).

Scaffold-GS / Momentum-GS `prefilter_voxel` rasterise each anchor as a Gaussian of scale
exp(l[0:3]) and keep those with a non-zero screen radius. We test the anchor centre directly:
in front of the near plane and projecting inside the image widened by a margin, where the margin
can include each anchor's own reach (`anchor_radii`), so no neural Gaussian that could touch the
image is dropped.
"""

from __future__ import annotations

import numpy as np
import torch


def anchor_radii(offsets: torch.Tensor, log_scales: torch.Tensor, n_sigma: float = 3.0) -> torch.Tensor:
    """World-space radius of the ball holding every neural Gaussian of an anchor out to `n_sigma`:
    max_k |O_k * exp(l[0:3])| + n_sigma * max(exp(l[3:6])) (the decoded scale is exp(l[3:6]) times
    a sigmoid < 1). [N, K, 3], [N, 6] -> [N]"""
    reach = (offsets * torch.exp(log_scales[:, None, :3])).norm(dim=-1).amax(dim=1)  # [N]
    return reach + n_sigma * torch.exp(log_scales[:, 3:]).amax(dim=1)


def visible_anchor_mask(
    positions: torch.Tensor,
    viewmat: torch.Tensor | np.ndarray,
    K: torch.Tensor | np.ndarray,
    width: int,
    height: int,
    margin: float = 0.0,
    radii: torch.Tensor | None = None,
    near: float = 0.2,
) -> torch.Tensor:
    """Anchors [N, 3] in front of `near` (camera z, OpenCV axes, `viewmat` world->camera [4, 4])
    whose projection with K [3, 3] lies within the image widened by `margin` pixels plus, when
    `radii` [N] (world units) is given, a bound on the projection of each anchor's ball. -> [N] bool"""
    viewmat = torch.as_tensor(viewmat, dtype=positions.dtype, device=positions.device)
    K = torch.as_tensor(K, dtype=positions.dtype, device=positions.device)
    cam = positions @ viewmat[:3, :3].T + viewmat[:3, 3]  # [N, 3]
    z = cam[:, 2]
    in_front = z > near
    z_safe = torch.where(in_front, z, torch.ones_like(z))
    u = K[0, 0] * cam[:, 0] / z_safe + K[0, 1] * cam[:, 1] / z_safe + K[0, 2]  # [N]
    v = K[1, 1] * cam[:, 1] / z_safe + K[1, 2]  # [N]
    pad_u = torch.full_like(z, float(margin))
    pad_v = torch.full_like(z, float(margin))
    if radii is not None:
        # For p' within r of p: |x'/z' - x/z| <= r (z + |x|) / (z (z - r)), a bound that also holds
        # off-axis; z - r is floored at the near plane (a ball reaching the camera is kept).
        denom = z_safe * torch.clamp(z_safe - radii, min=near)  # [N]
        pad_u = pad_u + K[0, 0].abs() * radii * (z_safe + cam[:, 0].abs()) / denom
        pad_v = pad_v + K[1, 1].abs() * radii * (z_safe + cam[:, 1].abs()) / denom
    inside_u = (u > -pad_u) & (u < width + pad_u)
    inside_v = (v > -pad_v) & (v < height + pad_v)
    return in_front & inside_u & inside_v
