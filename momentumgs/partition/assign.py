"""Which train cameras train each block: the `CameraAssigner` interface and the two rules that need nothing
but the scene.

A camera always trains the block its centre lies in (`home_cameras`). `center` stops there; `visibility`
(the default) adds every block of which at least a threshold of the (margin-expanded) SfM points project
inside the camera's image, in front of it. There is no occlusion test: a camera that looks at a block through
a building still counts, which errs on the side of more views per block. The paper's rule, CityGaussian's
SSIM test on a rendered coarse model, loads a model and renders on a device, so it lives in
partition/ssim.py and is handed to `partition_scene` as an object (`partition.ssim.make_assigner`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from momentumgs.data.scene import Scene
from momentumgs.partition.bounds import PartitionError
from momentumgs.partition.grid import Partition
from momentumgs.partition.visibility import point_columns, points_seen

MAX_VISIBILITY_POINTS = 20_000  # per block, a fixed random subset for the visibility test (cost bound)


class CameraAssigner(ABC):
    """Which train cameras train each block: called once the blocks' cells and point ids are known.

    An object rather than a mode string so that a rule needing more than the scene (a model, a device)
    is built by the caller and handed to `partition_scene`, which then depends on none of it."""

    name: ClassVar[str]  # recorded as the partition's `assign`

    @abstractmethod
    def assign(self, scene: Scene, part: Partition) -> list[np.ndarray]:
        """Train camera ids [C_b] (sorted int64) for each block of `part`, in block order. The blocks'
        `point_ids` (cell plus margin) are set; their `camera_ids` are not yet."""


def home_cameras(scene: Scene, part: Partition) -> list[set[int]]:
    """Per block, the train cameras whose centre lies in its cell: every rule keeps these."""
    train = np.asarray(scene.train_ids, dtype=np.int64)
    centres = np.stack([scene.cameras[i].center for i in train]) if len(train) else np.zeros((0, 3))
    home = part.block_of_points(centres)  # [T]
    return [set(train[home == b.index].tolist()) for b in part.blocks]


def sorted_ids(chosen: list[set[int]]) -> list[np.ndarray]:
    return [np.array(sorted(c), dtype=np.int64) for c in chosen]


def sample_ids(ids: np.ndarray, k: int, seed: int) -> np.ndarray:
    if len(ids) <= k:
        return ids
    return np.sort(np.random.default_rng(seed).choice(ids, size=k, replace=False))


@dataclass(frozen=True)
class CenterAssigner(CameraAssigner):
    """A camera trains only the block its centre lies in."""

    name: ClassVar[str] = "center"

    def assign(self, scene: Scene, part: Partition) -> list[np.ndarray]:
        return sorted_ids(home_cameras(scene, part))


@dataclass(frozen=True)
class VisibilityAssigner(CameraAssigner):
    """The centre's block, plus every block of which at least `threshold` (in (0, 1]) of the
    (margin-expanded) points project into the camera's image, in front of it. No occlusion test: a block
    seen through a building still counts (more views rather than fewer)."""

    threshold: float = 0.25
    name: ClassVar[str] = "visibility"

    def assign(self, scene: Scene, part: Partition) -> list[np.ndarray]:
        chosen = home_cameras(scene, part)
        samples = [sample_ids(b.point_ids, MAX_VISIBILITY_POINTS, seed=b.index) for b in part.blocks]
        # What each camera sees, found once, gives every block's visible fraction of its sample.
        columns = point_columns(scene.points, part.axes[:2])
        seen = np.zeros(len(scene.points), dtype=bool)  # [P], cleared after each camera
        for cam_id in scene.train_ids:
            ids = points_seen(scene, cam_id, columns)
            seen[ids] = True
            for b, sample in zip(part.blocks, samples, strict=True):
                if len(sample) and seen[sample].mean() >= self.threshold:
                    chosen[b.index].add(int(cam_id))
            seen[ids] = False
        return sorted_ids(chosen)


def default_assigner(cfg) -> CameraAssigner:
    """The assigner `cfg.assign` names (cfg: a checked PartitionConfig), for the rules that need nothing but
    the scene."""
    if cfg.assign.mode == "ssim":
        raise PartitionError(
            "partition.assign.mode ssim renders a coarse model: pass partition_scene an assigner, "
            "momentumgs.partition.ssim.make_assigner(cfg.partition, device)"
        )
    if cfg.assign.mode == "center":
        return CenterAssigner()
    return VisibilityAssigner(cfg.assign.threshold)
