"""What the viewer renders: the current model, swapped atomically, and how one frame of it is made."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import torch

from momentumgs.model.store import AnchorModel
from momentumgs.render.anchors import render_model_view
from momentumgs.render.view import View

BACKGROUND = (0.0, 0.0, 0.0)


class ModelHolder:
    """The model being shown. A trainer's snapshots replace it; every replacement bumps `version` and
    tells the listeners (the viewer re-renders its clients)."""

    def __init__(self, model: AnchorModel | None = None):
        self._lock = threading.Lock()
        self._model = model
        self.version = 0 if model is None else 1
        self._listeners: list[Callable[[], None]] = []

    def get(self) -> AnchorModel | None:
        with self._lock:
            return self._model

    def set(self, model: AnchorModel) -> None:
        with self._lock:
            self._model = model
            self.version += 1
            listeners = list(self._listeners)
        for listener in listeners:
            listener()

    def on_change(self, listener: Callable[[], None]) -> None:
        with self._lock:
            self._listeners.append(listener)


def is_baked(content) -> bool:
    """Explicit Gaussians (the exporter's BakedGaussians) rather than an AnchorModel?"""
    return hasattr(content, "sh") and hasattr(content, "means")


def content_positions(content) -> np.ndarray | None:
    """Anchor positions or Gaussian means [N, 3] (for camera placement), None when empty."""
    if content is None:
        return None
    points = content.means if is_baked(content) else content.field.positions
    return points.detach().cpu().numpy() if points.shape[0] else None


def content_summary(content) -> str:
    if content is None:
        return "waiting for the first model snapshot"
    if is_baked(content):
        return f"{content.count} baked Gaussians (SH degree {content.sh_degree})"
    live = " (training, live)" if content.info.get("live") else ""
    return f"{content.field.n_anchors} anchors, iteration {content.info.get('iteration', '?')}{live}"


NEUTRAL_APPEARANCE = "neutral (mean of the photos)"


def appearance_choices(content) -> list[str]:
    """The appearances an AnchorModel can be shown in: neutral, then each training photo's (by name); empty
    for a model without a per-photo appearance table or baked Gaussians."""
    if content is None or is_baked(content) or content.decoder.appearance is None:
        return []
    return [NEUTRAL_APPEARANCE] + [row["name"] for row in content.info.get("appearance_images", [])]


def appearance_of_choice(content, choice: str | None) -> int | None:
    """The embedding row of a drop-down choice (None: the neutral appearance)."""
    if choice is None or choice == NEUTRAL_APPEARANCE or is_baked(content):
        return None
    from momentumgs.model.appearance import appearance_image_row

    return appearance_image_row(content.info, choice)


@torch.no_grad()
def render_rgb8(content, view: View, appearance: int | None = None) -> np.ndarray:
    """One frame of an AnchorModel (in the appearance of training photo row `appearance`, by default the
    neutral one) or of baked Gaussians as uint8 [H, W, 3]; black while there is none."""
    if content_positions(content) is None:
        return np.zeros((view.height, view.width, 3), dtype=np.uint8)
    background = torch.tensor(BACKGROUND, dtype=torch.float32, device=view.viewmat.device)
    if is_baked(content):
        from momentumgs.export.gaussians import render_baked

        image = render_baked(content, view, background)[0]
    else:
        image = render_model_view(content, view, background, appearance=appearance)
    return (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
