"""Image metrics on [0, 1] images: PSNR, the 3DGS SSIM and the per-image colour correction of the paper's
evaluation.

Layout: every function takes images as float tensors [..., H, W, 3] (channel last, as the renderer produces
them; any leading batch dims) and returns one value per image, shape [...].

SSIM is the one of the 3DGS reference code (11x11 Gaussian window, sigma 1.5, zero padding of 5 pixels,
C1 = 0.01^2, C2 = 0.03^2, mean of the SSIM map over pixels and channels). It is differentiable and is also the
SSIM term of the training loss, so it runs as two 1D convolutions: the window is an outer product, and zero
padding is separable too, so this equals the 2D convolution up to float rounding.

LPIPS lives in lpips.py (it needs network weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2


def _check_pair(img: Tensor, gt: Tensor) -> None:
    if img.shape != gt.shape:
        raise ValueError(f"image shapes differ: {tuple(img.shape)} vs {tuple(gt.shape)}")
    if img.dim() < 3:
        raise ValueError(f"expected images [..., H, W, C], got shape {tuple(img.shape)}")


def mse(img: Tensor, gt: Tensor) -> Tensor:
    """Mean squared error per image. img, gt: [..., H, W, C] -> [...]."""
    _check_pair(img, gt)
    return (img - gt).square().mean(dim=(-3, -2, -1))


def psnr(img: Tensor, gt: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB per image, for images in [0, 1]. [..., H, W, C] -> [...].

    Average these per-image values over a test set (the usual protocol), not the MSE.
    """
    return -10.0 * torch.log10(mse(img, gt))


def gaussian_window_1d(
    size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, dtype=torch.float32, device=None
) -> Tensor:
    """Normalised 1D Gaussian taps centred on size // 2. -> [size]."""
    x = torch.arange(size, dtype=torch.float64, device=device) - size // 2
    g = torch.exp(-(x**2) / (2.0 * sigma**2))
    return (g / g.sum()).to(dtype)  # [size]


def _to_nchw(x: Tensor) -> Tensor:
    """[..., H, W, C] -> [N, C, H, W]."""
    h, w, c = x.shape[-3:]
    # contiguous: the grouped convolutions run faster on NCHW than on the channel-last strides of a view.
    return x.reshape(-1, h, w, c).permute(0, 3, 1, 2).contiguous()


def _blur_separable(x: Tensor, taps: Tensor) -> Tensor:
    """Per-channel Gaussian blur with zero padding, as two 1D convolutions. x: [N, K, H, W] -> same."""
    k = x.shape[1]
    r = taps.numel() // 2
    w_rows = taps.view(1, 1, -1, 1).expand(k, 1, -1, 1)  # [K, 1, size, 1]
    w_cols = taps.view(1, 1, 1, -1).expand(k, 1, 1, -1)  # [K, 1, 1, size]
    x = F.conv2d(x, w_rows, padding=(r, 0), groups=k)
    return F.conv2d(x, w_cols, padding=(0, r), groups=k)


def ssim_map(img: Tensor, gt: Tensor) -> Tensor:
    """Per-pixel, per-channel SSIM of the 3DGS reference. img, gt: [..., H, W, C] -> [..., H, W, C]."""
    _check_pair(img, gt)
    c = img.shape[-1]
    x, y = _to_nchw(img), _to_nchw(gt)  # [N, C, H, W]
    taps = gaussian_window_1d(dtype=img.dtype, device=img.device)
    # Moments blurred in two stacked calls rather than five: those that depend on the render, then those of
    # the ground truth alone, which in training needs no gradient (its blur is then left out of backward).
    mu_x, e_xx, e_xy = _blur_separable(torch.cat([x, x * x, x * y], dim=1), taps).split(c, dim=1)
    mu_y, e_yy = _blur_separable(torch.cat([y, y * y], dim=1), taps).split(c, dim=1)
    var_x = e_xx - mu_x * mu_x
    var_y = e_yy - mu_y * mu_y
    cov_xy = e_xy - mu_x * mu_y
    num = (2 * mu_x * mu_y + SSIM_C1) * (2 * cov_xy + SSIM_C2)
    den = (mu_x * mu_x + mu_y * mu_y + SSIM_C1) * (var_x + var_y + SSIM_C2)
    s = (num / den).permute(0, 2, 3, 1)  # [N, H, W, C]
    return s.reshape(img.shape)


