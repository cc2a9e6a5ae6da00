"""Idle blocks off the device: host RAM within a byte budget, spilled to disk beyond it.

In multi-block training n blocks rotate through k worker slots; a block that leaves its slot is `put` here
(its `Block.state_dict()`: anchors, Adam moments, densification statistics, RNG states, ...) and `take`n
back when its turn comes again. `prefetch` loads a spilled block in the background so that the `take`
finds it in RAM.

Rules the trainer can rely on:
- Bit-exact: a state comes back with the same tensors (dtype, shape, bits) and the same Python values.
- Placement: tensors that were on an accelerator come back on the `device` given to `take` (or on their own
  device when it is None); tensors that were on the CPU (torch.Generator states, Adam's step counts) stay
  on the CPU, where their users expect them.
- `put` takes ownership: CPU tensors are kept without a copy, so the caller must not modify them afterwards.
- `take` forgets the block and deletes its spill file: the trainer changes the block at once, so a disk copy
  would be stale, and keeping it would only cost disk space.
- Byte accounting is the sum of tensor nbytes. `ram_bytes` (resident blocks plus room reserved for
  prefetches in flight) never exceeds the budget after a call returns. Physically the store may hold one
  more block: the one being written to disk in the background (a `put` first waits for an earlier write,
  so there is never more than one), or a block larger than the whole budget on its way to disk.
- Spill files (`spill_file`: streamed tensor bytes, SHA-256, temporary file + rename) are written on one
  background thread, and read back only by the store that wrote them in this process: a crash can leave a
  stale or partial file behind, never one that is later read as valid. A corrupt file raises
  `CheckpointError` on `take`.
- Eviction: the block needed furthest in the future according to `hint_next` (blocks not in the hint
  count as never needed); ties, and everything when there is no hint, go least recently used first.
- Statistics (`stats`): bytes in RAM and on disk, spills, loads, loads a `take` had to wait for, and the
  seconds the caller spent blocked in put/take/prefetch (the swap cost the trainer reports).
- Freed host memory is handed back to the OS (glibc `malloc_trim`) after spills and takes, so the process's
  RSS follows what the store holds instead of the allocator's high-water mark.
- One `BlockStore` per worker process, each with its own `spill_dir`, called from one thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from momentumgs.train.spill_file import read_spill, write_spill

# --- tree helpers ----------------------------------------------------------------------------------


def tree_map(fn: Callable[[Any], Any], tree: Any) -> Any:
    """Apply `fn` to every leaf of nested dicts, lists and tuples, keeping the containers' types and order."""
    if isinstance(tree, dict):
        return type(tree)((key, tree_map(fn, value)) for key, value in tree.items())
    if isinstance(tree, list):
        return [tree_map(fn, value) for value in tree]
    if isinstance(tree, tuple):
        values = [tree_map(fn, value) for value in tree]
        return type(tree)(*values) if hasattr(tree, "_fields") else tuple(values)  # namedtuples too
    return fn(tree)


def tree_tensors(tree: Any) -> list[torch.Tensor]:
    """The tensor leaves of `tree`, in `tree_map` order."""
    found: list[torch.Tensor] = []
    tree_map(lambda leaf: found.append(leaf) if torch.is_tensor(leaf) else None, tree)
    return found


def tree_nbytes(tree: Any) -> int:
    return sum(t.nbytes for t in tree_tensors(tree))


def states_equal(a: Any, b: Any) -> bool:
    """Same structure, same Python leaves, same tensors bit for bit (dtype and shape included)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(states_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(states_equal(x, y) for x, y in zip(a, b, strict=True))
    if torch.is_tensor(a):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.cpu(), b.cpu())
    return a == b


# --- moving states between device and host ---------------------------------------------------------


def to_host(state: Any, pin_memory: bool) -> tuple[Any, list[torch.device]]:
    """Every tensor of `state` on the CPU (pinned when copied from CUDA and `pin_memory`), and the device
    each tensor came from, in tree order."""
    origins: list[torch.device] = []
    use_cuda = False

    def move(leaf: Any) -> Any:
        nonlocal use_cuda
        if not torch.is_tensor(leaf):
            return leaf
        leaf = leaf.detach()
        origins.append(leaf.device)
        if leaf.device.type == "cpu":
            return leaf
        if leaf.device.type == "cuda" and pin_memory:
            use_cuda = True
            host = torch.empty(leaf.shape, dtype=leaf.dtype, pin_memory=True)
            return host.copy_(leaf, non_blocking=True)
        return leaf.to("cpu")

    host_state = tree_map(move, state)
    if use_cuda:
        torch.cuda.synchronize()  # the non-blocking copies must land before the caller frees the sources
    return host_state, origins


def to_device(state: Any, origins: list[torch.device], device: torch.device | str | None) -> Any:
    """Inverse of `to_host`: accelerator tensors go to `device` (their own device if None), CPU ones stay."""
    origin_iter = iter(origins)
    use_cuda = False

    def move(leaf: Any) -> Any:
        nonlocal use_cuda
        if not torch.is_tensor(leaf):
            return leaf
        origin = next(origin_iter)
        if origin.type == "cpu":
            return leaf
        target = torch.device(device) if device is not None else origin
        use_cuda |= target.type == "cuda"
        return leaf.to(target, non_blocking=target.type == "cuda" and leaf.is_pinned())

    moved = tree_map(move, state)
    if use_cuda:
        torch.cuda.synchronize()  # pinned sources may be freed as soon as we return
    return moved


# --- giving freed host memory back -----------------------------------------------------------------


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return None


_MALLOC_TRIM = _load_malloc_trim()


def return_freed_memory() -> None:
    """Hand free heap pages back to the OS. glibc serves tensors below 32 MB from its heaps (one per
    thread) and keeps their freed pages: without this, swapping blocks of a few MB leaves RSS hundreds of
    MB above what the store holds."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


