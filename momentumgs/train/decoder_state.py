"""The decoders as the trainer holds them: each student with its Adam and schedules and its momentum teacher
(`DecoderState`), and the run's set of them (`RunDecoders`)."""

from __future__ import annotations

import torch

from momentumgs.config import Config
from momentumgs.data.scene import Scene
from momentumgs.model.decoder import GaussianDecoder, MomentumTeacher
from momentumgs.model.store import DecoderSpec
from momentumgs.train.optimizers import apply_schedules, decoder_optimizer, lr_schedules
from momentumgs.train.slots import SlotSchedule


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


class RunDecoders:
    """The decoders of a run: one shared student (`experimental.shared_decoder`), or one per block for the
    "independent blocks" ablation, each a `DecoderState`; which one a block uses, and when they step."""

    def __init__(self, cfg: Config, spec: DecoderSpec, schedule: SlotSchedule, device: torch.device):
        mc = cfg.method
        self.cfg, self.schedule = cfg, schedule
        count = 1 if self.shared else schedule.n_blocks
        # the shared decoder's Adam moments: one state, or one per slot index (method.decoder_optimizer)
        per_slot = self.shared and mc.decoder_optimizer == "per_slot"
        slots = max(len(blocks) for blocks in schedule.blocks_of) if per_slot else 1
        total = schedule.total_steps
        self.states = [DecoderState(spec, cfg, total, device, self.uses_teacher, slots) for _ in range(count)]

    @property
    def shared(self) -> bool:
        return self.cfg.experimental.shared_decoder

    @property
    def uses_teacher(self) -> bool:
        return self.cfg.method.teacher.momentum > 0 and self.cfg.method.teacher.lambda_consistency > 0

    def of(self, block_id: int) -> DecoderState:
        return self.states[0] if self.shared else self.states[block_id]

    @property
    def frozen(self) -> bool:
        """The shared decoder no longer learns: `method.freeze_decoder_at_finish` and a block has finished.
        Every process knows the whole schedule, so all agree without communicating."""
        return self.shared and self.cfg.method.freeze_decoder_at_finish and self.schedule.any_finished

    def stepping(self, blocks: list[int]) -> list[DecoderState]:
        """The decoders that learn from the blocks trained at this step (`blocks`, this process's)."""
        return self.states if self.shared else [self.states[b] for b in blocks]

    def update_teachers(self, blocks: list[int], frozen: bool) -> None:
        """Each learning student's teacher follows it by EMA (before the forward pass)."""
        for state in self.stepping(blocks):
            if state.teacher is not None and self.uses_teacher and not frozen:
                state.teacher.update(state.module, self.cfg.method.teacher.momentum)

    def step(self, blocks: list[int], global_step: int, finite: bool, frozen: bool) -> None:
        """One Adam step of each decoder that learnt from `blocks` (this process's blocks of this step)."""
        if self.shared:
            current = [b for b in map(self.schedule.current, range(self.schedule.workers)) if b is not None]
            self.states[0].step(self._clock(current, global_step), finite, frozen, self._slot())
        else:
            for b in blocks:
                self.states[b].step(self._clock([b], global_step), finite, frozen)

    def _clock(self, blocks: list[int], global_step: int) -> int:
        """Where the decoder's schedules stand at this step: the global step (`train.decoder_lr_clock: run`)
        or the iteration of the blocks trained in it (`block`; the fewest done when they differ)."""
        if self.cfg.train.decoder_lr_clock == "block" and blocks:
            return min(self.schedule.done_iterations[b] for b in blocks)
        return global_step

    def _slot(self) -> int:
        """Which of the shared decoder's Adam states this step uses (`method.decoder_optimizer: per_slot`):
        the slot index of the block of the first active worker, its position in that worker's rotation (all
        workers are at the same position while they own equally many blocks). 0 with one state."""
        if len(self.states[0].optimizers) == 1:
            return 0
        for w in range(self.schedule.workers):
            b = self.schedule.current(w)
            if b is not None:
                return self.schedule.blocks_of[w].index(b)
        return 0

    def state_dict(self) -> list[dict]:
        return [d.state_dict() for d in self.states]

    def load_state_dict(self, states: list[dict]) -> None:
        for decoder, state in zip(self.states, states, strict=True):
            decoder.load_state_dict(state)
