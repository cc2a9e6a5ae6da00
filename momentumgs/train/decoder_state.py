"""The shared decoder as the trainer holds it: the student, its Adam and schedules, its momentum teacher."""

from __future__ import annotations

import torch

from momentumgs.config import Config
from momentumgs.data.scene import Scene
from momentumgs.model.decoder import GaussianDecoder, MomentumTeacher
from momentumgs.model.store import DecoderSpec
from momentumgs.train.optimizers import apply_schedules, decoder_optimizer, lr_schedules


def decoder_spec(cfg: Config, scene: Scene) -> DecoderSpec:
    mc = cfg.model
    row_size = {"off": 0, "exposure": 3, "embedding": mc.appearance_dim}[mc.appearance]
    return DecoderSpec(
        feat_dim=mc.feat_dim,
        n_offsets=mc.n_offsets,
        hidden_dim=mc.hidden_dim,
        use_distance=mc.use_distance,
        appearance_dim=row_size,
        appearance_count=len(scene.cameras) if row_size > 0 else 0,
        appearance_mode="exposure" if mc.appearance == "exposure" else "embedding",
    )


class DecoderState:
    """A student decoder with its Adam, its learning-rate schedules and (optionally) its momentum teacher.

    `slots` > 1 (`method.decoder_optimizer: per_slot`): one Adam per slot index over the same parameters,
    each with its own moments and step count; a step uses the one of the slot it is given. The schedules span
    the run's `total_steps` (`train.decoder_lr_clock: run`) or a block's iterations (`block`), as the caller's
    clock counts."""

    def __init__(
        self,
        spec: DecoderSpec,
        cfg: Config,
        total_steps: int,
        device: torch.device,
        teacher: bool,
        slots: int = 1,
    ):
        torch.manual_seed(cfg.train.seed)  # every replica (and every independent decoder) starts the same
        tc = cfg.train
        self.module: GaussianDecoder = spec.build().to(device)
        self.optimizers = [decoder_optimizer(self.module, tc.lr) for _ in range(slots)]
        span = tc.iterations if tc.decoder_lr_clock == "block" else total_steps
        self.schedules = lr_schedules(tc.lr, span, 1.0, tc.lr_hold_after)
        self.teacher = MomentumTeacher(self.module) if teacher else None

    @property
    def optimizer(self) -> torch.optim.Adam:
        """The Adam of slot 0 (the only one unless `per_slot`)."""
        return self.optimizers[0]

    def step(self, clock: int, finite: bool, frozen: bool = False, slot: int = 0) -> None:
        """One Adam step (the Adam of `slot`) at schedule position `clock` (none after a non-finite step).
        `frozen`: the MLPs keep their weights (Adam skips a parameter without a gradient); a per-photo
        appearance table still learns."""
        optimizer = self.optimizers[slot]
        if finite:
            if frozen:
                for name, param in self.module.named_parameters():
                    if not name.startswith("appearance."):
                        param.grad = None
            apply_schedules(optimizer, self.schedules, clock)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        state = {
            "decoder": self.module.state_dict(),
            "optimizer": self.optimizers[0].state_dict(),
            "teacher": self.teacher.state_dict() if self.teacher is not None else {},
        }
        if len(self.optimizers) > 1:
            state["slot_optimizers"] = [o.state_dict() for o in self.optimizers]
        return state

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["decoder"])
        optimizers = state.get("slot_optimizers", [state["optimizer"]])
        if len(optimizers) != len(self.optimizers):
            raise ValueError(
                f"the checkpoint holds {len(optimizers)} decoder Adam states, this run expects "
                f"{len(self.optimizers)} (method.decoder_optimizer or the blocks per worker changed)"
            )
        for optimizer, saved in zip(self.optimizers, optimizers, strict=True):
            optimizer.load_state_dict(saved)
        if self.teacher is not None:
            self.teacher.load_state_dict(state["teacher"])