def ssim(img: Tensor, gt: Tensor) -> Tensor:
    """SSIM per image (the 3DGS definition: mean of the map). [..., H, W, C] -> [...].

    Differentiable; the training loss uses 1 - ssim(render, gt).
    """
    return ssim_map(img, gt).mean(dim=(-3, -2, -1))


def _quadratic_features(rgb: Tensor) -> Tensor:
    """[P, C] -> [P, C(C+1)/2 + C + 1]: all products c_i * c_j (i <= j), the linear terms, and 1."""
    c = rgb.shape[-1]
    quad = [rgb[:, i : i + 1] * rgb[:, i:] for i in range(c)]
    return torch.cat([*quad, rgb, torch.ones_like(rgb[:, :1])], dim=-1)


def _color_correct_one(img: Tensor, gt: Tensor, num_iters: int, eps: float) -> Tensor:
    """img, gt: [P, C] float64 on the CPU -> corrected img [P, C]."""

    def unclipped(z: Tensor) -> Tensor:
        return (z >= eps) & (z <= 1.0 - eps)

    mask_in = unclipped(img)  # [P, C]
    mask_gt = unclipped(gt)  # [P, C]
    cur = img
    for _ in range(num_iters):
        feats = _quadratic_features(cur)  # [P, F]
        warp = []
        for c in range(img.shape[-1]):
            # Saturated pixels (in the render, the current estimate or the target) carry no information about
            # the colour map, so their rows are zeroed out of the least-squares system.
            keep = (mask_in[:, c] & unclipped(cur[:, c]) & mask_gt[:, c]).unsqueeze(-1)
            a = torch.where(keep, feats, 0.0)
            b = torch.where(keep, gt[:, c : c + 1], 0.0)
            warp.append(torch.linalg.lstsq(a, b, driver="gelsd").solution)  # [F, 1]
        cur = (feats @ torch.cat(warp, dim=-1)).clamp(0.0, 1.0)  # [P, C]
    return cur


def color_correct(img: Tensor, gt: Tensor, num_iters: int = 5, eps: float = 0.5 / 255) -> Tensor:
    """Map each image's colours to its ground truth by least squares, as in the paper's evaluation.

    The "colour-corrected" metrics of Momentum-GS (and DOGS before it) use the colour correction of
    multinerf (google-research/multinerf, internal/image.py, Apache-2.0), which we follow: per image and
    per output channel, fit the target channel as a linear function of the quadratic expansion of the
    render's RGB, [r^2, rg, rb, g^2, gb, b^2, r, g, b, 1] (10 terms), ignoring pixels that are saturated
    (outside [eps, 1 - eps]) in the render, the current estimate or the target; apply, clip to [0, 1], and
    repeat `num_iters` times on the result, because the set of saturated pixels changes with the map.

    img, gt: [..., H, W, C] in [0, 1] -> [..., H, W, C] in [0, 1]. Not differentiable (evaluation only); the
    solve runs in float64 on the CPU, the result comes back in img's dtype and device.
    """
    _check_pair(img, gt)
    h, w, c = img.shape[-3:]
    flat_img = img.detach().reshape(-1, h * w, c).to("cpu", torch.float64)  # [N, P, C]
    flat_gt = gt.detach().reshape(-1, h * w, c).to("cpu", torch.float64)  # [N, P, C]
    out = [_color_correct_one(a, b, num_iters, eps) for a, b in zip(flat_img, flat_gt, strict=True)]
    return torch.stack(out).reshape(img.shape).to(img.device, img.dtype)
