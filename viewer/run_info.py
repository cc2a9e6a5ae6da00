"""What a run folder tells the viewer besides the model: its training cameras, the world's up axis, the
block cells of a multi-block run and each block's metrics (training log and the test evaluation)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from momentumgs.data.scene import Camera, Scene
from momentumgs.errors import UserError
from momentumgs.partition import Partition, load_partition, parse_up_axis
from momentumgs.report.blocks import block_metric_rows


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


def load_run_scene(run_dir: Path) -> Scene | None:
    """The run's scene (cameras only are needed), or None with a warning when it cannot be loaded."""
    from momentumgs.config import load_config
    from momentumgs.run_setup import load_scene

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
