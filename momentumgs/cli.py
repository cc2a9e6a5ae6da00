"""Reconstruct large scenes (city blocks, campuses, drone surveys) from COLMAP photos as 3D Gaussian splats
with Momentum-GS: train, evaluate, view and export.

Each sub-command is a small function taking the parsed arguments. A UserError (bad file, option or
config value) prints one line and exits with code 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from momentumgs.config import Config, load_config
from momentumgs.errors import EXIT_USER_ERROR, EXIT_WORKER_LOST, UserError, WorkerLost, os_error_text
from momentumgs.train.stop import TrainingStopped


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML config file")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set train.iterations=2000 (repeatable)",
    )


def _config(args: argparse.Namespace, default: str | None = None) -> Config:
    path = args.config or default
    return load_config(path, args.overrides)


def _default_demo_config() -> str | None:
    """configs/demo.yaml of a source checkout, if present; otherwise the built-in defaults."""
    candidate = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
    return str(candidate) if candidate.is_file() else None


def cmd_demo_scene(args: argparse.Namespace) -> int:
    from momentumgs.demo import build_scene, is_demo_scene
    from momentumgs.io_utils import refuse_existing

    # any other non-empty folder is refused by build_scene, even with --force
    if is_demo_scene(Path(args.out)):
        refuse_existing(args.out, args.force, replaces="replaces the earlier demo scene")
    t0 = time.perf_counter()
    out = build_scene(
        args.out, args.scene, size=args.size, seed=args.seed, sfm=not args.no_sfm, appearance=args.appearance
    )
    print(f"demo scene ({args.scene}) written to {out} in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from momentumgs.run_setup import load_scene

    cfg = _config(args)
    cfg.data.path = args.scene
    print(load_scene(cfg).summary())
    return 0


def cmd_partition(args: argparse.Namespace) -> int:
    from momentumgs.io_utils import refuse_existing
    from momentumgs.partition import few_view_warnings, save_partition
    from momentumgs.render.backend import check_render_device
    from momentumgs.run_setup import load_scene, make_partition, resolve_device

    for path in (args.out, args.preview):
        if path:
            refuse_existing(path, args.force)
    if args.preview:
        from momentumgs.partition.preview import check_preview_path

        check_preview_path(args.preview)  # before the partition is computed
    cfg = _config(args)
    cfg.data.path = args.scene
    device = resolve_device(cfg.train.device)
    if cfg.partition.assign.mode == "ssim":  # renders a coarse model: test the device before the scene
        check_render_device(device, "--set train.device=cpu")
    scene = load_scene(cfg)
    part = make_partition(scene, cfg, device)
    print(part.summary())
    for line in few_view_warnings(part, cfg.partition.min_views):
        print(f"momentumgs: warning: {line}", file=sys.stderr)
    if args.out:
        save_partition(args.out, part)
        print(f"partition written to {args.out}")
    if args.preview:
        from momentumgs.partition.preview import write_preview

        write_preview(args.preview, part, scene, lines=args.lines)
        print(f"preview written to {args.preview}")
    return 0


def _train(cfg: Config | None, run_dir: str, resume: bool, overrides: list[str], progress: bool, view=None):
    """Train (or resume) `run_dir` in this process, with a live viewer when `view` holds its options."""
    from momentumgs.run import train_run
    from momentumgs.run_console import TimeEstimate, plan_text
    from momentumgs.run_setup import open_training

    trainer = open_training(cfg, run_dir, resume, overrides)
    viewer, hooks = None, []
    if view is not None and trainer.comm.is_main:
        from momentumgs_viewer import start_training_viewer

        viewer, snapshots = start_training_viewer(trainer, view)
        hooks.append(snapshots)
        print(f"viewer: {viewer.url} (shows the model while a browser is connected)")
    if trainer.comm.is_main:
        print(plan_text(trainer, run_dir))
        hooks.append(TimeEstimate())
    try:
        train_run(trainer, progress=progress, on_step=lambda t: [hook(t) for hook in hooks])
    finally:
        if viewer is not None:
            viewer.stop()


def cmd_train(args: argparse.Namespace) -> int:
    from momentumgs.run import evaluate_run
    from momentumgs.run_launch import (
        check_before_processes,
        is_main_process,
        train_in_processes,
        training_processes,
    )
    from momentumgs.run_setup import run_config

    if args.resume:
        run_dir, cfg = args.resume, None
    else:
        cfg = _config(args)
        if args.scene:
            cfg.data.path = args.scene
        run_dir = args.out or cfg.output
    overrides = args.overrides if args.resume else []
    device = _checked_train_device(cfg or run_config(run_dir, overrides))
    processes = training_processes(
        cfg or run_config(run_dir, overrides), args.processes, bool(args.view), resume_dir=args.resume
    )
    if processes > 1:
        check_before_processes(cfg, run_dir, processes)
        print(f"training in {processes} processes (torchrun; --processes 1 runs every worker in this one)")
        train_in_processes(
            cfg, run_dir, processes, not args.no_progress, resume=bool(args.resume), overrides=overrides
        )
    else:
        _train(cfg, run_dir, bool(args.resume), overrides, not args.no_progress, _view_options(args, device))
    if not args.no_eval and is_main_process():
        evaluate_run(run_dir, force=True)  # the model was just (re)trained: an earlier eval is out of date
        _report(run_dir)
    return 0


def _checked_train_device(cfg: Config):
    """`train.device`, after a test render there: a GPU that gsplat cannot use stops the command now, in
    seconds, not at the first render after the scene has loaded."""
    import os

    import torch

    from momentumgs.render.backend import check_render_device
    from momentumgs.run_setup import resolve_device
    from momentumgs.train.comm import launched_by_torchrun

    device = resolve_device(cfg.train.device)
    probe = device
    if device.type == "cuda" and device.index is None and launched_by_torchrun():
        # this worker's GPU (as init_from_env picks it), not every worker's test render on GPU 0
        probe = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    check_render_device(probe, "--set train.device=cpu")
    return device


def _report(run_dir: str) -> None:
    from momentumgs.report.cli import write_and_announce

    write_and_announce(run_dir)


def _view_options(args: argparse.Namespace, device):
    """Viewer options from `view` / `train --view` arguments (None when train runs without a viewer);
    `device` is where the model lives (the training device, or `view --device`)."""
    if args.command == "train" and not args.view:
        return None
    _check_viewer_args(args, prefix="view-" if args.command == "train" else "")
    from momentumgs_viewer import ViewerOptions

    return ViewerOptions(
        host=args.host,
        port=args.port,
        max_res=args.max_res,
        screenshot_dir=Path(args.screenshots),
        device=str(device),
        splats=getattr(args, "splats", False),
        splat_budget=getattr(args, "splat_budget", 1_000_000),
    )


def _check_viewer_args(args: argparse.Namespace, prefix: str) -> None:
    """Values the server would only trip over once started (in its own thread, where no error stops it)."""
    if not 0 <= args.port <= 65535:
        raise UserError(f"--{prefix}port {args.port}: must be in 0 (any free port) to 65535")
    if not 64 <= args.max_res <= 1920:  # the range of the viewer's resolution slider
        raise UserError(f"--{prefix}max-res {args.max_res}: must be in 64 to 1920")
    if getattr(args, "splat_budget", 1) < 1:
        raise UserError(f"--splat-budget {args.splat_budget}: must be at least 1")
    import socket

    try:  # on any free port: a taken --port makes the server move on to the next
        family, kind, _, _, address = socket.getaddrinfo(args.host, 0, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind) as sock:
            sock.bind(address)
    except OSError as exc:
        raise UserError(f"--{prefix}host {args.host}: cannot serve on it ({os_error_text(exc)})") from None


def cmd_view(args: argparse.Namespace) -> int:
    from momentumgs_viewer import serve_forever

    from momentumgs.run_setup import checked_device

    device = checked_device(args.device)
    serve_forever(args.path, _view_options(args, device))
    return 0


def _add_viewer_args(p: argparse.ArgumentParser, prefix: str = "") -> None:
    p.add_argument(f"--{prefix}host", dest="host", default="127.0.0.1", help="address to serve on")
    p.add_argument(f"--{prefix}port", dest="port", type=int, default=8080, help="port (0: any free one)")
    p.add_argument(
        f"--{prefix}max-res", dest="max_res", type=int, default=320, help="longer side of frames in motion"
    )
    p.add_argument(
        f"--{prefix}screenshots", dest="screenshots", default="screenshots", help="folder for screenshots"
    )


def cmd_eval(args: argparse.Namespace) -> int:
    from momentumgs.run import evaluate_run
    from momentumgs.run_setup import checked_device

    device = checked_device(args.device) if args.device is not None else None
    evaluate_run(args.run, args.split, args.force, args.appearance, args.reference, device=device)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from momentumgs.demo import cached_demo_scene
    from momentumgs.run import evaluate_run
    from momentumgs.run_launch import default_processes, train_in_processes
    from momentumgs.run_setup import free_run_dir
    from momentumgs.train.paths import RunPaths, check_new_run_dir

    cfg = _config(args, _default_demo_config())
    _checked_train_device(cfg)
    run_dir = free_run_dir(args.out or cfg.output)
    check_new_run_dir(RunPaths(Path(run_dir)))  # every check before the city is built (minutes, once)
    processes = default_processes(cfg, args.processes)
    t0 = time.perf_counter()
    root = cached_demo_scene(
        size=cfg.demo.size,
        seed=cfg.demo.seed,
        cache_dir=cfg.demo.cache_dir or None,
        appearance=cfg.demo.appearance,
    )
    cfg.data.path = str(root)
    print(f"demo scene ready in {time.perf_counter() - t0:.1f} s: {root}")
    if processes > 1:
        print(f"training in {processes} processes (torchrun, gloo; --processes 1 runs them in this one)")
        train_in_processes(cfg, run_dir, processes, progress=not args.no_progress)
    else:
        _train(cfg, run_dir, False, [], progress=not args.no_progress)
    evaluate_run(run_dir)
    _report(run_dir)
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; the run is in {run_dir}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error in one line (argparse prints the whole usage first, several lines for a
    command with many options); the sub-commands' parsers are of this class too."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from momentumgs import __version__

    description = " ".join(__doc__.split("\n\n")[0].split())
    parser = _Parser(prog="momentumgs", description=description)
    parser.add_argument("--version", action="version", version=f"momentumgs {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    _add_demo_parser(sub)
    _add_train_parser(sub)
    _add_view_parser(sub)
    _add_eval_parser(sub)
    _add_demo_scene_parser(sub)
    _add_info_parser(sub)
    _add_partition_parser(sub)

    from momentumgs.export.cli import add_export_parsers
    from momentumgs.prepare.cli import add_prepare_parser
    from momentumgs.report.cli import add_report_parser

    add_export_parsers(sub)
    add_prepare_parser(sub)
    add_report_parser(sub)
    return parser


def _add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="build (or reuse) the demo city, train on it, evaluate")
    _add_config_args(p)
    p.add_argument("--out", help="run folder (default: the config's output; never an existing run)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--processes",
        type=int,
        help="worker processes (default: one per worker when training on a CPU with enough cores)",
    )
    p.set_defaults(func=cmd_demo)


def _add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train on a COLMAP scene (or resume a run)")
    _add_config_args(p)
    p.add_argument("--scene", help="COLMAP scene root (sets data.path)")
    p.add_argument("--out", help="run folder (sets output); must be new or empty")
    p.add_argument("--resume", metavar="RUN", help="continue the run in RUN from its last checkpoint")
    p.add_argument("--no-eval", action="store_true", help="skip the final evaluation and report")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--view", action="store_true", help="serve a live viewer of the model while it trains")
    p.add_argument(
        "--processes",
        type=int,
        help="worker processes (default: one per worker on a CPU with a core for each, or one per GPU on a "
        "machine with a GPU for each; 1 with --view)",
    )
    _add_viewer_args(p, prefix="view-")
    p.set_defaults(func=cmd_train)


def _add_view_parser(sub) -> None:
    p = sub.add_parser("view", help="browser viewer of a trained run or of baked Gaussians (.ply)")
    p.add_argument("path", help="run folder, or a .ply file")
    _add_viewer_args(p)
    p.add_argument(
        "--splats",
        action="store_true",
        help="send baked Gaussians to the browser's own splat renderer (no rendering on the server)",
    )
    p.add_argument(
        "--splat-budget",
        type=int,
        default=1_000_000,
        help="browser splats at most (default 1000000): a larger model is cut into chunks with levels of "
        "detail, each tab getting the finest its camera's distance and the budget allow",
    )
    p.add_argument(
        "--device", default="auto", help="where to render: auto (CUDA when available), cpu, cuda or cuda:N"
    )
    p.set_defaults(func=cmd_view)


def _add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a trained run: PSNR, SSIM, LPIPS (raw and colour-corrected)")
    p.add_argument("run", help="run folder")
    p.add_argument("--split", default="test", choices=["test", "train"])
    p.add_argument("--force", action="store_true", help="replace an earlier RUN/eval/eval_<split> result")
    p.add_argument(
        "--appearance",
        default="mean",
        choices=["mean", "nearest", "half"],
        help="test-time appearance for models with a per-photo appearance: mean (neutral, default), nearest "
        "(the nearest training photo's), half (fitted on the left half, measured on the right half)",
    )
    p.add_argument(
        "--reference", metavar="DIR", help="compare with the images of this folder (same names) instead"
    )
    p.add_argument(
        "--device", help="where to render: auto, cpu, cuda or cuda:N (default: the run's train.device)"
    )
    p.set_defaults(func=cmd_eval)


def _add_demo_scene_parser(sub) -> None:
    p = sub.add_parser("demo-scene", help="render the demo city or the survey and reconstruct it into OUT")
    p.add_argument("out", help="output folder (a COLMAP scene: images/, sparse/0, ground_truth/)")
    p.add_argument("--scene", default="city", choices=["city", "survey"], help="the demo city or the survey")
    p.add_argument("--size", help="city: demo (default) or test; survey: survey (default), test or large")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-sfm", action="store_true", help="write only the ground-truth model")
    p.add_argument(
        "--appearance",
        action="store_true",
        help="photos whose exposure, white balance and sun change (neutral renders in ground_truth/images)",
    )
    p.add_argument("--force", action="store_true", help="replace an earlier demo scene at OUT")
    p.set_defaults(func=cmd_demo_scene)


def _add_info_parser(sub) -> None:
    p = sub.add_parser("info", help="load a COLMAP scene and print its summary")
    p.add_argument("scene", help="scene root holding sparse/0 and images/")
    _add_config_args(p)
    p.set_defaults(func=cmd_info)


def _add_partition_parser(sub) -> None:
    p = sub.add_parser("partition", help="split a COLMAP scene into blocks; print, save and preview them")
    p.add_argument("scene", help="scene root holding sparse/0 and images/")
    _add_config_args(p)
    p.add_argument("--out", help="write the partition to this JSON file (not an existing one)")
    p.add_argument("--preview", help="write a top view of the blocks to this PNG file (not an existing one)")
    p.add_argument("--force", action="store_true", help="replace existing --out and --preview files")
    p.add_argument(
        "--lines", action="store_true", help="preview: join cameras to the other blocks they train"
    )
    p.set_defaults(func=cmd_partition)


def _error(message: str) -> None:
    """Print the one-line error, or, in a worker of `momentumgs train`, leave it to the launcher (which
    prints the first worker's, once)."""
    from momentumgs.train.launch import leave_worker_error

    if not leave_worker_error(message):
        print(f"momentumgs: error: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except TrainingStopped as exc:  # SIGTERM / SIGINT during training: a checkpoint was saved
        print(f"momentumgs: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except WorkerLost as exc:  # under `momentumgs train`, its launcher names the lost worker in one line
        if not os.environ.get("MOMENTUMGS_LAUNCHED"):
            print(f"momentumgs: error: {exc}", file=sys.stderr)
        return EXIT_WORKER_LOST
    except UserError as exc:
        if args.debug:
            raise
        _error(str(exc))
        return EXIT_USER_ERROR
    except OSError as exc:  # disk full, permission denied, a path under a file, ...
        if args.debug:
            raise
        _error(os_error_text(exc))
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("momentumgs: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
