"""Momentum-GS ablation: the method's variants trained on one scene at equal iterations per block, one table.

    python tools/ablation.py                                   # demo city, 8 blocks (4x2), 2 workers emulated
    python tools/ablation.py --iterations 600 --downscale 2 --variants independent shared momentum full
    python tools/ablation.py --scene path/to/scene --block-dim 2 4 1 --workers 2

Variants (as in the paper's ablation on Building: 8 independent blocks 23.23, + momentum 23.56, + weighting
23.65 PSNR):
    independent  one decoder per block, no teacher, no weighting
    shared       one shared decoder (gradients averaged over the workers), no teacher, no weighting
    momentum     shared decoder + momentum teacher (m = 0.9) and consistency loss
    full         shared decoder + momentum teacher + block weighting (the method)

For each variant: PSNR / SSIM / LPIPS (VGG) on the test views, raw and colour-corrected, and PSNR on the
pixels near block borders vs. the interiors (the seams; pixels get a block by back-projecting the rendered
depth of the first variant's model, one mask for all variants). One JSON line per variant, then the table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from momentumgs.anchor_render import render_model_view, visible_anchors
from momentumgs.config import load_config
from momentumgs.eval import evaluate
from momentumgs.model.decoder import decode, gather_anchors
from momentumgs.model.store import load_model
from momentumgs.partition import Partition, load_partition
from momentumgs.render.rasterize import rasterize
from momentumgs.render.view import View, camera_view
from momentumgs.run import load_scene, start_or_resume

ROOT = Path(__file__).resolve().parent.parent

VARIANTS = {
    "independent": ["method.shared_decoder=false", "method.momentum=0", "method.weighting=false"],
    "shared": ["method.shared_decoder=true", "method.momentum=0", "method.weighting=false"],
    "momentum": ["method.shared_decoder=true", "method.momentum=0.9", "method.weighting=false"],
    "full": ["method.shared_decoder=true", "method.momentum=0.9", "method.weighting=true"],
}


def block_id_map(model, view: View, partition: Partition, min_alpha: float = 0.5) -> np.ndarray:
    """The block owning the surface seen at each pixel (-1 where the model is mostly transparent). [H, W]"""
    anchors = gather_anchors(model.field, visible_anchors(model.field, view))
    g = decode(model.decoder, anchors, view.center)
    out, alpha, _ = rasterize(
        g.means, g.quats, g.scales, g.opacities, g.colors[None], view.viewmat[None], view.K[None],
        view.width, view.height, render_mode="RGB+ED",
    )  # fmt: skip
    depth = out[0, ..., 3].double().numpy()  # [H, W] expected camera z
    v, u = np.mgrid[0 : view.height, 0 : view.width] + 0.5
    K, viewmat = view.K.double().numpy(), view.viewmat.double().numpy()
    cam = np.stack([(u - K[0, 2]) / K[0, 0] * depth, (v - K[1, 2]) / K[1, 1] * depth, depth], -1)  # [H, W, 3]
    world = (cam.reshape(-1, 3) - viewmat[:3, 3]) @ viewmat[:3, :3]  # R^T (x - t)
    ids = partition.block_of_points(world).reshape(depth.shape)
    ids[alpha[0, ..., 0].numpy() < min_alpha] = -1
    return ids


def border_mask(ids: np.ndarray, radius: int) -> np.ndarray:
    """Pixels within `radius` of a pixel of another block (ignoring transparent ones). [H, W] bool"""
    t = torch.from_numpy(ids).double()[None, None]
    big = torch.where(t < 0, torch.full_like(t, 1e9), t)
    small = torch.where(t < 0, torch.full_like(t, -1e9), t)
    k = 2 * radius + 1
    hi = F.max_pool2d(small, k, stride=1, padding=radius)
    lo = -F.max_pool2d(-big, k, stride=1, padding=radius)
    return ((hi != lo) & (t >= 0))[0, 0].numpy()


def masked_psnr(image: torch.Tensor, gt: torch.Tensor, mask: np.ndarray) -> float:
    if not mask.any():
        return float("nan")
    err = (image.clamp(0, 1) - gt).square().mean(-1).numpy()[mask]
    return float(-10 * np.log10(err.mean()))


def train_variant(config: str, common: list[str], name: str, out_root: Path) -> float:
    cfg = load_config(config, [*common, *VARIANTS[name]])
    t0 = time.perf_counter()
    trainer = start_or_resume(cfg, load_scene, out_root / name, resume=False)
    trainer.run(progress=True)
    seconds = time.perf_counter() - t0
    (out_root / name / "train_seconds.txt").write_text(f"{seconds}\n")
    return seconds


def train_all(args, out_root: Path) -> dict[str, float]:
    """Train every variant, `args.jobs` at a time (each in its own process: the runs are independent)."""
    pending = list(args.variants)
    running: list[subprocess.Popen] = []
    while pending or running:
        while pending and len(running) < args.jobs:
            name = pending.pop(0)
            # the child repeats our arguments; the ones appended last win
            cmd = [sys.executable, __file__, *sys.argv[1:], "--out", str(out_root), "--train-only", name]
            running.append(subprocess.Popen(cmd))
        time.sleep(1)
        for proc in [p for p in running if p.poll() is not None]:
            if proc.returncode != 0:
                raise SystemExit(f"ablation: training a variant failed ({proc.args[-1]})")
            running.remove(proc)
    return {n: float((out_root / n / "train_seconds.txt").read_text()) for n in args.variants}


def _renderer(model, scene, views):
    index_of = {id(scene.cameras[i]): i for i in views}
    return lambda cam: render_model_view(model, views[index_of[id(cam)]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--scene", help="COLMAP scene (default: the cached demo city)")
    parser.add_argument("--block-dim", type=int, nargs=3, default=[4, 2, 1])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=400, help="iterations per block")
    parser.add_argument("--downscale", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seam-radius", type=int, default=3, help="pixels counted as near a block border")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--jobs", type=int, default=1, help="variants trained at once, one process each")
    parser.add_argument("--train-only", help=argparse.SUPPRESS)  # internal: one variant, for --jobs
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    scene_path = args.scene
    if not scene_path:
        from momentumgs.demo import cached_demo_scene

        scene_path = str(cached_demo_scene(size="demo", seed=0))
    # Densification and weighting measured on the block's own clock, scaled to the run's length.
    it = args.iterations
    common = [
        f"data.path={scene_path}",
        f"data.downscale={args.downscale}",
        f"partition.block_dim=[{','.join(map(str, args.block_dim))}]",
        f"method.workers={args.workers}",
        f"train.iterations={it}",
        "train.device=cpu",
        f"train.threads={args.threads}",
        "train.eval_every=0",
        "train.checkpoint_every=0",
        f"train.densify.start_iter={max(it // 10, 1)}",
        f"train.densify.after_iter={max(it // 10, 1)}",
        f"train.densify.end_iter={int(it * 0.8)}",
        f"method.slot_iterations={max(it // 4, 1)}",
        f"method.weighting_every={max(it // 4, 1)}",
        *args.overrides,
    ]
    out_root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="momentumgs-ablation-"))
    if args.train_only:
        train_variant(args.config, common, args.train_only, out_root)
        return
    seconds = train_all(args, out_root)
    rows, masks = [], None
    for name in args.variants:
        cfg = load_config(args.config, [*common, *VARIANTS[name]])
        cfg.data.path = scene_path
        scene = load_scene(cfg)
        partition = load_partition(out_root / name / "partition.json")
        model = load_model(out_root / name / "model.ckpt")
        views = {i: camera_view(scene.cameras[i], "cpu", i) for i in scene.test_ids}
        result = evaluate(_renderer(model, scene, views), scene, scene.test_ids)
        with torch.no_grad():
            if masks is None:  # the seam mask of the first variant serves them all
                masks = {
                    i: border_mask(block_id_map(model, views[i], partition), args.seam_radius) for i in views
                }
            seam, inner = [], []
            for i in scene.test_ids:
                image = render_model_view(model, views[i])
                gt = torch.from_numpy(scene.load_image(i)).float() / 255
                seam.append(masked_psnr(image, gt, masks[i]))
                inner.append(masked_psnr(image, gt, ~masks[i]))
        m = result.means
        row = {
            "variant": name,
            "blocks": len(partition.blocks),
            "workers": args.workers,
            "iterations_per_block": it,
            "train_seconds": seconds[name],
            **m,
            "psnr_border": float(np.nanmean(seam)),
            "psnr_interior": float(np.nanmean(inner)),
            "border_pixel_fraction": float(np.mean([mk.mean() for mk in masks.values()])),
        }
        rows.append(row)
        print("JSON " + json.dumps(row), flush=True)

    print(f"\nscene {scene_path}: {rows[0]['blocks']} blocks on {args.workers} workers,")
    print(
        f"{it} iterations per block, downscale {args.downscale}, {len(masks)} test views; runs in {out_root}"
    )
    columns = [
        "psnr",
        "ssim",
        "lpips_vgg",
        "psnr_cc",
        "ssim_cc",
        "lpips_vgg_cc",
        "psnr_border",
        "psnr_interior",
    ]
    print("| variant | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for r in rows:
        cells = [f"{r[c]:.2f}" if "psnr" in c else f"{r[c]:.4f}" for c in columns]
        print(f"| {r['variant']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
