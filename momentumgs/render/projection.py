"""Projection of 3D Gaussians to the image plane on the CPU, following gsplat 1.5.3's CUDA kernel.

The rules are those of gsplat's `projection_ewa_3dgs_fused_fwd_kernel` (csrc/ProjectionEWA3DGSFused.cu,
pinhole camera). gsplat's torch reference `_fully_fused_projection` differs from that kernel in ways that
change which Gaussians are drawn, so only its building blocks are reused here
(`_quat_scale_to_covar_preci`, `_world_to_cam`, `_persp_proj`: world->camera, Jacobian clamped to the
frustum widened by 0.3 tan(fov)) and the culling follows the kernel:

- kept while near_plane <= z <= far_plane (the torch reference drops z == near_plane);
- 2D covariance dilated by eps2d * I; culled if its determinant is <= 0 (the reference clamps it instead);
- opacity-aware extent (as gsplat passes the opacities to the kernel): culled if the opacity (times the
  antialiasing compensation) is below 1/255, otherwise extent = min(3.33, sqrt(2 ln(255 opacity)));
  the reference always uses 3.33;
- per-axis radius ceil(extent * sqrt(cov2d_ii)); culled if both radii are <= radius_clip (the reference
  ignores radius_clip) or if the box lies off the image.
"""

import torch
from gsplat.cuda._torch_impl import _persp_proj, _quat_scale_to_covar_preci, _world_to_cam
from torch import Tensor

ALPHA_THRESHOLD = 1.0 / 255.0  # gsplat's ALPHA_THRESHOLD: dimmer fragments are skipped
MAX_EXTENT = 3.33  # sigmas; exp(-3.33^2 / 2) is about 1/255


def project_gaussians(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4] wxyz, need not be normalised
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    viewmats: Tensor,  # [C, 4, 4] world -> camera
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.2,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    calc_compensations: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """Returns radii [C, N, 2] int32 (0 where culled), means2d [C, N, 2], depths [C, N],
    conics [C, N, 3] (upper triangle of the inverse 2D covariance) and compensations [C, N] or None.

    Differentiable w.r.t. means, quats and scales (radii are discrete). Culled entries hold finite
    values, so the zero gradient they receive stays finite.
    """
    covars, _ = _quat_scale_to_covar_preci(
        quats, scales, compute_covar=True, compute_preci=False
    )  # [N, 3, 3]
    means_c, covars_c = _world_to_cam(means, covars, viewmats)  # [C, N, 3], [C, N, 3, 3]
    depths = means_c[..., 2]  # [C, N]
    in_depth = (depths >= near_plane) & (depths <= far_plane)  # [C, N]

    # A point at or behind the camera would divide by ~0 and its inf/NaN would leak into the
    # gradients of the masked entries; project a harmless stand-in point for those instead.
    stand_in = torch.zeros_like(means_c)
    stand_in[..., 2] = 1.0
    means_c = torch.where(in_depth[..., None], means_c, stand_in)  # [C, N, 3]
    means2d, covars2d = _persp_proj(means_c, covars_c, Ks, width, height)  # [C, N, 2], [C, N, 2, 2]

    a = covars2d[..., 0, 0]
    b = 0.5 * (covars2d[..., 0, 1] + covars2d[..., 1, 0])
    c = covars2d[..., 1, 1]
    det_orig = a * c - b * b  # [C, N]
    a = a + eps2d
    c = c + eps2d
    det = a * c - b * b  # [C, N]
    has_det = det > 0
    det_safe = torch.where(has_det, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)  # [C, N, 3]

    compensations = None
    if calc_compensations:
        compensations = torch.sqrt(torch.clamp(det_orig / det_safe, min=0.0))  # [C, N]

    with torch.no_grad():
        opac = opacities.detach()[None, :].expand_as(depths)  # [C, N]
        if compensations is not None:
            opac = opac * compensations.detach()
        bright = opac >= ALPHA_THRESHOLD
        ratio = torch.clamp(opac / ALPHA_THRESHOLD, min=1.0)
        extent = torch.clamp(torch.sqrt(2.0 * torch.log(ratio)), max=MAX_EXTENT)  # [C, N]
        radius_x = torch.ceil(extent * torch.sqrt(a.detach().clamp(min=0.0)))  # [C, N]
        radius_y = torch.ceil(extent * torch.sqrt(c.detach().clamp(min=0.0)))  # [C, N]
        mx, my = means2d.detach().unbind(-1)
        on_image = (
            (mx + radius_x > 0) & (mx - radius_x < width) & (my + radius_y > 0) & (my - radius_y < height)
        )
        big_enough = (radius_x > radius_clip) | (radius_y > radius_clip)
        valid = in_depth & has_det & bright & big_enough & on_image  # [C, N]
        radii = torch.stack([radius_x, radius_y], dim=-1) * valid[..., None]
        radii = radii.to(torch.int32)  # [C, N, 2]
    return radii, means2d, depths, conics, compensations
