"""What a run folder tells the viewer besides the model: its training cameras, the world's up axis, the
block cells of a multi-block run and each block's metrics (training log and the test evaluation)."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from momentumgs.data.scene import Camera, Scene
from momentumgs.errors import UserError
from momentumgs.partition import Partition, load_partition, parse_up_axis
from momentumgs.train.metrics_log import read_metrics


@dataclass
class BlockBox:
    index: int
    world_min: np.ndarray  # [3]
    world_max: np.ndarray  # [3]


@dataclass
class RunInfo:
    train_cameras: list[Camera] = field(default_factory=list)
    up: np.ndarray | None = None  # [3] world up, when known
    blocks: list[BlockBox] = field(default_factory=list)
    block_metrics: list[dict] = field(default_factory=list)  # one row per block, for the GUI table


def up_vector(axis_text: str) -> np.ndarray:
    axis, sign = parse_up_axis(axis_text)
    up = np.zeros(3)
    up[axis] = sign
    return up


def block_boxes(partition: Partition) -> list[BlockBox]:
    """The cells' parts inside the AABB (border cells also own the unbounded outside, not drawn)."""
    return [
        BlockBox(b.index, np.asarray(b.world_min), np.asarray(b.world_max))
        for b in partition.blocks
        if b.world_min is not None and b.world_max is not None
    ]


def last_train_records(metrics_path: Path) -> dict[int, dict]:
    """Block id -> its last logged training record in metrics.jsonl."""
    records: dict[int, dict] = {}
    for record in read_metrics(metrics_path, kind="train"):
        for b, block in record["blocks"].items():
            records[int(b)] = block
    return records


def test_psnr_by_block(eval_path: Path, scene: Scene, partition: Partition) -> dict[int, float]:
    """Mean test PSNR of the views whose camera centre lies in each block's cell."""
    if not eval_path.is_file():
        return {}
    per_image = json.loads(eval_path.read_text()).get("per_image", {})
    camera_of = {c.name: c for c in scene.cameras}
    pairs = [
        (camera_of[n], p)
        for n, p in zip(per_image.get("image", []), per_image.get("psnr", []), strict=True)
        if n in camera_of
    ]
    if not pairs:
        return {}
    owners = partition.block_of_points(np.stack([c.center for c, _ in pairs]))
    values: dict[int, list[float]] = {}
    for owner, (_, p) in zip(owners, pairs, strict=True):
        values.setdefault(int(owner), []).append(float(p))
    return {b: float(np.mean(v)) for b, v in values.items()}


def block_metric_rows(
    run_dir: Path, scene: Scene | None, partition: Partition, model_info: dict
) -> list[dict]:
    train = last_train_records(run_dir / "metrics.jsonl")
    test = test_psnr_by_block(run_dir / "eval" / "eval_test.json", scene, partition) if scene else {}
    anchors = model_info.get("anchors_per_block") or []
    rows = []
    for b in partition.blocks:
        record = train.get(b.index, {})
        rows.append(
            {
                "block": b.index,
                "views": len(b.camera_ids),
                "anchors": anchors[b.index] if b.index < len(anchors) else None,
                "train_psnr": record.get("psnr"),
                "weight": record.get("weight"),
                "test_psnr": test.get(b.index),
            }
        )
    return rows


def metrics_markdown(rows: list[dict]) -> str:
    def fmt(v, spec: str) -> str:
        return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)

    lines = ["| block | views | anchors | train PSNR | test PSNR | weight |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['block']} | {r['views']} | {fmt(r['anchors'], 'd')} | {fmt(r['train_psnr'], '.2f')} "
            f"| {fmt(r['test_psnr'], '.2f')} | {fmt(r['weight'], '.3f')} |"
        )
    return "\n".join(lines)


def load_run_scene(run_dir: Path) -> Scene | None:
    """The run's scene (cameras only are needed), or None with a warning when it cannot be loaded."""
    from momentumgs.config import load_config
    from momentumgs.run import load_scene

    try:
        return load_scene(load_config(run_dir / "config.yaml"))
    except (UserError, OSError) as exc:
        print(f"momentumgs view: warning: no cameras shown ({exc})", file=sys.stderr)
        return None


def scene_up(scene: Scene) -> np.ndarray | None:
    from momentumgs.partition import detect_up_axis

    try:
        return up_vector(detect_up_axis(scene))
    except UserError:
        return None


def load_run_info(run_dir: Path, model_info: dict, scene: Scene | None = None) -> RunInfo:
    """Everything but the model from a run folder (a missing part is left empty)."""
    scene = scene if scene is not None else load_run_scene(run_dir)
    info = RunInfo()
    if scene is not None:
        info.train_cameras = scene.train_cameras
        info.up = scene_up(scene)
    partition_path = run_dir / "partition.json"
    if partition_path.is_file():
        partition = load_partition(partition_path)
        info.up = up_vector(partition.up_axis)
        info.blocks = block_boxes(partition)
        info.block_metrics = block_metric_rows(run_dir, scene, partition, model_info)
    return info


def training_run_info(scene: Scene, partition: Partition | None) -> RunInfo:
    """Cameras and block cells of a run still training (no metrics yet)."""
    info = RunInfo(train_cameras=scene.train_cameras, up=scene_up(scene))
    if partition is not None:
        info.up = up_vector(partition.up_axis)
        info.blocks = block_boxes(partition)
    return info
