"""Plain helpers the tests share: cameras, config overrides, scene loading, the CLI in a subprocess.

Pytest fixtures live in conftest.py; synthetic COLMAP scenes in colmap_helpers.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from momentumgs.checkpoint import load_checkpoint
from momentumgs.data.colmap import load_colmap_scene
from momentumgs.data.scene import Scene

# --- cameras -------------------------------------------------------------------------------------


def look_at(center, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """World -> camera 4x4 (OpenCV axes: x right, y down, z forward) of a camera at `center` looking at
    `target`, float64."""
    center, target = np.asarray(center, dtype=np.float64), np.asarray(target, dtype=np.float64)
    z = target - center
    z = z / np.linalg.norm(z)
    x = np.cross(z, np.asarray(up, dtype=np.float64))
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])  # rows: camera axes in world coordinates
    viewmat = np.eye(4)
    viewmat[:3, :3] = R
    viewmat[:3, 3] = -R @ center
    return viewmat


# --- small configs on the test city (320x240 views) ----------------------------------------------

# 80x60 views on the CPU, one thread, no evaluation during training.
SMALL = ["data.downscale=4", "train.threads=1", "train.device=cpu", "train.eval_every=0", "train.log_every=5"]

# SMALL with one block over the whole scene and densification early and often.
ONE_BLOCK = [
    "partition.block_dim=[1,1,1]",
    *SMALL,
    "train.densify.start_iter=10",
    "train.densify.after_iter=10",
    "train.densify.interval=10",
    "train.densify.end_iter=1000",
]

# 4 blocks (2x2) on 2 workers, 40x30 views, slots of 4 steps, densification and weighting inside the run.
# 5 neural Gaussians per anchor (10 by default) and every 8th view measured for the weights: the run costs
# about half as much, and every code path (K is a parameter like any other) is still taken.
MULTI = [
    "data.downscale=8",
    "train.threads=1",
    "train.device=cpu",
    "train.eval_every=0",
    "train.log_every=4",
    "train.iterations=12",
    "train.checkpoint_every=0",
    "train.densify.start_iter=2",
    "train.densify.after_iter=2",
    "train.densify.interval=4",
    "train.densify.end_iter=1000",
    "partition.block_dim=[2,2,1]",
    "method.workers=2",
    "method.slot_iterations=4",
    "method.weighting.every=4",
    "method.weighting.view_stride=8",
    "method.checksum_every=4",
    "partition.seam_steps=4",
    "model.n_offsets=5",
]


def scene_loader(cfg) -> Scene:
    """The loader the tests hand to `start_or_resume`: data.path at data.downscale and data.test_every."""
    return load_colmap_scene(cfg.data.path, downscale=cfg.data.downscale, test_every=cfg.data.test_every)


def block_anchors(run: Path, n: int = 4) -> list[dict]:
    """The anchors of blocks 0..n-1 in a run folder's block checkpoints."""
    return [load_checkpoint(run / "blocks" / f"block_{b:03d}.ckpt")["anchors"] for b in range(n)]


# --- the CLI in a subprocess ---------------------------------------------------------------------


def set_args(items) -> list[str]:
    """Config overrides as command-line arguments: ["--set", item, "--set", item, ...]."""
    out = []
    for item in items:
        out += ["--set", item]
    return out


def cli_cmd(*args) -> list[str]:
    """`python -m momentumgs.cli ARGS...` for subprocess (arguments turned into strings)."""
    return [sys.executable, "-m", "momentumgs.cli", *map(str, args)]


def train_cmd(*args, processes: int | None = 1) -> list[str]:
    """`momentumgs train` without progress bars or the final evaluation, in one process (every worker
    emulated there) unless `processes` says otherwise (None: the command's own default)."""
    chosen = [] if processes is None else ["--processes", str(processes)]
    return cli_cmd("train", "--no-progress", "--no-eval", *chosen, *args)


def one_thread_env() -> dict[str, str]:
    """This process's environment (as it is now) with OMP_NUM_THREADS=1, for a subprocess."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def kill_once_written(
    proc: subprocess.Popen, path: Path, settle_s: float, wait_s: float = 300, signum: int = signal.SIGKILL
) -> None:
    """Wait (up to `wait_s`) for `proc` to write `path`, let it run on `settle_s`, then send it `signum`
    (SIGKILL) and wait for it to end."""
    deadline = time.time() + wait_s
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(settle_s)
    proc.send_signal(signum)
    proc.wait()
