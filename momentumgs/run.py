"""A training run from start to finish: train -> merge -> refine seams -> evaluate.

    trainer = run_setup.start_or_resume(...)   the run folder, the scene, the partition, the trainer
    train_run(trainer)                         in every process of the run:
        trainer.run()                            train every block (checkpoints, signals, metrics.jsonl)
        final_model(trainer)                     merge: each block cut to its cell, one model
        refine_model_seams(trainer, model)       refine the anchors near block borders
        save_model(model.ckpt)
    evaluate_run(run_dir)                      the model on the test views: eval/

`momentumgs train` runs the first two in this process, or in each of k worker processes
(`run_launch.train_in_processes`; only the main one merges), then evaluates here. Setting up: `run_setup.py`;
the console text: `run_console.py`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from momentumgs.errors import UserError
from momentumgs.io_utils import refuse_existing
from momentumgs.model.store import AnchorModel, save_model
from momentumgs.run_setup import FinishedRun, open_finished_run
from momentumgs.train.assemble import final_model
from momentumgs.train.seams import refine_seams
from momentumgs.train.trainer import Trainer


def train_run(
    trainer: Trainer,
    progress: bool = True,
    stop_after: int | None = None,
    on_step: Callable[[Trainer], None] | None = None,
) -> None:
    """Train (`Trainer.run`, `stop_after` more steps at most); once every block is done, the main process
    merges the blocks, refines the seams and writes model.ckpt. The other processes do not wait for it: the
    refinement is not bounded by the collective timeout, and nothing after it is shared."""
    trainer.run(progress=progress, stop_after=stop_after, on_step=on_step)
    if not (trainer.schedule.finished and trainer.comm.is_main):
        return
    try:
        model = final_model(trainer)
        model = refine_model_seams(trainer, model, progress)
        save_model(trainer.paths.model, model)
    except OSError as exc:  # disk full, permission denied, ...: the last complete checkpoint is intact
        raise UserError(trainer.checkpoints.stopped_text(exc, trainer.global_step)) from exc


def refine_model_seams(trainer: Trainer, model: AnchorModel, progress: bool) -> AnchorModel:
    """The merged model with its anchors near block borders fitted again (train/seams.py), on the training
    device, when its blocks share a decoder and `partition.seam_steps` > 0; its info records what moved and
    how long it took."""
    from tqdm import tqdm

    pc, t0 = trainer.cfg.partition, time.perf_counter()
    if not (trainer.decoders.shared and len(trainer.partition.blocks) > 1 and pc.seam_steps > 0):
        return model
    model = model.to(trainer.device)
    with tqdm(total=pc.seam_steps, desc="refine seams", disable=not progress, dynamic_ncols=True) as bar:
        report = refine_seams(
            model.field,
            model.decoder,
            trainer.scene,
            {i: trainer.views[i] for i in trainer.scene.train_ids},
            trainer.partition,
            trainer.cfg.train,
            trainer.residency.spatial_scale,
            pc.seam_steps,
            pc.seam_band,
            trainer.cfg.train.seed,
            progress=lambda _: bar.update(),
            rule=pc.merge,
        )
    model = model.to("cpu")
    model.info["seams"] = {**asdict(report), "seconds": round(time.perf_counter() - t0, 3)}
    return model


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
    from momentumgs.eval.results import write_eval

    run = open_finished_run(run_dir, device)
    if reference is not None and not Path(reference).is_dir():
        raise UserError(f"--reference {reference}: no such folder")
    stem = eval_stem(split, appearance, reference)
    for name in (f"{stem}.json", f"{stem}_per_image.csv"):
        refuse_existing(run.paths.eval_dir / name, force)
    result = measure_run(run, split, appearance, reference)
    csv_path, json_path = write_eval(result, run.paths.eval_dir, stem=stem)
    print(result.format())
    print(f"per-image metrics: {csv_path}\nsummary: {json_path}")


def eval_stem(split: str, appearance: str, reference: str | Path | None) -> str:
    """The name of an evaluation's files: eval_test, eval_test_nearest, eval_test_ref-NAME, ..."""
    return "_".join(
        [f"eval_{split}"]
        + ([appearance] if appearance != "mean" else [])
        + ([f"ref-{Path(reference).name}"] if reference is not None else [])
    )


def measure_run(run: FinishedRun, split: str, appearance: str, reference: str | Path | None):
    """The run's model rendered on its scene's `split` views under the `appearance` protocol, measured
    against the photos (or the images of the `reference` folder). -> EvalResult"""
    from momentumgs.data.scene import read_image
    from momentumgs.eval.appearance import AppearanceProtocol
    from momentumgs.eval.measure import evaluate
    from momentumgs.render.anchors import render_model_view
    from momentumgs.render.view import camera_view

    model, device, scene = run.model, run.device, run.scene()
    ids = scene.test_ids if split == "test" else scene.train_ids
    if not ids:
        raise UserError(f"{run.cfg.data.path}: the scene has no {split} views to evaluate")
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
            "model": str(run.paths.model),
            "iteration": model.info.get("iteration"),
            "appearance": protocol.describe(),
            "reference": str(reference) if reference is not None else "the photos",
        }
    )
    return result
