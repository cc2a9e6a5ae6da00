"""The training loop: n blocks on k workers with a shared decoder and its momentum teacher.

Every global step, each active worker trains its current block (slot rotation, `slots.py`) for one view: the
block's anchors and the one shared student decoder get gradients from that block's loss, weighted by the
block weight, plus the consistency loss against the momentum teacher. The decoder's gradients are averaged
over the active workers (all-reduce across processes, or a sum inside this process when it emulates them),
then the decoder takes one step; each block's own Adam steps its anchors. The teacher follows the student by
EMA before every forward pass. Blocks that are not in a slot wait in the `BlockStore` (host RAM within a
budget, disk beyond it). See docs/method.md (Training schedule, Momentum teacher, Block weighting).

One block on one worker (a 1x1x1 grid) is the case n = k = 1 of the same loop: every `train.*` and
`method.*` key means the same there (block weighting is neutral with one block, so nothing is measured for
it). `train.log_every`, `eval_every` and `checkpoint_every` count global steps; with one worker a global
step is one iteration of the block it trains. The run folder's layout is `paths.py`'s, the metrics schema
`metrics_log.py`'s.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from momentumgs.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, verify_checkpoint
from momentumgs.config import Config
from momentumgs.data.scene import Scene
from momentumgs.errors import DISK_FULL, NOT_WRITABLE, UserError, os_error_text
from momentumgs.io_utils import write_text_atomic
from momentumgs.memory import peak_rss_mb
from momentumgs.model.anchors import AnchorField, choose_voxel_size, init_anchors_from_points
from momentumgs.model.decoder import ConsistencyTerms, GaussianDecoder
from momentumgs.model.store import AnchorModel, save_model
from momentumgs.partition import Partition, cell_rectangles
from momentumgs.render.view import Crop, camera_view
from momentumgs.timing import phase
from momentumgs.train.block import Block, StepResult
from momentumgs.train.block_store import BlockStore
from momentumgs.train.comm import LocalComm, decoder_checksum
from momentumgs.train.decoder_state import DecoderState, decoder_spec
from momentumgs.train.losses import consistency_weight
from momentumgs.train.measure import gt_image, spatial_scale, view_metrics, view_quality
from momentumgs.train.metrics_log import MetricsLog
from momentumgs.train.paths import RunPaths
from momentumgs.train.seams import refine_seams
from momentumgs.train.slots import SlotSchedule
from momentumgs.train.stop import StopSignals, TrainingStopped
from momentumgs.train.weighting import SOURCES, BlockQuality, StepMetrics, block_weights

RUN_FORMAT = "momentumgs-multiblock-v1"
MAX_BAD_STEPS = 20  # consecutive non-finite steps before the run stops (the last checkpoint stays intact)


class TrainingDiverged(UserError):
    pass


def check_workers(workers: int, n_blocks: int) -> None:
    """Every worker needs a block of its own."""
    if workers > n_blocks:
        raise UserError(f"method.workers={workers} is more than the {n_blocks} blocks of the partition")


def latest_step_dir(paths: RunPaths) -> Path | None:
    """The step folder a run's `latest.json` names (None when it is absent or unreadable)."""
    try:
        return paths.checkpoints / json.loads(paths.latest.read_text())["dir"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def intact_step_dir(paths: RunPaths, blocks: int, processes: int) -> tuple[Path, list[str]]:
    """The newest complete, intact step folder of a run of `blocks` blocks written by `processes` processes:
    the one `latest.json` names, else the newest older one; and what is wrong with the newer ones passed
    over. Every file of the folder is checked, so all processes choose the same one (and the launcher of
    the processes can refuse a run with none before it starts them)."""
    latest = latest_step_dir(paths)
    older = sorted((p for p in paths.checkpoints.glob("step_*") if p != latest), reverse=True)
    candidates = ([latest] if latest is not None else []) + older
    if not candidates:
        raise UserError(f"{paths.root}: no checkpoint to resume (expected {paths.latest})")
    problems = []
    for step_dir in candidates:
        try:
            for r in range(processes):
                verify_checkpoint(step_dir / f"shared_rank{r}.ckpt")
            for b in range(blocks):
                verify_checkpoint(step_dir / f"block_{b:03d}.ckpt")
        except CheckpointError as exc:
            problems.append(str(exc))
            continue
        return step_dir, problems
    raise CheckpointError(
        f"{paths.root}: no intact checkpoint to resume ({problems[0]}); start the run again in an empty "
        "folder"
    )


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
        mc, tc = cfg.method, cfg.train
        n = len(partition.blocks)
        self.comm = comm if comm is not None else LocalComm(mc.workers)
        check_workers(self.comm.workers, n)
        self.schedule = SlotSchedule(n, self.comm.workers, mc.slot_iterations, tc.iterations)
        self.log = MetricsLog(self.paths.metrics)
        self.spatial_scale = spatial_scale(scene, scene.train_ids)

        self.spec = decoder_spec(cfg, scene)
        # one shared student decoder, or one per block for the "independent blocks" ablation
        count = 1 if mc.shared_decoder else n
        # the shared decoder's Adam moments: one state, or one per slot index (method.decoder_optimizer)
        per_slot = mc.shared_decoder and mc.decoder_optimizer == "per_slot"
        slots = max(len(blocks) for blocks in self.schedule.blocks_of) if per_slot else 1
        self.decoders = [
            DecoderState(self.spec, cfg, self.schedule.total_steps, device, self.uses_teacher, slots)
            for _ in range(count)
        ]
        self.views = [camera_view(c, device, i) for i, c in enumerate(scene.cameras)]
        self.crops = self._view_crops()

        if mc.weighting_source not in SOURCES:
            raise UserError(f"method.weighting_source={mc.weighting_source!r}: must be one of {SOURCES}")
        self.consistency_terms = ConsistencyTerms(mc.consistency_opacity, mc.consistency_shape)
        self.qualities = [BlockQuality() for _ in range(n)]
        self.step_metrics = [StepMetrics() for _ in range(n)]
        self.weights = [1.0] * n
        self.global_step = 0
        self.skipped_steps = 0
        self.train_seconds = 0.0  # wall time in run() over every session of this run (checkpointed)
        self._clock: tuple[float, float] | None = None  # (perf_counter, train_seconds) when run() started
        self.bad_steps = 0
        self.store = BlockStore(int(mc.ram_budget_mb * (1 << 20)), self.paths.spill)
        self.resident: dict[int, tuple[int, Block]] = {}  # worker -> (block id, block)
        self.owned = [b for b in range(n) if b % self.comm.workers in self.comm.local_workers()]
        self.voxel_size = cfg.model.voxel_size or choose_voxel_size(scene.points)

    def _view_crops(self) -> list[dict[int, Crop]]:
        """Per block, the crop of each training view it trains on where that is not the whole image
        (`method.crop_views`; one block's cell is the whole scene, so it trains on whole views)."""
        mc, blocks = self.cfg.method, self.partition.blocks
        if not mc.crop_views or len(blocks) == 1:
            return [{} for _ in blocks]
        crops = []
        for rects in cell_rectangles(self.scene, self.partition, mc.crop_pad):
            sizes = {i: (self.scene.cameras[i].width, self.scene.cameras[i].height) for i in rects}
            crops.append({i: Crop(*r, *sizes[i]) for i, r in rects.items() if tuple(r) != (0, 0, *sizes[i])})
        return crops

    def decoder_of(self, block_id: int) -> DecoderState:
        return self.decoders[0] if self.cfg.method.shared_decoder else self.decoders[block_id]

    @property
    def decoder(self) -> GaussianDecoder:
        """The shared student decoder."""
        return self.decoders[0].module

    @property
    def uses_teacher(self) -> bool:
        return self.cfg.method.momentum > 0 and self.cfg.method.lambda_consistency > 0

    @property
    def uses_weighting(self) -> bool:
        """Block weights compare blocks: with one block every weight is 1, so nothing is measured."""
        return self.cfg.method.weighting and len(self.partition.blocks) > 1

    # --- blocks -----------------------------------------------------------------------------------

    def _new_block(self, block_id: int, field: AnchorField) -> Block:
        views = [int(i) for i in self.partition.blocks[block_id].camera_ids]
        seed = self.cfg.train.seed + 1000 * (block_id + 1)
        return Block(field, views, self.cfg.train, self.block_spatial_scale(views), seed)

    def block_spatial_scale(self, views: list[int]) -> float:
        """The offsets' learning-rate scale of a block training on `views`: the whole scene's, or 1.1 x the
        spread of the block's own views (`train.spatial_lr_scale: block`)."""
        if self.cfg.train.spatial_lr_scale == "block" and views:
            return spatial_scale(self.scene, views)
        return self.spatial_scale

    def _block_from_state(self, block_id: int, state: dict) -> Block:
        block = self._new_block(block_id, AnchorField.from_state_dict(state["anchors"]).to(self.device))
        block.load_state_dict(state)
        return block

    def init_blocks(self) -> None:
        """Each owned block's anchors from its points (cell + margin), straight into the store."""
        mc = self.cfg.model
        for b in self.owned:
            points = self.scene.points[self.partition.blocks[b].point_ids]
            if len(points) == 0:
                raise UserError(f"partition block {b}: no SfM points to initialise anchors from")
            field = init_anchors_from_points(points, self.voxel_size, mc.n_offsets, mc.feat_dim, self.device)
            self.store.put(b, self._new_block(b, field).state_dict())

    def resident_blocks(self) -> list[tuple[int, Block]]:
        """(block id, block) of the blocks this process holds in its workers' slots now."""
        return list(self.resident.values())

    def _make_resident(self, active: dict[int, int | None]) -> None:
        """Swap blocks so that each local worker holds its current block; prefetch the next ones."""
        for w, b in active.items():
            held = self.resident.get(w)
            if held is not None and held[0] == b:
                continue
            if held is not None:
                self.store.put(held[0], held[1].state_dict())
                del self.resident[w]
            if b is not None:
                self.resident[w] = (b, self._block_from_state(b, self.store.take(b, self.device)))
        upcoming = [self._next_block(w) for w in active]
        upcoming = [b for b in upcoming if b is not None and b in self.store]
        self.store.hint_next(upcoming)
        for b in upcoming:
            self.store.prefetch(b)

    def _next_block(self, worker: int) -> int | None:
        """The block worker `worker` will hold after its current slot."""
        s = self.schedule
        blocks = s.blocks_of[worker]
        current = s.current(worker)
        if current is None or len(blocks) == 1:
            return None
        start = blocks.index(current)
        for shift in range(1, len(blocks)):
            b = blocks[(start + shift) % len(blocks)]
            if s.done_iterations[b] < s.iterations:
                return b
        return None

    def block_states(self) -> Iterator[tuple[int, dict]]:
        """(block id, state) of every owned block, one at a time, so that host RAM stays within the store's
        budget: resident blocks are copied, stored ones are read and put back after use."""
        resident = dict(self.resident_blocks())
        for b in self.owned:
            if b in resident:
                yield b, resident[b].state_dict()
            else:
                state = self.store.take(b, "cpu")
                yield b, state
                self.store.put(b, state)

    def block_fields(self) -> Iterator[tuple[int, AnchorField]]:
        """(block id, anchors on the device) of every owned block, one at a time, as `block_states`."""
        resident = dict(self.resident_blocks())
        for b in self.owned:
            if b in resident:
                yield b, resident[b].field
            else:
                state = self.store.take(b, "cpu")
                yield b, AnchorField.from_state_dict(state["anchors"]).to(self.device)
                self.store.put(b, state)

    # --- one global step --------------------------------------------------------------------------

    @property
    def decoder_frozen(self) -> bool:
        """The shared decoder no longer learns: `method.freeze_decoder_at_finish` and a block has finished.
        Every process knows the whole schedule, so all agree without communicating."""
        mc = self.cfg.method
        return mc.shared_decoder and mc.freeze_decoder_at_finish and self.schedule.any_finished

    def train_step(self) -> dict[int, StepResult]:
        mc = self.cfg.method
        frozen = self.decoder_frozen
        active = {w: self.schedule.current(w) for w in self.comm.local_workers()}
        with phase("swap"):
            self._make_resident(active)
        stepping = (
            self.decoders
            if mc.shared_decoder
            else [self.decoders[b] for b in active.values() if b is not None]
        )
        with phase("teacher_update"):
            for state in stepping:
                if state.teacher is not None and self.uses_teacher and not frozen:
                    state.teacher.update(state.module, mc.momentum)  # before the forward pass

        # The blocks (of all workers) that measure their quality after this step: only then do the block
        # weights change and need sharing (every process knows the whole schedule)
        done = self.schedule.done_iterations
        current = [b for b in map(self.schedule.current, range(self.comm.workers)) if b is not None]
        measuring = {b for b in current if (done[b] + 1) % mc.weighting_every == 0}
        measuring = measuring if self.uses_weighting else set()
        results: dict[int, StepResult] = {}
        for w, b in active.items():
            if b is None:
                continue
            block, decoder = self.resident[w][1], self.decoder_of(b)
            index = block.sampler.next()
            weight = self.weights[b] if self.uses_weighting else 1.0
            with phase("data"):
                gt = gt_image(self.scene, index, self.device)
            results[b] = block.forward_backward(
                decoder.module,
                self.views[index],
                gt,
                teacher=decoder.teacher.module if decoder.teacher is not None else None,
                lambda_consistency=0.0
                if frozen
                else consistency_weight(done[b], self.cfg.train.iterations, mc),
                terms=self.consistency_terms,
                balance=mc.consistency_balance,
                cap_anchors=mc.consistency_balance_anchors,
                weight=weight,
                crop=self.crops[b].get(index),
            )
        if mc.shared_decoder:
            with phase("allreduce"):
                finite = self._average_decoder_grads(results)
        else:  # independent decoders: each learns from its own block only; nothing crosses workers
            finite = all(r.finite for r in results.values())
        with phase("optimizer"):
            if mc.shared_decoder:
                clock, slot = self._decoder_clock(current), self._decoder_slot()
                self.decoders[0].step(clock, finite, frozen, slot)
            else:
                for b in active.values():
                    if b is not None:
                        self.decoders[b].step(self._decoder_clock([b]), finite, frozen)
        if finite:
            self.bad_steps = 0
        else:
            self.skipped_steps += 1
            self.bad_steps += 1

        for w, b in active.items():
            if b is None:
                continue
            block = self.resident[w][1]
            block.step(finite)
            with phase("weighting"):
                if self.uses_weighting and mc.weighting_source == "steps":
                    self.step_metrics[b].add(results[b].psnr, results[b].ssim)
                if b in measuring:
                    self._measure_quality(b, block)
        if measuring:
            with phase("weighting"):
                self._sync_weights()
        self.schedule.advance()
        self.global_step += 1
        if self.bad_steps >= MAX_BAD_STEPS:
            raise TrainingDiverged(
                f"{self.paths.root}: {self.bad_steps} consecutive non-finite steps at global step "
                f"{self.global_step}; stopped, the last checkpoint is intact"
            )
        return results

    def _decoder_clock(self, blocks: list[int]) -> int:
        """Where the decoder's schedules stand at this step: the global step (`train.decoder_lr_clock: run`)
        or the iteration of the blocks trained in it (`block`; the fewest done when they differ)."""
        if self.cfg.train.decoder_lr_clock == "block" and blocks:
            return min(self.schedule.done_iterations[b] for b in blocks)
        return self.global_step

    def _decoder_slot(self) -> int:
        """Which of the shared decoder's Adam states this step uses (`method.decoder_optimizer: per_slot`):
        the slot index of the block of the first active worker, its position in that worker's rotation (all
        workers are at the same position while they own equally many blocks). 0 with one state."""
        if len(self.decoders[0].optimizers) == 1:
            return 0
        for w in range(self.comm.workers):
            b = self.schedule.current(w)
            if b is not None:
                return self.schedule.blocks_of[w].index(b)
        return 0

    def _average_decoder_grads(self, results: dict[int, StepResult]) -> bool:
        """Sum the decoder gradients of all active workers everywhere, divide by their number."""
        params = list(self.decoder.parameters())
        local_ok = all(r.finite for r in results.values())
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        # one collective per step: the gradients, then the number of active workers and of failed ones
        # (small integers, exact in float32)
        flags = grads[0].new_tensor([float(len(results)), 0.0 if local_ok else 1.0])
        flat = torch.cat([g.flatten() for g in grads] + [flags])
        self.comm.sum_(flat)
        active, bad = int(flat[-2]), bool(flat[-1] > 0)
        flat = flat[:-2] / max(active, 1)
        offset = 0
        for p in params:
            p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        return not bad and bool(torch.isfinite(flat).all())

    @torch.no_grad()
    def _measure_quality(self, block_id: int, block: Block) -> None:
        """PSNR / SSIM of the block: the mean of its training steps since the last measurement, or
        rendered on every `weighting_view_stride`-th of its training views."""
        mc = self.cfg.method
        if mc.weighting_source == "steps":
            steps = self.step_metrics[block_id].take_mean()
            if steps is not None:
                self.qualities[block_id].update(*steps, mc.weighting_smoothing)
            return
        ids = block.sampler.view_ids[:: mc.weighting_view_stride]
        decoder = self.decoder_of(block_id).module
        quality = view_quality(block.field, decoder, self.scene, self.views, ids, self.crops[block_id])
        self.qualities[block_id].update(*quality, mc.weighting_smoothing)

    def _sync_weights(self) -> None:
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
        self.weights = block_weights(self.qualities, self.cfg.method.weighting_sigma)

    def check_replicas(self) -> None:
        """All workers must hold the same decoder (their gradients were averaged): compare checksums."""
        if not self.cfg.method.shared_decoder:
            return
        sums = self.comm.gather_checksums(decoder_checksum(self.decoder))
        if max(sums) != min(sums):
            raise RuntimeError(f"decoder replicas differ across workers at step {self.global_step}: {sums}")

    # --- periodic evaluation ----------------------------------------------------------------------

    def eval_view_ids(self) -> tuple[str, list[int]]:
        """The split and views of the periodic evaluation: the test views (every 8th train view when the
        scene has none), thinned to at most `train.eval_views`."""
        tc = self.cfg.train
        split = "test" if self.scene.test_ids else "train-subset"
        ids = list(self.scene.test_ids or self.scene.train_ids[::8])
        if tc.eval_views > 0:
            ids = ids[:: max(1, math.ceil(len(ids) / tc.eval_views))]
        return split, ids

    @torch.no_grad()
    def evaluate_blocks(self) -> dict:
        """PSNR / SSIM of each block on the evaluation views whose camera centre lies in its cell (each block
        renders with all its anchors, margin included), gathered from every process. -> an eval record."""
        split, ids = self.eval_view_ids()
        n = len(self.partition.blocks)
        owner = self.partition.block_of_points(np.stack([self.scene.cameras[i].center for i in ids]))  # [V]
        sums = torch.zeros((n, 3), dtype=torch.float64)  # [B, (psnr sum, ssim sum, views)]
        for b, field in self.block_fields():
            mine = [i for i, o in zip(ids, owner, strict=True) if o == b]
            if mine:
                values = view_metrics(field, self.decoder_of(b).module, self.scene, self.views, mine)
                sums[b] = torch.tensor([*values.sum(0), len(mine)], dtype=torch.float64)
        self.comm.sum_(sums)
        total = sums.sum(0)
        blocks = {
            str(b): {"psnr": p / v, "ssim": s / v, "views": int(v)}
            for b, (p, s, v) in enumerate(sums.tolist())
            if v > 0
        }
        views = max(float(total[2]), 1.0)
        return {
            "kind": "eval",
            "step": self.global_step,
            "split": split,
            "psnr": float(total[0]) / views,
            "ssim": float(total[1]) / views,
            "views": int(total[2]),
            "blocks": blocks,
        }

    # --- checkpoints ------------------------------------------------------------------------------

    def shared_state(self) -> dict:
        return {
            "format": RUN_FORMAT,
            "global_step": self.global_step,
            "schedule": self.schedule.state_dict(),
            "decoders": [d.state_dict() for d in self.decoders],
            "qualities": [[q.psnr, q.ssim] for q in self.qualities],
            "step_metrics": [[m.psnr_sum, m.ssim_sum, m.count] for m in self.step_metrics],
            "skipped_steps": self.skipped_steps,
            "train_seconds": self.seconds(),
            "torch_rng": torch.get_rng_state(),
            "voxel_size": self.voxel_size,
        }

    def save_checkpoint(self) -> None:
        """All processes write their files into a new step folder; then `latest.json` names it. The previous
        complete checkpoint stays (a resume falls back to it if the latest is damaged); older ones go."""
        step_dir = self.paths.step_dir(self.global_step)
        for b, state in self.block_states():
            save_checkpoint(step_dir / f"block_{b:03d}.ckpt", state)
        save_checkpoint(step_dir / f"shared_rank{self.comm.rank}.ckpt", self.shared_state())
        self.comm.barrier()
        if self.comm.is_main:
            previous = self._latest_dir()
            write_text_atomic(self.paths.latest, json.dumps({"step": self.global_step, "dir": step_dir.name}))
            for old in self.paths.checkpoints.glob("step_*"):
                if old not in (step_dir, previous):
                    shutil.rmtree(old, ignore_errors=True)
        self.comm.barrier()

    def _latest_dir(self) -> Path | None:
        """The step folder `latest.json` names (None when it is absent or unreadable)."""
        return latest_step_dir(self.paths)

    def _resume_dir(self) -> Path:
        """The newest complete, intact step folder (`intact_step_dir`), with a warning when it is not the
        latest."""
        step_dir, problems = intact_step_dir(self.paths, len(self.partition.blocks), self.comm.world_size)
        if problems and self.comm.is_main:
            print(
                f"momentumgs: warning: {problems[0]}; resuming from the older checkpoint {step_dir.name}",
                file=sys.stderr,
            )
        return step_dir

    def load_checkpoint(self) -> None:
        step_dir = self._resume_dir()
        shared = load_checkpoint(step_dir / f"shared_rank{self.comm.rank}.ckpt", map_location=self.device)
        if shared.get("format") != RUN_FORMAT:
            raise UserError(f"{step_dir}: not a momentumgs run checkpoint")
        self.global_step = int(shared["global_step"])
        self.schedule.load_state_dict(shared["schedule"])
        for decoder, state in zip(self.decoders, shared["decoders"], strict=True):
            decoder.load_state_dict(state)
        self.qualities = [BlockQuality(p, s) for p, s in shared["qualities"]]
        sums = shared.get("step_metrics", [[0.0, 0.0, 0]] * len(self.qualities))  # older checkpoints
        self.step_metrics = [StepMetrics(p, s, int(c)) for p, s, c in sums]
        self.weights = block_weights(self.qualities, self.cfg.method.weighting_sigma)
        self.skipped_steps = int(shared["skipped_steps"])
        self.train_seconds = float(shared.get("train_seconds", 0.0))  # older checkpoints lack it
        torch.set_rng_state(shared["torch_rng"])
        self.voxel_size = float(shared["voxel_size"])
        for b in self.owned:
            self.store.put(b, load_checkpoint(step_dir / f"block_{b:03d}.ckpt"))
        self.log.truncate_after(self.global_step)

    # --- the loop ---------------------------------------------------------------------------------

    def run(
        self,
        progress: bool = True,
        stop_after: int | None = None,
        on_step: Callable[[Trainer], None] | None = None,
    ) -> None:
        """Train until every block has `train.iterations` iterations (or for `stop_after` more steps)."""
        from tqdm import tqdm

        total = self.schedule.total_steps
        end = total if stop_after is None else min(total, self.global_step + stop_after)
        n = len(self.partition.blocks)
        bar = tqdm(
            total=total,
            initial=self.global_step,
            disable=not (progress and self.comm.is_main),
            desc="train" if n == 1 else f"train {n} blocks on {self.comm.workers} workers",
            dynamic_ncols=True,
        )
        t0, step0 = time.perf_counter(), self.global_step
        self._clock = (t0, self.train_seconds)
        try:
            try:
                with StopSignals() as stop:
                    self._loop(end, step0, t0, bar, stop, on_step)
            finally:
                bar.close()
                self.train_seconds, self._clock = self.seconds(), None
            if self.schedule.finished:
                self.save_checkpoint()
                self.finish(progress)
        except OSError as exc:  # disk full, permission denied, ...: the last complete checkpoint is intact
            raise UserError(self._stopped_text(exc)) from exc

    def _loop(self, end: int, step0: int, t0: float, bar, stop: StopSignals, on_step) -> None:
        """Global steps until `end`, with their logging, evaluation, checks and checkpoints; a stop signal
        ends the loop at a step boundary with a checkpoint."""
        tc, mc = self.cfg.train, self.cfg.method
        total = self.schedule.total_steps
        while self.global_step < end and not self.schedule.finished:
            results = self.train_step()
            if on_step is not None:  # e.g. the viewer's snapshots (momentumgs train --view)
                on_step(self)
            step = self.global_step
            if step % tc.log_every == 0 or step == end:
                record = self._train_record(
                    results, step, (step - step0) / max(time.perf_counter() - t0, 1e-9)
                )
                if self.comm.is_main:
                    self.log.write(record)
                    psnrs = [r["psnr"] for r in record["blocks"].values()]
                    if psnrs:
                        bar.set_postfix(
                            psnr=f"{np.mean(psnrs):.2f}", blocks=sorted(map(int, record["blocks"]))
                        )
            bar.update(1)
            if tc.eval_every > 0 and step % tc.eval_every == 0 and step < total:
                record = self.evaluate_blocks()
                if self.comm.is_main:
                    self.log.write(record)
            if mc.checksum_every > 0 and step % mc.checksum_every == 0:
                self.check_replicas()
            signum = self._agreed_stop(stop)
            if signum is not None and not self.schedule.finished:
                with phase("checkpoint"):
                    self.save_checkpoint()
                raise TrainingStopped(
                    f"{self.paths.root}: stopped by {signal.Signals(signum).name} at step {step} of {total}; "
                    f"checkpoint saved, resume with `momentumgs train --resume {self.paths.root}`",
                    signum,
                )
            if tc.checkpoint_every > 0 and step % tc.checkpoint_every == 0:
                with phase("checkpoint"):
                    self.save_checkpoint()

    def _agreed_stop(self, stop: StopSignals) -> int | None:
        """The stop signal any process received (all processes stop at the same step), or None."""
        if self.comm.world_size == 1:
            return stop.signum
        flag = torch.tensor([float(stop.signum or 0)], device=self.comm.device)
        self.comm.max_(flag)
        return int(flag.item()) or None

    def _stopped_text(self, exc: OSError) -> str:
        """One line for an operating-system error that stopped training: the error with its path, and the fix
        that fits it (free space for a full disk only)."""
        cause, root, step = os_error_text(exc), self.paths.root, self.global_step
        if not self.paths.config.is_file():  # the run folder (or its config) was deleted while training
            return (
                f"{cause}; training stopped at step {step}: the run folder {root} was removed (its "
                f"{self.paths.config.name} is gone), nothing is left to resume; train the run again"
            )
        if exc.errno in DISK_FULL:
            fix = "free space on its disk"
        elif exc.errno in NOT_WRITABLE:
            fix = "make it writable"
        else:
            fix = "fix the cause"
        latest = self._latest_dir()
        if latest is None or not latest.is_dir():
            return (
                f"{cause}; training stopped at step {step} with no checkpoint to resume from; {fix} and "
                "start it again in an empty folder"
            )
        return (
            f"{cause}; training stopped at step {step}, the last complete checkpoint ({latest.name}) is "
            f"intact; {fix} and resume with `momentumgs train --resume {root}`"
        )

    def seconds(self) -> float:
        """Wall seconds spent in `run()` so far, earlier sessions of a resumed run included."""
        if self._clock is None:
            return self.train_seconds
        start, before = self._clock
        return before + time.perf_counter() - start

    def _train_record(self, results: dict[int, StepResult], step: int, rate: float) -> dict:
        """The training record of this step with the blocks of every process (a collective)."""
        resident = dict(self.resident_blocks())
        blocks = {
            str(b): {
                "iteration": self.schedule.done_iterations[b],
                "loss": r.loss,
                "l1": r.l1,
                "ssim": r.ssim,
                "psnr": r.psnr,
                "consistency": r.consistency,
                "anchors": resident[b].field.n_anchors,
                "gaussians": r.n_gaussians,
                "weight": self.weights[b] if self.uses_weighting else 1.0,
            }
            for b, r in results.items()
        }
        gathered = self.comm.gather_objects((blocks, peak_rss_mb()))
        for other, _ in gathered:
            blocks.update(other)
        return {
            "kind": "train",
            "step": step,
            "steps_per_s": rate,
            "seconds": self.seconds(),
            "peak_rss_mb": max(rss for _, rss in gathered),  # the largest process's
            "skipped": self.skipped_steps,
            "swap_seconds": self.store.stats.put_seconds + self.store.stats.take_seconds,
            "blocks": dict(sorted(blocks.items(), key=lambda item: int(item[0]))),
        }

    def finish(self, progress: bool = False) -> None:
        """Write each owned block's final anchors; the main process merges them, refines the seams and
        writes model.ckpt. The other processes do not wait for it: the refinement is not bounded by the
        collective timeout, and nothing after it is shared."""
        shared = self.cfg.method.shared_decoder
        for b, state in self.block_states():
            final = {"anchors": state["anchors"]}
            if not shared:
                final["decoder"] = self.decoder_of(b).module.state_dict()
            save_checkpoint(self.paths.block_file(b), final)
        self.comm.barrier()
        if self.comm.is_main:
            n = len(self.partition.blocks)
            finals = [load_checkpoint(self.paths.block_file(b)) for b in range(n)]
            fields = {b: AnchorField.from_state_dict(final["anchors"]) for b, final in enumerate(finals)}
            decoders = None if shared else [final["decoder"] for final in finals]
            model = self._merged_model(fields, decoders, self.cfg.train.iterations)
            if shared and n > 1 and self.cfg.partition.seam_steps > 0:
                model = self._refine_seams(model, progress)
            save_model(self.paths.model, model)
        self.store.close()

    def _refine_seams(self, model: AnchorModel, progress: bool) -> AnchorModel:
        """The merged model with its anchors near block borders fitted again (train/seams.py), on the
        training device; its info records what moved and how long it took."""
        from tqdm import tqdm

        pc, t0 = self.cfg.partition, time.perf_counter()
        model = model.to(self.device)
        with tqdm(total=pc.seam_steps, desc="refine seams", disable=not progress, dynamic_ncols=True) as bar:
            report = refine_seams(
                model.field,
                model.decoder,
                self.scene,
                {i: self.views[i] for i in self.scene.train_ids},
                self.partition,
                self.cfg.train,
                self.spatial_scale,
                pc.seam_steps,
                pc.seam_band,
                self.cfg.train.seed,
                progress=lambda _: bar.update(),
                rule=pc.merge,
            )
        model = model.to("cpu")
        model.info["seams"] = {**asdict(report), "seconds": round(time.perf_counter() - t0, 3)}
        return model

    def current_model(self) -> AnchorModel:
        """The blocks as they are now, merged, on the CPU (for tools and tests: every block must live in this
        process)."""
        if len(self.owned) != len(self.partition.blocks):
            raise RuntimeError("current_model needs every block in this process (one-process runs)")
        fields = {
            b: AnchorField.from_state_dict({k: v.cpu() for k, v in f.state_dict().items()})
            for b, f in self.block_fields()
        }
        shared = self.cfg.method.shared_decoder
        decoders = None if shared else [self.decoder_of(b).module.state_dict() for b in sorted(fields)]
        return self._merged_model(fields, decoders, self.global_step)

    def _merged_model(
        self, fields: dict[int, AnchorField], block_decoders: list[dict] | None, iteration: int
    ):
        """Each block's anchors in its own cell, concatenated, with the shared decoder (and, for the
        independent-blocks ablation, each anchor's block decoder)."""
        from momentumgs.merge import merge_blocks

        n = len(self.partition.blocks)
        field, counts = merge_blocks(fields, self.partition, self.cfg.partition.merge)
        info = {
            "iteration": iteration,
            "blocks": n,
            "anchors_per_block": counts,
            "scene": str(self.scene.root),
        }
        if self.spec.appearance_dim > 0:  # the embedding rows training reached: the views of some block
            trained = sorted({int(i) for block in self.partition.blocks for i in block.camera_ids})
            info["appearance_images"] = [{"index": i, "name": self.scene.cameras[i].name} for i in trained]
        model = AnchorModel(field, self.spec.build(), self.spec, info)
        model.decoder.load_state_dict({k: v.cpu() for k, v in self.decoder.state_dict().items()})
        if block_decoders is not None:
            model.block_decoders = [self.spec.build() for _ in range(n)]
            for decoder, state in zip(model.block_decoders, block_decoders, strict=True):
                decoder.load_state_dict({k: v.cpu() for k, v in state.items()})
            model.anchor_block = torch.repeat_interleave(torch.arange(n), torch.tensor(counts))
        return model
