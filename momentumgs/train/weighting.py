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

SMOOTHING = 0.9  # EMA: new = 0.9 * old + 0.1 * measured
SOURCES = ("steps", "views")
SMOOTHINGS = ("ema", "latest")  # method.weighting_smoothing


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

    def update(self, psnr: float, ssim: float, smoothing: str = "ema") -> None:
        """Take a measurement: the first as is; then an EMA step (`ema`) or the measurement itself (`latest`,
        as the Momentum-GS code's EMA, which steps every iteration toward the latest measurement)."""
        if smoothing not in SMOOTHINGS:
            raise ValueError(f"smoothing {smoothing!r}: expected one of {SMOOTHINGS}")
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
