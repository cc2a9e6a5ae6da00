"""Anchor growing and pruning (docs/method.md, Densification), after Scaffold-GS's `training_statis`,
`anchor_growing` and `adjust_anchor`, with Momentum-GS's schedule (statistics from 500 to 30000, adjust
every 25, growth cell factor 128).

Statistics per neural-Gaussian slot (anchor * K + j): sum of the screen-space mean-gradient norm
(NDC units) and visit count. Per anchor: sum of clamp(alpha, 0) over its K slots and visit count.

Growing, for levels i = 0, 1, 2: slots visited > 0.5 * interval * success_threshold times whose
mean gradient >= grad_threshold * 2^i, kept with probability 1 - 0.5^(i+1), are snapped to a grid of
cell voxel_size * (init_factor // 4^i); cells without an anchor become anchors with the element-wise
max of their parents' features, zero offsets and log-scale log(cell).
Pruning: anchors visited > interval * success_threshold times whose opacity sum is below
min_opacity * visits. Afterwards l[3:6] is clamped to <= 0.05, as Scaffold-GS does.

Differences from the reference code, on purpose:
- Scaffold-GS skips levels 1 and 2 when level 0 added no anchor (`if length_inc == 0: if i > 0:
  continue`); we always run every level.
- Random keep masks come from a caller-given torch.Generator, so a run is reproducible.
- the reference accumulates gradients from the original rasterizer (NDC units); gsplat's means2d
  gradient is in pixels, so `DensifyStats.add` scales it by (W/2, H/2) like gsplat's DefaultStrategy.

A training block reaches all this through one small object, an `AnchorDensifier` (as gsplat's training
loop reaches its densification through a strategy): `ScaffoldDensifier` is the rule above with its
schedule, statistics and random generator; another rule can be handed to a block instead.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from momentumgs.config import DensifyOptions  # the schedule lives with the configs (no torch needed there)
from momentumgs.model.anchors import AnchorField
from momentumgs.model.decoder import NeuralGaussians
from momentumgs.model.optim import extend_params, keep_rows
from momentumgs.timing import phase


class DensifyStats:
    """Running statistics for growing and pruning one anchor field."""

    def __init__(self, n_anchors: int, n_offsets: int, device: torch.device | str = "cpu"):
        self.n_offsets = n_offsets
        self.grad_sum = torch.zeros(n_anchors * n_offsets, device=device)  # [N*K]
        self.grad_count = torch.zeros(n_anchors * n_offsets, device=device)  # [N*K]
        self.opacity_sum = torch.zeros(n_anchors, device=device)  # [N]
        self.anchor_count = torch.zeros(n_anchors, device=device)  # [N]

    @property
    def n_anchors(self) -> int:
        return self.anchor_count.shape[0]

    @torch.no_grad()
    def add(
        self,
        gaussians: NeuralGaussians,
        means2d_grad: torch.Tensor | None,
        visible: torch.Tensor,
        width: float,
        height: float,
    ) -> None:
        """One view's statistics. `means2d_grad` [M, 2] is the gradient of the rasterizer's
        means2d (pixels) for the kept Gaussians, `visible` [M] bool their radii > 0 (with gsplat:
        `meta["means2d"].grad[0]`, `(meta["radii"][0] > 0).all(-1)`). A None gradient (nothing was
        rendered) counts as zero, as the reference's zero-filled gradient does."""
        ids = gaussians.anchor_ids
        alpha = gaussians.raw_opacity.detach().clamp(min=0).sum(dim=1)  # [V]
        self.opacity_sum.index_add_(0, ids, alpha)
        self.anchor_count.index_add_(0, ids, torch.ones_like(alpha))

        if means2d_grad is None:
            means2d_grad = gaussians.means.new_zeros(gaussians.means.shape[0], 2)
        grad_ndc = means2d_grad.detach() * means2d_grad.new_tensor([width / 2.0, height / 2.0])  # [M, 2]
        slots = gaussians.slot_ids[visible]  # [M_vis]
        norms = grad_ndc[visible].norm(dim=-1)  # [M_vis]
        self.grad_sum.index_add_(0, slots, norms)
        self.grad_count.index_add_(0, slots, torch.ones_like(norms))

    def mean_grad(self) -> torch.Tensor:
        """Mean gradient norm per slot, 0 where never visited. [N*K]"""
        return torch.where(self.grad_count > 0, self.grad_sum / self.grad_count.clamp(min=1), 0.0)

    def extend(self, n_new: int) -> None:
        """Zero statistics for `n_new` appended anchors."""
        k = self.n_offsets
        self.grad_sum = torch.cat([self.grad_sum, self.grad_sum.new_zeros(n_new * k)])
        self.grad_count = torch.cat([self.grad_count, self.grad_count.new_zeros(n_new * k)])
        self.opacity_sum = torch.cat([self.opacity_sum, self.opacity_sum.new_zeros(n_new)])
        self.anchor_count = torch.cat([self.anchor_count, self.anchor_count.new_zeros(n_new)])

    def keep(self, mask: torch.Tensor) -> None:
        """Keep the statistics of anchors where `mask` [N] is true."""
        slot_mask = mask.repeat_interleave(self.n_offsets)
        self.grad_sum = self.grad_sum[slot_mask]
        self.grad_count = self.grad_count[slot_mask]
        self.opacity_sum = self.opacity_sum[mask]
        self.anchor_count = self.anchor_count[mask]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "grad_sum": self.grad_sum.clone(),
            "grad_count": self.grad_count.clone(),
            "opacity_sum": self.opacity_sum.clone(),
            "anchor_count": self.anchor_count.clone(),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        n = state["anchor_count"].shape[0]
        if state["grad_sum"].shape[0] != n * self.n_offsets:
            raise ValueError("densify state: slot and anchor counts disagree")
        for name in ("grad_sum", "grad_count", "opacity_sum", "anchor_count"):
            setattr(self, name, state[name].clone())


