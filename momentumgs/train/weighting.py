"""Reconstruction-guided block weighting (docs/method.md, Block weighting).

Each block's PSNR and SSIM are measured every `every` iterations on every `view_stride`-th of its training
views (`source: views`, the paper's; a few % of a step when frequent) or as the mean over those iterations of
its own training renders (`source: steps`, free), and smoothed by an EMA over the measurements (`smoothing:
ema`) or taken as the latest measurement (`smoothing: latest`, the Momentum-GS code's); the leading block sets
the reference. A block that lags gets a larger loss weight:

    w_b = 2 - exp(-[(PSNR_max - PSNR_b)^2 + (10 SSIM_max - 10 SSIM_b)^2] / (2 sigma^2))

and w_b = 1 until the block has been measured (its first `warmup` iterations). The weights are mild: with
sigma = 10, a block 2 dB and 0.05 SSIM behind the best gets about 1.03.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from momentumgs.config import Smoothing, WeightingConfig
from momentumgs.data.scene import Scene
from momentumgs.render.view import Crop, View
from momentumgs.train.block import Block, StepResult
from momentumgs.train.measure import view_quality
from momentumgs.train.slots import SlotSchedule

SMOOTHING = 0.9  # EMA: new = 0.9 * old + 0.1 * measured


def block_weight(psnr: float, ssim: float, psnr_max: float, ssim_max: float, sigma: float) -> float:
    distance2 = (psnr_max - psnr) ** 2 + (10.0 * ssim_max - 10.0 * ssim) ** 2
    return 2.0 - math.exp(-distance2 / (2.0 * sigma**2))


@dataclass
class BlockQuality:
    """Smoothed PSNR / SSIM of one block; NaN until its first measurement."""

    psnr: float = math.nan
    ssim: float = math.nan

    @property
    def measured(self) -> bool:
        return not math.isnan(self.psnr)

    def update(self, psnr: float, ssim: float, smoothing: Smoothing = "ema") -> None:
        """Take a measurement: the first as is; then an EMA step (`ema`) or the measurement itself (`latest`,
        as the Momentum-GS code's EMA, which steps every iteration toward the latest measurement)."""
        if not self.measured or smoothing == "latest":
            self.psnr, self.ssim = psnr, ssim
        else:
            self.psnr = SMOOTHING * self.psnr + (1 - SMOOTHING) * psnr
            self.ssim = SMOOTHING * self.ssim + (1 - SMOOTHING) * ssim


def block_weights(qualities: list[BlockQuality], sigma: float) -> list[float]:
    """Weights of all blocks from their smoothed metrics; the maxima run over the measured blocks."""
    measured = [q for q in qualities if q.measured]
    if not measured:
        return [1.0] * len(qualities)
    psnr_max = max(q.psnr for q in measured)
    ssim_max = max(q.ssim for q in measured)
    return [block_weight(q.psnr, q.ssim, psnr_max, ssim_max, sigma) if q.measured else 1.0 for q in qualities]


@dataclass
class StepMetrics:
    """Running sums of a block's training-step PSNR / SSIM since its last quality update."""

    psnr_sum: float = 0.0
    ssim_sum: float = 0.0
    count: int = 0

    def add(self, psnr: float, ssim: float) -> None:
        if math.isfinite(psnr):  # a perfect render (inf dB) would swamp the mean
            self.psnr_sum += psnr
            self.ssim_sum += ssim
            self.count += 1

    def take_mean(self) -> tuple[float, float] | None:
        """The means, and a reset; None if nothing was added."""
        if self.count == 0:
            return None
        mean = (self.psnr_sum / self.count, self.ssim_sum / self.count)
        self.psnr_sum, self.ssim_sum, self.count = 0.0, 0.0, 0
        return mean


class BlockWeighting:
    """The block weights of a run and how they are kept: each block's quality measured every `every` of its
    iterations (from its training steps or rendered on its views), smoothed, shared by all processes, and
    turned into weights. Neutral (every weight 1, nothing measured) when `method.weighting.enabled` is off or
    with one block, where the weights cannot differ.

    `owned`: the blocks of this process (only their owner knows their quality); `views`, `crops`: every
    camera's view and each block's crops, for the `views` source's renders."""

    def __init__(
        self,
        cfg: WeightingConfig,
        n_blocks: int,
        owned: list[int],
        comm,
        scene: Scene,
        views: list[View],
        crops: list[dict[int, Crop]],
    ):
        self.cfg, self.owned, self.comm = cfg, owned, comm
        self.scene, self.views, self.crops = scene, views, crops
        self.qualities = [BlockQuality() for _ in range(n_blocks)]
        self.step_metrics = [StepMetrics() for _ in range(n_blocks)]
        self.weights = [1.0] * n_blocks

    @property
    def enabled(self) -> bool:
        """Block weights compare blocks: with one block every weight is 1, so nothing is measured."""
        return self.cfg.enabled and len(self.qualities) > 1

    def weight(self, block_id: int) -> float:
        return self.weights[block_id] if self.enabled else 1.0

    def measuring(self, schedule: SlotSchedule) -> set[int]:
        """The blocks (of all workers) that measure their quality after this step: only then do the weights
        change and need sharing (every process knows the whole schedule)."""
        if not self.enabled:
            return set()
        done = schedule.done_iterations
        current = [b for b in map(schedule.current, range(schedule.workers)) if b is not None]
        return {b for b in current if (done[b] + 1) % self.cfg.every == 0}

    def after_step(self, block_id: int, block: Block, result: StepResult, decoder, measure: bool) -> None:
        """Account block `block_id`'s training step; measure its quality when it is due (`measure`)."""
        if self.enabled and self.cfg.source == "steps":
            self.step_metrics[block_id].add(result.psnr, result.ssim)
        if measure:
            self._measure(block_id, block, decoder)

    @torch.no_grad()
    def _measure(self, block_id: int, block: Block, decoder) -> None:
        """PSNR / SSIM of the block: the mean of its training steps since the last measurement, or rendered
        on every `view_stride`-th of its training views."""
        if self.cfg.source == "steps":
            steps = self.step_metrics[block_id].take_mean()
            if steps is not None:
                self.qualities[block_id].update(*steps, self.cfg.smoothing)
            return
        ids = block.sampler.view_ids[:: self.cfg.view_stride]
        quality = view_quality(block.field, decoder, self.scene, self.views, ids, self.crops[block_id])
        self.qualities[block_id].update(*quality, self.cfg.smoothing)

    def sync(self) -> None:
        """Share every block's smoothed quality (each is known to its owner only), then reweight."""
        if self.comm.world_size > 1:
            q = torch.full((len(self.qualities), 2), -math.inf, dtype=torch.float64)
            for b in self.owned:
                if self.qualities[b].measured:
                    q[b, 0], q[b, 1] = self.qualities[b].psnr, self.qualities[b].ssim
            self.comm.max_(q)
            for b, (p, s) in enumerate(q.tolist()):
                if math.isfinite(p):
                    self.qualities[b] = BlockQuality(p, s)
        self.weights = block_weights(self.qualities, self.cfg.sigma)

    def state_dict(self) -> dict:
        return {
            "qualities": [[q.psnr, q.ssim] for q in self.qualities],
            "step_metrics": [[m.psnr_sum, m.ssim_sum, m.count] for m in self.step_metrics],
        }

    def load_state_dict(self, state: dict) -> None:
        self.qualities = [BlockQuality(p, s) for p, s in state["qualities"]]
        self.step_metrics = [StepMetrics(p, s, int(c)) for p, s, c in state["step_metrics"]]
        self.weights = block_weights(self.qualities, self.cfg.sigma)
