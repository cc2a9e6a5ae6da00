"""The CPU rasterizers against an independent dense reference, gradients, edge cases and gsplat on CUDA.

Every test runs with both CPU compositors: the compiled one (numba, the default) and the torch reference
(`MOMENTUMGS_RASTERIZER`); tests/test_render_compiled.py compares the two directly on larger scenes.
"""

import math

import pytest
import torch

from momentumgs.render import rasterize
from momentumgs.render.cpu import composite


@pytest.fixture(autouse=True, params=["numba", "torch"])
def cpu_backend(request, monkeypatch):
    monkeypatch.setenv("MOMENTUMGS_RASTERIZER", request.param)
    return request.param


# --------------------------------------------------------------------------------------------------
# Scenes and an independent reference: every pixel against every Gaussian, one Gaussian at a time in
# depth order, with the rules of gsplat 1.5.3's CUDA kernels written out from scratch.
# --------------------------------------------------------------------------------------------------


def look_at(eye, target):
    """World -> camera 4x4 with OpenCV axes (z forward)."""
    z = torch.nn.functional.normalize(target - eye, dim=0)
    x = torch.nn.functional.normalize(
        torch.linalg.cross(z, torch.tensor([0.0, 0.0, 1.0], dtype=eye.dtype)), dim=0
    )
    y = torch.linalg.cross(z, x)
    R = torch.stack([x, y, z])
    viewmat = torch.eye(4, dtype=eye.dtype)
    viewmat[:3, :3] = R
    viewmat[:3, 3] = -R @ eye
    return viewmat


