"""Training in several processes: how many a run trains in, the checks made once before `torchrun` starts
them, the launch (through `train/launch.py`, torchrun's agent), and one line when a worker fails.

Each process runs `momentumgs train` as one worker of the process group; the run's sequence inside each is
`run.train_run`'s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from momentumgs.config import Config, dump_config
from momentumgs.errors import EXIT_USER_ERROR, EXIT_WORKER_LOST, UserError
from momentumgs.partition import load_partition
from momentumgs.run_setup import load_scene, resolve_device, run_config
from momentumgs.train.checkpoints import check_resume_processes, checkpoint_processes, intact_step_dir
from momentumgs.train.comm import launched_by_torchrun
from momentumgs.train.launch import ERRORS_ENV, first_worker_error
from momentumgs.train.paths import RunPaths, check_new_run_dir, prepare_run_dir


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
    step = RunPaths(Path(run_dir)).latest_step()
    if step is None:  # nothing to resume: the workers' errors say why
        return f"{failed} before the first checkpoint; see the errors above"
    return f"{failed}; resume from step {step} with `momentumgs train --resume {run_dir}`"
