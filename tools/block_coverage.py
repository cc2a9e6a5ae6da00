"""How much of what a block's training views show can the block's own anchors explain?

For each block and each way of choosing its start points (`partition.block_points`: cell, coverage, coarse,
all), prints the share of the SfM points visible in the block's views (in the image, in front; no occlusion
test) that lie OUTSIDE the block's start points: what the block's loss asks it to reproduce with no anchor
there. Also the start points and voxel anchors per block (memory grows with them). One JSON line per block and
mode.

    python tools/block_coverage.py                        # the cached demo city, configs/demo.yaml
    python tools/block_coverage.py --scene SCENE -c configs/demo.yaml --set partition.block_dim=[2,4,1]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import get_args

import numpy as np
import torch

from momentumgs.config import BlockPoints, load_config
from momentumgs.model.anchors import choose_voxel_size, voxelize
from momentumgs.partition import partition_scene, points_in_view
from momentumgs.run_setup import load_scene

ROOT = Path(__file__).resolve().parent.parent


def voxel_count(points: np.ndarray, voxel_size: float) -> int:
    """Anchors the voxel initialisation makes from `points` [Q, 3]."""
    return 0 if len(points) == 0 else int(voxelize(torch.from_numpy(points).float(), voxel_size).shape[0])


def outside_share(scene, camera_ids: np.ndarray, start_ids: np.ndarray) -> float:
    """Mean over the views of the share of their visible points that are not start points."""
    start = np.zeros(len(scene.points), dtype=bool)
    start[start_ids] = True
    shares = []
    for cam_id in camera_ids:
        seen = points_in_view(scene, int(cam_id), scene.points)  # [P] bool
        if seen.any():
            shares.append(float((seen & ~start).sum() / seen.sum()))
    return float(np.mean(shares)) if shares else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", "-c", default=str(ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--scene", help="COLMAP scene (default: the cached demo city)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    if args.scene:
        cfg.data.path = args.scene
    else:
        from momentumgs.demo import cached_demo_scene

        cfg.data.path = str(cached_demo_scene(size=cfg.demo.size, seed=cfg.demo.seed))
    scene = load_scene(cfg)
    voxel = cfg.model.voxel_size or choose_voxel_size(scene.points)
    print(f"scene {cfg.data.path}: {len(scene.points)} points, voxel {voxel:.4f}")
    print("| block points | block | views | start points | anchors | visible points outside the start |")
    print("|---|---|---|---|---|---|")
    for mode in get_args(BlockPoints):
        cfg.partition.block_points = mode
        part = partition_scene(scene, cfg.partition)
        for b in part.blocks:
            row = {
                "block_points": mode,
                "block": b.index,
                "views": len(b.camera_ids),
                "start_points": len(b.point_ids),
                "anchors": voxel_count(scene.points[b.point_ids], voxel),
                "outside_share": outside_share(scene, b.camera_ids, b.point_ids),
            }
            print(
                f"| {mode} | {b.index} | {row['views']} | {row['start_points']} | {row['anchors']} | "
                f"{row['outside_share']:.3f} |"
            )
            print("JSON " + json.dumps(row))


if __name__ == "__main__":
    main()
