"""The 3D Tiles export (momentumgs/export/tiles3d.py) at scale, and its levels' quality.

Scale (default): a synthetic model of --gaussians Gaussians (SH degree 3) in --blocks blocks on a grid,
each block made when the writer asks for it (as `run_blocks` bakes them), written as a tileset; prints the
time, the peak RSS and what the whole model would take in RAM at once, then one JSON line.

    python tools/bench_tiles.py [--gaussians 5000000] [--blocks 20] [--out FOLDER] [--lod-prune]

Quality (--quality RUN): our CPU render of each level of every block of a trained run, pruned and merged
(export/lod.py), against the full detail on the run's test views: mean PSNR per level, then one JSON line.

    python tools/bench_tiles.py --quality RUN [--levels 1,0.25,0.06] [--tune EPOCHS]

--tune also fits each merged coarse level (opacity, scales, SH; export/refine.py) to its block's anchors'
renders for EPOCHS passes over the block's training views, and reports what it gains.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from momentumgs.export.gaussians import BakedGaussians, render_baked
from momentumgs.export.lod import DEFAULT_LEVELS, make_levels, parse_levels
from momentumgs.export.tiles3d import write_tileset
from momentumgs.memory import peak_rss_mb

BYTES_PER_GAUSSIAN = 4 * (3 + 4 + 3 + 1 + 16 * 3)  # float32 means, quats, scales, opacity, SH degree 3


def synthetic_block(index: int, count: int, grid: int, size: float = 100.0) -> BakedGaussians:
    """`count` Gaussians in cell `index` of a grid x grid ground plan of `size`-unit cells (y down is up, as
    COLMAP scenes): a ground layer and taller clutter, log-uniform sizes, seeded by the block index."""
    gen = torch.Generator().manual_seed(index)
    i, j = divmod(index, grid)
    means = torch.rand(count, 3, generator=gen) * torch.tensor([size, 1.0, size])
    means[:, 0] += i * size
    means[:, 2] += j * size
    tall = torch.rand(count, generator=gen) < 0.4
    means[tall, 1] -= torch.rand(int(tall.sum()), generator=gen) * 30.0  # -y up
    scales = torch.exp(torch.empty(count, 3).uniform_(math.log(0.02), math.log(0.6), generator=gen))
    return BakedGaussians(
        means=means,
        quats=torch.nn.functional.normalize(torch.randn(count, 4, generator=gen), dim=1),
        scales=scales,
        opacities=torch.rand(count, generator=gen) * 0.95 + 0.04,
        sh=torch.randn(count, 16, 3, generator=gen) * torch.tensor([1.0] + [0.1] * 15)[None, :, None],
        info={"synthetic_block": index},
    )


def bench_scale(a) -> dict:
    grid = math.ceil(math.sqrt(a.blocks))
    per_block = math.ceil(a.gaussians / a.blocks)
    rss_start = peak_rss_mb()
    made = []

    def blocks():
        for b in range(a.blocks):
            made.append(per_block)
            yield b, synthetic_block(b, per_block, grid)

    work = Path(tempfile.mkdtemp(prefix="bench_tiles_")) if a.out is None else Path(a.out)
    out = work / "tiles" if a.out is None else work
    t0 = time.perf_counter()
    try:
        summary = write_tileset(
            out, blocks(), "-y", parse_levels(a.levels), merge=not a.lod_prune, force=True
        )
        seconds = time.perf_counter() - t0
        files = sum(1 for _ in out.rglob("*.glb"))
    finally:
        if a.out is None:
            shutil.rmtree(work, ignore_errors=True)
    row = {
        "gaussians": sum(made),
        "blocks": a.blocks,
        "levels": list(parse_levels(a.levels)),
        "lod_merge": not a.lod_prune,
        "seconds": round(seconds, 3),  # ms: a small run takes well under 0.1 s
        "gaussians_per_s": round(sum(made) / seconds),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_before_mb": round(rss_start, 1),
        "whole_model_mb": round(sum(made) * BYTES_PER_GAUSSIAN / 1e6, 1),
        "block_mb": round(per_block * BYTES_PER_GAUSSIAN / 1e6, 1),
        "tileset_mb": round(summary.bytes / 1e6, 1),
        "files": files,
        "threads": torch.get_num_threads(),
    }
    print(
        f"{row['gaussians']} Gaussians in {a.blocks} blocks -> {files} tiles ({row['tileset_mb']} MB) in "
        f"{row['seconds']} s ({row['gaussians_per_s']} Gaussians/s); peak RSS {row['peak_rss_mb']} MB "
        f"({row['rss_before_mb']} MB before; the whole model would hold {row['whole_model_mb']} MB, "
        f"one block {row['block_mb']} MB)"
    )
    return row


def bench_quality(a) -> dict:
    from momentumgs.export.bake import bake
    from momentumgs.export.commands import load_run, scene_or_none
    from momentumgs.export.refine import refine_baked
    from momentumgs.export.tiles3d import block_models
    from momentumgs.partition import load_partition
    from momentumgs.render.view import camera_view

    model, cfg = load_run(a.quality)
    scene = scene_or_none(cfg)
    partition = load_partition(Path(a.quality) / "partition.json")
    fractions = parse_levels(a.levels)
    names = ["prune", "merge"] + (["merge+tune"] if a.tune else [])
    variants = {name: [[] for _ in fractions] for name in names}
    tune_s = 0.0
    for index, sub in block_models(model, partition):
        g = bake(sub, scene)
        for name, merge in (("prune", False), ("merge", True)):
            for k, level in enumerate(make_levels(g, fractions, merge)):
                variants[name][k].append(level.gaussians)
        if a.tune:  # each coarse level fitted to the block's own anchors' renders from its training views
            cams = [scene.cameras[int(i)] for i in partition.blocks[index].camera_ids]
            t0 = time.perf_counter()
            for k, level in enumerate(make_levels(g, fractions, True)):
                steps = 0 if k == 0 else a.tune * len(cams)
                variants["merge+tune"][k].append(refine_baked(level.gaussians, sub, cams, steps))
            tune_s += time.perf_counter() - t0

    def joined(parts):
        return BakedGaussians(
            *(
                torch.cat([getattr(p, f) for p in parts])
                for f in ("means", "quats", "scales", "opacities", "sh")
            )
        )

    views = [camera_view(scene.cameras[i], "cpu", i) for i in scene.test_ids]
    with torch.no_grad():
        full = [render_baked(joined(variants["prune"][0]), v)[0].clamp(0, 1) for v in views]
        rows = {}
        for name, levels in variants.items():
            rows[name] = []
            for k, parts in enumerate(levels):
                g = joined(parts)
                values = []
                for v, ref in zip(views, full, strict=True):
                    mse = float(((render_baked(g, v)[0].clamp(0, 1) - ref) ** 2).mean())
                    values.append(10 * math.log10(1 / max(mse, 1e-12)))
                rows[name].append(
                    {"fraction": fractions[k], "gaussians": g.count, "psnr": float(np.mean(values))}
                )
    for name, levels in rows.items():
        shown = ", ".join(f"{r['fraction']:g}: {r['psnr']:.2f} dB" for r in levels[1:])
        print(f"{name}: PSNR against the full detail ({len(views)} test views) {shown}")
    if a.tune:
        print(
            f"fine-tune: {a.tune} pass(es) over each block's training views per coarse level, {tune_s:.1f} s"
        )
    return {
        "run": str(a.quality),
        "views": len(views),
        "tune_epochs": a.tune,
        "tune_s": round(tune_s, 1),
        **rows,
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gaussians", type=int, default=5_000_000)
    p.add_argument("--blocks", type=int, default=20)
    p.add_argument("--levels", default=",".join(f"{v:g}" for v in DEFAULT_LEVELS))
    p.add_argument("--lod-prune", action="store_true", help="levels only pruned (default: merged)")
    p.add_argument("--out", help="keep the tileset here (default: a temporary folder, removed)")
    p.add_argument("--quality", metavar="RUN", help="measure the levels of a trained run instead")
    p.add_argument(
        "--tune", type=int, default=0, metavar="EPOCHS", help="--quality: also fine-tune each level"
    )
    a = p.parse_args(argv)
    row = bench_quality(a) if a.quality else bench_scale(a)
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
