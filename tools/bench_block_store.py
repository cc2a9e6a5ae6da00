"""Put/take times of the idle-block store for RAM-resident and spilled blocks of a few sizes.

Prints a table, then one JSON line per row. Spill rows also time the two file formats directly
(`spill_file` vs `save_checkpoint`/`load_checkpoint`).
Usage: python tools/bench_block_store.py [--sizes-mb 4 32 128] [--reps 3] [--dir FOLDER]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from momentumgs.checkpoint import load_checkpoint, save_checkpoint
from momentumgs.train.block_store import BlockStore, tree_nbytes
from momentumgs.train.spill_file import read_spill, write_spill

FLOATS_PER_ANCHOR = {"positions": 3, "features": 32, "offsets": 30, "log_scales": 6}  # offsets: 10 x 3


def block_like_state(n_bytes: int, seed: int) -> dict:
    """Anchors + two Adam moments per learnable tensor + RNG and counters, about `n_bytes` in all."""
    per_anchor = 4 * (sum(FLOATS_PER_ANCHOR.values()) + 2 * (32 + 30 + 6))
    n = max(1, n_bytes // per_anchor)
    gen = torch.Generator().manual_seed(seed)
    anchors = {name: torch.randn(n, width, generator=gen) for name, width in FLOATS_PER_ANCHOR.items()}
    moments = {
        i: {"step": torch.tensor(100.0), "exp_avg": torch.randn(n, w), "exp_avg_sq": torch.rand(n, w)}
        for i, w in enumerate((32, 30, 6))
    }
    return {
        "iteration": 100,
        "anchors": anchors,
        "optimizer": {"state": moments, "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0]}]},
        "densify_rng": gen.get_state(),
    }


def to_device(state: dict, device: str) -> dict:
    """Learnable tensors and moments on `device`; RNG state and step counts stay on the CPU, as in a Block."""
    moved = dict(state, anchors={k: v.to(device) for k, v in state["anchors"].items()})
    moments = state["optimizer"]["state"]
    moved_moments = {
        i: {k: v if k == "step" else v.to(device) for k, v in m.items()} for i, m in moments.items()
    }
    moved["optimizer"] = dict(state["optimizer"], state=moved_moments)
    return moved


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def store_row(size_mb: int, folder: Path, reps: int, device: str) -> dict:
    """Blocking put/take seconds of the store: RAM-resident, spilled (sync read), spilled + prefetch. With
    a CUDA `device` the state starts there, so put and take include the device<->host copies."""
    times: dict[str, list[float]] = {k: [] for k in ("ram_put", "ram_take", "spill_put", "spill_write_bg")}
    times |= {"disk_take": [], "prefetch_take": []}
    for rep in range(reps):
        state = to_device(block_like_state(size_mb << 20, rep), device)
        with BlockStore(1 << 40, folder / "ram") as store:
            times["ram_put"].append(timed(store.put, 0, state))
            times["ram_take"].append(timed(store.take, 0, device))
        with BlockStore(0, folder / "disk") as store:
            times["spill_put"].append(timed(store.put, 0, state))  # returns before the write ends
            times["spill_write_bg"].append(timed(store.flush))
            times["disk_take"].append(timed(store.take, 0, device))
        with BlockStore(tree_nbytes(state), folder / "prefetch") as store:  # room for one block
            store.put(0, state)
            store.put(1, state)  # spills block 0 (least recently used)
            store.flush()
            store.prefetch(0)  # spills block 1 back out to make room
            store.flush()  # the trainer would be training meanwhile
            times["prefetch_take"].append(timed(store.take, 0, device))
    row = {"size_mb": size_mb, "device": device, "bytes": tree_nbytes(state)}
    return row | {f"{k}_ms": round(1000 * statistics.median(v), 2) for k, v in times.items()}


def format_row(size_mb: int, folder: Path, reps: int) -> dict:
    """The spill format against the checkpoint format: write and read seconds of one block."""
    state = block_like_state(size_mb << 20, 0)
    times: dict[str, list[float]] = {"raw_write": [], "raw_read": [], "ckpt_write": [], "ckpt_read": []}
    for _ in range(reps):
        times["raw_write"].append(timed(write_spill, folder / "raw.spill", state))
        times["raw_read"].append(timed(read_spill, folder / "raw.spill"))
        times["ckpt_write"].append(timed(save_checkpoint, folder / "x.ckpt", state))
        times["ckpt_read"].append(timed(load_checkpoint, folder / "x.ckpt"))
    return {"size_mb": size_mb} | {f"{k}_ms": round(1000 * statistics.median(v), 2) for k, v in times.items()}


def print_table(title: str, rows: list[dict]) -> None:
    print(title)
    keys = list(rows[0])
    print("  ".join(f"{k:>15}" for k in keys))
    for row in rows:
        print("  ".join(f"{row[k]:>15}" for k in keys))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[4, 32, 128])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="spill folder (default: a temporary one)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        store_rows = [store_row(size, folder, args.reps, args.device) for size in args.sizes_mb]
        format_rows = [format_row(size, folder, args.reps) for size in args.sizes_mb]
    print_table("block store, blocking milliseconds (median)", store_rows)
    print_table("spill format vs checkpoint format, milliseconds (median)", format_rows)
    for row in store_rows:
        print(json.dumps({"bench": "block_store"} | row))
    for row in format_rows:
        print(json.dumps({"bench": "spill_format"} | row))


if __name__ == "__main__":
    main()