@dataclass
class NewAnchors:
    positions: torch.Tensor  # [n, 3]
    features: torch.Tensor  # [n, F]
    offsets: torch.Tensor  # [n, K, 3]
    log_scales: torch.Tensor  # [n, 6]

    @property
    def count(self) -> int:
        return self.positions.shape[0]


def _in_set(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Which rows of `queries` [Q, 3] (unique) occur among the rows of `keys` [P, 3]. -> [Q] bool"""
    keys = torch.unique(keys, dim=0)
    both = torch.cat([keys, queries], dim=0)
    _, inverse, counts = torch.unique(both, dim=0, return_inverse=True, return_counts=True)
    return counts[inverse[keys.shape[0] :]] > 1


def _uniform(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """U(0, 1) draws [n] on the generator's own device, so a CPU generator gives the same growth
    decisions for a field on the CPU or on a GPU."""
    if generator is None:
        return torch.rand(n, device=device)
    return torch.rand(n, generator=generator, device=generator.device).to(device)


@torch.no_grad()
def grow_anchors(
    field: AnchorField,
    stats: DensifyStats,
    options: DensifyOptions,
    generator: torch.Generator | None = None,
) -> NewAnchors:
    """New anchors from the accumulated statistics (not yet added to the field). Deterministic
    given `generator`."""
    k, feat_dim = field.n_offsets, field.feat_dim
    device = field.positions.device
    grads = stats.mean_grad()  # [N*K]
    eligible = stats.grad_count > options.min_offset_visits  # [N*K]
    slot_xyz = field.slot_means().reshape(-1, 3)  # [N*K, 3]
    slot_feat = field.features.detach().repeat_interleave(k, dim=0)  # [N*K, F]

    occupied = field.positions  # grows with each level, so finer levels skip cells just filled
    new: list[NewAnchors] = []
    for level in range(options.levels):
        threshold = options.grad_threshold * (options.hierarchy_factor // 2) ** level
        coin = _uniform(grads.shape[0], generator, device)  # [N*K]
        candidates = (grads >= threshold) & eligible & (coin > 0.5 ** (level + 1))
        cell = field.voxel_size * (options.init_factor // options.hierarchy_factor**level)
        if not candidates.any() or cell <= 0:
            continue
        cand_cells = torch.round(slot_xyz[candidates] / cell).long()  # [C, 3]
        cells, inverse = torch.unique(cand_cells, dim=0, return_inverse=True)  # [U, 3], [C]
        fresh = ~_in_set(cells, torch.round(occupied / cell).long())  # [U]
        if not fresh.any():
            continue
        # element-wise max of the parents' features per cell (Scaffold-GS's scatter_max)
        feats = slot_feat.new_full((cells.shape[0], feat_dim), float("-inf"))
        feats.scatter_reduce_(0, inverse[:, None].expand(-1, feat_dim), slot_feat[candidates], "amax")
        positions = (cells[fresh].to(field.positions.dtype)) * cell  # [n, 3]
        n = positions.shape[0]
        new.append(
            NewAnchors(
                positions=positions,
                features=feats[fresh],
                offsets=positions.new_zeros(n, k, 3),
                log_scales=positions.new_full((n, 6), math.log(cell)),
            )
        )
        occupied = torch.cat([occupied, positions], dim=0)

    if not new:
        z = field.positions.new_zeros
        return NewAnchors(z(0, 3), z(0, feat_dim), z(0, k, 3), z(0, 6))
    return NewAnchors(
        positions=torch.cat([a.positions for a in new]),
        features=torch.cat([a.features for a in new]),
        offsets=torch.cat([a.offsets for a in new]),
        log_scales=torch.cat([a.log_scales for a in new]),
    )


@torch.no_grad()
def prune_mask(stats: DensifyStats, options: DensifyOptions) -> torch.Tensor:
    """Anchors to remove: visited often enough, yet with a low accumulated opacity. [N] bool"""
    mature = stats.anchor_count > options.min_anchor_visits
    return mature & (stats.opacity_sum < options.min_opacity * stats.anchor_count)


def add_anchors(field: AnchorField, new: NewAnchors, optimizer: torch.optim.Optimizer | None) -> None:
    """Append `new` to `field`, extending the optimizer's moments with zeros."""
    field.positions = torch.cat([field.positions, new.positions.to(field.positions)], dim=0)
    for name in AnchorField.PARAM_NAMES:
        setattr(field, name, extend_params(optimizer, getattr(field, name), getattr(new, name)))
    if field.slot_mask is not None:  # new anchors may decode every slot
        grown = field.slot_mask.new_ones(new.positions.shape[0], field.n_offsets)
        field.slot_mask = torch.cat([field.slot_mask, grown])


def remove_anchors(field: AnchorField, keep: torch.Tensor, optimizer: torch.optim.Optimizer | None) -> None:
    """Keep the anchors where `keep` [N] is true, with their optimizer moments."""
    field.positions = field.positions[keep]
    for name in AnchorField.PARAM_NAMES:
        setattr(field, name, keep_rows(optimizer, getattr(field, name), keep))
    if field.slot_mask is not None:
        field.slot_mask = field.slot_mask[keep]


@dataclass
class AdjustReport:
    grown: int
    pruned: int


@torch.no_grad()
def adjust_anchors(
    field: AnchorField,
    stats: DensifyStats,
    optimizer: torch.optim.Optimizer | None,
    options: DensifyOptions,
    generator: torch.Generator | None = None,
) -> AdjustReport:
    """One growing + pruning step in Scaffold-GS's order: grow, reset the statistics of the slots
    that were eligible, prune, reset the statistics of the anchors that were mature, clamp l[3:6].
    The field, the statistics and the optimizer's state stay row-aligned."""
    if stats.n_anchors != field.n_anchors:
        raise ValueError(f"statistics hold {stats.n_anchors} anchors, the field {field.n_anchors}")
    eligible = stats.grad_count > options.min_offset_visits  # [N*K], before growing
    new = grow_anchors(field, stats, options, generator)
    if new.count:
        add_anchors(field, new, optimizer)
        stats.extend(new.count)
    eligible = torch.cat([eligible, eligible.new_zeros(new.count * field.n_offsets)])
    stats.grad_sum[eligible] = 0
    stats.grad_count[eligible] = 0

    remove = prune_mask(stats, options)
    mature = stats.anchor_count > options.min_anchor_visits
    stats.opacity_sum[mature] = 0
    stats.anchor_count[mature] = 0
    if remove.any():
        remove_anchors(field, ~remove, optimizer)
        stats.keep(~remove)
    field.log_scales.data[:, 3:].clamp_(max=options.max_log_scale)
    return AdjustReport(grown=new.count, pruned=int(remove.sum()))


# --- the interface a training block uses ------------------------------------------------------------


class AnchorDensifier(ABC):
    """How one block's anchors grow and shrink while it trains. One object per block: it holds its
    schedule and its running state, and the block calls it at two points of every step."""

    @abstractmethod
    def after_backward(
        self, iteration: int, gaussians: NeuralGaussians, meta: dict, width: float, height: float
    ) -> None:
        """Step `iteration` (1-based) backpropagated a finite loss through a render of `gaussians`;
        `meta` is the rasterizer's (its "means2d" holds the gradient, "radii" the footprints)."""

    @abstractmethod
    def after_step(
        self, iteration: int, field: AnchorField, optimizer: torch.optim.Optimizer
    ) -> AdjustReport | None:
        """Step `iteration` is complete (the optimizer stepped). Change the anchors if due, keeping the
        optimizer's state row-aligned with `field`. -> what changed, None when nothing was due."""

    @abstractmethod
    def state_dict(self) -> dict:
        """The running state. Its keys start with "densify_": they sit beside the block's own."""

    @abstractmethod
    def load_state_dict(self, state: dict) -> None:
        """Restore from a block's state (which holds this densifier's keys among others)."""


class ScaffoldDensifier(AnchorDensifier):
    """Scaffold-GS growing and pruning on the schedule of `options` (the functions above)."""

    def __init__(self, options: DensifyOptions, field: AnchorField, seed: int):
        self.options = options
        self.stats = DensifyStats(field.n_anchors, field.n_offsets, device=field.positions.device)
        # its own CPU generator: the growth decisions do not depend on the device or on other draws
        self.generator = torch.Generator().manual_seed(seed)

    def after_backward(
        self, iteration: int, gaussians: NeuralGaussians, meta: dict, width: float, height: float
    ) -> None:
        # an empty render has no means2d gradient to read
        if not self.options.collects_stats(iteration) or gaussians.means.shape[0] == 0:
            return
        with phase("densify"):
            visible = (meta["radii"][0] > 0).all(dim=-1)  # [M]
            self.stats.add(gaussians, meta["means2d"].grad[0], visible, width, height)

    def after_step(
        self, iteration: int, field: AnchorField, optimizer: torch.optim.Optimizer
    ) -> AdjustReport | None:
        if not self.options.adjusts(iteration):
            return None
        with phase("densify"):
            return adjust_anchors(field, self.stats, optimizer, self.options, self.generator)

    def state_dict(self) -> dict:
        return {"densify_stats": self.stats.state_dict(), "densify_rng": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.stats.load_state_dict(state["densify_stats"])
        self.generator.set_state(state["densify_rng"])
