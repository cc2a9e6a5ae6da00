"""Levels of detail of baked Gaussians: from full detail down to a few percent, for the 3D Tiles export
(export/tiles3d.py; docs/formats.md, 3D Tiles).

A level keeps the most important Gaussians of its block. The importance of a Gaussian is

    opacity x s1 x s2            (s1 >= s2 >= s3 its scales)

the alpha it spreads over the image: a Gaussian's footprint on the screen is, from most directions, the
ellipse of its two largest axes (area ~ s1 s2 / depth^2), and the depth is about the same for the
Gaussians of one tile seen from afar, where the coarse levels show. Volume (s1 s2 s3) would rank the flat
Gaussians that make surfaces, the most common kind in a trained scene, far too low; the largest scale alone
would rank needles as high as discs. It is the "global significance" of LightGaussian (Fan et al. 2023)
without a pass over the training views, and the opacity x size ranking that Hierarchical 3DGS (Kerbl et al.
2024), LODGE (Kulhanek et al. 2025) and CityGaussian's LoD (Liu et al. 2024) cut their levels by, in the
simplest form: pruning, levels nested (each keeps a top fraction of the same order, so a coarser level is a
subset of every finer one).

With `merge` (the default) each kept Gaussian also absorbs the dropped Gaussians nearest it (a k-d tree on
the means), as Hierarchical 3DGS merges a node's children into one Gaussian, in a cheaper form: its two
largest axes grow so that its opacity x area is its own plus the absorbed importance (at most `MAX_GROWTH`
in each axis; the bound binds rarely: 8 and none gave the same PSNR) and its SH become the
importance-weighted mean of theirs. It pays: on the demo city (tools/bench_tiles.py --quality, a 300-step
run, 3 test views, our renderer, PSNR against the full detail) 13.15 -> 17.22 dB at 25 % and 9.74 ->
15.74 dB at 6 % (growth bounds of 1.5, 2, 3, 4: 15.71, 16.73, 17.20, 17.22 dB at 25 %).

The geometric error of a level (what 3D Tiles calls the error, in world units, of showing that level and
not a finer one) is the size of the detail it leaves out: the 95th percentile of the 3-sigma diameters
(6 x largest scale) of the Gaussians it drops, and never less than a finer level's (a coarser level leaves
out at least what a finer one does). The full level leaves out nothing: 0. The percentile, not the largest
dropped Gaussian: a large Gaussian is dropped only when it is faint, and a few such would set the error of
a whole level.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from momentumgs.errors import UserError
from momentumgs.export.gaussians import BakedGaussians

DEFAULT_LEVELS = (1.0, 0.25, 0.06)
ERROR_QUANTILE = 0.95  # of the dropped Gaussians' 3-sigma diameters: a level's geometric error
MAX_GROWTH = 8.0  # merge: the most a kept Gaussian's axes grow when it absorbs dropped ones


@dataclass
class Level:
    """One level of detail of a block: its Gaussians, the share of the block's it keeps, its error."""

    gaussians: BakedGaussians
    fraction: float  # of the block's Gaussians kept (1.0: every one)
    geometric_error: float  # world units: the detail this level leaves out (0: none)


def parse_levels(text: str | Sequence[float]) -> tuple[float, ...]:
    """`--levels 1,0.25,0.06`: the fractions of each level, finest first; the first is 1 (full detail),
    each one below the one before, all above 0. A UserError (one line) otherwise."""
    if isinstance(text, str):
        try:
            values = tuple(float(v) for v in text.split(","))
        except ValueError:
            raise UserError(f"--levels {text}: expected fractions like 1,0.25,0.06") from None
    else:
        values = tuple(float(v) for v in text)
    shown = ",".join(f"{v:g}" for v in values)
    if not values or values[0] != 1.0:
        raise UserError(f"--levels {shown}: the first level is the full detail, 1")
    if any(not 0.0 < v <= 1.0 for v in values) or any(
        b >= a for a, b in zip(values, values[1:], strict=False)
    ):
        raise UserError(f"--levels {shown}: fractions in (0, 1], each below the one before")
    return values


def importance(g: BakedGaussians) -> torch.Tensor:
    """opacity x product of the two largest scales (see the module doc). -> [M]"""
    s = g.scales.sort(dim=1, descending=True).values
    return g.opacities * s[:, 0] * s[:, 1]


def kept_count(total: int, fraction: float) -> int:
    """How many of `total` Gaussians a level keeping `fraction` holds: at least one."""
    return max(1, min(total, int(round(total * fraction))))


def make_levels(
    g: BakedGaussians, fractions: Sequence[float] = DEFAULT_LEVELS, merge: bool = True
) -> list[Level]:
    """The levels of one block's Gaussians `g`, finest (fractions[0] = 1: `g` itself) first. Levels keep
    the top of one importance order, so each is a subset of the finer ones (with `merge`, of their
    Gaussians before the merge changed them). See the module doc."""
    fractions = parse_levels(fractions)
    order = torch.argsort(importance(g), descending=True, stable=True)
    diameters = 6.0 * g.scales.max(dim=1).values[order]  # [M] in importance order
    levels, error = [], 0.0
    for fraction in fractions:
        n = kept_count(g.count, fraction)
        if n < g.count:
            dropped = diameters[n:].double()
            error = max(error, float(torch.quantile(dropped, ERROR_QUANTILE))) if dropped.numel() else error
        kept = order[:n].sort().values  # the file order of the kept ones
        part = g.subset(kept)
        if merge and n < g.count:
            part = _absorb(part, g, order[n:])
        part.info = {**g.info, "level_fraction": fraction, "level_of": g.count}
        levels.append(Level(part, fraction, error))
    return levels


def _absorb(
    kept: BakedGaussians, g: BakedGaussians, dropped: torch.Tensor, chunk: int = 1 << 16
) -> BakedGaussians:
    """`kept` with each dropped Gaussian (indices `dropped` into `g`) merged into its nearest kept one: its
    importance into the kept one's two largest axes, its colour into the kept one's SH. The dropped ones are
    taken `chunk` at a time (bounded memory: a block's dropped Gaussians are most of it)."""
    from scipy.spatial import cKDTree

    tree = cKDTree(kept.means.double().numpy())
    own = importance(kept).double()
    total = own.clone()
    # colour is linear in the SH coefficients: the weighted mean of coefficients is that of the colours
    sh = kept.sh.double() * own[:, None, None]
    for start in range(0, dropped.numel(), chunk):
        ids = dropped[start : start + chunk]
        nearest = torch.from_numpy(np.asarray(tree.query(g.means[ids].double().numpy(), k=1)[1], np.int64))
        s = g.scales[ids].sort(dim=1, descending=True).values
        extra = (g.opacities[ids] * s[:, 0] * s[:, 1]).double()  # importance()
        total.index_add_(0, nearest, extra)
        sh.index_add_(0, nearest, g.sh[ids].double() * extra[:, None, None])
    growth = torch.sqrt(total / own.clamp_min(1e-30)).clamp(1.0, MAX_GROWTH)  # per axis of the two largest
    scales = kept.scales.double()
    largest_two = torch.zeros_like(scales, dtype=torch.bool)
    largest_two.scatter_(1, scales.argsort(dim=1, descending=True)[:, :2], True)
    scales = torch.where(largest_two, scales * growth[:, None], scales).float()
    sh = (sh / total.clamp_min(1e-30)[:, None, None]).float()
    return BakedGaussians(kept.means, kept.quats, scales, kept.opacities, sh, dict(kept.info))
