"""PSNR, SSIM and colour correction against closed forms, an independent 2D-convolution SSIM and skimage."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data, transform
from skimage.metrics import structural_similarity

from momentumgs.metrics import color_correct, psnr, ssim, ssim_map


def _photo(h: int = 48, w: int = 72) -> np.ndarray:
    """A real photo from scikit-image, downsized, float64 in [0, 1]. [H, W, 3]."""
    return transform.resize(data.chelsea(), (h, w), anti_aliasing=True)


def _ssim_map_direct(img: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """The 3DGS reference SSIM written out directly: one 11x11 2D window, conv2d with padding 5 per channel.

    img, gt: [N, C, H, W] -> map [N, C, H, W].
    """
    c = img.shape[1]
    x = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-(x**2) / (2 * 1.5**2))
    g = g / g.sum()
    window = (g[:, None] @ g[None, :]).to(img.dtype).expand(c, 1, 11, 11)  # [C, 1, 11, 11]

    def blur(z):
        return F.conv2d(z, window, padding=5, groups=c)

    mu1, mu2 = blur(img), blur(gt)
    s11 = blur(img * img) - mu1**2
    s22 = blur(gt * gt) - mu2**2
    s12 = blur(img * gt) - mu1 * mu2
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s11 + s22 + c2))


def test_psnr_equals_closed_form_per_image():
    gen = torch.Generator().manual_seed(0)
    base = 0.2 + 0.6 * torch.rand(2, 16, 20, 3, generator=gen, dtype=torch.float64)  # away from 0 and 1
    signs = torch.randint(0, 2, base.shape, generator=gen).to(base.dtype) * 2 - 1
    deltas = torch.tensor([0.01, 0.1], dtype=torch.float64)
    noisy = base + signs * deltas.view(2, 1, 1, 1)  # every pixel off by exactly +-delta: MSE = delta^2
    got = psnr(noisy, base)  # [2]
    assert got.shape == (2,)
    expected = torch.tensor([-20 * math.log10(d) for d in deltas.tolist()], dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-9)
    # An unbatched image gives a scalar with the same value.
    torch.testing.assert_close(psnr(noisy[1], base[1]), expected[1], rtol=0, atol=1e-9)


def test_ssim_of_an_image_with_itself_is_one():
    x = torch.from_numpy(_photo()).float()
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-6)
    assert ssim(x, 1 - x).item() < 0.5


def _noisy_pair(seed: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    gt = torch.rand(2, 23, 31, 3, generator=gen, dtype=torch.float64)
    img = (gt + 0.2 * torch.randn(gt.shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    return img.to(dtype), gt.to(dtype)


def _direct_hwc(img: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    return _ssim_map_direct(img.permute(0, 3, 1, 2), gt.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def test_separable_ssim_equals_direct_2d_convolution_float64():
    img, gt = _noisy_pair(1)
    direct = _direct_hwc(img, gt)
    assert (ssim_map(img, gt) - direct).abs().max().item() < 1e-12
    torch.testing.assert_close(ssim(img, gt), direct.mean(dim=(1, 2, 3)), rtol=0, atol=1e-12)


def test_separable_ssim_is_as_precise_as_direct_2d_in_float32():
    img, gt = _noisy_pair(1)
    truth = _direct_hwc(img, gt)  # float64
    ours = ssim_map(img.float(), gt.float()).double()
    direct = _direct_hwc(img.float(), gt.float()).double()
    # E[x^2] - mu^2 cancels digits either way; the separable sums are no less precise than the 2D ones.
    err_ours = (ours - truth).abs().max().item()
    err_direct = (direct - truth).abs().max().item()
    assert err_ours < 1e-5 and err_ours <= 2 * err_direct, (err_ours, err_direct)
    mean_err = (ssim(img.float(), gt.float()).double() - truth.mean(dim=(1, 2, 3))).abs().max().item()
    assert mean_err < 1e-6


def test_ssim_agrees_with_skimage_inside_the_border():
    gt = _photo()
    rng = np.random.default_rng(2)
    img = np.clip(gt + 0.05 * rng.standard_normal(gt.shape), 0, 1)
    mean_ski, map_ski = structural_similarity(
        img,
        gt,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1,
        channel_axis=-1,
        full=True,
    )
    ours = ssim_map(torch.from_numpy(img), torch.from_numpy(gt)).numpy()  # [H, W, 3]
    # Same 11x11 window (skimage truncates its Gaussian at 3.5 sigma = radius 5). Pixels 5 or more from the
    # border never see the padding, so the maps agree there to rounding. At the border 3DGS convolves with
    # zero padding while skimage reflects, and skimage's mean leaves out that 5-pixel band entirely.
    inner = (slice(5, -5), slice(5, -5))
    assert np.abs(ours[inner] - map_ski[inner]).max() < 1e-10
    assert ours[inner].mean() == pytest.approx(mean_ski, abs=1e-10)
    # The full-image 3DGS SSIM differs from skimage's through the border only, by a little.
    assert abs(ours.mean() - mean_ski) < 0.05


def test_ssim_is_differentiable():
    gen = torch.Generator().manual_seed(3)
    gt = torch.rand(1, 7, 8, 3, generator=gen, dtype=torch.float64)
    img = torch.rand(1, 7, 8, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: ssim(a, gt), (img,))


def _quadratic_distortion(rgb: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """A known colour map with cross terms: out = [r^2, rg, rb, g^2, gb, b^2, r, g, b, 1] @ coeffs."""
    r, g, b = rgb.unbind(-1)
    feats = torch.stack([r * r, r * g, r * b, g * g, g * b, b * b, r, g, b, torch.ones_like(r)], dim=-1)
    return feats @ coeffs  # [..., 3]


def test_color_correct_recovers_a_known_quadratic_map():
    render = torch.from_numpy(_photo()).unsqueeze(0).repeat(2, 1, 1, 1)  # [2, H, W, 3]
    gen = torch.Generator().manual_seed(4)
    # Two images, two different colour maps near a mild tone curve: a per-image fit must undo each.
    gts = []
    for _ in range(2):
        coeffs = torch.zeros(10, 3, dtype=torch.float64)
        coeffs[6:9] = 0.75 * torch.eye(3, dtype=torch.float64)  # linear gain
        coeffs[9] = 0.08  # offset
        coeffs[:6] = 0.1 * torch.randn(6, 3, generator=gen, dtype=torch.float64)  # quadratic and cross terms
        gts.append(_quadratic_distortion(render[0], coeffs).clamp(0, 1))
    gt = torch.stack(gts)  # [2, H, W, 3]
    before = psnr(render, gt)
    corrected = color_correct(render, gt)
    after = psnr(corrected, gt)
    assert corrected.shape == render.shape and corrected.dtype == render.dtype
    assert 0.0 <= corrected.min().item() and corrected.max().item() <= 1.0
    assert (before < 30).all(), before
    assert (after > 60).all(), after  # exact up to least-squares rounding


def test_color_correct_improves_but_keeps_structure():
    gt = torch.from_numpy(_photo()).float()
    # A render with a colour cast and a bit of noise: correction removes the cast, not the noise.
    gen = torch.Generator().manual_seed(5)
    cast = (0.9 * gt**1.3 + torch.tensor([0.05, -0.02, 0.08])).clamp(0, 1)
    render = (cast + 0.02 * torch.randn(gt.shape, generator=gen)).clamp(0, 1)
    corrected = color_correct(render, gt)
    assert psnr(corrected, gt) > psnr(render, gt) + 5
    noise_only = (gt + 0.02 * torch.randn(gt.shape, generator=gen)).clamp(0, 1)
    assert psnr(corrected, gt) < psnr(noise_only, gt) + 1.0
