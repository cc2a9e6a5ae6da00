"""Projection of 3D Gaussians to the image plane on the CPU, following gsplat 1.5.3's CUDA kernel.

The rules are those of gsplat's `projection_ewa_3dgs_fused_fwd_kernel` (csrc/ProjectionEWA3DGSFused.cu,
pinhole camera): covariance R S S^T R^T from the normalised quaternion, world -> camera, the EWA Jacobian at
the mean with x/z and y/z clamped to the frustum widened by 0.3 tan(fov), means2d = K [x y z] / z.
gsplat's torch reference `_fully_fused_projection` differs from that kernel in ways that change which
Gaussians are drawn, so the culling follows the kernel:

- kept while near_plane <= z <= far_plane (the torch reference drops z == near_plane);
- 2D covariance dilated by eps2d * I; culled if its determinant is <= 0 (the reference clamps it instead);
- opacity-aware extent (as gsplat passes the opacities to the kernel): culled if the opacity (times the
  antialiasing compensation) is below 1/255, otherwise extent = min(3.33, sqrt(2 ln(255 opacity)));
  the reference always uses 3.33;
- per-axis radius ceil(extent * sqrt(cov2d_ii)); culled if both radii are <= radius_clip (the reference
  ignores radius_clip) or if the box lies off the image.

The algebra is written per component on [C, N] tensors rather than with batched 3x3 matrix products (as
gsplat's torch helpers do): on the CPU, bmm/einsum over tens of thousands of 3x3 matrices and their backward
took about 8 % of a training step; the 2D covariance is (J R_cam M)(J R_cam M)^T with M = R S, computed as
one matrix product with the camera rotation and elementwise products.
"""

import torch
import torch.nn.functional as F
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
    C, N = viewmats.shape[0], means.shape[0]
    rotations = viewmats[:, :3, :3]  # [C, 3, 3]
    means_c = rotations @ means.T + viewmats[:, :3, 3:]  # [C, 3, N]
    # R_cam M with M = R S: row i of M as [3, N] blocks, all cameras in one matrix product
    factor = (rotations @ _rotation_scale(quats, scales).reshape(3, 3 * N)).reshape(C, 3, 3, N)
    depths = means_c[:, 2]  # [C, N]
    in_depth = (depths >= near_plane) & (depths <= far_plane)  # [C, N]

    # A point at or behind the camera would divide by ~0 and its inf/NaN would leak into the
    # gradients of the masked entries; project a harmless stand-in point (0, 0, 1) for those instead.
    x = torch.where(in_depth, means_c[:, 0], 0.0)  # [C, N]
    y = torch.where(in_depth, means_c[:, 1], 0.0)
    z = torch.where(in_depth, depths, 1.0)
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [C, 1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    means2d = torch.stack(  # K [x y z] / z
        [(fx * x + Ks[:, 0, 1, None] * y) / z + cx, (Ks[:, 1, 0, None] * x + fy * y) / z + cy], dim=-1
    )  # [C, N, 2]

    a, b, c = _covariance_2d(factor, x, y, z, Ks, width, height)
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
        kept = in_depth & has_det  # [C, N]
        radii = _radii(means2d.detach(), a.detach(), c.detach(), opac, kept, width, height, radius_clip)
    return radii, means2d, depths, conics, compensations


def _covariance_2d(
    factor: Tensor,  # [C, 3, 3, N] R_cam M
    x: Tensor,  # [C, N] camera coordinates of the means
    y: Tensor,
    z: Tensor,
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """The 2D covariance [[a, b], [b, c]] (before the eps2d dilation) through the EWA Jacobian rows
    (fx/z, 0, -fx tx/z^2) and (0, fy/z, -fy ty/z^2), tx/z, ty/z clamped to the frustum widened by
    0.3 tan(fov). -> a, b, c [C, N]"""
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [C, 1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    u = torch.clamp(x / z, min=-(cx / fx + 0.3 * tan_x), max=(width - cx) / fx + 0.3 * tan_x)
    v = torch.clamp(y / z, min=-(cy / fy + 0.3 * tan_y), max=(height - cy) / fy + 0.3 * tan_y)
    row_x = (fx / z)[:, None] * (factor[:, 0] - u[:, None] * factor[:, 2])  # [C, 3, N]
    row_y = (fy / z)[:, None] * (factor[:, 1] - v[:, None] * factor[:, 2])  # [C, 3, N]
    return (row_x * row_x).sum(1), (row_x * row_y).sum(1), (row_y * row_y).sum(1)


def _radii(
    means2d: Tensor,  # [C, N, 2]
    a: Tensor,  # [C, N] dilated 2D covariance diagonal
    c: Tensor,
    opacities: Tensor,  # [C, N] times the compensation where antialiased
    kept: Tensor,  # [C, N] bool: in the depth range, with a positive determinant
    width: int,
    height: int,
    radius_clip: float,
) -> Tensor:
    """Per-axis pixel radii [C, N, 2] int32, 0 where the Gaussian is culled: not kept, too faint, too small
    or off the image."""
    bright = opacities >= ALPHA_THRESHOLD
    ratio = torch.clamp(opacities / ALPHA_THRESHOLD, min=1.0)
    extent = torch.clamp(torch.sqrt(2.0 * torch.log(ratio)), max=MAX_EXTENT)  # [C, N]
    radius_x = torch.ceil(extent * torch.sqrt(a.clamp(min=0.0)))  # [C, N]
    radius_y = torch.ceil(extent * torch.sqrt(c.clamp(min=0.0)))  # [C, N]
    mx, my = means2d.unbind(-1)
    on_image = (mx + radius_x > 0) & (mx - radius_x < width) & (my + radius_y > 0) & (my - radius_y < height)
    big_enough = (radius_x > radius_clip) | (radius_y > radius_clip)
    valid = kept & bright & big_enough & on_image  # [C, N]
    return (torch.stack([radius_x, radius_y], dim=-1) * valid[..., None]).to(torch.int32)


def _rotation_scale(quats: Tensor, scales: Tensor) -> Tensor:
    """M = R(q) diag(s), the covariance factor (covariance = M M^T), as [3, 3, N] (row, column, Gaussian).

    gsplat's `_quat_scale_to_matrix` is the same formula in the [N, 3, 3] layout; permuting its result cost
    about 2 ms more per training step (forward + backward, 25k Gaussians, one core)."""
    w, x, y, z = F.normalize(quats, p=2, dim=-1).T  # [N] each
    sx, sy, sz = scales.T
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return torch.stack([torch.stack([r0 * sx, r1 * sy, r2 * sz]) for r0, r1, r2 in rows])  # [3, 3, N]
