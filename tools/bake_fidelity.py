"""How faithful is the export? Render the test views with a run's anchor model and with its baked Gaussians
(written to PLY / SPZ and read back, as other tools would read them) and compare.

    python tools/bake_fidelity.py RUN                       # default bake, plus a refined one
    python tools/bake_fidelity.py RUN --refine 0 --variants opacity=mean opacity=kept shape=mean sh_degree=0

For each variant: Gaussian count, bake time, file sizes, PSNR of the baked renders against the anchor
model's renders, PSNR / SSIM / LPIPS-VGG of each against the ground truth (raw, not colour-corrected), and
the same for the SPZ file (its 8-bit quantisation). One JSON line per variant, then a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from momentumgs.eval.measure import evaluate
from momentumgs.export import bake, read_ply, read_spz, render_baked, write_ply, write_splat, write_spz
from momentumgs.export.commands import load_run
from momentumgs.export.refine import refine_baked
from momentumgs.metrics import psnr
from momentumgs.render.anchors import render_model_view
from momentumgs.render.view import camera_view
from momentumgs.run_setup import load_scene


def parse_variant(text: str) -> dict:
    """ "opacity=mean,shape=central" -> keyword arguments of `bake` ("default" -> {})."""
    if text == "default":
        return {}
    out = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        out[key] = int(value) if value.lstrip("-").isdigit() else (float(value) if "." in value else value)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="run folder (model.ckpt, config.yaml)")
    ap.add_argument("--variants", nargs="+", default=["default"], help="bake options, e.g. opacity=kept")
    ap.add_argument(
        "--refine",
        type=int,
        nargs="*",
        default=[0, 2],
        metavar="EPOCHS",
        help="refinement passes over the training views to try for each variant",
    )
    ap.add_argument("--out", help="keep the exported files here (default: a temporary folder)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model, cfg = load_run(args.run)
    scene = load_scene(cfg)
    ids = list(scene.test_ids)
    views = {i: camera_view(scene.cameras[i], "cpu", i) for i in ids}
    with torch.no_grad():
        anchor_imgs = {i: render_model_view(model, v).clamp(0, 1) for i, v in views.items()}
        anchor = evaluate(anchor_imgs.__getitem__, scene, ids).means
    rows = []
    out_root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bake_fidelity_"))
    for variant in args.variants:
        kwargs = parse_variant(variant)
        t0 = time.perf_counter()
        base = bake(model, scene, **kwargs)
        bake_s = time.perf_counter() - t0
        for epochs in args.refine:
            t1 = time.perf_counter()
            baked = refine_baked(base, model, scene, epochs * len(scene.train_ids))
            refine_s = time.perf_counter() - t1
            name = variant + (f"+refine{epochs}" if epochs else "")
            rows.append(
                measure(name, baked, scene, ids, views, anchor_imgs, out_root / name.replace("=", "-"))
            )
            rows[-1].update({"bake_s": round(bake_s, 2), "refine_s": round(refine_s, 2), "anchor": anchor})
            print(json.dumps(rows[-1]), flush=True)
    print_table(anchor, rows)
    return 0


def measure(name, baked, scene, ids, views, anchor_imgs, folder: Path) -> dict:
    paths = {"ply": folder / "model.ply", "spz": folder / "model.spz", "splat": folder / "model.splat"}
    write_ply(paths["ply"], baked)
    write_spz(paths["spz"], baked)
    write_splat(paths["splat"], baked)
    row = {"variant": name, "gaussians": baked.count, "info": {k: v for k, v in baked.info.items()}}
    row["bytes"] = {k: p.stat().st_size for k, p in paths.items()}
    for fmt, reader in (("ply", read_ply), ("spz", read_spz)):
        g = reader(paths[fmt])
        with torch.no_grad():
            imgs = {i: render_baked(g, v)[0].clamp(0, 1) for i, v in views.items()}
        vs_anchor = [float(psnr(imgs[i], anchor_imgs[i])) for i in ids]
        row[fmt] = {
            "psnr_vs_anchor": sum(vs_anchor) / len(vs_anchor),
            **evaluate(imgs.__getitem__, scene, ids).means,
        }
    return row


def print_table(anchor: dict, rows: list[dict]) -> None:
    head = (
        f"{'model':34s} {'Gaussians':>9s} {'PLY MB':>7s} {'SPZ MB':>7s} {'splat MB':>8s} "
        f"{'vs anchor':>9s} {'PSNR':>6s} {'SSIM':>6s} {'LPIPS':>6s} {'SPZ PSNR':>8s}"
    )
    print(head, file=sys.stdout)
    print(
        f"{'anchor model':34s} {'':>9s} {'':>7s} {'':>7s} {'':>8s} {'':>9s} "
        f"{anchor['psnr']:6.2f} {anchor['ssim']:6.4f} {anchor['lpips_vgg']:6.4f}"
    )
    for r in rows:
        b, p = r["bytes"], r["ply"]
        print(
            f"{r['variant']:34s} {r['gaussians']:9d} {b['ply'] / 1e6:7.2f} {b['spz'] / 1e6:7.2f} "
            f"{b['splat'] / 1e6:8.2f} {p['psnr_vs_anchor']:9.2f} {p['psnr']:6.2f} {p['ssim']:6.4f} "
            f"{p['lpips_vgg']:6.4f} {r['spz']['psnr']:8.2f}"
        )


if __name__ == "__main__":
    sys.exit(main())
