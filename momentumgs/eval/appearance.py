"""Test-time appearance: which row of its per-photo appearance table (exposure gains or an embedding) a model
renders a test view with (docs/rendering.md, Appearance at test time). "Embedding" below means such a row.

A test photo's own row of the table is never trained, so evaluation must choose. Three protocols, each named
in the eval output:

- "mean"    (a) the neutral appearance, the mean of the training photos' embeddings; metrics on the whole
            image. The default, and what `view`, `render` and `export` show.
- "nearest" (b) the embedding of the training photo whose camera centre is nearest the test camera's (same
            capture moment, most likely the same exposure); whole image.
- "half"    (c) NeRF-W's protocol: an embedding fitted to the left half of the test photo (Adam on the L1
            error, decoder and anchors frozen, starting from the neutral one), metrics on the right half
            only. A model without an embedding is measured on the same right half, so that the two compare.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from momentumgs.data.scene import Scene
from momentumgs.errors import UserError
from momentumgs.model.appearance import resolve_appearance, trained_rows
from momentumgs.model.decoder import Appearance
from momentumgs.render.anchors import render_anchor_view, visible_anchors
from momentumgs.render.view import View

PROTOCOLS = {
    "mean": "(a) neutral: the mean embedding of the training photos; whole image",
    "nearest": "(b) the embedding of the training photo with the nearest camera centre; whole image",
    "half": "(c) NeRF-W: embedding fitted to the left half of the test photo; metrics on the right half",
}
FIT_STEPS = 50
FIT_LR = 0.1


def left_half(view: View) -> View:
    """The view's columns [0, W // 2): the same camera with half the width (the principal point stays)."""
    return dataclasses.replace(view, width=view.width // 2)


def right_half(image: torch.Tensor) -> torch.Tensor:
    """Columns [W // 2, W) of an image [H, W, C], the part the "half" protocol measures."""
    return image[:, image.shape[1] // 2 :]


def nearest_training_image(scene: Scene, index: int, candidates: list[int]) -> int:
    """The training photo (of `candidates`, embedding rows that were trained) whose camera centre is
    nearest that of camera `index`."""
    centers = np.stack([scene.cameras[i].center for i in candidates])  # [C, 3]
    distance = np.linalg.norm(centers - scene.cameras[index].center, axis=1)
    return candidates[int(np.argmin(distance))]


def fit_embedding(
    model, view: View, photo: torch.Tensor, steps: int = FIT_STEPS, lr: float = FIT_LR
) -> torch.Tensor:
    """An embedding [A] fitted to the left half of `photo` [H, W, 3] (in [0, 1]) seen from `view`, with the
    model frozen. -> [A]"""
    decoder = model.decoder
    start = resolve_appearance(decoder, None, model.info)  # the neutral appearance
    embedding = start.detach().clone().requires_grad_(True)
    half = left_half(view)
    target = photo[:, : half.width]  # [H, W // 2, 3]
    visible = visible_anchors(model.field, half)
    optimizer = torch.optim.Adam([embedding], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            render = render_anchor_view(model.field, decoder, half, visible=visible, appearance=embedding)
            loss = (render.image - target).abs().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return embedding.detach()


class AppearanceProtocol:
    """The appearance each test view is rendered with under `protocol`, and the image region measured."""

    def __init__(self, protocol: str, model, scene: Scene):
        if protocol not in PROTOCOLS:
            raise UserError(f"--appearance {protocol}: choose one of {', '.join(PROTOCOLS)}")
        self.protocol = protocol
        self.model = model
        self.scene = scene
        self.has_embedding = model.decoder.appearance is not None
        if self.has_embedding and protocol == "half" and model.block_decoders is not None:
            raise UserError("--appearance half: fits one embedding, for models with one shared decoder")
        rows = model.decoder.appearance.num_embeddings if self.has_embedding else 0
        self.trained = trained_rows(model.info, rows)
        self._fitted: dict[int, torch.Tensor] = {}

    def prepare(self, index: int, view: View, photo: torch.Tensor) -> None:
        """Work done before the timed render of view `index` (the "half" protocol's fit)."""
        if self.protocol == "half" and self.has_embedding:
            self._fitted[index] = fit_embedding(self.model, view, photo)

    def appearance(self, index: int) -> Appearance:
        """What render_model_view is given for test view `index` (None: the neutral appearance)."""
        if not self.has_embedding or self.protocol == "mean":
            return None
        if self.protocol == "nearest":
            return nearest_training_image(self.scene, index, self.trained)
        return self._fitted.pop(index)

    def crop(self, image: torch.Tensor) -> torch.Tensor:
        """The measured region of a rendered or ground-truth image [H, W, 3]."""
        return right_half(image) if self.protocol == "half" else image

    def describe(self) -> dict:
        return {
            "protocol": self.protocol,
            "description": PROTOCOLS[self.protocol],
            "model_has_embedding": self.has_embedding,
            "measured_region": "right half" if self.protocol == "half" else "whole image",
        }
