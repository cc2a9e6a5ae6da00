"""Which block each of the k workers trains at each step: the paper's slot rotation
(docs/method.md, Training schedule).

The n blocks are dealt to the workers round-robin (worker w gets blocks w, w + k, w + 2k, ...). A worker
trains its current block for `slot_iterations` steps, then moves on to its next block that still has
iterations left, cyclically. Every block gets exactly `iterations` steps of its own; a worker whose blocks
are all done idles. The schedule is a pure function of its small state, which goes into checkpoints.
"""

from __future__ import annotations


class SlotSchedule:
    def __init__(self, n_blocks: int, workers: int, slot_iterations: int, iterations: int):
        if workers < 1 or n_blocks < 1:
            raise ValueError("need at least one block and one worker")
        if workers > n_blocks:
            raise ValueError(f"{workers} workers for {n_blocks} blocks: a worker would have no block")
        self.n_blocks, self.workers = n_blocks, workers
        self.slot_iterations, self.iterations = slot_iterations, iterations
        self.blocks_of = [list(range(w, n_blocks, workers)) for w in range(workers)]  # [k][...]
        self.done_iterations = [0] * n_blocks  # steps each block has had
        self.position = [0] * workers  # index into blocks_of[w]
        self.in_slot = [0] * workers  # steps the current block has had in this slot

    def current(self, worker: int) -> int | None:
        """The block worker `worker` trains at this step, or None when all its blocks are done."""
        blocks = self.blocks_of[worker]
        for shift in range(len(blocks)):
            b = blocks[(self.position[worker] + shift) % len(blocks)]
            if self.done_iterations[b] < self.iterations:
                return b
        return None

    def next_block(self, worker: int) -> int | None:
        """The block worker `worker` will hold after its current slot: its next block, cyclically, that still
        has iterations left (None when there is no other)."""
        blocks = self.blocks_of[worker]
        current = self.current(worker)
        if current is None or len(blocks) == 1:
            return None
        start = blocks.index(current)
        for shift in range(1, len(blocks)):
            b = blocks[(start + shift) % len(blocks)]
            if self.done_iterations[b] < self.iterations:
                return b
        return None

    def advance(self) -> None:
        """Account one step for every active worker and rotate the workers whose slot is over."""
        for w in range(self.workers):
            b = self.current(w)
            if b is None:
                continue
            blocks = self.blocks_of[w]
            self.position[w] = blocks.index(b)  # skip finished blocks for good
            self.done_iterations[b] += 1
            self.in_slot[w] += 1
            if self.in_slot[w] >= self.slot_iterations or self.done_iterations[b] >= self.iterations:
                self.position[w] = (self.position[w] + 1) % len(blocks)
                self.in_slot[w] = 0

    @property
    def finished(self) -> bool:
        return all(d >= self.iterations for d in self.done_iterations)

    @property
    def any_finished(self) -> bool:
        """Whether some block has had all its iterations."""
        return any(d >= self.iterations for d in self.done_iterations)

    @property
    def total_steps(self) -> int:
        """Global steps of the whole run: the busiest worker's share."""
        return max(len(b) for b in self.blocks_of) * self.iterations

    def state_dict(self) -> dict:
        return {
            "done_iterations": list(self.done_iterations),
            "position": list(self.position),
            "in_slot": list(self.in_slot),
        }

    def load_state_dict(self, state: dict) -> None:
        self.done_iterations = list(state["done_iterations"])
        self.position = list(state["position"])
        self.in_slot = list(state["in_slot"])
