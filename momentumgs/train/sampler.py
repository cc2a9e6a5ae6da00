"""Which training view comes next: a fresh random permutation of the block's views every epoch."""

from __future__ import annotations

import torch


class ViewSampler:
    def __init__(self, view_ids: list[int], seed: int):
        if not view_ids:
            raise ValueError("a block needs at least one training view")
        self.view_ids = list(view_ids)
        self.generator = torch.Generator().manual_seed(seed)
        self._order: list[int] = []

    def next(self) -> int:
        if not self._order:
            perm = torch.randperm(len(self.view_ids), generator=self.generator).tolist()
            self._order = [self.view_ids[i] for i in perm]
        return self._order.pop()

    def state_dict(self) -> dict:
        return {
            "view_ids": list(self.view_ids),
            "order": list(self._order),
            "rng": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.view_ids = list(state["view_ids"])
        self._order = list(state["order"])
        self.generator.set_state(state["rng"])
