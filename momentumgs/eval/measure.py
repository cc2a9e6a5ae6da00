"""Evaluation: PSNR, SSIM and LPIPS (VGG, AlexNet) on the test views, with and without the per-image colour
correction of the paper's protocol (docs/rendering.md, Evaluation protocol), plus rendering speed and
peak memory.

The evaluator takes any `render_fn(index) -> [H, W, 3] float tensor in [0, 1]`, `index` being the view's
index in `scene.cameras`: the anchor model of a run, a merged model or a baked PLY all evaluate the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from momentumgs.data.scene import Scene
from momentumgs.eval.results import METRIC_NAMES, EvalResult
from momentumgs.lpips import lpips
from momentumgs.memory import peak_rss_mb
from momentumgs.metrics import color_correct, psnr, ssim

RenderFn = Callable[[int], torch.Tensor]  # view index in scene.cameras -> [H, W, 3]


def image_metrics(img: torch.Tensor, gt: torch.Tensor) -> dict[str, float]:
    """All metrics of one rendered image against its ground truth. img, gt: [H, W, 3] in [0, 1]."""
    corrected = color_correct(img, gt)
    out = {}
    for suffix, x in (("", img), ("_cc", corrected)):
        nchw = x.permute(2, 0, 1)[None]  # [1, 3, H, W]
        gt_nchw = gt.permute(2, 0, 1)[None]
        out["psnr" + suffix] = float(psnr(x, gt))
        out["ssim" + suffix] = float(ssim(x, gt))
        out["lpips_vgg" + suffix] = float(lpips(nchw, gt_nchw, net="vgg")[0])
        out["lpips_alex" + suffix] = float(lpips(nchw, gt_nchw, net="alex")[0])
    return out


@torch.no_grad()
def evaluate(
    render_fn: RenderFn,
    scene: Scene,
    view_ids: Sequence[int],
    device: torch.device | str = "cpu",
    progress: bool = False,
    prepare: Callable[[int, torch.Tensor], None] | None = None,
    crop: Callable[[torch.Tensor], torch.Tensor] | None = None,
    load_image: Callable[[int], np.ndarray] | None = None,
) -> EvalResult:
    """Render each view with `render_fn` and compare it with the scene's image (or `load_image(i)`'s, RGB
    uint8). `prepare(i, photo)` runs before a view's timed render (a test-time appearance fit); `crop`
    selects the measured region of both images."""
    load_image = load_image or scene.load_image
    device = torch.device(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    names, seconds = [], []
    per_image: dict[str, list[float]] = {k: [] for k in METRIC_NAMES}
    ids = list(view_ids)
    if progress:
        from tqdm import tqdm

        ids = tqdm(ids, desc="eval", leave=False)
    for i in ids:
        gt = torch.from_numpy(load_image(i)).to(device=device, dtype=torch.float32) / 255.0
        if prepare is not None:
            prepare(i, gt)
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        img = render_fn(i).clamp(0.0, 1.0)
        if cuda:
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - t0)
        if crop is not None:
            img, gt = crop(img), crop(gt)
        for key, value in image_metrics(img.float(), gt).items():
            per_image[key].append(value)
        names.append(scene.cameras[i].name)
    peak_cuda = torch.cuda.max_memory_allocated(device) / (1 << 20) if cuda else None
    return EvalResult(names, per_image, seconds, peak_rss_mb(), peak_cuda)