def random_scene(seed, n=40, cameras=3, width=32, height=24, opacity=(0.05, 0.98), dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)

    def u(*shape, lo=0.0, hi=1.0):
        return lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=dtype)

    means = u(n, 3, lo=-1.0, hi=1.0)
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = torch.exp(u(n, 3, lo=math.log(0.03), hi=math.log(0.35)))
    scales[: n // 10] *= torch.tensor([6.0, 0.05, 1.0], dtype=dtype)  # some long, thin ones
    opacities = u(n, lo=opacity[0], hi=opacity[1])
    colors = u(cameras, n, 3)
    viewmats, Ks = [], []
    for _ in range(cameras):
        angle = u(1).item() * 2 * math.pi
        eye = torch.tensor([3.5 * math.cos(angle), 3.5 * math.sin(angle), 1.0 + u(1).item()], dtype=dtype)
        viewmats.append(look_at(eye, u(3, lo=-0.2, hi=0.2)))
        f = (26.0 + 8.0 * u(1).item()) * width / 32
        # principal point well away from the centre
        Ks.append(
            torch.tensor(
                [[f, 0, 0.38 * width + u(1).item()], [0, f * 1.05, 0.6 * height], [0, 0, 1]], dtype=dtype
            )
        )
    backgrounds = u(cameras, 3)
    return dict(
        means=means,
        quats=quats,
        scales=scales,
        opacities=opacities,
        colors=colors,
        viewmats=torch.stack(viewmats),
        Ks=torch.stack(Ks),
        width=width,
        height=height,
        backgrounds=backgrounds,
    )


def reference_render(
    means,
    quats,
    scales,
    opacities,
    colors,
    viewmats,
    Ks,
    width,
    height,
    backgrounds=None,
    near_plane=0.2,
    far_plane=1e10,
    eps2d=0.3,
    antialiased=False,
):
    """Returns colours [C, H, W, D], alphas [C, H, W, 1], radii [C, N, 2], stops (pixels that stopped)."""
    C, N = viewmats.shape[0], means.shape[0]
    if colors.dim() == 2:
        colors = colors[None].expand(C, -1, -1)
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    R = torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        dim=-2,
    )  # [N, 3, 3]
    M = R * scales[:, None, :]
    cov3d = M @ M.transpose(1, 2)
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1).to(means.dtype) + 0.5  # [HW, 2]
    images, alphas, all_radii, stops = [], [], [], 0
    for c in range(C):
        Rc, t = viewmats[c, :3, :3], viewmats[c, :3, 3]
        p = means @ Rc.T + t  # [N, 3]
        cov = Rc @ cov3d @ Rc.T
        fx, fy, cx, cy = Ks[c, 0, 0], Ks[c, 1, 1], Ks[c, 0, 2], Ks[c, 1, 2]
        pz = p[:, 2]
        ok_depth = (pz >= near_plane) & (pz <= far_plane)
        zs = torch.where(ok_depth, pz, torch.ones_like(pz))
        lim_xp = (width - cx) / fx + 0.3 * 0.5 * width / fx
        lim_xn = cx / fx + 0.3 * 0.5 * width / fx
        lim_yp = (height - cy) / fy + 0.3 * 0.5 * height / fy
        lim_yn = cy / fy + 0.3 * 0.5 * height / fy
        tx = zs * torch.minimum(lim_xp, torch.maximum(-lim_xn, p[:, 0] / zs))
        ty = zs * torch.minimum(lim_yp, torch.maximum(-lim_yn, p[:, 1] / zs))
        J = torch.zeros(N, 2, 3, dtype=means.dtype)
        J[:, 0, 0] = fx / zs
        J[:, 0, 2] = -fx * tx / zs**2
        J[:, 1, 1] = fy / zs
        J[:, 1, 2] = -fy * ty / zs**2
        cov2 = J @ cov @ J.transpose(1, 2)
        det0 = cov2[:, 0, 0] * cov2[:, 1, 1] - cov2[:, 0, 1] * cov2[:, 1, 0]
        cov2 = cov2 + eps2d * torch.eye(2, dtype=means.dtype)
        det = cov2[:, 0, 0] * cov2[:, 1, 1] - cov2[:, 0, 1] * cov2[:, 1, 0]
        mean2 = torch.stack([fx * p[:, 0] / zs + cx, fy * p[:, 1] / zs + cy], -1)  # [N, 2]
        inv = torch.linalg.inv(cov2)
        op = opacities * torch.sqrt(torch.clamp(det0 / det, min=0)) if antialiased else opacities
        ext = torch.clamp(torch.sqrt(2 * torch.log(torch.clamp(op.detach() * 255, min=1))), max=3.33)
        rad = torch.ceil(ext[:, None] * torch.sqrt(torch.stack([cov2[:, 0, 0], cov2[:, 1, 1]], -1).detach()))
        valid = ok_depth & (det > 0) & (op >= 1 / 255) & ((rad[:, 0] > 0) | (rad[:, 1] > 0))
        valid &= (mean2[:, 0] + rad[:, 0] > 0) & (mean2[:, 0] - rad[:, 0] < width)
        valid &= (mean2[:, 1] + rad[:, 1] > 0) & (mean2[:, 1] - rad[:, 1] < height)
        all_radii.append((rad * valid[:, None]).int())

        out = torch.zeros(height * width, colors.shape[-1], dtype=means.dtype)
        T = torch.ones(height * width, dtype=means.dtype)
        done = torch.zeros(height * width, dtype=torch.bool)
        for n in torch.argsort(pz).tolist():
            if not valid[n]:
                continue
            d = mean2[n] - pix  # [HW, 2]
            sigma = (
                0.5 * (inv[n, 0, 0] * d[:, 0] ** 2 + inv[n, 1, 1] * d[:, 1] ** 2)
                + inv[n, 0, 1] * d[:, 0] * d[:, 1]
            )
            alpha = torch.clamp(op[n] * torch.exp(-sigma), max=0.999)
            use = (sigma >= 0) & (alpha >= 1 / 255) & ~done
            next_T = T * (1 - alpha)
            stop = use & (next_T <= 1e-4)
            stops += int(stop.sum())
            done = done | stop
            add = use & ~stop
            out = out + torch.where(add[:, None], (alpha * T)[:, None] * colors[c, n], 0.0)
            T = torch.where(add, next_T, T)
        if backgrounds is not None:
            out = out + T[:, None] * backgrounds[c]
        images.append(out.reshape(height, width, -1))
        alphas.append((1 - T).reshape(height, width, 1))
    return torch.stack(images), torch.stack(alphas), torch.stack(all_radii), stops


def scene_args(scene):
    return (
        scene["means"],
        scene["quats"],
        scene["scales"],
        scene["opacities"],
        scene["colors"],
        scene["viewmats"],
        scene["Ks"],
        scene["width"],
        scene["height"],
    )


