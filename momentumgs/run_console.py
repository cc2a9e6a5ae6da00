"""What a training run prints on the console: the plan before it starts, and once how long it should take."""

from __future__ import annotations

import time

from momentumgs.train.trainer import Trainer


def plan_text(trainer: Trainer, run_dir) -> str:
    """What is about to be trained, for the console."""
    n, k = len(trainer.partition.blocks), trainer.comm.workers
    blocks = "one block over the whole scene" if n == 1 else f"{n} blocks"
    workers = f"{k} worker{'s' if k > 1 else ''}"
    iterations = f"{trainer.cfg.train.iterations} iterations per block"
    plan = f"training {blocks} on {workers} ({iterations}, device {trainer.device}) -> {run_dir}"
    if trainer.global_step > 0:
        plan += f"\nresuming at step {trainer.global_step} of {trainer.schedule.total_steps} (checkpoint)"
    return "\n".join([trainer.scene.summary(), trainer.partition.summary(), plan])


class TimeEstimate:
    """An `on_step` hook that prints once how long the rest of the run should take, timed over this
    session's first `steps` steps after the first (which pays for warm-up). Anchors grow while densifying,
    so later steps are slower: the figure is a lower bound, said as "about"."""

    def __init__(self, steps: int = 20):
        self.steps = steps
        self.start: tuple[float, int] | None = None
        self.printed = False

    def __call__(self, trainer: Trainer) -> None:
        if self.printed:
            return
        now = time.perf_counter()
        if self.start is None:
            self.start = (now, trainer.global_step)
            return
        t0, step0 = self.start
        timed = trainer.global_step - step0
        left = trainer.schedule.total_steps - trainer.global_step
        if timed >= self.steps or left == 0:
            self.printed = True
            rate = timed / max(now - t0, 1e-9)
            from tqdm import tqdm

            tqdm.write(
                f"timed {timed} steps at {rate:.2f} steps/s: about {duration_text(left / rate)} for the "
                f"remaining {left} of {trainer.schedule.total_steps} steps"
            )


def duration_text(seconds: float) -> str:
    """12 s, 4.5 min, 3.2 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
