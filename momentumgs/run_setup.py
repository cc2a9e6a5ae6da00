"""Setting up runs: the device, the scene a config names, the partition, a trainer for a new or resumed run
folder, and a finished run opened for the commands that read it (eval, report, export).

Everything that turns a config or a run folder into the objects the pipeline works on lives here (the
sequence itself: `run.py`; worker processes: `run_launch.py`). Layout of a run folder: `train/paths.py`;
formats: docs/formats.md.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from momentumgs.config import Config, check_config, dump_config, load_config
from momentumgs.data.scene import Scene
from momentumgs.errors import UserError
from momentumgs.io_utils import write_text_atomic
from momentumgs.model.store import AnchorModel
from momentumgs.partition import few_view_warnings, load_partition, partition_scene, save_partition
from momentumgs.train.checkpoints import check_resume_processes
from momentumgs.train.comm import init_from_env, launched_by_torchrun
from momentumgs.train.paths import RunPaths, check_new_run_dir, prepare_run_dir
from momentumgs.train.trainer import Trainer


def resolve_device(name: str) -> torch.device:
    """`train.device`: auto (CUDA when available), cpu, cuda, cuda:N."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"train.device={name}: CUDA is not available on this machine")
    return device


def checked_device(name: str, option: str = "--device") -> torch.device:
    """The device of a command's `option` (e.g. `--device cuda:1`), after a test render there: a GPU that
    gsplat cannot use stops the command now, in one line that names the fix (`option` cpu)."""
    from momentumgs.config import Device
    from momentumgs.render.backend import check_render_device

    if not Device().allows(name):
        raise UserError(f"{option} {name}: must be {Device().describe(str)}")
    try:
        device = resolve_device(name)
    except UserError:
        raise UserError(f"{option} {name}: CUDA is not available on this machine") from None
    check_render_device(device, f"{option} cpu")
    return device


def load_scene(cfg: Config) -> Scene:
    """The COLMAP scene a config names (data.path)."""
    from momentumgs.data.colmap import load_colmap_scene

    if not cfg.data.path:
        raise UserError("data.path: no scene given (pass --scene PATH or --set data.path=PATH)")
    return load_colmap_scene(
        cfg.data.path,
        images=cfg.data.images,
        downscale=cfg.data.downscale,
        test_every=cfg.data.test_every,
        split_file=cfg.data.split_file or None,
        image_cache_mb=cfg.data.image_cache_mb,
    )


def run_config(run_dir: str | Path, overrides: list[str] = ()) -> Config:
    """The config saved in a run folder (with `overrides` applied)."""
    path = RunPaths(Path(run_dir)).config
    if not path.is_file():
        raise UserError(f"{run_dir}: not a run folder (no config.yaml)")
    return load_config(path, list(overrides))


def run_device(cfg: Config) -> torch.device:
    """Where a command that reads a run (eval, report) renders by default: its train.device, after a test
    render there (`--device cpu` renders on the CPU instead)."""
    from momentumgs.render.backend import check_render_device

    device = resolve_device(cfg.train.device)
    check_render_device(device, "--device cpu")
    return device


def make_partition(scene: Scene, cfg: Config, device: torch.device):
    """Split the scene as `cfg.partition` asks (the SSIM assignment renders its coarse model on `device`)."""
    from momentumgs.partition.ssim import make_assigner

    return partition_scene(scene, cfg.partition, make_assigner(cfg.partition, device))


def check_workers(workers: int, n_blocks: int) -> None:
    """Every worker needs a block of its own (the partition, made from the scene, says how many)."""
    if workers > n_blocks:
        raise UserError(f"method.workers={workers} is more than the {n_blocks} blocks of the partition")


def free_run_dir(base: str) -> str:
    """`base`, or `base-2`, `base-3`, ...: a folder that holds no earlier run."""
    path, n = Path(base), 2
    while path.exists() and (not path.is_dir() or any(path.iterdir())):
        path, n = Path(f"{base}-{n}"), n + 1
    return str(path)


# --- a run to train -------------------------------------------------------------------------------------


def start_or_resume(
    cfg: Config | None,
    scene_loader: Callable[[Config], Scene],
    run_dir: str | Path,
    resume: bool,
    overrides: list[str] = (),
    comm=None,
    device: torch.device | None = None,
) -> Trainer:
    """A trainer for a new run in `run_dir` (partitioning the scene), or the one saved there.

    `scene_loader(cfg) -> Scene` loads the scene the config names (kept outside so tests can inject one);
    `comm` is the process group's (None: every worker in this process)."""
    paths = RunPaths(Path(run_dir))
    main = comm is None or comm.is_main
    if resume:
        prepare_run_dir(paths, resume=True)
        check_resume_processes(run_dir, comm.world_size if comm is not None else 1)
        cfg = run_config(run_dir, overrides)
    elif main:
        check_new_run_dir(paths)
    assert cfg is not None
    check_config(cfg)  # a config built in code has not met the loader's check
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    device = device or resolve_device(cfg.train.device)
    scene = scene_loader(cfg)
    partition = load_partition(paths.partition) if resume else make_partition(scene, cfg, device)
    check_workers(comm.workers if comm is not None else cfg.method.workers, len(partition.blocks))
    if main and not resume:  # only now: a bad scene or partition leaves no empty run folder behind
        prepare_run_dir(paths, resume=False)
    if comm is not None:
        comm.barrier()
    trainer = Trainer(cfg, scene, partition, paths.root, device, comm)
    if resume:
        trainer.load_checkpoint()
    else:
        if main:
            save_partition(paths.partition, partition)
            write_text_atomic(paths.config, dump_config(cfg))
            for line in few_view_warnings(partition, cfg.partition.min_views):
                print(f"momentumgs: warning: {line}", file=sys.stderr)
        trainer.init_blocks()
    return trainer


def open_training(
    cfg: Config | None, run_dir: str | Path, resume: bool, overrides: list[str] = ()
) -> Trainer:
    """The trainer of `run_dir` in this process: one worker of a torchrun job, or all workers."""
    comm, device = None, None
    if launched_by_torchrun():
        probe = run_config(run_dir) if resume else cfg
        assert probe is not None
        device = resolve_device(probe.train.device)
        comm = init_from_env(device, probe.train.collective_timeout_s)
    return start_or_resume(cfg, load_scene, run_dir, resume, overrides, comm=comm, device=device)


# --- a finished run -------------------------------------------------------------------------------------


@dataclass
class FinishedRun:
    """A run folder whose training has finished: where its files are, its config, its merged model."""

    paths: RunPaths
    cfg: Config
    model: AnchorModel
    device: torch.device

    def scene(self) -> Scene:
        """The scene the run was trained on (its config's data.path)."""
        return load_scene(self.cfg)


def open_finished_run(run_dir: str | Path, device: torch.device | str | None = None) -> FinishedRun:
    """The finished run in `run_dir`, its model loaded on `device` (None: the run's train.device, after a
    test render there); one line naming what is missing when `run_dir` is not one."""
    from momentumgs.model.store import load_model

    paths = RunPaths(Path(run_dir))
    if not paths.root.is_dir():
        raise UserError(f"{run_dir}: no such run folder")
    cfg = run_config(run_dir)
    if not paths.model.is_file():
        raise UserError(f"{run_dir}: no trained model (expected {paths.model}); has training finished?")
    device = torch.device(device) if device is not None else run_device(cfg)
    return FinishedRun(paths, cfg, load_model(paths.model, device), device)
