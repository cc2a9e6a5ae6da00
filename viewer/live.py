"""Show a model while it trains: the trainer calls `on_step(trainer)` after every step; this hook copies
its current anchors and decoder every few seconds, and only while a browser is connected.

The copy is made on the training thread between two steps, so it never sees a half-updated model and the
trainer needs no lock; rendering then works on the copy in the viewer's own threads. A multi-block run
holds only its slot blocks in memory: each block is shown as it was when it was last in a slot (blocks not
yet trained are missing), each cut to its own cell as the final merge does.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from momentumgs.merge import block_share
from momentumgs.model.anchors import AnchorField
from momentumgs.model.decoder import GaussianDecoder
from momentumgs.model.store import AnchorModel, DecoderSpec
from momentumgs.train.assemble import assemble_model
from momentumgs.train.trainer import Trainer

from .models import ModelHolder


def copy_decoder(spec: DecoderSpec, decoder: GaussianDecoder) -> GaussianDecoder:
    copy = spec.build().to(next(decoder.parameters()).device)
    copy.load_state_dict(decoder.state_dict())
    return copy.requires_grad_(False).eval()


class TrainingSnapshots:
    """The `on_step` hook of a `Trainer`."""

    def __init__(
        self, holder: ModelHolder, interval_s: float = 3.0, watching: Callable[[], bool] | None = None
    ):
        self.holder = holder
        self.interval_s = interval_s
        self.watching = watching or (lambda: True)  # () -> bool: is any client connected?
        self._last = -float("inf")
        self._blocks: dict[int, tuple[AnchorField, GaussianDecoder | None]] = {}
        self.snapshots = 0
        self.seconds = 0.0  # time spent copying, on the training thread

    def __call__(self, trainer: Trainer) -> None:
        now = time.monotonic()
        if now - self._last < self.interval_s or not self.watching():
            return
        self._last = now
        with torch.no_grad():
            model = self._snapshot(trainer)
        self.holder.set(model)
        self.snapshots += 1
        self.seconds += time.monotonic() - now

    def _snapshot(self, trainer: Trainer) -> AnchorModel:
        shared = trainer.decoders.shared
        for b, block in trainer.residency.resident_blocks():
            share = block_share(block.field, b, trainer.partition, trainer.cfg.partition.merge)
            decoder = None if shared else copy_decoder(trainer.spec, trainer.decoders.of(b).module)
            self._blocks[b] = (share, decoder)
        shares = {b: share for b, (share, _) in self._blocks.items()}
        info = {"iteration": trainer.global_step, "live": True, "blocks_shown": sorted(shares)}
        # the ablation's independent decoders: each anchor decoded by its block's own
        decoders = None if shared else {b: decoder for b, (_, decoder) in self._blocks.items()}
        decoder = copy_decoder(trainer.spec, trainer.decoder)
        return assemble_model(shares, decoder, trainer.spec, info, decoders)
