"""The report's test views: each rendered by the run's model, beside its photo and an error map, with the
evaluation's metrics of that view."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image

from momentumgs.data.scene import Scene
from momentumgs.eval.measure import evaluate
from momentumgs.eval.results import EvalResult
from momentumgs.model.store import AnchorModel
from momentumgs.render.anchors import render_model_view
from momentumgs.render.view import camera_view

# mean absolute RGB error of a pixel shown at the colour map's top (fixed, so that maps compare across views)
ERROR_RANGE = 0.25
GAP = 4  # white pixels between the three panels


@dataclass
class RenderedViews:
    result: EvalResult  # the metrics, one row per view in `result.names`
    renders: dict[str, np.ndarray]  # view name -> [H, W, 3] uint8


def evaluate_with_renders(
    model: AnchorModel, scene: Scene, view_ids: Sequence[int], device: torch.device
) -> RenderedViews:
    """The evaluation of `view_ids` (eval.evaluate: raw and colour-corrected metrics), keeping each render."""
    renders = {}

    def render(i: int) -> torch.Tensor:
        image = render_model_view(model, camera_view(scene.cameras[i], device, i))  # [H, W, 3]
        renders[scene.cameras[i].name] = to_uint8(image)
        return image

    result = evaluate(render, scene, view_ids, device=device, progress=False)
    return RenderedViews(result, renders)


def renders_of(model: AnchorModel, scene: Scene, view_ids: Sequence[int], device) -> dict[str, np.ndarray]:
    """Each view's render (uint8 [H, W, 3]) by name, for a report whose metrics come from an earlier
    evaluation of the same model."""
    with torch.no_grad():
        return {
            scene.cameras[i].name: to_uint8(
                render_model_view(model, camera_view(scene.cameras[i], device, i))
            )
            for i in view_ids
        }


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[H, W, 3] float in [0, 1] -> uint8, as the photos are stored."""
    return (image.detach().clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()


def error_map(render: np.ndarray, photo: np.ndarray) -> np.ndarray:
    """Per-pixel mean absolute error of two uint8 images [H, W, 3], coloured (black: none; yellow-white:
    ERROR_RANGE or more). -> [H, W, 3] uint8"""
    err = np.abs(render.astype(np.float32) - photo.astype(np.float32)).mean(axis=2) / 255.0  # [H, W]
    rgba = colormaps["inferno"](np.clip(err / ERROR_RANGE, 0.0, 1.0))  # [H, W, 4]
    return (rgba[..., :3] * 255 + 0.5).astype(np.uint8)


def side_by_side(*images: np.ndarray, max_width: int = 1500) -> np.ndarray:
    """The images [H, W, 3] in a row with white gaps, scaled down to at most `max_width` pixels."""
    h = images[0].shape[0]
    gap = np.full((h, GAP, 3), 255, np.uint8)
    row = np.concatenate([part for image in images for part in (image, gap)][:-1], axis=1)
    if row.shape[1] > max_width:
        size = (max_width, max(1, round(row.shape[0] * max_width / row.shape[1])))
        row = np.asarray(Image.fromarray(row).resize(size, Image.LANCZOS))
    return row
