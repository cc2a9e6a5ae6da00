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
    """A student decoder with its Adam, its learning-rate schedules and (optionally) its momentum teacher."""

    def __init__(self, spec: DecoderSpec, cfg: Config, total_steps: int, device: torch.device, teacher: bool):
        torch.manual_seed(cfg.train.seed)  # every replica (and every independent decoder) starts the same
        self.module: GaussianDecoder = spec.build().to(device)
        self.optimizer = decoder_optimizer(self.module, cfg.train.lr)
        self.schedules = lr_schedules(cfg.train.lr, total_steps, 1.0)
        self.teacher = MomentumTeacher(self.module) if teacher else None

    def step(self, global_step: int, finite: bool, frozen: bool = False) -> None:
        """One Adam step at `global_step` (none after a non-finite step). `frozen`: the MLPs keep their
        weights (Adam skips a parameter without a gradient); a per-photo appearance table still learns."""
        if finite:
            if frozen:
                for name, param in self.module.named_parameters():
                    if not name.startswith("appearance."):
                        param.grad = None
            apply_schedules(self.optimizer, self.schedules, global_step)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return {
            "decoder": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "teacher": self.teacher.state_dict() if self.teacher is not None else {},
        }

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["decoder"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.teacher is not None:
            self.teacher.load_state_dict(state["teacher"])