# --------------------------------------------------------------------------------------------------
# (a) images against the reference
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_dense_reference(seed):
    scene = random_scene(seed)
    img, alpha, meta = rasterize(*scene_args(scene), backgrounds=scene["backgrounds"])
    ref_img, ref_alpha, ref_radii, _ = reference_render(*scene_args(scene), backgrounds=scene["backgrounds"])
    assert img.shape == (3, 24, 32, 3) and alpha.shape == (3, 24, 32, 1)
    assert (ref_alpha > 0.05).float().mean() > 0.2, "scene too empty to test anything"
    torch.testing.assert_close(img, ref_img, atol=1e-5, rtol=0)
    torch.testing.assert_close(alpha, ref_alpha, atol=1e-5, rtol=0)
    assert torch.equal(meta["radii"], ref_radii)
    assert meta["radii"].dtype == torch.int32 and meta["radii"].shape == (3, 40, 2)
    assert meta["means2d"].shape == (3, 40, 2) and meta["depths"].shape == (3, 40)
    assert meta["conics"].shape == (3, 40, 3) and meta["opacities"].shape == (3, 40)
    assert (meta["width"], meta["height"], meta["n_cameras"]) == (32, 24, 3)


def test_matches_reference_when_opaque_pixels_stop():
    # Many nearly opaque Gaussians: transmittance falls below 1e-4 and the stop rule decides pixels.
    scene = random_scene(7, n=80, cameras=2, opacity=(0.9, 1.0))
    scene["scales"] = scene["scales"] * 1.5
    scene["opacities"][:5] = 1.0  # alpha clamped at 0.999
    img, alpha, _ = rasterize(*scene_args(scene), backgrounds=scene["backgrounds"])
    ref_img, ref_alpha, _, stops = reference_render(*scene_args(scene), backgrounds=scene["backgrounds"])
    assert stops > 100, "the scene must exercise the stop rule"
    torch.testing.assert_close(img, ref_img, atol=1e-5, rtol=0)
    torch.testing.assert_close(alpha, ref_alpha, atol=1e-5, rtol=0)


