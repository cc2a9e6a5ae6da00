"""The paper's camera assignment (`partition.assign: ssim`): a camera trains block b if removing b's part of
a coarse model of the whole scene changes its render enough, 1 - SSIM(render without b, full render) >
threshold. This is CityGaussian's `block_partitioning` (data_partition.py), which Momentum-GS reuses;
there the block's Gaussians are those of its contracted cell; here the anchors of its half-open cell, the
same cells `merge` crops to. It needs a trained model (model.ckpt) in the scene's own world frame, and
costs one render per train view plus one per (view, block) whose anchors the view can see.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from momentumgs.anchor_render import render_anchor_view, visible_anchors
from momentumgs.data.scene import Scene
from momentumgs.metrics import ssim
from momentumgs.model.store import load_model
from momentumgs.partition import Partition
from momentumgs.render.view import camera_view


@torch.no_grad()
def ssim_losses(scene: Scene, part: Partition, model_path: str | Path, device="cpu") -> np.ndarray:
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
