"""The run folder: where a training run keeps its config, checkpoints, metrics, blocks and model.

config.yaml                 the resolved config of the run
partition.json              the blocks (cells, their points and cameras)
metrics.jsonl               training and evaluation records (docs/formats.md, metrics.jsonl)
checkpoints/latest.json     names the newest complete step folder
checkpoints/step_XXXXXXXX/  block_NNN.ckpt per block, shared_rankR.ckpt per process
spill/                      blocks the block store keeps on disk while training
blocks/block_NNN.ckpt       each block's final anchors
model.ckpt                  the merged model (anchors + the shared decoder)
eval/                       per-image metrics of the final evaluation
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from momentumgs.errors import UserError


@dataclass
class RunPaths:
    root: Path

    def __post_init__(self):
        self.root = Path(self.root)

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def partition(self) -> Path:
        return self.root / "partition.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def latest(self) -> Path:
        return self.checkpoints / "latest.json"

    def step_dir(self, step: int) -> Path:
        return self.checkpoints / f"step_{step:08d}"

    def latest_step_dir(self) -> Path | None:
        """The step folder `latest.json` names (None when it is absent or unreadable)."""
        name = self._latest("dir")
        return None if name is None else self.checkpoints / str(name)

    def latest_step(self) -> int | None:
        """The global step of the checkpoint `latest.json` names (None when it is absent or unreadable)."""
        step = self._latest("step")
        return None if step is None else int(step)

    def _latest(self, key: str):
        try:
            return json.loads(self.latest.read_text())[key]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def block_file(self, block_id: int) -> Path:
        return self.root / "blocks" / f"block_{block_id:03d}.ckpt"

    @property
    def spill(self) -> Path:
        return self.root / "spill"

    @property
    def model(self) -> Path:
        return self.root / "model.ckpt"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"


def file_in_the_way(folder: Path) -> Path | None:
    """The existing file (not a folder) at `folder` or above it, which stops the folder from being made."""
    for path in (folder, *folder.parents):
        if path.exists():
            return None if path.is_dir() else path
    return None


def prepare_run_dir(paths: RunPaths, resume: bool) -> None:
    """Refuse to start a new run over an existing one; refuse to resume what is not a run."""
    if resume:
        if not paths.latest.is_file():
            missing = f"{paths.root}: no checkpoint to resume (expected {paths.latest})"
            if paths.config.is_file():  # a run that stopped before its first checkpoint: nothing to keep
                missing += "; the run stopped before its first checkpoint: start it again in an empty folder"
            raise UserError(missing)
        return
    check_new_run_dir(paths)
    paths.root.mkdir(parents=True, exist_ok=True)


def check_new_run_dir(paths: RunPaths) -> None:
    """A new run may start in `paths.root`: no file in the way, and no earlier files there."""
    blocker = file_in_the_way(paths.root)
    if blocker is not None:
        where = "it is a file" if blocker == paths.root else f"{blocker} is a file"
        raise UserError(f"{paths.root}: cannot be the run folder, {where}; choose another with --out")
    if paths.root.exists() and any(paths.root.iterdir()):
        raise UserError(
            f"{paths.root}: output folder is not empty; resume it with `momentumgs train --resume "
            f"{paths.root}` or choose another with --out"
        )
