"""Runs: the scene a config names, the run folder, the trainer, the processes that train it, its evaluation.

Everything the command line, the tools, the viewer and the tests need to start, resume, launch and evaluate
a training run lives here, below `cli.py` (which only parses arguments and dispatches). Layout of a run
folder: `train/paths.py`; formats: docs/formats.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from momentumgs.config import Config, dump_config, load_config
from momentumgs.data.scene import Scene
from momentumgs.errors import EXIT_USER_ERROR, EXIT_WORKER_LOST, UserError
from momentumgs.io_utils import refuse_existing, write_text_atomic
from momentumgs.partition import load_partition, partition_scene, save_partition
from momentumgs.train.comm import init_from_env, launched_by_torchrun
from momentumgs.train.launch import ERRORS_ENV, first_worker_error
from momentumgs.train.paths import RunPaths, check_new_run_dir, prepare_run_dir
from momentumgs.train.trainer import Trainer, check_workers, intact_step_dir


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
    from momentumgs.partition_ssim import make_assigner

    return partition_scene(scene, cfg.partition, make_assigner(cfg.partition, device))


# --- training ---------------------------------------------------------------------------------------------


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


def plan_text(trainer: Trainer, run_dir: str | Path) -> str:
    """What is about to be trained, for the console."""
    n, k = len(trainer.partition.blocks), trainer.comm.workers
    blocks = "one block over the whole scene" if n == 1 else f"{n} blocks"
    workers = f"{k} worker{'s' if k > 1 else ''}"
    iterations = f"{trainer.cfg.train.iterations} iterations per block"
    plan = f"training {blocks} on {workers} ({iterations}, device {trainer.device}) -> {run_dir}"
    if trainer.global_step > 0:
        plan += f"\nresuming at step {trainer.global_step} of {trainer.schedule.total_steps} (checkpoint)"
    return "\n".join([trainer.scene.summary(), trainer.partition.summary(), plan])


class TimeEstimate:
    """An `on_step` hook that prints once how long the rest of the run should take, timed over this
    session's first `steps` steps after the first (which pays for warm-up). Anchors grow while densifying,
    so later steps are slower: the figure is a lower bound, said as "about"."""

    def __init__(self, steps: int = 20):
        self.steps = steps
        self.start: tuple[float, int] | None = None
        self.printed = False

    def __call__(self, trainer: Trainer) -> None:
        if self.printed:
            return
        now = time.perf_counter()
        if self.start is None:
            self.start = (now, trainer.global_step)
            return
        t0, step0 = self.start
        timed = trainer.global_step - step0
        left = trainer.schedule.total_steps - trainer.global_step
        if timed >= self.steps or left == 0:
            self.printed = True
            rate = timed / max(now - t0, 1e-9)
            from tqdm import tqdm

            tqdm.write(
                f"timed {timed} steps at {rate:.2f} steps/s: about {duration_text(left / rate)} for the "
                f"remaining {left} of {trainer.schedule.total_steps} steps"
            )


def duration_text(seconds: float) -> str:
    """12 s, 4.5 min, 3.2 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def is_main_process() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def default_processes(cfg: Config, requested: int | None) -> int:
    """How many processes train `cfg`: as asked, else one per worker where the machine has a CPU core (on
    the CPU; two workers in two processes train about 1.8x as fast on two cores as in one) or a GPU (on
    CUDA) for each, else one."""
    if requested is not None:
        if requested < 1:
            raise UserError(f"--processes {requested}: must be at least 1")
        return requested
    workers = cfg.method.workers
    device = resolve_device(cfg.train.device)
    if workers <= 1:
        return 1
    if device.type == "cpu" and (os.cpu_count() or 1) >= workers:
        return workers
    if device.type == "cuda" and device.index is None and torch.cuda.device_count() >= workers:
        return workers
    return 1


def training_processes(
    cfg: Config, requested: int | None, live_view: bool, resume_dir: str | Path | None = None
) -> int:
    """The processes `momentumgs train` starts: 1 inside a torchrun job (it is one of them); for a resume,
    as many as wrote the run's checkpoint; 1 with a live viewer (which needs every block in its process);
    else `default_processes`."""
    if launched_by_torchrun():
        return 1
    saved = checkpoint_processes(resume_dir) if resume_dir is not None else None
    if saved is not None and requested is None:
        requested = saved
    if saved is not None:
        check_resume_processes(resume_dir, requested, option=f"--processes {requested}")
    if live_view:
        if requested is not None and requested > 1:
            raise UserError(f"--processes {requested}: the live viewer (--view) trains in one process")
        return 1
    return default_processes(cfg, requested)


