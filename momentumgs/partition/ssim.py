"""The paper's camera assignment (`partition.assign.mode: ssim`): a camera trains block b if removing b's
part of a coarse model of the whole scene changes its render enough, 1 - SSIM(render without b, full render)
> threshold. This is CityGaussian's `block_partitioning` (data_partition.py), which Momentum-GS reuses;
there the block's Gaussians are those of its contracted cell; here the anchors of its half-open cell, the
same cells `merge` crops to. It needs a trained model (model.ckpt) in the scene's own world frame, and
costs one render per train view plus one per (view, block) whose anchors the view can see.

`make_assigner` builds the camera assigner of any `partition.assign.mode`; the callers that partition (the
CLI, a run) use it, so that the rest of `momentumgs.partition` never loads or renders a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from momentumgs.config import check_config
from momentumgs.data.scene import Scene
from momentumgs.metrics import ssim
from momentumgs.model.store import load_model
from momentumgs.partition.assign import CameraAssigner, default_assigner, home_cameras, sorted_ids
from momentumgs.partition.bounds import PartitionError
from momentumgs.partition.grid import Partition
from momentumgs.render.anchors import render_anchor_view, visible_anchors
from momentumgs.render.view import camera_view


@torch.no_grad()
def ssim_losses(
    scene: Scene, part: Partition, model_path: str | Path, device: torch.device | str
) -> np.ndarray:
    """1 - SSIM of each train view's render without each block's anchors against its full render.

    -> [T, B] float64 over scene.train_ids x part.blocks; 0 where the view sees none of a block's anchors
    (removing them cannot change the image).
    """
    model = load_model(model_path, device)
    field, decoder = model.field, model.decoder
    owner = torch.as_tensor(
        part.block_of_points(field.positions.cpu().numpy()), device=field.positions.device
    )
    losses = np.zeros((len(scene.train_ids), len(part.blocks)))
    for row, cam_id in enumerate(scene.train_ids):
        view = camera_view(scene.cameras[cam_id], device, cam_id)
        visible = visible_anchors(field, view)  # [N] bool
        full = render_anchor_view(field, decoder, view, visible=visible).image  # [H, W, 3]
        for b in part.blocks:
            in_block = owner == b.index
            if not (visible & in_block).any():
                continue
            without = render_anchor_view(field, decoder, view, visible=visible & ~in_block).image
            losses[row, b.index] = 1.0 - float(ssim(without, full))
    return losses


@dataclass(frozen=True)
class SSIMAssigner(CameraAssigner):
    """The centre's block, plus every block whose removal from the coarse model at `coarse_model` changes
    the camera's render by 1 - SSIM > `threshold` (in (0, 2)). Loads the model and renders on `device`."""

    coarse_model: str | Path
    threshold: float
    device: torch.device | str
    name: ClassVar[str] = "ssim"

    def assign(self, scene: Scene, part: Partition) -> list[np.ndarray]:
        chosen = home_cameras(scene, part)
        losses = ssim_losses(scene, part, self.coarse_model, self.device)  # [T, B]
        for row, b in zip(*np.nonzero(losses > self.threshold), strict=True):
            chosen[b].add(int(scene.train_ids[row]))
        return sorted_ids(chosen)


def make_assigner(cfg, device: torch.device | str) -> CameraAssigner:
    """The camera assigner `cfg.assign` names (cfg: a PartitionConfig); "ssim" renders on `device`.
    Checks `cfg` first (the schema's check), so its errors come in the order `partition_scene` gives them."""
    check_config(cfg, "partition.")
    assign = cfg.assign
    if assign.mode != "ssim":
        return default_assigner(cfg)
    if not assign.coarse_model:
        raise PartitionError(
            "partition.assign.mode ssim needs partition.assign.coarse_model (a trained model.ckpt)"
        )
    return SSIMAssigner(assign.coarse_model, assign.threshold, device)
