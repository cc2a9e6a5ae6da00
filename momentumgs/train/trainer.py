"""The training loop: n blocks on k workers with a shared decoder and its momentum teacher.

Every global step, each active worker trains its current block (slot rotation, `slots.py`) for one view: the
block's anchors and the one shared student decoder get gradients from that block's loss, weighted by the
block weight, plus the consistency loss against the momentum teacher. The decoder's gradients are averaged
over the active workers (all-reduce across processes, or a sum inside this process when it emulates them),
then the decoder takes one step; each block's own Adam steps its anchors. The teacher follows the student by
EMA before every forward pass. See docs/method.md (Training schedule, Momentum teacher, Block weighting).

One block on one worker (a 1x1x1 grid) is the case n = k = 1 of the same loop: every `train.*` and
`method.*` key means the same there (block weighting is neutral with one block, so nothing is measured for
it). `train.log_every`, `eval_every` and `checkpoint_every` count global steps; with one worker a global
step is one iteration of the block it trains.

The `Trainer` holds the step and the loop; its collaborators hold the rest, each with its state: where the
blocks live (`residency.py`), the decoders (`decoder_state.py`), the block weights (`weighting.py`), the
checkpoints (`checkpoints.py`), the records of metrics.jsonl (`records.py`). What follows training (merge,
seam refinement, the model) is `momentumgs/run.py`'s sequence.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from momentumgs.checkpoint import save_checkpoint
from momentumgs.config import Config
from momentumgs.data.scene import Scene
from momentumgs.errors import UserError
from momentumgs.model.anchors import choose_voxel_size
from momentumgs.model.decoder import ConsistencyTerms, GaussianDecoder
from momentumgs.partition import Partition
from momentumgs.render.view import camera_view
from momentumgs.timing import phase
from momentumgs.train.block import StepResult
from momentumgs.train.checkpoints import RunCheckpoints
from momentumgs.train.comm import LocalComm, agreed_signal, average_gradients, decoder_checksum
from momentumgs.train.decoder_state import RunDecoders, decoder_spec
from momentumgs.train.losses import consistency_weight
from momentumgs.train.measure import gt_image
from momentumgs.train.metrics_log import MetricsLog
from momentumgs.train.paths import RunPaths
from momentumgs.train.records import block_step_records, eval_record, train_record
from momentumgs.train.residency import BlockResidency, block_crops
from momentumgs.train.slots import SlotSchedule
from momentumgs.train.stop import StopSignals, TrainingStopped
from momentumgs.train.weighting import BlockWeighting

MAX_BAD_STEPS = 20  # consecutive non-finite steps before the run stops (the last checkpoint stays intact)


class TrainingDiverged(UserError):
    pass


class Trainer:
    def __init__(
        self,
        cfg: Config,
        scene: Scene,
        partition: Partition,
        run_dir: str | Path,
        device: torch.device,
        comm=None,
    ):
        self.cfg, self.scene, self.partition, self.device = cfg, scene, partition, device
        self.paths = RunPaths(Path(run_dir))
        mc, n = cfg.method, len(partition.blocks)
        self.comm = comm if comm is not None else LocalComm(mc.workers)
        self.schedule = SlotSchedule(n, self.comm.workers, mc.slot_iterations, cfg.train.iterations)
        self.log = MetricsLog(self.paths.metrics)
        owned = [b for b in range(n) if b % self.comm.workers in self.comm.local_workers()]
        self.residency = BlockResidency(cfg, scene, partition, owned, self.paths.spill, device)
        self.spec = decoder_spec(cfg, scene)
        self.decoders = RunDecoders(cfg, self.spec, self.schedule, device)
        self.views = [camera_view(c, device, i) for i, c in enumerate(scene.cameras)]
        self.crops = block_crops(cfg, scene, partition)
        self.weighting = BlockWeighting(mc.weighting, n, owned, self.comm, scene, self.views, self.crops)
        self.checkpoints = RunCheckpoints(self.paths, self.comm, n)
        ex = cfg.experimental
        self.consistency_terms = ConsistencyTerms(ex.consistency_opacity, ex.consistency_shape)
        self.global_step = 0
        self.skipped_steps = 0
        self.bad_steps = 0
        self.train_seconds = 0.0  # wall time in run() over every session of this run (checkpointed)
        self._clock: tuple[float, float] | None = None  # (perf_counter, train_seconds) when run() started
        self.voxel_size = cfg.model.voxel_size or choose_voxel_size(scene.points)

    @property
    def decoder(self) -> GaussianDecoder:
        """The shared student decoder."""
        return self.decoders.states[0].module

    def init_blocks(self) -> None:
        """Each owned block's anchors from its points (cell + margin), straight into the store."""
        self.residency.init_blocks(self.voxel_size)

    # --- one global step --------------------------------------------------------------------------

    def train_step(self) -> dict[int, StepResult]:
        """One global step: each local worker trains its block on one view; the decoders step on the
        gradients averaged over every worker, each block on its own; the schedule advances."""
        frozen = self.decoders.frozen
        slots = {w: self.schedule.current(w) for w in self.comm.local_workers()}  # None: the worker idles
        with phase("swap"):
            self.residency.hold(slots, self.schedule)
        active = {w: b for w, b in slots.items() if b is not None}
        with phase("teacher_update"):
            self.decoders.update_teachers(list(active.values()), frozen)
        measuring = self.weighting.measuring(self.schedule)
        results = {b: self._forward_backward(w, b, frozen) for w, b in active.items()}
        finite = self._average_decoder_grads(results)
        with phase("optimizer"):
            self.decoders.step(list(active.values()), self.global_step, finite, frozen)
        self._count_finite(finite)
        for w, b in active.items():
            block = self.residency.block_of(w)
            block.step(finite)
            with phase("weighting"):
                self.weighting.after_step(b, block, results[b], self.decoders.of(b).module, b in measuring)
        if measuring:
            with phase("weighting"):
                self.weighting.sync()
        self.schedule.advance()
        self.global_step += 1
        self._check_diverged()
        return results

    def _forward_backward(self, worker: int, block_id: int, frozen: bool) -> StepResult:
        """Worker `worker`'s block `block_id` renders its next view; its loss backpropagates."""
        teacher, ex = self.cfg.method.teacher, self.cfg.experimental
        block, decoder = self.residency.block_of(worker), self.decoders.of(block_id)
        index = block.sampler.next()
        with phase("data"):
            gt = gt_image(self.scene, index, self.device)
        done = self.schedule.done_iterations[block_id]
        ramped = consistency_weight(
            done, self.cfg.train.iterations, teacher.lambda_consistency, ex.consistency_ramp
        )
        return block.forward_backward(
            decoder.module,
            self.views[index],
            gt,
            teacher=decoder.teacher.module if decoder.teacher is not None else None,
            lambda_consistency=0.0 if frozen else ramped,
            terms=self.consistency_terms,
            balance=teacher.balance,
            cap_anchors=ex.consistency_balance_anchors,
            weight=self.weighting.weight(block_id),
            crop=self.crops[block_id].get(index),
        )

    def _average_decoder_grads(self, results: dict[int, StepResult]) -> bool:
        """The shared decoder's gradients averaged over every active worker (independent decoders learn
        from their own block only: nothing crosses workers). -> whether the step is finite everywhere"""
        local_ok = all(r.finite for r in results.values())
        if not self.decoders.shared:
            return local_ok
        with phase("allreduce"):
            return average_gradients(self.comm, list(self.decoder.parameters()), len(results), local_ok)

    def _count_finite(self, finite: bool) -> None:
        if finite:
            self.bad_steps = 0
        else:
            self.skipped_steps += 1
            self.bad_steps += 1

    def _check_diverged(self) -> None:
        if self.bad_steps >= MAX_BAD_STEPS:
            raise TrainingDiverged(
                f"{self.paths.root}: {self.bad_steps} consecutive non-finite steps at global step "
                f"{self.global_step}; stopped, the last checkpoint is intact"
            )

    def check_replicas(self) -> None:
        """All workers must hold the same decoder (their gradients were averaged): compare checksums."""
        if not self.decoders.shared:
            return
        sums = self.comm.gather_checksums(decoder_checksum(self.decoder))
        if max(sums) != min(sums):
            raise RuntimeError(f"decoder replicas differ across workers at step {self.global_step}: {sums}")

    def evaluate_blocks(self) -> dict:
        """Each block on the evaluation views in its cell, gathered from every process. -> an eval record"""
        return eval_record(
            self.scene,
            self.partition,
            self.views,
            self.residency.block_fields(),
            lambda b: self.decoders.of(b).module,
            self.comm,
            self.cfg.train.eval_views,
            self.global_step,
        )

    # --- state and checkpoints --------------------------------------------------------------------

    def state_dict(self) -> dict:
        """This process's shared state (its blocks are saved one file each)."""
        return {
            "global_step": self.global_step,
            "schedule": self.schedule.state_dict(),
            "decoders": self.decoders.state_dict(),
            "weighting": self.weighting.state_dict(),
            "skipped_steps": self.skipped_steps,
            "train_seconds": self.seconds(),
            "torch_rng": torch.get_rng_state(),
            "voxel_size": self.voxel_size,
        }

    def load_state_dict(self, state: dict) -> None:
        self.global_step = int(state["global_step"])
        self.schedule.load_state_dict(state["schedule"])
        self.decoders.load_state_dict(state["decoders"])
        self.weighting.load_state_dict(state["weighting"])
        self.skipped_steps = int(state["skipped_steps"])
        self.train_seconds = float(state["train_seconds"])
        torch.set_rng_state(state["torch_rng"])
        self.voxel_size = float(state["voxel_size"])

    def save_checkpoint(self) -> None:
        self.checkpoints.save(self.global_step, self.residency.block_states(), self.state_dict())

    def load_checkpoint(self) -> None:
        """The state of the newest intact checkpoint; the metrics logged after it are dropped."""
        shared, step_dir = self.checkpoints.load(self.device)
        self.load_state_dict(shared)
        self.residency.load_states(self.checkpoints.load_blocks(step_dir, self.residency.owned))
        self.log.truncate_after(self.global_step)

    def save_final_blocks(self) -> None:
        """Each owned block's final anchors (and its own decoder, for independent decoders) in blocks/,
        where the main process merges them; then the store's files go."""
        for b, state in self.residency.block_states():
            final = {"anchors": state["anchors"]}
            if not self.decoders.shared:
                final["decoder"] = self.decoders.of(b).module.state_dict()
            save_checkpoint(self.paths.block_file(b), final)
        self.comm.barrier()
        self.residency.close()

    # --- the loop ---------------------------------------------------------------------------------

    def run(
        self,
        progress: bool = True,
        stop_after: int | None = None,
        on_step: Callable[[Trainer], None] | None = None,
    ) -> None:
        """Train until every block has `train.iterations` iterations (or for `stop_after` more steps); at
        the end, the last checkpoint and every block's final anchors (`save_final_blocks`)."""
        from tqdm import tqdm

        total, n = self.schedule.total_steps, len(self.partition.blocks)
        end = total if stop_after is None else min(total, self.global_step + stop_after)
        desc = "train" if n == 1 else f"train {n} blocks on {self.comm.workers} workers"
        bar = tqdm(
            total=total,
            initial=self.global_step,
            disable=not (progress and self.comm.is_main),
            desc=desc,
            dynamic_ncols=True,
        )
        self._clock = (time.perf_counter(), self.train_seconds)
        try:
            try:
                with StopSignals() as stop:
                    self._loop(end, bar, stop, on_step)
            finally:
                bar.close()
                self.train_seconds, self._clock = self.seconds(), None
            if self.schedule.finished:
                self.save_checkpoint()
                self.save_final_blocks()
        except OSError as exc:  # disk full, permission denied, ...: the last complete checkpoint is intact
            raise UserError(self.checkpoints.stopped_text(exc, self.global_step)) from exc

    def _loop(self, end: int, bar, stop: StopSignals, on_step) -> None:
        """Global steps until `end`, with their logging, evaluation, checks and checkpoints; a stop signal
        ends the loop at a step boundary with a checkpoint."""
        tc, mc = self.cfg.train, self.cfg.method
        t0, step0 = time.perf_counter(), self.global_step
        while self.global_step < end and not self.schedule.finished:
            results = self.train_step()
            if on_step is not None:  # e.g. the viewer's snapshots (momentumgs train --view)
                on_step(self)
            step = self.global_step
            if step % tc.log_every == 0 or step == end:
                self._log_step(results, bar, (step - step0) / max(time.perf_counter() - t0, 1e-9))
            bar.update(1)
            if tc.eval_every > 0 and step % tc.eval_every == 0 and step < self.schedule.total_steps:
                record = self.evaluate_blocks()
                if self.comm.is_main:
                    self.log.write(record)
            if mc.checksum_every > 0 and step % mc.checksum_every == 0:
                self.check_replicas()
            signum = agreed_signal(self.comm, stop.signum)
            if signum is not None and not self.schedule.finished:
                self._stop(signum)
            if tc.checkpoint_every > 0 and step % tc.checkpoint_every == 0:
                with phase("checkpoint"):
                    self.save_checkpoint()

    def _log_step(self, results: dict[int, StepResult], bar, rate: float) -> None:
        """The training record of this step (a collective), written and shown by the main process."""
        anchors = {b: block.field.n_anchors for b, block in self.residency.resident_blocks()}
        weights = [self.weighting.weight(b) for b in range(len(self.partition.blocks))]
        blocks = block_step_records(results, self.schedule.done_iterations, anchors, weights)
        stats = self.residency.store.stats
        record = train_record(
            blocks,
            self.global_step,
            rate,
            self.comm,
            seconds=self.seconds(),
            skipped=self.skipped_steps,
            swap_seconds=stats.put_seconds + stats.take_seconds,
        )
        if self.comm.is_main:
            self.log.write(record)
            psnrs = [r["psnr"] for r in record["blocks"].values()]
            if psnrs:
                bar.set_postfix(psnr=f"{np.mean(psnrs):.2f}", blocks=sorted(map(int, record["blocks"])))

    def _stop(self, signum: int) -> None:
        with phase("checkpoint"):
            self.save_checkpoint()
        raise TrainingStopped(
            f"{self.paths.root}: stopped by {signal.Signals(signum).name} at step {self.global_step} of "
            f"{self.schedule.total_steps}; checkpoint saved, resume with `momentumgs train --resume "
            f"{self.paths.root}`",
            signum,
        )

    def seconds(self) -> float:
        """Wall seconds spent in `run()` so far, earlier sessions of a resumed run included."""
        if self._clock is None:
            return self.train_seconds
        start, before = self._clock
        return before + time.perf_counter() - start
