"""A run's checkpoints: one step folder per checkpoint, written by every process, and `latest.json` naming the
newest complete one (run folder layout: `paths.py`; file format: `checkpoint.py`).

A step folder holds `block_NNN.ckpt` for every block (written by the process that owns it) and
`shared_rankR.ckpt` for every process (its global step, schedule, decoders, block weighting, RNG). The
previous complete step folder stays beside the newest, so that a resume can fall back to it when the newest
is damaged.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from momentumgs.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, verify_checkpoint
from momentumgs.errors import DISK_FULL, NOT_WRITABLE, UserError, os_error_text
from momentumgs.io_utils import write_text_atomic
from momentumgs.train.paths import RunPaths

# the layout of shared_rankR.ckpt; v2 nests the block weighting's state under "weighting"
RUN_FORMAT = "momentumgs-multiblock-v2"


def block_ckpt(step_dir: Path, block_id: int) -> Path:
    return step_dir / f"block_{block_id:03d}.ckpt"


def shared_ckpt(step_dir: Path, rank: int) -> Path:
    return step_dir / f"shared_rank{rank}.ckpt"


def intact_step_dir(paths: RunPaths, blocks: int, processes: int) -> tuple[Path, list[str]]:
    """The newest complete, intact step folder of a run of `blocks` blocks written by `processes` processes:
    the one `latest.json` names, else the newest older one; and what is wrong with the newer ones passed
    over. Every file of the folder is checked, so all processes choose the same one (and the launcher of
    the processes can refuse a run with none before it starts them)."""
    latest = paths.latest_step_dir()
    older = sorted((p for p in paths.checkpoints.glob("step_*") if p != latest), reverse=True)
    candidates = ([latest] if latest is not None else []) + older
    if not candidates:
        raise UserError(f"{paths.root}: no checkpoint to resume (expected {paths.latest})")
    problems = []
    for step_dir in candidates:
        try:
            for r in range(processes):
                verify_checkpoint(shared_ckpt(step_dir, r))
            for b in range(blocks):
                verify_checkpoint(block_ckpt(step_dir, b))
        except CheckpointError as exc:
            problems.append(str(exc))
            continue
        return step_dir, problems
    raise CheckpointError(
        f"{paths.root}: no intact checkpoint to resume ({problems[0]}); start the run again in an empty "
        "folder"
    )


def checkpoint_processes(run_dir: str | Path) -> int | None:
    """How many processes wrote the run's latest checkpoint (one shared_rankR.ckpt each); None without one."""
    step_dir = RunPaths(Path(run_dir)).latest_step_dir()
    if step_dir is None:
        return None
    return len(list(step_dir.glob("shared_rank*.ckpt"))) or None


def check_resume_processes(run_dir: str | Path, processes: int, option: str | None = None) -> None:
    """A run resumes in as many processes as wrote its checkpoint: each process saved the running state of
    its own blocks (their weighting sums) and the process group's shape is part of the schedule."""
    saved = checkpoint_processes(run_dir)
    if saved is not None and saved != processes:
        what = option or f"{processes} process{'es' if processes > 1 else ''}"
        raise UserError(
            f"{what}: the checkpoint of {run_dir} was written by {saved} process{'es' if saved > 1 else ''}; "
            f"resume it in {saved} (`momentumgs train --resume {run_dir}` does)"
        )


class RunCheckpoints:
    """Writes this process's files of each checkpoint and reads them back on resume; `comm` is the process
    group's (every process writes its own blocks and its shared state)."""

    def __init__(self, paths: RunPaths, comm, n_blocks: int):
        self.paths, self.comm, self.n_blocks = paths, comm, n_blocks

    def save(self, step: int, blocks: Iterable[tuple[int, dict]], shared: dict) -> None:
        """All processes write their files into a new step folder; then `latest.json` names it. The previous
        complete checkpoint stays (a resume falls back to it if the latest is damaged); older ones go."""
        step_dir = self.paths.step_dir(step)
        for b, state in blocks:
            save_checkpoint(block_ckpt(step_dir, b), state)
        save_checkpoint(shared_ckpt(step_dir, self.comm.rank), {"format": RUN_FORMAT, **shared})
        self.comm.barrier()
        if self.comm.is_main:
            previous = self.paths.latest_step_dir()
            write_text_atomic(self.paths.latest, json.dumps({"step": step, "dir": step_dir.name}))
            for old in self.paths.checkpoints.glob("step_*"):
                if old not in (step_dir, previous):
                    shutil.rmtree(old, ignore_errors=True)
        self.comm.barrier()

    def load(self, device: torch.device) -> tuple[dict, Path]:
        """This process's shared state in the newest intact checkpoint, and that checkpoint's folder."""
        step_dir = self.resume_dir()
        shared = load_checkpoint(shared_ckpt(step_dir, self.comm.rank), map_location=device)
        found = shared.get("format")
        if found != RUN_FORMAT:
            if isinstance(found, str) and found.startswith("momentumgs-multiblock-"):
                raise UserError(
                    f"{step_dir}: a run checkpoint of format {found}, this version reads {RUN_FORMAT}; "
                    "train the run again"
                )
            raise UserError(f"{step_dir}: not a momentumgs run checkpoint")
        return shared, step_dir

    def load_blocks(self, step_dir: Path, block_ids: list[int]) -> Iterator[tuple[int, dict]]:
        """(block id, state) of each of `block_ids` in the checkpoint `step_dir`, on the CPU."""
        for b in block_ids:
            yield b, load_checkpoint(block_ckpt(step_dir, b))

    def resume_dir(self) -> Path:
        """The newest complete, intact step folder (`intact_step_dir`), with a warning when it is not the
        latest."""
        step_dir, problems = intact_step_dir(self.paths, self.n_blocks, self.comm.world_size)
        if problems and self.comm.is_main:
            print(
                f"momentumgs: warning: {problems[0]}; resuming from the older checkpoint {step_dir.name}",
                file=sys.stderr,
            )
        return step_dir

    def stopped_text(self, exc: OSError, step: int) -> str:
        """One line for an operating-system error that stopped training at `step`: the error with its path,
        and the fix that fits it (free space for a full disk only)."""
        cause, root = os_error_text(exc), self.paths.root
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
        latest = self.paths.latest_step_dir()
        if latest is None or not latest.is_dir():
            return (
                f"{cause}; training stopped at step {step} with no checkpoint to resume from; {fix} and "
                "start it again in an empty folder"
            )
        return (
            f"{cause}; training stopped at step {step}, the last complete checkpoint ({latest.name}) is "
            f"intact; {fix} and resume with `momentumgs train --resume {root}`"
        )
