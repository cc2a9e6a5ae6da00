"""Wall-clock time per phase of a training step, for the benchmark (tools/bench.py).

Code marks its phases with `with phase("decode"): ...`. Unless a `PhaseTimer` is active that costs one global
lookup, so the marks stay in the trainer. Phases nest and time is charged to the innermost open phase only,
so the phases of a step add up to the step (what is outside every phase is the timer's "other"). Only the
thread that activated the timer is timed (the block store's background writes are not). On CUDA the timer can
synchronise the device at every phase boundary, so that a phase is charged for its own kernels; that costs
speed and is for benchmarking only.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from contextlib import contextmanager

_active: PhaseTimer | None = None


class PhaseTimer:
    """Accumulates exclusive seconds and entry counts per phase name while active (`with timer:`)."""

    def __init__(self, sync_cuda: bool = False):
        self.sync_cuda = sync_cuda
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[str] = []
        self._mark = 0.0
        self._thread = threading.get_ident()

    def _charge(self) -> None:
        if self.sync_cuda:
            import torch

            torch.cuda.synchronize()
        now = time.perf_counter()
        self.seconds[self._stack[-1] if self._stack else "other"] += now - self._mark
        self._mark = now

    def enter(self, name: str) -> None:
        self._charge()
        self._stack.append(name)
        self.calls[name] += 1

    def leave(self) -> None:
        self._charge()
        self._stack.pop()

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()
        self._mark = time.perf_counter()

    def total(self) -> float:
        return sum(self.seconds.values())

    def __enter__(self) -> PhaseTimer:
        global _active
        if _active is not None:
            raise RuntimeError("a PhaseTimer is already active")
        self._thread = threading.get_ident()
        self._mark = time.perf_counter()
        _active = self
        return self

    def __exit__(self, *exc) -> None:
        global _active
        self._charge()
        _active = None


@contextmanager
def phase(name: str):
    """Charge the time spent inside to `name` (a no-op unless a PhaseTimer is active on this thread)."""
    timer = _active
    if timer is None or threading.get_ident() != timer._thread:
        yield
        return
    timer.enter(name)
    try:
        yield
    finally:
        timer.leave()
