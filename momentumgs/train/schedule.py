"""Learning-rate schedules.

The exponential (log-linear) decay with an optional delayed warm-up is the one 3DGS and Scaffold-GS use
(`get_expon_lr_func` there): lr(t) = exp((1 - r) log lr0 + r log lr1), r = t / max_steps, times a delay factor
that rises from `delay_mult` to 1 over `delay_steps` along a sine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ExpSchedule:
    lr_init: float
    lr_final: float
    max_steps: int
    delay_steps: int = 0
    delay_mult: float = 1.0

    def __call__(self, step: int) -> float:
        if self.lr_init == self.lr_final or self.max_steps <= 0:
            return self.lr_init
        if self.lr_init == 0.0 or self.lr_final == 0.0:
            return 0.0
        if self.delay_steps > 0:
            warm = math.sin(0.5 * math.pi * min(max(step / self.delay_steps, 0.0), 1.0))
            delay = self.delay_mult + (1 - self.delay_mult) * warm
        else:
            delay = 1.0
        r = min(max(step / self.max_steps, 0.0), 1.0)
        return delay * math.exp((1 - r) * math.log(self.lr_init) + r * math.log(self.lr_final))
