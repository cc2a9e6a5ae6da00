"""A model of baked Gaussians cut into chunks with levels of detail, for streaming it to the browser
(viewer/streaming.py chooses the levels; docs/rendering.md, Viewer).

The chunks are the cells of a grid over the model's ground plan (its two longest bounding-box axes), sized
for about `CHUNK_TARGET` Gaussians each, so the camera's distance tells them apart whatever the model's
partition was; each chunk's levels are those of the 3D Tiles export (momentumgs/export/lod.py:
`make_levels`, most important Gaussians kept, dropped ones merged into them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .splats import browser_splat_arrays
from .streaming import ChunkLevels

CHUNK_TARGET = 50_000  # Gaussians per chunk, about
MAX_CELLS = 32  # per side of the grid


class BakedChunks:
    """Chunks held in memory as viser's splat arrays: `levels` for the selection, `arrays(c, l)` to send."""

    def __init__(self, arrays: list[list[dict[str, np.ndarray]]], levels: ChunkLevels):
        self._arrays = arrays
        self.levels = levels

    def arrays(self, chunk: int, level: int) -> dict[str, np.ndarray]:
        return self._arrays[chunk][level]


def chunk_target(budget: int) -> int:
    """Gaussians per chunk for a splat budget: a sixteenth of it (the budget is spent in steps of a chunk's
    level), at most CHUNK_TARGET, at least 1000."""
    return int(min(CHUNK_TARGET, max(budget // 16, 1000)))


def grid_cells(means: np.ndarray, target: int = CHUNK_TARGET) -> np.ndarray:
    """The grid cell of each point [M] on its two longest bounding-box axes, cells x cells with
    cells = ceil(sqrt(M / target)) (at most MAX_CELLS)."""
    m = len(means)
    cells = int(min(MAX_CELLS, max(1, math.ceil(math.sqrt(m / max(target, 1))))))
    lo, hi = means.min(axis=0), means.max(axis=0)
    axes = np.argsort(-(hi - lo), kind="stable")[:2]
    ids = np.zeros(m, dtype=np.int64)
    for axis in axes:
        span = max(float(hi[axis] - lo[axis]), 1e-12)
        cell = np.clip(((means[:, axis] - lo[axis]) / span * cells).astype(np.int64), 0, cells - 1)
        ids = ids * cells + cell
    return ids


def make_chunks(
    g, fractions: Sequence[float] | None = None, merge: bool = True, target: int = CHUNK_TARGET
) -> BakedChunks:
    """Baked Gaussians `g` cut into grid chunks, each with its levels of detail."""
    from momentumgs.export.lod import DEFAULT_LEVELS, make_levels

    means = g.means.detach().cpu().numpy()
    cells = grid_cells(means, target)
    arrays, counts, errors, lo, hi = [], [], [], [], []
    for cell in np.unique(cells):
        index = torch.from_numpy(np.nonzero(cells == cell)[0])
        part = g.subset(index)
        levels = make_levels(part, fractions or DEFAULT_LEVELS, merge=merge)
        arrays.append([browser_splat_arrays(level.gaussians) for level in levels])
        counts.append([level.gaussians.count for level in levels])
        errors.append([level.geometric_error for level in levels])
        points = means[index.numpy()]
        lo.append(points.min(axis=0))
        hi.append(points.max(axis=0))
    return BakedChunks(
        arrays,
        ChunkLevels(
            np.array(counts, dtype=np.int64), np.array(errors), np.array(lo, float), np.array(hi, float)
        ),
    )
