"""The run report: its files, the order of its views, what it refuses to replace, and (in headless chromium)
that the page loads from disk with no console error and every image shown."""

import re
import shutil

import numpy as np
import pytest
from browser import Chromium, needs_chromium
from helpers import scene_loader
from PIL import Image

from momentumgs.config import load_config
from momentumgs.errors import UserError
from momentumgs.report.build import MARKER, write_report
from momentumgs.report.curves import block_series, running_mean, step_rates, training_panels
from momentumgs.report.views import error_map, side_by_side
from momentumgs.train.metrics_log import read_metrics


@pytest.fixture
def trained_run(finished_run, tmp_path):
    """A copy of the session's finished 4-block run (the report writes into its folder)."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    return run


@pytest.mark.slow
def test_report_files_and_views_worst_first(trained_run):
    page = write_report(trained_run)
    assert page == trained_run / "report" / "index.html"
    text = page.read_text()
    report = page.parent
    assert (report / "curves.png").is_file() and (report / "partition.png").is_file()
    scene = scene_loader(load_config(trained_run / "config.yaml"))
    views = sorted((report / "views").iterdir())
    assert len(views) == len(scene.test_ids) > 0
    for file in views:  # photo | render | error, each as wide as a test view
        width, height = Image.open(file).size
        assert (width, height) == (3 * scene.cameras[0].width + 8, scene.cameras[0].height)
        assert f'src="views/{file.name}"' in text
    # captions in page order: PSNRs ascending (worst first), and they are the evaluation's figures
    shown = [float(p) for p in re.findall(r"PSNR ([0-9.]+) dB, SSIM", text)]
    assert len(shown) == len(views) and shown == sorted(shown)
    assert "colour-corrected" in text and "raw" in text
    # every block in the table, the training time and memory from metrics.jsonl
    assert len(re.findall(r"<tr><td>[0-3]</td>", text)) == 4
    last = read_metrics(trained_run / "metrics.jsonl", kind="train")[-1]
    assert last["seconds"] > 0 and last["peak_rss_mb"] > 0
    assert "training time" in text and "peak memory while training" in text


@pytest.mark.slow
def test_report_reuses_the_evaluation_written_just_before(trained_run, monkeypatch):
    """`train` evaluates, then writes the report: the report takes eval/eval_test.json's figures instead of
    measuring every view again, unless the model is newer than that evaluation."""
    import json
    import os

    import momentumgs.report.build as build

    measured = []
    real = build.evaluate_with_renders
    monkeypatch.setattr(build, "evaluate_with_renders", lambda *args: measured.append(1) or real(*args))
    text = write_report(trained_run).read_text()
    assert measured == []
    evaluation = json.loads((trained_run / "eval" / "eval_test.json").read_text())
    shown = [float(p) for p in re.findall(r"PSNR ([0-9.]+) dB, SSIM", text)]
    assert np.allclose(shown, sorted(evaluation["per_image"]["psnr"]), atol=0.01)

    model = trained_run / "model.ckpt"
    later = (trained_run / "eval" / "eval_test.json").stat().st_mtime + 10
    os.utime(model, (later, later))  # a model written after the evaluation: measure again
    write_report(trained_run)
    assert measured == [1]


@pytest.mark.slow
def test_report_replaces_only_an_earlier_report(trained_run, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a momentumgs report"):
        write_report(trained_run, out)
    assert (out / "notes.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1
    fresh = tmp_path / "fresh"
    write_report(trained_run, fresh)
    (fresh / "stale.txt").write_text("from the earlier report")
    write_report(trained_run, fresh)  # an earlier report: replaced whole once the new one is complete
    assert (fresh / MARKER).is_file() and not (fresh / "stale.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_error_map_and_panels():
    photo = np.zeros((6, 5, 3), np.uint8)
    render = photo.copy()
    render[2, 3] = 255  # one pixel off by the whole range
    err = error_map(render, photo)
    assert err.shape == (6, 5, 3)
    assert err[2, 3].astype(int).sum() > 3 * 200  # bright
    assert err[0, 0].astype(int).sum() < 30  # no error: near black
    row = side_by_side(photo, render, err)
    assert row.shape == (6, 3 * 5 + 2 * 4, 3)
    assert np.array_equal(row[:, 5 + 4 : 10 + 4], render)


def test_curves_follow_each_block_and_rates_use_wall_time():
    records = [
        {"step": 2, "seconds": 1.0, "blocks": {"0": {"iteration": 2, "psnr": 10.0}, "1": {"iteration": 2}}},
        {"step": 4, "seconds": 2.0, "blocks": {"2": {"iteration": 2, "psnr": 12.0}}},
        {"step": 6, "seconds": 4.0, "blocks": {"0": {"iteration": 4, "psnr": 14.0}}},
    ]
    series = block_series(records, "psnr")
    assert series.keys() == {0, 2}  # block 1 logged no PSNR
    assert series[0][0].tolist() == [2, 4] and series[0][1].tolist() == [10.0, 14.0]
    steps, rates = step_rates(records)
    assert steps.tolist() == [4, 6] and rates.tolist() == [2.0, 1.0]
    assert running_mean(np.array([1.0, 3.0, 5.0, 7.0]), 2).tolist() == [1.0, 2.0, 4.0, 6.0]


def test_the_test_psnr_panel_shows_a_curve_or_is_left_out():
    """A run with periodic evaluations plots their test PSNR; one without (train.eval_every = 0, the demo's)
    has no such panel, not an empty one."""
    logged = {"psnr": 12.0, "loss": 0.1, "consistency": 0.01, "anchors": 50, "gaussians": 400, "weight": 1.0}
    train = [{"step": s, "seconds": float(s), "blocks": {"0": {"iteration": s, **logged}}} for s in (2, 4, 6)]
    evals = [{"step": 4, "blocks": {"0": {"psnr": 20.0}}}, {"step": 6, "blocks": {"0": {"psnr": 21.0}}}]

    def titles(fig):
        return [ax.get_title() for ax in fig.axes]

    with_evals = training_panels(train, evals, ["red"])
    (panel,) = [ax for ax in with_evals.axes if ax.get_title().startswith("test PSNR")]
    assert panel.lines and panel.lines[0].get_ydata().tolist() == [20.0, 21.0]
    without = training_panels(train, [], ["red"])
    assert titles(without) == [t for t in titles(with_evals) if not t.startswith("test PSNR")]
    assert all(ax.lines for ax in without.axes)  # every panel shown has a curve


IMAGES_SHOWN = (
    "Array.from(document.images).map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])"
)


@pytest.mark.slow
@pytest.mark.browser
@needs_chromium
def test_report_page_loads_in_chromium_with_every_image(trained_run, tmp_path):
    page = write_report(trained_run, tmp_path / "report")
    browser = Chromium("about:blank", tmp_path / "profile")
    try:
        browser.open(page.as_uri())
        images = browser.evaluate(IMAGES_SHOWN)
        assert browser.console_errors == []
        n_views = len(list((page.parent / "views").iterdir()))
        assert len(images) == n_views + 2  # curves, partition, one per view
        assert all(shown for _, shown in images), images
        # the check sees a missing image: remove one and load the page again
        missing = next((page.parent / "views").iterdir())
        missing.unlink()
        browser.open(page.as_uri())
        broken = [src for src, shown in browser.evaluate(IMAGES_SHOWN) if not shown]
        assert broken == [f"views/{missing.name}"]
        assert browser.console_errors  # chromium reports the failed load
    finally:
        browser.close()
