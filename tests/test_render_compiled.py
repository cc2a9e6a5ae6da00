"""The compiled CPU compositor (numba tiles) against the torch reference: images, alphas, every gradient.

The torch compositor (`momentumgs.render.cpu`) is the reference; tests/test_render.py checks both against
an independent dense renderer. Here the two are compared directly on randomised scenes that stress what
the tiles change: many overlapping Gaussians, Gaussians behind the camera, tiny and huge ones, boxes
crossing the image borders and tile edges, several cameras, other channel counts.
"""

import math

import pytest
import torch

from momentumgs.render import compiled, rasterize
from momentumgs.render.tiles import TILE

NAMES = ("means", "quats", "scales", "opacities", "colors")


def stress_scene(seed, n=600, cameras=2, width=53, height=41, channels=3, dtype=torch.float64):
    """Gaussians in front of, around and behind cameras looking at the origin; sizes over 3 decades."""
    g = torch.Generator().manual_seed(seed)

    def u(*shape, lo=0.0, hi=1.0):
        return lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=dtype)

    means = u(n, 3, lo=-1.5, hi=1.5)
    means[: n // 10] = u(n // 10, 3, lo=-6.0, hi=6.0)  # some far out: behind cameras, off screen
    scales = torch.exp(u(n, 3, lo=math.log(0.003), hi=math.log(0.3)))
    scales[n // 10 : n // 10 + 5] = u(5, 3, lo=1.0, hi=3.0)  # huge: cover the image, every tile
    opacities = u(n, lo=0.02, hi=1.0)
    opacities[:20] = 1.0  # alpha clamped at 0.999
    viewmats, Ks = [], []
    for c in range(cameras):
        angle = 2 * math.pi * c / cameras + u(1).item()
        eye = torch.tensor([3.0 * math.cos(angle), 3.0 * math.sin(angle), 0.8], dtype=dtype)
        z = torch.nn.functional.normalize(-eye, dim=0)
        x = torch.nn.functional.normalize(
            torch.linalg.cross(z, torch.tensor([0, 0, 1.0], dtype=dtype)), dim=0
        )
        R = torch.stack([x, torch.linalg.cross(z, x), z])
        viewmat = torch.eye(4, dtype=dtype)
        viewmat[:3, :3], viewmat[:3, 3] = R, -R @ eye
        viewmats.append(viewmat)
        f = 0.9 * width
        Ks.append(torch.tensor([[f, 0, 0.45 * width], [0, f, 0.55 * height], [0, 0, 1]], dtype=dtype))
    return dict(
        means=means,
        quats=torch.randn(n, 4, generator=g, dtype=dtype),
        scales=scales,
        opacities=opacities,
        colors=u(cameras, n, channels),
        viewmats=torch.stack(viewmats),
        Ks=torch.stack(Ks),
        width=width,
        height=height,
        backgrounds=u(cameras, channels),
    )


def render_and_grads(backend, scene, monkeypatch, absgrad=True, **kwargs):
    monkeypatch.setenv("MOMENTUMGS_RASTERIZER", backend)
    params = {k: scene[k].clone().requires_grad_(True) for k in NAMES}
    bg = scene["backgrounds"].clone().requires_grad_(True)
    rest = (scene["viewmats"], scene["Ks"], scene["width"], scene["height"])
    img, alpha, meta = rasterize(
        *(params[k] for k in NAMES), *rest, backgrounds=bg, absgrad=absgrad, **kwargs
    )
    weights = torch.rand(img.shape, generator=torch.Generator().manual_seed(1), dtype=img.dtype)
    ((img * weights).sum() + 0.5 * alpha.sum()).backward()
    grads = {k: params[k].grad for k in NAMES}
    grads.update(backgrounds=bg.grad, means2d=meta["means2d"].grad)
    if absgrad:
        grads["absgrad"] = meta["means2d"].absgrad
    return img.detach(), alpha.detach(), grads, meta


def assert_same(ours, ref, atol, rtol_grad):
    img, alpha, grads, _ = ours
    ref_img, ref_alpha, ref_grads, _ = ref
    torch.testing.assert_close(img, ref_img, atol=atol, rtol=0)
    torch.testing.assert_close(alpha, ref_alpha, atol=atol, rtol=0)
    for name, ref_grad in ref_grads.items():
        assert ref_grad.abs().max() > 0, f"{name}: the scene gives no gradient to compare"
        # relative to the largest gradient of that input: float sums in another order
        scale = float(ref_grad.abs().max())
        torch.testing.assert_close(grads[name], ref_grad, atol=rtol_grad * scale, rtol=0, msg=name)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_compiled_equals_reference_float64(seed, monkeypatch):
    scene = stress_scene(seed)
    ours = render_and_grads("numba", scene, monkeypatch)
    ref = render_and_grads("torch", scene, monkeypatch)
    radii = ref[3]["radii"]
    visible = (radii > 0).all(-1)
    assert (~visible).sum() > 20 and visible.sum() > 300, "the scene must cull some and draw many"
    assert (radii.max(-1).values > TILE).sum() >= 5, "some boxes must span several tiles"
    assert (ref[1] > 0.5).float().mean() > 0.3, "the scene must cover the image"
    assert_same(ours, ref, atol=1e-10, rtol_grad=1e-10)


@pytest.mark.parametrize("seed", [4, 5])
def test_compiled_equals_reference_float32(seed, monkeypatch):
    # float32 inputs: the same culling decisions (the same float steps), sums in float64 here and float32 in
    # the reference, so images agree to float32 rounding and gradients to float32 sums' rounding
    scene = {k: v.float() if torch.is_tensor(v) else v for k, v in stress_scene(seed).items()}
    ours = render_and_grads("numba", scene, monkeypatch)
    ref = render_and_grads("torch", scene, monkeypatch)
    assert ours[0].dtype == torch.float32
    assert_same(ours, ref, atol=1e-5, rtol_grad=1e-4)


def test_compiled_other_channels_one_camera_and_stop_rule(monkeypatch):
    # one camera, 1 and 4 channels (depth and RGB+D modes), a dense opaque stack that stops every pixel
    scene = stress_scene(6, n=400, cameras=1, width=37, height=35, channels=1)
    scene["opacities"] = 0.9 + 0.1 * scene["opacities"]
    scene["scales"] = scene["scales"] * 2
    assert_same(
        render_and_grads("numba", scene, monkeypatch),
        render_and_grads("torch", scene, monkeypatch),
        1e-10,
        1e-10,
    )
    scene = stress_scene(7, cameras=1, channels=3)
    ours = render_and_grads("numba", scene, monkeypatch, render_mode="RGB+ED")
    ref = render_and_grads("torch", scene, monkeypatch, render_mode="RGB+ED")
    assert ours[0].shape[-1] == 4
    assert_same(ours, ref, atol=1e-9, rtol_grad=1e-9)


def test_compiled_composite_gradcheck(monkeypatch):
    g = torch.Generator().manual_seed(2)
    C, N, W, H = 2, 6, 21, 18  # boxes cross the 16-pixel tile edges
    means2d = (torch.rand(C, N, 2, generator=g, dtype=torch.float64) * torch.tensor([W, H])).requires_grad_()
    conics = torch.tensor([0.08, 0.02, 0.06], dtype=torch.float64).repeat(C, N, 1).requires_grad_()
    opac = (0.2 + 0.7 * torch.rand(C, N, generator=g, dtype=torch.float64)).requires_grad_()
    colors = torch.rand(C, N, 3, generator=g, dtype=torch.float64).requires_grad_()
    bg = torch.rand(C, 3, generator=g, dtype=torch.float64).requires_grad_()
    depths = torch.rand(C, N, generator=g, dtype=torch.float64) + 1
    radii = torch.full((C, N, 2), 9, dtype=torch.int32)

    def f(m, c, o, col, b):
        return compiled.composite(m, c, o, col, depths, radii, W, H, backgrounds=b)

    assert torch.autograd.gradcheck(f, (means2d, conics, opac, colors, bg), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_backend_switch(monkeypatch):
    monkeypatch.setenv("MOMENTUMGS_RASTERIZER", "torch")
    assert compiled.cpu_backend() == "torch"
    monkeypatch.delenv("MOMENTUMGS_RASTERIZER")
    assert compiled.cpu_backend() == "numba"  # numba is a dependency: the default on the CPU
    monkeypatch.setenv("MOMENTUMGS_RASTERIZER", "cuda")
    with pytest.raises(ValueError, match="MOMENTUMGS_RASTERIZER='cuda': expected one of numba, torch"):
        compiled.cpu_backend()


def test_no_visible_gaussian(monkeypatch):
    scene = stress_scene(8, n=10, cameras=1)
    scene["means"] = scene["means"] + torch.tensor([0.0, 0.0, 50.0], dtype=torch.float64)  # all far away
    scene["scales"] = scene["scales"] * 1e-4
    img, alpha, grads, meta = render_and_grads("numba", scene, monkeypatch, absgrad=False)
    assert alpha.abs().max() == 0
    torch.testing.assert_close(img, scene["backgrounds"][:, None, None, :].expand_as(img))
    assert grads["means"].abs().max() == 0


def test_tiles_on_several_threads_equal_one_thread(monkeypatch):
    # several torch threads: the tiles are split into ranges rendered at once; the images are the same
    # to the bit (tiles share no pixel), the gradients to the order of the per-range sums
    scene = stress_scene(9, n=800, cameras=2, width=70, height=50)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = render_and_grads("numba", scene, monkeypatch)
        torch.set_num_threads(3)
        three = render_and_grads("numba", scene, monkeypatch)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], three[0]) and torch.equal(one[1], three[1])
    assert_same(three, one, atol=0, rtol_grad=1e-12)


def test_tile_ranges_balance_the_work():
    offsets = torch.tensor([0, 0, 10, 10, 40, 41, 90, 100]).numpy()  # 7 tiles, 100 entries
    assert compiled.tile_ranges(offsets, 1) == [(0, 7)]
    ranges = compiled.tile_ranges(offsets, 3)
    assert ranges[0][0] == 0 and ranges[-1][1] == 7
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))  # consecutive, no gap
    work = [int(offsets[hi] - offsets[lo]) for lo, hi in ranges]
    assert sum(work) == 100 and max(work) <= 60
    assert compiled.tile_ranges(torch.zeros(5, dtype=torch.long).numpy(), 4) == [(0, 4)]  # nothing to draw