def checkpoint_processes(run_dir: str | Path) -> int | None:
    """How many processes wrote the run's latest checkpoint (one shared_rankR.ckpt each); None without one."""
    paths = RunPaths(Path(run_dir))
    try:
        step_dir = paths.checkpoints / json.loads(paths.latest.read_text())["dir"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return len(list(step_dir.glob("shared_rank*.ckpt"))) or None


def check_resume_processes(run_dir: str | Path, processes: int, option: str | None = None) -> None:
    """A run resumes in as many processes as wrote its checkpoint: each process saved the running state of
    its own blocks (their weighting sums) and the process group's shape is part of the schedule."""
    saved = checkpoint_processes(run_dir)
    if saved is not None and saved != processes:
        what = option or f"{processes} process{'es' if processes > 1 else ''}"
        raise UserError(
            f"{what}: the checkpoint of {run_dir} was written by {saved} process{'es' if saved > 1 else ''}; "
            f"resume it in {saved} (`momentumgs train --resume {run_dir}` does)"
        )


def check_before_processes(cfg: Config | None, run_dir: str | Path, processes: int) -> None:
    """What would stop training in its first seconds, checked once in this process before `torchrun`
    starts the `processes` workers (each would print the same error, and torchrun its traceback): the run
    folder and the scene for a new run; for a resume the saved config and partition, and an intact
    checkpoint (every file of it)."""
    paths = RunPaths(Path(run_dir))
    if cfg is None:
        prepare_run_dir(paths, resume=True)
        run_config(run_dir)
        blocks = len(load_partition(paths.partition).blocks)
        intact_step_dir(paths, blocks, checkpoint_processes(run_dir) or processes)
        return
    check_new_run_dir(paths)
    load_scene(cfg)


def train_in_processes(
    cfg: Config | None,
    run_dir: str | Path,
    processes: int,
    progress: bool = True,
    resume: bool = False,
    overrides: list[str] = (),
) -> None:
    """Train `cfg` (or resume `run_dir` with `overrides`) with one worker per process under torchrun (this
    machine only), then return."""
    with tempfile.TemporaryDirectory(prefix="momentumgs-") as tmp:
        report, errors = Path(tmp) / "failures.json", Path(tmp) / "errors"
        errors.mkdir()
        cmd = [sys.executable, "-m", "momentumgs.train.launch", str(report)]
        cmd += ["--standalone", f"--nproc_per_node={processes}", "--max-restarts=0"]
        cmd += ["-m", "momentumgs.cli", "train", "--no-eval"]
        if resume:
            cmd += ["--resume", str(run_dir)] + [a for o in overrides for a in ("--set", o)]
        else:
            assert cfg is not None
            config = Path(tmp) / "config.yaml"
            config.write_text(dump_config(cfg))
            cmd += ["-c", str(config), "--out", str(run_dir)]
        env = {**os.environ, ERRORS_ENV: str(errors)}  # a worker's error: one line here, not one per worker
        proc = subprocess.Popen(cmd if progress else [*cmd, "--no-progress"], env=env)
        try:
            code = proc.wait()
        except KeyboardInterrupt:  # the workers saw the same Ctrl-C: they save a checkpoint and exit
            code = proc.wait()
        failures = json.loads(report.read_text()) if report.is_file() else {}
        error = first_worker_error(errors)
    if code != 0:
        raise UserError(error or failure_text(run_dir, processes, code, failures))


def failure_text(run_dir: str | Path, processes: int, code: int, failures: dict[str, dict]) -> str:
    """One line for a k-process run that failed: the worker lost first (not those that stopped because it
    was gone), where the run can resume from and how."""
    # a worker that stopped on a clear error (exit 2) printed it; one that stopped because another was gone
    # (exit 3) is not the cause
    lost = {r: f for r, f in failures.items() if f["exitcode"] not in (EXIT_USER_ERROR, EXIT_WORKER_LOST)}
    # torchrun stops the others with SIGTERM: name the worker that died first
    killed = {r: f for r, f in lost.items() if f["signal"] != "SIGTERM"}
    on_error = any(f["exitcode"] == EXIT_USER_ERROR for f in failures.values())
    lost = killed if on_error else killed or lost  # after a worker's error, torchrun stopped the others
    if on_error and not lost:
        return f"{run_dir}: training in {processes} processes stopped on a worker's error (above)"
    if lost:
        how = {
            r: f"killed by {f['signal']}" if f["signal"] else f"failed with exit {f['exitcode']}"
            for r, f in lost.items()
        }
        workers = ", ".join(f"rank {r} of {processes} ({how[r]})" for r in sorted(lost, key=int))
        failed = f"{run_dir}: lost worker process {workers}; the others stopped"
    else:
        failed = f"{run_dir}: training in {processes} processes failed (exit {code})"
    step = latest_checkpoint_step(run_dir)
    if step is None:  # nothing to resume: the workers' errors say why
        return f"{failed} before the first checkpoint; see the errors above"
    return f"{failed}; resume from step {step} with `momentumgs train --resume {run_dir}`"


def latest_checkpoint_step(run_dir: str | Path) -> int | None:
    try:
        return int(json.loads(RunPaths(Path(run_dir)).latest.read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def free_run_dir(base: str) -> str:
    """`base`, or `base-2`, `base-3`, ...: a folder that holds no earlier run."""
    path, n = Path(base), 2
    while path.exists() and (not path.is_dir() or any(path.iterdir())):
        path, n = Path(f"{base}-{n}"), n + 1
    return str(path)


# --- evaluation -------------------------------------------------------------------------------------------


def evaluate_run(
    run_dir: str | Path,
    split: str = "test",
    force: bool = False,
    appearance: str = "mean",
    reference: str | Path | None = None,
    device: torch.device | None = None,
) -> None:
    """Evaluate a finished run's model on its scene's `split` views under the test-time `appearance`
    protocol (eval/appearance.py); write eval/ and print the summary. `reference`: a folder of images
    (the photos' names) to compare with instead of the photos. An earlier result of the same split,
    protocol and reference is replaced only with `force`. `device`: where to render (default the run's
    train.device, after a test render there)."""
    from momentumgs.data.scene import read_image
    from momentumgs.eval.appearance import AppearanceProtocol
    from momentumgs.eval.measure import evaluate
    from momentumgs.eval.results import write_eval
    from momentumgs.model.store import load_model
    from momentumgs.render.anchors import render_model_view
    from momentumgs.render.view import camera_view

    paths = RunPaths(Path(run_dir))
    if not paths.root.is_dir():
        raise UserError(f"{run_dir}: no such run folder")
    if not paths.model.is_file():
        raise UserError(f"{run_dir}: no trained model (expected {paths.model}); has training finished?")
    if reference is not None and not Path(reference).is_dir():
        raise UserError(f"--reference {reference}: no such folder")
    stem = "_".join(
        [f"eval_{split}"]
        + ([appearance] if appearance != "mean" else [])
        + ([f"ref-{Path(reference).name}"] if reference is not None else [])
    )
    for name in (f"{stem}.json", f"{stem}_per_image.csv"):
        refuse_existing(paths.eval_dir / name, force)
    cfg = run_config(run_dir)
    device = device or run_device(cfg)
    model = load_model(paths.model, device)
    scene = load_scene(cfg)
    ids = scene.test_ids if split == "test" else scene.train_ids
    if not ids:
        raise UserError(f"{cfg.data.path}: the scene has no {split} views to evaluate")
    protocol = AppearanceProtocol(appearance, model, scene)

    def view_of(i: int):
        return camera_view(scene.cameras[i], device, i)

    def render(i: int):
        return render_model_view(model, view_of(i), appearance=protocol.appearance(i))

    def load_reference(i: int):
        cam = scene.cameras[i]
        return read_image(Path(reference) / cam.name, cam.width, cam.height)

    result = evaluate(
        render,
        scene,
        ids,
        device=device,
        progress=True,
        prepare=lambda i, photo: protocol.prepare(i, view_of(i), photo),
        crop=protocol.crop,
        load_image=load_reference if reference is not None else None,
    )
    result.extra.update(
        {
            "split": split,
            "model": str(paths.model),
            "iteration": model.info.get("iteration"),
            "appearance": protocol.describe(),
            "reference": str(reference) if reference is not None else "the photos",
        }
    )
    csv_path, json_path = write_eval(result, paths.eval_dir, stem=stem)
    print(result.format())
    print(f"per-image metrics: {csv_path}\nsummary: {json_path}")
