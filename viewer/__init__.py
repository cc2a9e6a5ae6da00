"""momentumgs' interactive viewer on viser (docs/rendering.md, Viewer): `momentumgs view RUN` and
`momentumgs train --view`.

Installed as the package `momentumgs_viewer` (from the top-level folder viewer/).
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from momentumgs.errors import UserError

from .app import DEFAULT_HOST, Viewer, ViewerOptions
from .live import TrainingSnapshots
from .models import ModelHolder, render_rgb8
from .run_info import RunInfo, load_run_info, training_run_info
from .splats import read_baked

__all__ = [
    "DEFAULT_HOST",
    "ModelHolder",
    "RunInfo",
    "TrainingSnapshots",
    "Viewer",
    "ViewerOptions",
    "open_path",
    "open_run",
    "render_rgb8",
    "serve_forever",
    "start_training_viewer",
]


def open_run(run_dir: str | Path, options: ViewerOptions) -> Viewer:
    """A viewer of a trained run folder (model.ckpt, and its cameras, blocks and metrics when present)."""
    from momentumgs.model.store import load_model
    from momentumgs.train.paths import RunPaths

    paths = RunPaths(Path(run_dir))
    if not paths.model.is_file():
        raise UserError(
            f"{run_dir}: no trained model (expected {paths.model}); to watch a run while it trains, start it "
            "with `momentumgs train --view`"
        )
    model = load_model(paths.model, options.device)
    info = load_run_info(paths.root, model.info)
    return Viewer(ModelHolder(model), info, options, title=f"momentumgs: {paths.root.name}")


def open_path(path: str | Path, options: ViewerOptions) -> Viewer:
    """A viewer of a run folder or of a PLY file of baked Gaussians."""
    path = Path(path)
    if path.suffix.lower() == ".ply":
        baked = read_baked(path).to(options.device)
        return Viewer(ModelHolder(baked), RunInfo(), options, title=f"momentumgs: {path.name}")
    if not path.is_dir():
        raise UserError(f"{path}: not a run folder or a .ply file")
    return open_run(path, options)


def serve_forever(path: str | Path, options: ViewerOptions) -> None:
    """`momentumgs view`: serve until Ctrl-C (or SIGTERM), then stop the server and return."""
    viewer = open_path(path, options)
    stopped = threading.Event()
    # SIGTERM and SIGINT only set the event: a KeyboardInterrupt raised between two statements (say, just
    # before the wait below) would escape as "interrupted"; without a Python SIGTERM handler pycolmap's
    # (glog's) would print a stack dump. Installed here, after the scene loaded pycolmap, to replace it.
    signals = (signal.SIGTERM, signal.SIGINT)
    previous = {signum: signal.signal(signum, lambda *_: stopped.set()) for signum in signals}
    print(f"momentumgs view: serving {path} at {viewer.url} (Ctrl-C to stop)", file=sys.stderr)
    try:
        while not stopped.wait(0.5):
            pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        viewer.stop()


def start_training_viewer(
    trainer, options: ViewerOptions, interval_s: float = 3.0
) -> tuple[Viewer, TrainingSnapshots]:
    """A viewer of a training in this process (a `Trainer`): pass the returned
    hook to the trainer's run(on_step=...); it copies the model every `interval_s` while a browser watches."""
    holder = ModelHolder()
    info = training_run_info(trainer.scene, trainer.partition)
    viewer = Viewer(holder, info, options, title=f"momentumgs: training {Path(trainer.paths.root).name}")
    return viewer, TrainingSnapshots(holder, interval_s, watching=viewer.watching)