# --- the store -------------------------------------------------------------------------------------


@dataclass
class BlockStoreStats:
    ram_bytes: int = 0  # resident blocks + room reserved for prefetches in flight
    disk_bytes: int = 0  # tensor bytes of blocks that have a spill file
    peak_ram_bytes: int = 0
    spills: int = 0  # spill files written
    loads: int = 0  # spill files read (by prefetch or by take)
    take_disk_reads: int = 0  # loads a take had to wait for synchronously (prefetch missed)
    put_seconds: float = 0.0  # time the caller spent blocked in put
    take_seconds: float = 0.0  # time the caller spent blocked in take
    prefetch_seconds: float = 0.0  # time the caller spent blocked in prefetch (waiting for a write)


@dataclass(eq=False)
class _Entry:
    nbytes: int
    origins: list[torch.device]
    tree: Any = None  # the CPU state while resident (or while being written)
    has_file: bool = False  # a complete spill file exists
    future: Future | None = None  # background write or read in flight
    reserved: bool = False  # counted in ram_bytes (resident, or room reserved for a read)
    last_use: int = 0


class BlockStore:
    def __init__(self, ram_budget_bytes: int, spill_dir: str | Path, pin_memory: bool = True):
        self.ram_budget_bytes = int(ram_budget_bytes)
        self.spill_dir = Path(spill_dir)
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.stats = BlockStoreStats()
        self._entries: dict[int, _Entry] = {}
        self._hint: list[int] = []  # block ids in the order they will be taken
        self._clock = itertools.count(1)
        self._lock = threading.Lock()  # guards entries and stats against the I/O thread
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="block-store-io")
        self._last_write: Future | None = None
        self._write_errors: list[BaseException] = []

    def path(self, block_id: int) -> Path:
        return self.spill_dir / f"block_{block_id}.ckpt"

    def __contains__(self, block_id: int) -> bool:
        return block_id in self._entries

    def in_ram(self, block_id: int) -> bool:
        entry = self._entries.get(block_id)
        return entry is not None and entry.reserved and entry.future is None

    # --- public API -------------------------------------------------------------------------------

    def hint_next(self, block_ids: list[int]) -> None:
        """The order in which blocks will be taken, soonest first; each `take` consumes its id."""
        self._hint = list(block_ids)

    def put(self, block_id: int, state: dict) -> None:
        """Keep `state` (moved to the host) in RAM if the budget allows, else spill a block to disk."""
        start = time.perf_counter()
        self._raise_write_errors()
        if block_id in self._entries:
            raise ValueError(f"block {block_id} is already in the store")
        self._wait_for_writes()  # at most one block in transit to disk
        tree, origins = to_host(state, self.pin_memory)
        entry = _Entry(nbytes=tree_nbytes(tree), origins=origins, tree=tree, last_use=next(self._clock))
        with self._lock:
            self._entries[block_id] = entry
            if entry.nbytes > self.ram_budget_bytes:
                victims = [block_id]  # can never be resident: do not evict others for it
            else:
                self._reserve(entry)
                victims = self._choose_victims()
        for victim_id in victims:
            self._spill(victim_id)
        self.stats.put_seconds += time.perf_counter() - start

    def take(self, block_id: int, device: torch.device | str | None = None) -> dict:
        """The state of `block_id` (see the module notes on placement); the store forgets it."""
        start = time.perf_counter()
        entry = self._entries.get(block_id)
        if entry is None:
            raise KeyError(f"block {block_id} is not in the store")
        tree = entry.tree  # still set while a write is in flight: no need to read it back
        if entry.future is not None:
            entry.future.exception()  # wait; a failed read falls back to the synchronous read below
            tree = tree if tree is not None else entry.tree
        if tree is None:
            tree = read_spill(self.path(block_id))  # CheckpointError when the file is corrupt
            with self._lock:
                self.stats.loads += 1
                self.stats.take_disk_reads += 1
        self._forget(block_id, background=True)
        if block_id in self._hint:
            self._hint.remove(block_id)
        state = to_device(tree, entry.origins, device)
        del tree  # host copies of what moved to the device die here
        self._io.submit(return_freed_memory)
        self.stats.take_seconds += time.perf_counter() - start
        return state

    def prefetch(self, block_id: int) -> None:
        """Start reading a spilled block back into RAM (making room by spilling others if needed)."""
        start = time.perf_counter()
        with self._lock:
            entry = self._entries.get(block_id)
            if entry is None or entry.reserved or entry.future is not None:
                return  # unknown, resident, or already moving
            if entry.nbytes > self.ram_budget_bytes:
                return  # would never fit: take reads it directly
            self._reserve(entry)
            entry.last_use = next(self._clock)
            victims = self._choose_victims(protect=block_id)
        for victim_id in victims:  # writes queue before the read: the read never adds to RAM in transit
            self._spill(victim_id)
        with self._lock:
            entry.future = self._io.submit(self._read_job, block_id, entry)
        self.stats.prefetch_seconds += time.perf_counter() - start

    def flush(self) -> None:
        """Wait for all background reads and writes; raise if a spill failed."""
        self._io.submit(lambda: None).result()  # one FIFO thread: this runs after everything queued
        self._raise_write_errors()

    def close(self) -> None:
        """Wait for background work, delete the spill files and forget every block."""
        self._io.shutdown(wait=True)
        for block_id in list(self._entries):
            self._forget(block_id)

    def __enter__(self) -> BlockStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- placement --------------------------------------------------------------------------------

    def _reserve(self, entry: _Entry) -> None:
        entry.reserved = True
        self.stats.ram_bytes += entry.nbytes

    def _release(self, entry: _Entry) -> None:
        entry.reserved = False
        self.stats.ram_bytes -= entry.nbytes

    def _choose_victims(self, protect: int | None = None) -> list[int]:
        """Blocks to drop from RAM until the budget holds (caller holds the lock); releases their bytes
        now, so the accounting holds as soon as the call returns."""
        victims = []
        candidates = {
            block_id: entry
            for block_id, entry in self._entries.items()
            if entry.reserved and entry.future is None and block_id != protect
        }
        while self.stats.ram_bytes > self.ram_budget_bytes and candidates:
            victim_id = max(candidates, key=lambda i: self._eviction_rank(i, candidates[i]))
            self._release(candidates.pop(victim_id))
            victims.append(victim_id)
        self.stats.peak_ram_bytes = max(self.stats.peak_ram_bytes, self.stats.ram_bytes)
        return victims

    def _eviction_rank(self, block_id: int, entry: _Entry) -> tuple[float, int]:
        """Larger = evict first: needed furthest in the future, then least recently used."""
        next_use = self._hint.index(block_id) if block_id in self._hint else float("inf")
        return next_use, -entry.last_use

    def _spill(self, block_id: int) -> None:
        """Move a released block to disk: free if a valid file already exists, else a background write."""
        entry = self._entries[block_id]
        if entry.has_file:
            entry.tree = None  # prefetched and not taken: its file is still valid
            return
        self._wait_for_writes()
        with self._lock:
            entry.future = self._io.submit(self._write_job, block_id, entry)
            self._last_write = entry.future

    def _wait_for_writes(self) -> None:
        if self._last_write is not None:
            self._last_write.exception()  # failures are collected by the job itself
            self._last_write = None

    def _forget(self, block_id: int, background: bool = False) -> None:
        future = self._entries[block_id].future
        if future is not None:
            future.exception()  # a file being written must be complete before we delete it
        with self._lock:
            entry = self._entries.pop(block_id)
            if entry.reserved:
                self._release(entry)
            if entry.has_file:
                self.stats.disk_bytes -= entry.nbytes
        if entry.has_file and background:  # unlinking a large file takes milliseconds; the FIFO I/O thread
            self._io.submit(self.path(block_id).unlink, missing_ok=True)  # runs it before any later rewrite
        elif entry.has_file:
            self.path(block_id).unlink(missing_ok=True)

    def _raise_write_errors(self) -> None:
        if self._write_errors:
            error = self._write_errors.pop(0)
            text = f"spilling a block to {self.spill_dir} failed; it stays in RAM: {error}"
            raise OSError(getattr(error, "errno", None), text) from error  # its errno: a full disk says so

    # --- background jobs (on the I/O thread) ------------------------------------------------------

    def _write_job(self, block_id: int, entry: _Entry) -> None:
        try:
            write_spill(self.path(block_id), entry.tree)
        except BaseException as error:  # disk full, unwritable folder: keep the state in RAM, report
            with self._lock:
                entry.future = None
                self._reserve(entry)  # over budget until the caller takes it
                self._write_errors.append(error)
            raise
        with self._lock:
            entry.tree = None
            entry.has_file = True
            entry.future = None
            self.stats.spills += 1
            self.stats.disk_bytes += entry.nbytes
        return_freed_memory()

    def _read_job(self, block_id: int, entry: _Entry) -> None:
        try:
            tree = read_spill(self.path(block_id))
        except BaseException:  # a corrupt file: give the room back; take re-reads and raises clearly
            with self._lock:
                entry.future = None
                self._release(entry)
            raise
        with self._lock:
            entry.tree = tree
            entry.future = None
            self.stats.loads += 1
