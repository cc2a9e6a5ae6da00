"""Optional refinement of a bake: a few passes of gradient descent on the baked opacities, log-scales and SH
so that renders of the explicit Gaussians match renders of the anchor model from the training cameras.

The bake's per-slot summaries (one opacity and shape for every view) cannot reproduce a decoder that makes
a Gaussian strong in some views and absent in others; fitting the images themselves recovers part of that
loss. Means and rotations stay fixed, so the Gaussian set and the file layout do not change. The targets
are the anchor model's renders (not the photos): the bake imitates the model, it does not retrain it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from momentumgs.data.scene import Camera, Scene
from momentumgs.export.gaussians import BakedGaussians, render_baked
from momentumgs.render.anchors import render_model_view
from momentumgs.render.view import camera_view

_OPACITY_EPS = 1e-4
TARGET_CACHE_BYTES = 1 << 30


def refine_baked(
    baked: BakedGaussians,
    model,
    scene_or_cameras: Scene | Sequence[Camera],
    steps: int,
    lr_opacity: float = 0.02,
    lr_scale: float = 0.005,
    lr_sh: float = 0.0025,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
    appearance: int | None = None,
) -> BakedGaussians:
    """`steps` Adam steps of the L1 image loss against the anchor model's render (in the appearance of
    training photo row `appearance`, by default the neutral one), one training camera per step in a seeded
    random order. -> new BakedGaussians (the input is left unchanged)"""
    cams = _cameras(scene_or_cameras)
    if steps <= 0 or not cams:
        return baked
    device = model.field.positions.device
    g = baked.to(device)
    logit = torch.logit(g.opacities.clamp(_OPACITY_EPS, 1 - _OPACITY_EPS)).clone().requires_grad_(True)
    log_scales = g.scales.log().clone().requires_grad_(True)
    sh = g.sh.clone().requires_grad_(True)
    opt = torch.optim.Adam(
        [
            {"params": [logit], "lr": lr_opacity},
            {"params": [log_scales], "lr": lr_scale},
            {"params": [sh], "lr": lr_sh},
        ]
    )
    order = _view_order(len(cams), steps, seed)
    # The anchor renders are kept between epochs while they fit in TARGET_CACHE_BYTES.
    cache = sum(c.width * c.height * 12 for c, _ in cams) <= TARGET_CACHE_BYTES
    targets: dict[int, torch.Tensor] = {}
    for step in range(steps):
        cam, index = cams[int(order[step])]
        view = camera_view(cam, device, index)
        target = targets.get(index)
        if target is None:
            with torch.no_grad():
                target = render_model_view(model, view, appearance=appearance).clamp(0.0, 1.0)
            if cache:
                targets[index] = target
        current = BakedGaussians(g.means, g.quats, log_scales.exp(), torch.sigmoid(logit), sh)
        loss = (render_baked(current, view)[0] - target).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress is not None:
            progress(step, float(loss.detach()))
    info = {**baked.info, "refine_steps": steps}
    with torch.no_grad():
        return BakedGaussians(
            g.means, g.quats, log_scales.exp().detach(), torch.sigmoid(logit).detach(), sh.detach(), info
        )


def _cameras(scene_or_cameras: Scene | Sequence[Camera]) -> list[tuple[Camera, int]]:
    """(camera, its index in the scene) of a Scene's training cameras, or of the given cameras."""
    if isinstance(scene_or_cameras, Scene):
        return [(scene_or_cameras.cameras[i], i) for i in scene_or_cameras.train_ids]
    return [(c, i) for i, c in enumerate(scene_or_cameras)]


def _view_order(n_views: int, steps: int, seed: int) -> torch.Tensor:
    """The view of each step: a seeded random order, each view once per epoch. [steps or more]"""
    gen = torch.Generator().manual_seed(seed)
    epochs = -(-steps // n_views)
    return torch.cat([torch.randperm(n_views, generator=gen) for _ in range(epochs)])
