"""How the k workers of a multi-block run talk: one process emulating all k, or k torch.distributed processes.

Only the shared decoder's gradients, a few per-block numbers (quality for the block weights) and flags cross
workers; anchors never do. `LocalComm` runs all k workers in one process, so its reductions are identities
over the process's own sums; `DistComm` wraps torch.distributed (gloo on CPU, NCCL on GPU) as launched by
`torchrun`.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

from momentumgs.errors import UserError, WorkerLost


class LocalComm:
    """All k workers in this process (k = 1 emulates a k-worker run step by step)."""

    def __init__(self, workers: int):
        self.workers = workers
        self.rank = 0
        self.world_size = 1

    def local_workers(self) -> list[int]:
        return list(range(self.workers))

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def max_(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def gather_checksums(self, value: float) -> list[float]:
        return [value]

    def gather_objects(self, value):
        """`value` of every process, in rank order (picklable objects)."""
        return [value]

    def barrier(self) -> None:
        pass

    @property
    def is_main(self) -> bool:
        return True


class DistComm:
    """One worker per process; the process group is set up by `init_from_env` (torchrun's variables)."""

    def __init__(self, device: torch.device):
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.workers = self.world_size
        # gloo reduces CPU tensors, NCCL CUDA tensors
        self.device = device if dist.get_backend() == "nccl" else torch.device("cpu")

    def local_workers(self) -> list[int]:
        return [self.rank]

    def _lost(self, exc: Exception) -> WorkerLost:
        cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return WorkerLost(
            f"worker process rank {self.rank} of {self.world_size}: lost the other workers ({cause}); "
            "the run resumes from its last checkpoint with `momentumgs train --resume RUN`"
        )

    def _reduce(self, tensor: torch.Tensor, op) -> torch.Tensor:
        moved = tensor.to(self.device)
        try:
            dist.all_reduce(moved, op=op)
        except RuntimeError as exc:  # gloo/NCCL: a peer closed its connection, or the timeout passed
            raise self._lost(exc) from exc
        if moved is not tensor:
            tensor.copy_(moved)
        return tensor

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        return self._reduce(tensor, dist.ReduceOp.SUM)

    def max_(self, tensor: torch.Tensor) -> torch.Tensor:
        return self._reduce(tensor, dist.ReduceOp.MAX)

    def gather_checksums(self, value: float) -> list[float]:
        return [float(v) for v in self.gather_objects(value)]

    def gather_objects(self, value):
        """`value` of every process, in rank order (picklable objects)."""
        out = [None] * self.world_size
        try:
            dist.all_gather_object(out, value)
        except RuntimeError as exc:
            raise self._lost(exc) from exc
        return out

    def barrier(self) -> None:
        try:
            dist.barrier()
        except RuntimeError as exc:
            raise self._lost(exc) from exc

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def init_from_env(device: torch.device, timeout_s: float = 600.0) -> DistComm:
    """Join the process group torchrun set up. A worker that dies makes the others fail at the next
    collective: at once when its connections close (its process died), else after `timeout_s`
    (`train.collective_timeout_s`: its machine vanished)."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"torch.distributed: cannot join the process group ({exc})") from None
    return DistComm(device)


def decoder_checksum(module: torch.nn.Module) -> float:
    """A cheap fingerprint of a module's parameters (float64 sums of values and of squares)."""
    with torch.no_grad():
        flat = torch.cat([p.detach().double().flatten() for p in module.parameters()])
        position = torch.arange(flat.numel(), dtype=torch.float64, device=flat.device)
        # position-weighted, so that two swapped values change the fingerprint too
        return float((flat * (1.0 + 1e-3 * position)).sum())


def average_gradients(comm, params: list[torch.nn.Parameter], contributors: int, local_ok: bool) -> bool:
    """Sum the gradients of `params` over every process and divide by the number of workers that contributed
    to them (`contributors` in this process). -> whether every worker's loss and the average are finite."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    # one collective per step: the gradients, then the number of contributing workers and of failed ones
    # (small integers, exact in float32)
    flags = grads[0].new_tensor([float(contributors), 0.0 if local_ok else 1.0])
    flat = torch.cat([g.flatten() for g in grads] + [flags])
    comm.sum_(flat)
    active, bad = int(flat[-2]), bool(flat[-1] > 0)
    flat = flat[:-2] / max(active, 1)
    offset = 0
    for p in params:
        p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
        offset += p.numel()
    return not bad and bool(torch.isfinite(flat).all())


def agreed_signal(comm, signum: int | None) -> int | None:
    """The stop signal any process received (so that all stop at the same step), or None."""
    if comm.world_size == 1:
        return signum
    flag = torch.tensor([float(signum or 0)], device=comm.device)
    comm.max_(flag)
    return int(flag.item()) or None
