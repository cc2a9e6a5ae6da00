"""What the momentum teacher does to a trained run: for some training views of each block, the norm of the
gradient that each loss term sends into each decoder head (opacity, colour, covariance MLPs) and into the
anchors' features, the photometric loss beside lambda_c times each consistency term, and the teacher-student
gap (each term's value).

A term whose gradient outweighs the photometric one on a head decides what that head learns: the teacher
then holds it back instead of steadying it. Reads the run's last checkpoint (student, teacher, blocks).

    python tools/teacher_probe.py runs/demo                 # 3 views of every block
    python tools/teacher_probe.py runs/demo --views 6 --shape covariance   # the covariance term instead

Prints a table per block and one JSON line per (block, view, term).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from momentumgs.checkpoint import load_checkpoint
from momentumgs.model.anchors import AnchorField
from momentumgs.model.decoder import covariances, decode_targets
from momentumgs.partition import load_partition
from momentumgs.render.anchors import render_anchor_view
from momentumgs.render.view import camera_view
from momentumgs.run_setup import load_scene, run_config
from momentumgs.train.decoder_state import decoder_spec
from momentumgs.train.losses import photometric_loss, volume_loss
from momentumgs.train.measure import gt_image
from momentumgs.train.paths import RunPaths

HEADS = ("mlp_opacity", "mlp_color", "mlp_cov")


def term_losses(student, target, shape: str) -> dict[str, torch.Tensor]:
    """Each consistency term of docs/method.md (Momentum teacher), unweighted."""
    terms = {"colour": F.mse_loss(student.colors, target.colors)}
    if shape == "covariance":
        s, t = covariances(student.quats, student.scales), covariances(target.quats, target.scales)
        terms["covariance"] = F.mse_loss(s, t)
    else:
        terms["quaternion"] = F.mse_loss(student.quats, target.quats)
        terms["scale"] = F.mse_loss(student.scales, target.scales)
    terms["opacity (all slots)"] = F.mse_loss(student.raw_opacity, target.raw_opacity)
    return terms


def gradient_norms(loss: torch.Tensor, decoder, features: torch.Tensor) -> dict[str, float]:
    """|d loss / d params| per decoder head, and over the anchors' features."""
    named = [(h, list(getattr(decoder, h).parameters())) for h in HEADS] + [("features", [features])]
    flat = [p for _, params in named for p in params]
    grads = torch.autograd.grad(loss, flat, retain_graph=True, allow_unused=True)
    out, i = {}, 0
    for name, params in named:
        parts = [g.flatten() for g in grads[i : i + len(params)] if g is not None]
        out[name] = float(torch.cat(parts).norm()) if parts else 0.0
        i += len(params)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", help="a run folder with a checkpoint of a run with a teacher")
    parser.add_argument("--views", type=int, default=3, help="training views per block")
    parser.add_argument("--shape", choices=["quaternion", "covariance"], help="default: the run's")
    args = parser.parse_args()
    torch.set_num_threads(1)

    paths = RunPaths(Path(args.run))
    cfg = run_config(paths.root)
    scene, partition = load_scene(cfg), load_partition(paths.partition)
    step_dir = paths.checkpoints / json.loads(paths.latest.read_text())["dir"]
    decoders = load_checkpoint(step_dir / "shared_rank0.ckpt")["decoders"][0]
    if not decoders["teacher"]:
        raise SystemExit(
            f"{args.run}: this run has no teacher (method.teacher.momentum or lambda_consistency is 0)"
        )
    spec = decoder_spec(cfg, scene)
    student, teacher = spec.build(), spec.build()
    student.load_state_dict(decoders["decoder"])
    teacher.load_state_dict(decoders["teacher"])
    shape = args.shape or cfg.experimental.consistency_shape
    lam, tc = cfg.method.teacher.lambda_consistency, cfg.train

    for block in partition.blocks:
        field = AnchorField.from_state_dict(
            load_checkpoint(step_dir / f"block_{block.index:03d}.ckpt")["anchors"]
        )
        features = field.features
        rows: dict[str, list[dict]] = {}
        for index in list(block.camera_ids)[: args.views]:
            view = camera_view(scene.cameras[index], "cpu", index)
            render = render_anchor_view(field, student, view)
            gt = gt_image(scene, index, "cpu")
            photo = photometric_loss(render.image, gt, tc.lambda_dssim).loss
            photo = photo + tc.lambda_volume * volume_loss(render.gaussians.scales)
            target = decode_targets(teacher, render.anchors, view.center, render.gaussians)
            losses = {
                "photometric": photo,
                **{k: lam * v for k, v in term_losses(render.gaussians, target, shape).items()},
            }
            for name, loss in losses.items():
                row = {"value": float(loss.detach()), **gradient_norms(loss, student, features)}
                rows.setdefault(name, []).append(row)
                print("JSON " + json.dumps({"block": block.index, "view": int(index), "term": name, **row}))
        print(
            f"\nblock {block.index}: mean over {args.views} views (consistency terms times lambda_c = {lam})"
        )
        print(f"| term | value | {' | '.join(HEADS)} | features |\n|---|---|---|---|---|---|")
        for name, values in rows.items():
            mean = {k: sum(r[k] for r in values) / len(values) for k in values[0]}
            cells = " | ".join(f"{mean[h]:.2e}" for h in (*HEADS, "features"))
            print(f"| {name} | {mean['value']:.2e} | {cells} |")


if __name__ == "__main__":
    main()