def test_bands_and_shared_colors_and_float32():
    # A tiny pair budget forces many bands of rows; colours [N, D] with D = 4 shared by the views.
    scene = random_scene(3, cameras=2)
    scene["colors"] = torch.rand(40, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    bg = torch.rand(2, 4, dtype=torch.float64)
    ref_img, ref_alpha, _, _ = reference_render(*scene_args(scene), backgrounds=bg)
    img, alpha, _ = rasterize(*scene_args(scene), backgrounds=bg, pair_budget=300)
    torch.testing.assert_close(img, ref_img, atol=1e-5, rtol=0)
    torch.testing.assert_close(alpha, ref_alpha, atol=1e-5, rtol=0)
    args32 = [a.float() if torch.is_tensor(a) else a for a in scene_args(scene)]
    img32, _, _ = rasterize(*args32, backgrounds=bg.float())
    assert img32.dtype == torch.float32
    # float32 against float64: a fragment right at a threshold may flip, so compare in bulk
    assert (img32.double() - ref_img).abs().max() < 1e-3


def test_antialiased_and_expected_depth_match_reference():
    scene = random_scene(4, cameras=2)
    img, _, _ = rasterize(*scene_args(scene), rasterize_mode="antialiased")
    ref_img, _, _, _ = reference_render(*scene_args(scene), antialiased=True)
    torch.testing.assert_close(img, ref_img, atol=1e-5, rtol=0)

    img, alpha, meta = rasterize(*scene_args(scene), render_mode="RGB+ED", backgrounds=scene["backgrounds"])
    depth_colors = torch.cat([scene["colors"], meta["depths"][..., None].detach()], -1)
    ref_img, ref_alpha, _, _ = reference_render(
        *(scene_args(scene)[:4]), depth_colors, *scene_args(scene)[5:]
    )
    assert img.shape[-1] == 4
    torch.testing.assert_close(
        img[..., -1:], ref_img[..., -1:] / ref_alpha.clamp(min=1e-10), atol=1e-5, rtol=1e-6
    )
    ref_rgb, _, _, _ = reference_render(*scene_args(scene), backgrounds=scene["backgrounds"])
    torch.testing.assert_close(img[..., :3], ref_rgb, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------
# (b) gradients
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_gradcheck_tiny_scene():
    scene = random_scene(5, n=5, cameras=1, width=10, height=8, opacity=(0.3, 0.9))
    scene["scales"] = scene["scales"] * 2  # big enough to overlap on the tiny image
    inputs = [
        scene[k].clone().requires_grad_(True) for k in ("means", "quats", "scales", "opacities", "colors")
    ]
    bg = scene["backgrounds"].clone().requires_grad_(True)

    def render(means, quats, scales, opacities, colors, bg):
        img, alpha, _ = rasterize(
            means, quats, scales, opacities, colors, scene["viewmats"], scene["Ks"], 10, 8, backgrounds=bg
        )
        return img, alpha

    img, alpha = render(*inputs, bg)
    assert (alpha > 0.1).sum() > 10, "the Gaussians must cover some pixels"
    assert torch.autograd.gradcheck(render, (*inputs, bg), eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("pair_budget", [1_000_000, 150])
def test_gradients_match_reference_autograd(pair_budget):
    # A small pair budget splits the image into many bands, blended and differentiated chunk by chunk.
    scene = random_scene(11, n=30, cameras=2)
    names = ("means", "quats", "scales", "opacities", "colors")
    ours = {k: scene[k].clone().requires_grad_(True) for k in names}
    theirs = {k: scene[k].clone().requires_grad_(True) for k in names}
    weights = torch.rand(2, 24, 32, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    rest = (scene["viewmats"], scene["Ks"], 32, 24)
    img, alpha, _ = rasterize(
        *(ours[k] for k in names), *rest, backgrounds=scene["backgrounds"], pair_budget=pair_budget
    )
    ((img * weights).sum() + alpha.sum()).backward()
    ref_img, ref_alpha, _, _ = reference_render(
        *(theirs[k] for k in names), *rest, backgrounds=scene["backgrounds"]
    )
    ((ref_img * weights).sum() + ref_alpha.sum()).backward()
    for k in names:
        assert theirs[k].grad.abs().sum() > 0
        torch.testing.assert_close(ours[k].grad, theirs[k].grad, atol=1e-8, rtol=1e-6, msg=k)


def test_composite_gradcheck_in_pixels():
    # The compositor alone: gradients w.r.t. means2d are per pixel of screen motion (gsplat's units).
    g = torch.Generator().manual_seed(2)
    C, N, W, H = 1, 4, 9, 7
    means2d = (torch.rand(C, N, 2, generator=g, dtype=torch.float64) * torch.tensor([W, H])).requires_grad_(
        True
    )
    conics = torch.tensor([0.4, 0.05, 0.3], dtype=torch.float64).repeat(C, N, 1).requires_grad_(True)
    opac = (0.2 + 0.7 * torch.rand(C, N, generator=g, dtype=torch.float64)).requires_grad_(True)
    colors = torch.rand(C, N, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    depths = torch.rand(C, N, generator=g, dtype=torch.float64) + 1
    radii = torch.full((C, N, 2), 4, dtype=torch.int32)

    def f(m, c, o, col):
        return composite(m, c, o, col, depths, radii, W, H)

    assert torch.autograd.gradcheck(f, (means2d, conics, opac, colors), eps=1e-6, atol=1e-6, rtol=1e-4)


# --------------------------------------------------------------------------------------------------
# (c) edge cases
# --------------------------------------------------------------------------------------------------


def _single_camera(width=16, height=12):
    viewmats = torch.eye(4)[None]
    Ks = torch.tensor([[[20.0, 0.0, 7.0], [0.0, 20.0, 6.5], [0.0, 0.0, 1.0]]])
    return viewmats, Ks, width, height


def _params(means, scales, opacities, requires_grad=True):
    n = means.shape[0]
    tensors = dict(
        means=means,
        quats=torch.tensor([[1.0, 0.2, -0.1, 0.3]]).repeat(n, 1),
        scales=scales,
        opacities=opacities,
        colors=torch.rand(1, n, 3, generator=torch.Generator().manual_seed(0)),
    )
    return {k: v.clone().requires_grad_(requires_grad) for k, v in tensors.items()}


def _render(p, cam, **kw):
    return rasterize(p["means"], p["quats"], p["scales"], p["opacities"], p["colors"], *cam, **kw)


def test_culled_gaussians_leave_the_background():
    cam = _single_camera()
    bg = torch.tensor([[0.2, 0.5, 0.7]])
    means = torch.tensor(
        [[0.0, 0.0, -2.0], [0.0, 0.0, 0.1], [0.0, 0.0, 0.0], [0.05, 0.0, 0.199], [40.0, 0.0, 2.0]]
    )
    p = _params(means, torch.full((5, 3), 0.3), torch.full((5,), 0.9))
    img, alpha, meta = _render(p, cam, backgrounds=bg)
    assert torch.equal(meta["radii"], torch.zeros(1, 5, 2, dtype=torch.int32))
    assert torch.equal(img, bg[:, None, None, :].expand(1, 12, 16, 3))
    assert torch.equal(alpha, torch.zeros(1, 12, 16, 1))
    img.sum().backward()
    for k, v in p.items():
        assert torch.isfinite(v.grad).all() and not v.grad.any(), k
    # The same Gaussian just in front of the near plane is drawn.
    p = _params(torch.tensor([[0.0, 0.0, 0.25]]), torch.full((1, 3), 0.01), torch.tensor([0.9]))
    img, alpha, meta = _render(p, cam, backgrounds=bg)
    assert (meta["radii"] > 0).all() and alpha.max() > 0.5


def test_degenerate_scales_give_finite_values_and_grads():
    cam = _single_camera()
    means = torch.tensor([[0.0, 0.0, 2.0], [0.1, 0.05, 2.5], [-0.1, 0.0, 3.0]])
    scales = torch.tensor([[0.0, 0.0, 0.0], [0.2, 0.0, 0.1], [1e-30, 0.3, 0.0]])
    p = _params(means, scales, torch.tensor([0.9, 0.8, 0.7]))
    img, alpha, meta = _render(p, cam)
    assert (meta["radii"] > 0).all()  # eps2d keeps a point Gaussian ~1 pixel wide
    assert alpha.max() > 0.5
    (img.sum() + alpha.sum()).backward()
    for k, v in p.items():
        assert torch.isfinite(v.grad).all(), k
    assert p["means"].grad[0].abs().sum() > 0
    assert torch.isfinite(meta["means2d"].grad).all()


def test_zero_gaussians():
    viewmats, Ks, W, H = _single_camera()
    viewmats, Ks = viewmats.repeat(2, 1, 1), Ks.repeat(2, 1, 1)
    e3 = torch.zeros(0, 3)
    bg = torch.tensor([[0.1, 0.2, 0.3], [1.0, 0.0, 0.5]])
    img, alpha, meta = rasterize(
        e3, torch.zeros(0, 4), e3, torch.zeros(0), torch.zeros(2, 0, 3), viewmats, Ks, W, H, backgrounds=bg
    )
    assert img.shape == (2, H, W, 3) and alpha.shape == (2, H, W, 1)
    assert torch.equal(img, bg[:, None, None, :].expand(2, H, W, 3))
    assert not alpha.any()
    assert meta["radii"].shape == (2, 0, 2) and meta["means2d"].shape == (2, 0, 2)
    img, alpha, _ = rasterize(
        e3, torch.zeros(0, 4), e3, torch.zeros(0), torch.zeros(0, 3), viewmats, Ks, W, H
    )
    assert img.shape == (2, H, W, 3) and not img.any()


def test_opaque_layers_stop_the_pixel():
    cam = _single_camera()
    bg = torch.tensor([[0.3, 0.3, 0.3]])
    # Three huge fully opaque Gaussians covering the view, front to back at depths 2, 3, 4.
    means = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 3.0], [0.0, 0.0, 4.0]])
    p = _params(means, torch.full((3, 3), 50.0), torch.ones(3))
    p["colors"] = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]], requires_grad=True)
    img, alpha, _ = _render(p, cam, backgrounds=bg)
    # First layer: alpha clamped to 0.999, T = 1e-3. Second: T would fall to 1e-6 <= 1e-4, so the
    # pixel stops there and neither the second nor the third layer is added.
    expected = 0.999 * torch.tensor([1.0, 0.0, 0.0]) + 1e-3 * bg[0]
    torch.testing.assert_close(img[0], expected.expand(12, 16, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(alpha, torch.full_like(alpha, 0.999), atol=1e-6, rtol=0)
    img.sum().backward()
    assert p["colors"].grad[0, 0].min() > 0
    assert not p["colors"].grad[0, 1:].any()
    # Layers 2 and 3 are never added; layer 1's alpha is clamped at 0.999, which passes no gradient.
    assert not p["opacities"].grad.any() and not p["means"].grad.any()


def test_cpu_refuses_what_it_cannot_render():
    p = _params(torch.tensor([[0.0, 0.0, 2.0]]), torch.full((1, 3), 0.1), torch.tensor([0.5]), False)
    with pytest.raises(ValueError, match="packed"):
        _render(p, _single_camera(), packed=True)
    with pytest.raises(ValueError, match="sh_degree"):
        _render(p, _single_camera(), sh_degree=1)
    with pytest.raises(TypeError, match="no_such_option"):
        _render(p, _single_camera(), no_such_option=1)
    img, _, _ = _render(p, _single_camera(), tile_size=8, channel_chunk=16)  # gsplat-only tuning: ignored
    assert img.shape == (1, 12, 16, 3)


# --------------------------------------------------------------------------------------------------
# (d) the screen-space gradient the trainer reads
# --------------------------------------------------------------------------------------------------


def test_means2d_grad_and_absgrad_are_populated():
    scene = random_scene(8, n=20, cameras=2, dtype=torch.float32)
    scene["means"].requires_grad_(True)
    img, alpha, meta = rasterize(*scene_args(scene), absgrad=True)
    (img * torch.linspace(-1, 1, 32)[None, None, :, None]).sum().backward()
    grad = meta["means2d"].grad
    assert grad is not None and grad.shape == (2, 20, 2)
    visible = (meta["radii"] > 0).all(-1)
    assert visible.sum() > 10 and not grad[~visible].any()
    assert (grad[visible].abs().sum(-1) > 0).all()
    absgrad = meta["means2d"].absgrad
    assert absgrad.shape == (2, 20, 2)
    assert (absgrad >= grad.abs() - 1e-6).all() and (absgrad > grad.abs() + 1e-6).any()


def test_projection_equals_gsplats_torch_helpers():
    """Our per-component projection against gsplat's own batched-matrix helpers (values and gradients),
    with several cameras, a skewed K and Gaussians inside the depth range."""
    from gsplat.cuda._torch_impl import _persp_proj, _quat_scale_to_covar_preci, _world_to_cam

    from momentumgs.render.projection import project_gaussians

    scene = random_scene(5, n=300, cameras=3)
    Ks = scene["Ks"].clone()
    Ks[:, 0, 1] = 2.5  # skew
    names = ("means", "quats", "scales")
    weights = torch.rand(3, 300, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def outputs(mine: bool):
        params = {k: scene[k].clone().requires_grad_(True) for k in names}
        if mine:  # eps2d = 0: the conics are then the inverse of the plain 2D covariance
            _, means2d, depths, conics, _ = project_gaussians(
                *(params[k] for k in names), scene["opacities"], scene["viewmats"], Ks, 32, 24, eps2d=0.0
            )
        else:
            covars, _ = _quat_scale_to_covar_preci(params["quats"], params["scales"], compute_preci=False)
            means_c, covars_c = _world_to_cam(params["means"], covars, scene["viewmats"])
            means2d, cov2d = _persp_proj(means_c, covars_c, Ks, 32, 24)
            depths = means_c[..., 2]
            inverse = torch.linalg.inv(cov2d)  # [C, N, 2, 2]
            conics = torch.stack([inverse[..., 0, 0], inverse[..., 0, 1], inverse[..., 1, 1]], dim=-1)
        out = torch.cat([means2d, depths[..., None], conics], dim=-1)  # [C, N, 6]
        in_depth = (depths.detach() > 0.2)[..., None]
        out = torch.where(in_depth, out, 0.0)
        (out * weights).sum().backward()
        return out.detach(), in_depth, {k: params[k].grad for k in names}

    ours, in_depth, our_grads = outputs(mine=True)
    theirs, _, their_grads = outputs(mine=False)
    assert in_depth.float().mean() > 0.9
    torch.testing.assert_close(ours, theirs)
    for k in names:
        torch.testing.assert_close(our_grads[k], their_grads[k])


# --------------------------------------------------------------------------------------------------
# (e) the CPU compositor against gsplat's CUDA kernels
# --------------------------------------------------------------------------------------------------


@pytest.mark.cuda
def test_cpu_matches_gsplat_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    scene = random_scene(21, n=400, cameras=3, width=96, height=72, opacity=(0.05, 0.99), dtype=torch.float32)
    names = ("means", "quats", "scales", "opacities", "colors")
    weights = torch.rand(3, 72, 96, 3, generator=torch.Generator().manual_seed(3))
    results = {}
    for device in ("cpu", "cuda"):
        params = {k: scene[k].to(device).clone().requires_grad_(True) for k in names}
        img, alpha, meta = rasterize(
            *(params[k] for k in names),
            scene["viewmats"].to(device),
            scene["Ks"].to(device),
            96,
            72,
            backgrounds=scene["backgrounds"].to(device),
            near_plane=0.2,
        )
        ((img * weights.to(device)).sum() + alpha.sum()).backward()
        results[device] = (
            img.detach().cpu(),
            alpha.detach().cpu(),
            meta["radii"].cpu(),
            meta["means2d"].detach().cpu(),
            meta["means2d"].grad.cpu(),
            {k: params[k].grad.cpu() for k in names},
        )
    img_c, alpha_c, radii_c, xy_c, m2d_c, grads_c = results["cpu"]
    img_g, alpha_g, radii_g, xy_g, m2d_g, grads_g = results["cuda"]
    assert (alpha_g > 0.1).float().mean() > 0.3
    # Float32 on both sides, and gsplat uses fast-math exp/log: a fragment right at alpha = 1/255 or
    # a pixel right at T = 1e-4 may flip, so the bulk must agree to 1e-4 and nothing may be far off.
    for ours, theirs in ((img_c, img_g), (alpha_c, alpha_g)):
        diff = (ours - theirs).abs()
        assert diff.mean() < 1e-5 and (diff > 1e-4).float().mean() < 1e-3 and diff.max() < 1e-2
    assert (radii_c != radii_g).float().mean() < 0.01  # ceil() may flip on a fast-math log
    visible = (radii_g > 0).all(-1) & (radii_c > 0).all(-1)
    assert visible.sum() > 300
    torch.testing.assert_close(xy_c[visible], xy_g[visible], atol=1e-3, rtol=1e-5)

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    assert rel(m2d_c[visible], m2d_g[visible]) < 1e-2
    for k in names:
        assert rel(grads_c[k], grads_g[k]) < 1e-2, k


def test_a_cropped_view_renders_exactly_that_rectangle_of_the_whole_view():
    from momentumgs.render.view import Crop, View, crop_image, crop_view, rasterize_gaussians

    torch.manual_seed(0)
    m = 300
    means = torch.randn(m, 3) * 0.6 + torch.tensor([0.0, 0.0, 4.0])  # [M, 3]
    quats = torch.nn.functional.normalize(torch.randn(m, 4), dim=-1)
    scales = torch.rand(m, 3) * 0.1 + 0.02
    opacities, colors = torch.rand(m), torch.rand(m, 3)
    K = torch.tensor([[80.0, 0, 40], [0, 80, 30], [0, 0, 1]])
    view = View(torch.eye(4), K, torch.zeros(3), 80, 60, index=7)
    whole, _, _ = rasterize_gaussians(means, quats, scales, opacities, colors, view)
    crop = Crop(13, 7, 61, 45, 80, 60)
    cropped = crop_view(view, crop)
    assert (cropped.width, cropped.height, cropped.index) == (48, 38, 7)
    assert torch.equal(view.K, K)  # the whole view's camera is untouched
    part, _, _ = rasterize_gaussians(means, quats, scales, opacities, colors, cropped)
    assert part.shape == (38, 48, 3) and crop.share == 48 * 38 / (80 * 60)
    assert torch.allclose(part, crop_image(whole, crop), atol=1e-5)
    assert crop_image(whole, crop).std() > 0.05  # the rectangle shows Gaussians, not background only
