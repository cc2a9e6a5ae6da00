"""Merge finished runs' trained blocks by each rule of `partition.merge` and measure the merged models on the
test views, so that the rules are compared on the same trained blocks (nothing is retrained or written).
Each merged model then has its seams refined as training does (the run's `partition.seam_steps`, its band
and seed; `--seam-steps 0` measures the plain merges), so the default rule reproduces the run's model.

    python tools/merge_rules.py runs/ablation-survey/full/seed-0 runs/ablation-survey/full/seed-1 ...

Per run and rule: PSNR / SSIM / LPIPS (VGG), raw and colour-corrected, the PSNR of the pixels near block
borders and of the rest (as tools/ablation.py: pixels within `--seam-radius` of a surface owned by another
block, the owners found from the depth of the run merged by the default rule, the same masks for every
rule), the anchors and allowed slots of the merged field. Then mean ± std over the runs per rule, and the
paired differences of each rule against `anchors`. One `JSON {...}` line per run and rule, per rule and per
difference, then a Markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import get_args

import torch
from ablation import (
    block_id_map,
    border_mask,
    cell,
    eval_views,
    json_line,
    masked_psnr,
    nan_mean,
    spread,
)

from momentumgs.checkpoint import load_checkpoint
from momentumgs.config import MergeRule, load_config
from momentumgs.eval.measure import evaluate
from momentumgs.merge import allowed_slots, merge_blocks
from momentumgs.model.anchors import AnchorField
from momentumgs.model.store import AnchorModel, load_model
from momentumgs.partition import load_partition
from momentumgs.render.anchors import render_model_view
from momentumgs.render.view import camera_view
from momentumgs.run_setup import load_scene
from momentumgs.train.measure import spatial_scale
from momentumgs.train.paths import RunPaths
from momentumgs.train.seams import refine_seams

MERGE_RULES = get_args(MergeRule)  # partition.merge's choices, the schema's
# key, cell format
KEYS = {
    "psnr": ".2f",
    "ssim": ".4f",
    "lpips_vgg": ".4f",
    "psnr_cc": ".2f",
    "psnr_border": ".2f",
    "psnr_interior": ".2f",
    "anchors": ".0f",
    "slots": ".0f",
}


def merged_models(run: Path, scene, cfg, seam_steps: int) -> tuple[dict[str, AnchorModel], object]:
    """The run's blocks merged by every rule, with the run's decoder, their seams refined for `seam_steps`.
    -> {rule: model}, partition"""
    paths = RunPaths(run)
    saved = load_model(paths.model)
    if saved.block_decoders is not None:
        raise SystemExit(f"{run}: a run with per-block decoders (independent blocks); merge it by hand")
    partition = load_partition(paths.partition)
    fields = {
        b: AnchorField.from_state_dict(load_checkpoint(paths.block_file(b))["anchors"])
        for b in range(len(partition.blocks))
    }
    train_views = {i: camera_view(scene.cameras[i], "cpu", i) for i in scene.train_ids}
    scale = spatial_scale(scene, scene.train_ids)
    models = {}
    for rule in MERGE_RULES:
        field, counts = merge_blocks(fields, partition, rule)
        info = {**saved.info, "anchors_per_block": counts}
        if seam_steps > 0:
            band, seed = cfg.partition.seam_band, cfg.train.seed
            args = (scene, train_views, partition, cfg.train, scale, seam_steps, band, seed)
            refine_seams(field, saved.decoder, *args, rule=rule)
        models[rule] = AnchorModel(field, saved.decoder, saved.spec, info)
    return models, partition


def measure_run(run: Path, seam_radius: int, seam_steps: int | None) -> dict[str, dict]:
    cfg = load_config(RunPaths(run).config)
    scene = load_scene(cfg)
    steps = cfg.partition.seam_steps if seam_steps is None else seam_steps
    models, partition = merged_models(run, scene, cfg, steps)
    with torch.no_grad():
        return measure_models(run, scene, models, partition, seam_radius)


def measure_models(run: Path, scene, models: dict[str, AnchorModel], partition, seam_radius: int) -> dict:
    views = eval_views(scene)
    reference = models[MERGE_RULES[0]]
    masks = {i: border_mask(block_id_map(reference, v, partition), seam_radius) for i, v in views.items()}
    rows = {}
    for rule, model in models.items():
        renders = {}  # the evaluation's own renders, reused for the seam PSNRs

        def render(i, model=model, renders=renders):
            renders[i] = image = render_model_view(model, views[i])
            return image

        means = evaluate(render, scene, scene.test_ids).means
        border, interior = [], []
        for i in views:
            image = renders[i]
            gt = torch.from_numpy(scene.load_image(i)).float() / 255
            border.append(masked_psnr(image, gt, masks[i]))
            interior.append(masked_psnr(image, gt, ~masks[i]))
        field = model.field
        rows[rule] = {
            **{k: means[k] for k in ("psnr", "ssim", "lpips_vgg", "psnr_cc")},
            "psnr_border": nan_mean(border),
            "psnr_interior": nan_mean(interior),
            "anchors": field.n_anchors,
            "slots": int(allowed_slots(field).sum()),
        }
        print(json_line({"kind": "run", "run": str(run), "rule": rule, **rows[rule]}), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="finished multi-block run folders")
    parser.add_argument("--seam-radius", type=int, default=3, help="pixels counted as near a block border")
    parser.add_argument(
        "--seam-steps", type=int, default=None, help="seam refinement steps (default: each run's; 0: none)"
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = [measure_run(run, args.seam_radius, args.seam_steps) for run in args.runs]
    lines = ["| rule | " + " | ".join(KEYS) + " |", "|---" * (len(KEYS) + 1) + "|"]
    for rule in MERGE_RULES:
        stats = {k: spread([r[rule][k] for r in results]) for k in KEYS}
        print(json_line({"kind": "rule", "rule": rule, **stats}))
        lines.append(f"| {rule} | " + " | ".join(cell(stats[k], f) for k, f in KEYS.items()) + " |")
    for rule in MERGE_RULES[:-1]:
        diff = {k: spread([r[rule][k] - r["anchors"][k] for r in results]) for k in KEYS}
        print(json_line({"kind": "difference", "a": rule, "b": "anchors", **diff}))
        cells = [cell(diff[k], f, signed=True) for k, f in KEYS.items()]
        lines.append(f"| {rule} − anchors | " + " | ".join(cells) + " |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
