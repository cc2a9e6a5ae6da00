"""Print our offline LPIPS (AlexNet and VGG16; official [-1, 1] input and the "3DGS-style" [0, 1] input),
PSNR and SSIM for a photo against its blurred, noisy and JPEG-compressed versions.

    python tools/lpips_values.py [--photo astronaut|chelsea|coffee] [--size 256]

The photo comes from scikit-image's bundled data; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import torch
from PIL import Image
from skimage import data, filters, transform

from momentumgs.lpips import lpips_model
from momentumgs.metrics import psnr, ssim


def distortions(photo: np.ndarray) -> dict[str, np.ndarray]:
    """Three degraded versions of `photo` ([H, W, 3] float in [0, 1])."""
    noise = np.random.default_rng(0).standard_normal(photo.shape)
    buf = io.BytesIO()
    Image.fromarray((photo * 255).round().astype(np.uint8)).save(buf, format="JPEG", quality=10)
    jpeg = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float64) / 255
    return {
        "gaussian blur sigma=2": filters.gaussian(photo, sigma=2.0, channel_axis=-1),
        "gaussian noise std=0.08": np.clip(photo + 0.08 * noise, 0, 1),
        "JPEG quality 10": jpeg,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", default="astronaut", choices=["astronaut", "chelsea", "coffee"])
    parser.add_argument("--size", type=int, default=256, help="short side after downsizing (0: as shipped)")
    args = parser.parse_args()

    photo = getattr(data, args.photo)()[..., :3] / 255.0  # [H, W, 3]
    if args.size:
        h, w = photo.shape[:2]
        s = args.size / min(h, w)
        photo = transform.resize(photo, (round(h * s), round(w * s)), anti_aliasing=True)
    print(f"photo: skimage.data.{args.photo}, {photo.shape[1]}x{photo.shape[0]}")

    pairs = distortions(photo)
    gt = torch.from_numpy(photo).float()  # [H, W, 3]
    imgs = torch.from_numpy(np.stack(list(pairs.values()))).float()  # [3, H, W, 3]
    to_nchw = lambda x: x.permute(0, 3, 1, 2).contiguous()  # noqa: E731
    gts = gt[None].expand_as(imgs)  # [3, H, W, 3]
    gt_b, imgs_b = to_nchw(gts), to_nchw(imgs)

    cols = ["PSNR", "SSIM", "alex", "alex[0,1]", "vgg", "vgg[0,1]"]
    table = {"PSNR": psnr(imgs, gts).tolist(), "SSIM": ssim(imgs, gts).tolist()}
    t0 = time.perf_counter()
    with torch.no_grad():
        for net in ("alex", "vgg"):
            model = lpips_model(net)
            table[net] = model(imgs_b, gt_b, normalize=True).tolist()
            table[f"{net}[0,1]"] = model(imgs_b, gt_b, normalize=False).tolist()
    elapsed = time.perf_counter() - t0

    print("alex / vgg: official LPIPS (inputs mapped to [-1, 1]); [0,1]: 3DGS-style, inputs as they are")
    print(f"{'pair':<26}" + "".join(f"{c:>11}" for c in cols))
    for i, name in enumerate(pairs):
        row = [f"{table['PSNR'][i]:.2f}"] + [f"{table[c][i]:.4f}" for c in cols[1:]]
        print(f"{name:<26}" + "".join(f"{v:>11}" for v in row))
    print(f"LPIPS time (2 nets x 2 modes x 3 pairs, {torch.get_num_threads()} threads): {elapsed:.1f} s")


if __name__ == "__main__":
    main()
