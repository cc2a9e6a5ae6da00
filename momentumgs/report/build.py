"""`momentumgs report RUN`: write RUN/report/index.html with its images beside it (docs/formats.md,
Run report). The page is built in a temporary folder and swapped in whole, so a crash never leaves half a
report, and an earlier report is replaced only once the new one is complete."""

from __future__ import annotations

import datetime
import html
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from momentumgs import __version__
from momentumgs.config import dump_config
from momentumgs.errors import UserError
from momentumgs.eval.results import EvalResult, read_eval
from momentumgs.io_utils import replace_dir
from momentumgs.partition import load_partition
from momentumgs.partition.preview import block_colors, draw_partition
from momentumgs.report.blocks import block_metric_rows, psnr_by_block
from momentumgs.report.curves import training_figure
from momentumgs.report.page import ViewEntry, blocks_table, facts_table, metrics_table, page, view_figures
from momentumgs.report.views import RenderedViews, error_map, evaluate_with_renders, renders_of, side_by_side
from momentumgs.run_console import duration_text
from momentumgs.run_setup import open_finished_run
from momentumgs.train.metrics_log import read_metrics
from momentumgs.train.paths import RunPaths

MARKER = ".momentumgs-report"  # a folder holding it is a report this command may replace
JPEG_QUALITY = 90


def earlier_evaluation(paths: RunPaths, info: dict, names: list[str]) -> EvalResult | None:
    """eval/eval_test.json when it measured this model (written after model.ckpt, same iteration) on
    exactly these views, with the default protocol and the photos as reference; else None."""
    path = paths.eval_dir / "eval_test.json"
    if not path.is_file() or path.stat().st_mtime < paths.model.stat().st_mtime:
        return None
    result = read_eval(path)
    if result is None or result.names != names or result.extra.get("iteration") != info.get("iteration"):
        return None
    appearance = result.extra.get("appearance", {}).get("protocol")  # a file without it: measure again
    if appearance != "mean" or result.extra.get("reference") != "the photos":
        return None
    return result


def write_report(
    run_dir: str | Path, out_dir: str | Path | None = None, device: torch.device | None = None
) -> Path:
    """Evaluate the run's model on its test views (or reuse the evaluation `train` just wrote) and write the
    report; returns the page's path. `device`: where to render (default the run's train.device, after a test
    render there)."""
    run = open_finished_run(run_dir, device)
    paths, cfg, model, device = run.paths, run.cfg, run.model, run.device
    out = Path(out_dir) if out_dir is not None else paths.root / "report"
    check_replaceable(out)
    scene = run.scene()
    split, ids = ("test", scene.test_ids) if scene.test_ids else ("train (every 8th: no test views)", None)
    ids = ids if ids is not None else scene.train_ids[::8]
    earlier = earlier_evaluation(paths, model.info, [scene.cameras[i].name for i in ids])
    if earlier is not None:  # `train` and `demo` evaluated the model just before: render, do not re-measure
        views = RenderedViews(earlier, renders_of(model, scene, ids, device))
    else:
        views = evaluate_with_renders(model, scene, ids, device)
    partition = load_partition(paths.partition) if paths.partition.is_file() else None
    records = read_metrics(paths.metrics)
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / MARKER).write_text("written by momentumgs report\n")
        n_blocks = len(partition.blocks) if partition is not None else 1
        colors = [f"#{r:02x}{g:02x}{b:02x}" for b, g, r in block_colors(n_blocks).tolist()]  # BGR rows
        sections = [("Run", facts_table(run_facts(paths, cfg, model.info, train, scene)))]
        sections.append(("Evaluation", _evaluation_section(views.result, split, device)))
        if train:
            sections.append(("Training", _training_section(tmp, train, evals, colors)))
        if partition is not None:
            sections.append(
                ("Blocks", _blocks_section(tmp, paths, scene, partition, model.info, views.result))
            )
        sections.append(("Views, worst first", _write_views(tmp, scene, views)))
        sections.append(("Config", f"<pre>{html.escape(dump_config(cfg))}</pre>"))
        (tmp / "index.html").write_text(page(f"momentumgs run {paths.root.resolve().name}", sections))
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "index.html"


