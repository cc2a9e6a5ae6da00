"""Which level of detail of each chunk the browser gets: a budget of splats spent where the camera is.

A model is cut into chunks (spatial cells, viewer/chunks.py), each with nested levels from full detail to
a few percent (momentumgs/export/lod.py), each level with its geometric error (world units of detail it
leaves out; 0 for full detail). For one camera position and a budget of splats:

1. every chunk starts at its coarsest level (if even those exceed the budget, the farthest chunks are left
   out, farthest first, until the rest fit);
2. the chunk whose current level shows the largest projected error, geometric error / distance from the
   camera to its bounding box (the box of a chunk wholly behind the camera counts `BEHIND` times farther),
   goes one level finer, if the budget still holds; else it keeps its level and drops out of the refinement;
3. until no chunk can be refined.

A moving camera chooses again once it has moved by MOVE_FRACTION of the model's extent or turned by
TURN_DEGREES since the last choice (`moved_enough`), and once more when it rests.

Pure functions on arrays, deterministic (ties go to the lower chunk index).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

BEHIND = 4.0  # a chunk wholly behind the camera counts this much farther
MOVE_FRACTION = 0.02  # of the model's extent: a camera moved less keeps its selection until it rests
TURN_DEGREES = 15.0  # ... and one turned less
NOT_SHOWN = -1  # the level of a chunk left out


@dataclass(frozen=True)
class ChunkLevels:
    """What the selection needs to know of C chunks with L levels each (finest first)."""

    counts: np.ndarray  # [C, L] int: splats of each level, non-increasing along L
    errors: np.ndarray  # [C, L] float: geometric error of each level, non-decreasing along L (0 at full)
    lo: np.ndarray  # [C, 3] bounding box of each chunk
    hi: np.ndarray  # [C, 3]

    @property
    def n_chunks(self) -> int:
        return int(self.counts.shape[0])

    @property
    def extent(self) -> float:
        """The diagonal of the box around every chunk."""
        if not self.n_chunks:
            return 0.0
        return float(np.linalg.norm(self.hi.max(axis=0) - self.lo.min(axis=0)))

    @property
    def total(self) -> int:
        """Splats at full detail everywhere."""
        return int(self.counts[:, 0].sum())


def box_distance(lo: np.ndarray, hi: np.ndarray, position) -> np.ndarray:
    """Distance from `position` to each box [C] (0 inside)."""
    p = np.asarray(position, dtype=np.float64)
    outside = np.maximum(np.maximum(lo - p, p - hi), 0.0)
    return np.linalg.norm(outside, axis=1)


def effective_distance(chunks: ChunkLevels, position, forward=None) -> np.ndarray:
    """The distance the selection ranks chunks by [C]: to the box, at least a twentieth of the median box
    diagonal (a camera inside a chunk does not rank it infinitely), `BEHIND` times for a box wholly behind a
    camera looking along `forward`."""
    diagonal = np.linalg.norm(chunks.hi - chunks.lo, axis=1)
    floor = max(0.05 * float(np.median(diagonal)) if len(diagonal) else 0.0, 1e-6)
    d = np.maximum(box_distance(chunks.lo, chunks.hi, position), floor)
    if forward is not None:
        f = np.asarray(forward, dtype=np.float64)
        f = f / max(float(np.linalg.norm(f)), 1e-12)
        # the farthest a point of the box reaches along f, from the camera
        reach = np.maximum(chunks.lo * f, chunks.hi * f).sum(axis=1) - float(np.dot(position, f))
        d = np.where(reach < 0, BEHIND * d, d)
    return d


def moved_enough(before, after, extent: float) -> bool:
    """Is a camera (position, forward) `after` far enough from `before` (None: no selection yet) to choose
    again while it moves: by MOVE_FRACTION of the model's `extent`, or turned by TURN_DEGREES?"""
    if before is None:
        return True
    (p0, f0), (p1, f1) = before, after
    if np.linalg.norm(np.subtract(p1, p0)) > MOVE_FRACTION * extent:
        return True
    cos = float(np.dot(f0, f1)) / max(float(np.linalg.norm(f0) * np.linalg.norm(f1)), 1e-12)
    return cos < np.cos(np.radians(TURN_DEGREES))


def select_levels(chunks: ChunkLevels, position, budget: int, forward=None) -> np.ndarray:
    """The level of each chunk [C] (0 finest; NOT_SHOWN for a chunk left out) for a camera at `position`
    (looking along `forward`, when given) and at most `budget` splats in all. See the module doc."""
    counts = np.asarray(chunks.counts, dtype=np.int64)
    n, n_levels = counts.shape
    levels = np.full(n, n_levels - 1, dtype=np.int64)
    if n == 0:
        return levels
    d = effective_distance(chunks, position, forward)
    total = int(counts[:, -1].sum())
    if total > budget:  # leave out the farthest chunks until the coarsest levels of the rest fit
        for c in np.argsort(-d, kind="stable"):
            if total <= budget:
                break
            total -= int(counts[c, -1])
            levels[c] = NOT_SHOWN
    errors = np.asarray(chunks.errors, dtype=np.float64)
    heap = [(-errors[c, levels[c]] / d[c], int(c)) for c in range(n) if levels[c] > 0]
    heapq.heapify(heap)
    while heap:
        _, c = heapq.heappop(heap)
        level = levels[c]
        cost = int(counts[c, level - 1] - counts[c, level])
        if total + cost > budget:
            continue  # this chunk stays at its level
        total += cost
        levels[c] = level - 1
        if level - 1 > 0:
            heapq.heappush(heap, (-errors[c, level - 1] / d[c], c))
    return levels


def selected_count(chunks: ChunkLevels, levels: np.ndarray) -> int:
    """Splats shown by a selection."""
    shown = levels >= 0
    return int(chunks.counts[np.nonzero(shown)[0], levels[shown]].sum())