def _evaluation_section(result: EvalResult, split: str, device) -> str:
    """The metrics table and how they were measured."""
    return metrics_table(result.means) + (
        f'<p class="note">{len(result.names)} {html.escape(split)} views; rendering {result.fps:.1f} '
        f"views/s on {device}; peak memory of this evaluation {result.peak_rss_mb:.0f} MB RSS"
        + (f", {result.peak_cuda_mb:.0f} MB CUDA" if result.peak_cuda_mb is not None else "")
        + ".</p>"
    )


def _training_section(folder: Path, train: list[dict], evals: list[dict], colors: list[str]) -> str:
    """The training curves (written to folder/curves.png) and their legend."""
    (folder / "curves.png").write_bytes(training_figure(train, evals, colors))
    return (
        '<img src="curves.png" alt="training curves">'
        '<p class="note">Faint: the logged steps; solid: their running mean'
        + ("; dots: periodic evaluations (train.eval_every)" if evals else "")
        + ".</p>"
    )


def _blocks_section(folder: Path, paths: RunPaths, scene, partition, info: dict, result: EvalResult) -> str:
    """The partition's top view (written to folder/partition.png) and the table of the blocks."""
    _write_image(folder / "partition.png", draw_partition(partition, scene, size=700)[..., ::-1])
    psnr = psnr_by_block(result.names, result.per_image["psnr"], scene, partition)
    rows = block_metric_rows(paths.root, scene, partition, info, test_psnr=psnr)
    return (
        '<img src="partition.png" alt="partition, top view">'
        + blocks_table(rows)
        + '<p class="note">Test PSNR: the views whose camera stands in the block\'s cell. Train '
        "PSNR and weight: the block's last logged step.</p>"
    )


def run_facts(paths: RunPaths, cfg, info: dict, train: list[dict], scene) -> list[tuple[str, str]]:
    last = train[-1] if train else {}
    facts = [
        ("run", str(paths.root.resolve())),
        ("scene", f"{cfg.data.path} ({len(scene.train_ids)} training, {len(scene.test_ids)} test views)"),
        (
            "method",
            f"{info.get('blocks', 1)} blocks on {cfg.method.workers} workers, "
            f"{cfg.train.iterations} iterations per block; teacher m = {cfg.method.teacher.momentum}, "
            f"lambda_c = {cfg.method.teacher.lambda_consistency}, "
            f"weighting {'on' if cfg.method.weighting.enabled else 'off'}",
        ),
        ("anchors", f"{sum(info.get('anchors_per_block') or [0])}"),
    ]
    if "seconds" in last:
        facts.append(("training time", duration_text(last["seconds"])))
    rss = [r["peak_rss_mb"] for r in train if "peak_rss_mb" in r]
    if rss:
        facts.append(("peak memory while training", f"{max(rss):.0f} MB RSS (largest process)"))
    if last:
        facts.append(("skipped (non-finite) steps", str(last.get("skipped", 0))))
    facts += [
        ("momentumgs", __version__),
        ("written", datetime.datetime.now().astimezone().isoformat(timespec="seconds")),
    ]
    return facts


def _write_views(folder: Path, scene, views) -> str:
    (folder / "views").mkdir()
    result = views.result
    order = np.argsort(result.per_image["psnr"])  # worst first
    index_of = {c.name: i for i, c in enumerate(scene.cameras)}
    entries = []
    for rank, row in enumerate(order):
        name = result.names[row]
        photo = scene.load_image(index_of[name])
        render = views.renders[name]
        file = f"views/{rank:04d}_{Path(name).stem}.jpg"
        _write_image(folder / file, side_by_side(photo, render, error_map(render, photo)))
        entries.append(
            ViewEntry(
                name,
                file,
                result.per_image["psnr"][row],
                result.per_image["ssim"][row],
                result.per_image["lpips_vgg"][row],
            )
        )
    return (
        '<p class="note">Each row: the photo, the render, the mean absolute error per pixel (black: none; '
        "yellow: 0.25 or more of the colour range). Metrics raw, before colour correction.</p>"
        + view_figures(entries)
    )


def _write_image(path: Path, rgb: np.ndarray) -> None:
    if path.suffix == ".png":
        ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
        assert ok
        path.write_bytes(data.tobytes())
    else:
        Image.fromarray(rgb).save(path, quality=JPEG_QUALITY)


def check_replaceable(out: Path) -> None:
    """`out` may be written: absent, an empty folder, or an earlier report."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; choose another --out")
    if any(out.iterdir()) and not (out / MARKER).is_file():
        raise UserError(f"{out}: holds files that are not a momentumgs report; choose another --out")
