"""Captures whose exposure changes: the demo city's appearance variant, training with the per-image
appearance embedding, the test-time appearance protocols, and the appearance of exports and the viewer."""

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers import MULTI, ONE_BLOCK, scene_loader

from momentumgs.config import OptimConfig, load_config
from momentumgs.errors import UserError
from momentumgs.eval.appearance import fit_embedding, left_half, nearest_training_image
from momentumgs.model.appearance import neutral_appearance, trained_rows
from momentumgs.model.decoder import GaussianDecoder
from momentumgs.model.store import load_model
from momentumgs.render.anchors import render_model_view
from momentumgs.render.view import camera_view
from momentumgs.run import evaluate_run, train_run
from momentumgs.run_setup import load_scene, run_config, start_or_resume
from momentumgs.train.optimizers import decoder_optimizer
from momentumgs.train.paths import RunPaths


@pytest.fixture(scope="session")
def appearance_test_scene(tmp_path_factory):
    """The small demo city photographed with changing exposure, white balance and sun (no SfM)."""
    from momentumgs.demo import cached_demo_scene

    cache = tmp_path_factory.getbasetemp() / "momentumgs-cache"
    return cached_demo_scene(
        size="test", seed=0, cache_dir=cache, sfm=False, log=lambda _: None, appearance=True
    )


@pytest.fixture(scope="module")
def appearance_run(appearance_test_scene, tmp_path_factory):
    """A 4-block run with the per-photo exposure table, trained to the end (80x60 views: LPIPS needs
    32 pixels a side, the right half included)."""
    run = tmp_path_factory.mktemp("appearance") / "run"
    settings = [*MULTI, f"data.path={appearance_test_scene}", "model.appearance=exposure", "data.downscale=4"]
    trainer = start_or_resume(load_config(None, settings), scene_loader, run, resume=False)
    train_run(trainer, progress=False)
    return run


def _row_travel(mode: str, dim: int, gradient: float) -> float:
    """How far row 0 of a table moves when its photo is sampled once (gradient `gradient` on each
    coordinate), well into a run, and then not again for 30 steps, as a photo among many is."""
    decoder = GaussianDecoder(appearance_dim=dim, appearance_count=4, appearance_mode=mode)
    optimizer = decoder_optimizer(decoder, OptimConfig())
    table = decoder.appearance.weight
    for param in decoder.parameters():
        param.grad = torch.zeros_like(param)
    for step in range(231):  # 200 steps of other photos: Adam's bias correction has faded
        optimizer.zero_grad(set_to_none=False)
        if step == 200:
            table.grad[0] = gradient
        optimizer.step()
    return float(table[0].detach().abs().max())


def test_an_exposure_row_moves_in_proportion_to_its_evidence():
    lr = OptimConfig().exposure_init
    # a photo with nothing to correct (tiny gradient) keeps its gain; a real exposure error moves it
    assert _row_travel("exposure", 3, 1e-4) == pytest.approx(lr * 1e-4, rel=0.1)
    assert _row_travel("exposure", 3, 0.1) == pytest.approx(lr * 0.1, rel=0.1)
    # Adam's scaling (the embedding's optimizer) moves a row by a size of its own, whatever the gradient
    assert _row_travel("embedding", 8, 1e-4) > 0.5 * _row_travel("embedding", 8, 0.1) > 0.01


@pytest.mark.tools
@pytest.mark.slow
def test_exposure_gains_learn_each_photos_exposure_and_white_balance(appearance_test_scene, tmp_path):
    """One block, 200 steps on the appearance city (80x60 views): the learned log-gains follow the exposure
    and white balance the photos were taken with (tools/appearance_gains.py; on the demo city's 1000-step
    runs the correlations are about 0.95)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from appearance_gains import gain_agreement

    settings = [*ONE_BLOCK, f"data.path={appearance_test_scene}", "model.appearance=exposure"]
    trainer = start_or_resume(
        load_config(None, [*settings, "train.iterations=200"]), scene_loader, tmp_path / "run", resume=False
    )
    train_run(trainer, progress=False)
    agreement = gain_agreement(tmp_path / "run")
    assert agreement["photos"] > 10
    assert min(agreement["corr_channels"]) > 0.8  # measured 0.90-0.93
    assert agreement["corr_brightness"] > 0.8  # 0.92
    assert agreement["slope_brightness"] > 0.2  # 0.4: the gains still growing towards the truth


def _rgb(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB).astype(np.float64) / 255.0


@pytest.mark.slow
def test_the_photos_change_while_the_ground_truth_stays_neutral(appearance_test_scene, gt_test_scene):
    truth = json.loads((appearance_test_scene / "ground_truth" / "city.json").read_text())
    looks = truth["appearance"]
    assert len(looks) == 24 and len({round(look["exposure"], 6) for look in looks}) == 24
    # the neutral renders are exactly the photos of the same city without appearance changes
    for look in looks:
        neutral = (appearance_test_scene / "ground_truth" / "images" / look["name"]).read_bytes()
        assert neutral == (gt_test_scene / "images" / look["name"]).read_bytes()
    # each photo is its neutral render brightened or darkened by its exposure (the sun and vignetting
    # change it too, so the ratio follows the exposure closely but not exactly)
    ratios = [
        _rgb(appearance_test_scene / "images" / look["name"]).mean()
        / _rgb(appearance_test_scene / "ground_truth" / "images" / look["name"]).mean()
        for look in looks
    ]
    exposures = [look["exposure"] for look in looks]
    assert np.corrcoef(np.log(ratios), np.log(exposures))[0, 1] > 0.9
    assert max(exposures) / min(exposures) > 1.5  # the changes are large enough to matter


@pytest.mark.slow
def test_a_model_renders_test_views_in_the_neutral_appearance_not_their_untrained_rows(appearance_run):
    model = load_model(RunPaths(appearance_run).model)
    scene = load_scene(run_config(appearance_run))
    rows = trained_rows(model.info, model.decoder.appearance.num_embeddings)
    assert sorted(rows) == sorted(scene.train_ids)  # every training photo's row, no test view's
    test = scene.test_ids[0]
    view = camera_view(scene.cameras[test], "cpu", test)
    default = render_model_view(model, view)
    neutral = render_model_view(model, view, appearance=neutral_appearance(model.decoder, rows))
    assert torch.equal(default, neutral)
    assert not model.decoder.appearance.weight[test].any()  # a test view's row: never trained, still zero
    photo_look = render_model_view(model, view, appearance=rows[0])  # a training photo's own appearance
    assert not torch.allclose(default, photo_look, atol=1e-4)


@pytest.mark.slow
def test_the_half_protocol_fits_the_left_half(appearance_run):
    model = load_model(RunPaths(appearance_run).model)
    scene = load_scene(run_config(appearance_run))
    test = scene.test_ids[0]
    view = camera_view(scene.cameras[test], "cpu", test)
    photo = torch.from_numpy(scene.load_image(test)).float() / 255.0  # [H, W, 3]
    fitted = fit_embedding(model, view, photo)
    half = left_half(view)
    rows = trained_rows(model.info, model.decoder.appearance.num_embeddings)

    def left_error(appearance):
        image = render_model_view(model, half, appearance=appearance)  # [H, W // 2, 3]
        return float((image - photo[:, : half.width]).abs().mean())

    neutral_error = left_error(neutral_appearance(model.decoder, rows))
    # a model this short-trained leans little on its embedding: a small but certain gain (none if the fit
    # moved nothing)
    assert left_error(fitted) < 0.99 * neutral_error, (left_error(fitted), neutral_error)


@pytest.mark.slow
def test_nearest_protocol_takes_the_closest_training_camera(appearance_run):
    scene = load_scene(run_config(appearance_run))
    for test in scene.test_ids:
        chosen = nearest_training_image(scene, test, list(scene.train_ids))
        assert chosen in scene.train_ids
        distance = {
            i: np.linalg.norm(scene.cameras[i].center - scene.cameras[test].center) for i in scene.train_ids
        }
        assert distance[chosen] == min(distance.values())


@pytest.mark.slow
def test_eval_names_its_protocol_and_measures_the_right_half(appearance_run, appearance_test_scene):
    evaluate_run(appearance_run, appearance="mean")
    evaluate_run(appearance_run, appearance="nearest")
    evaluate_run(appearance_run, appearance="half")
    evaluate_run(appearance_run, reference=appearance_test_scene / "ground_truth" / "images")
    eval_dir = RunPaths(appearance_run).eval_dir
    results = {
        name: json.loads((eval_dir / f"{name}.json").read_text())
        for name in ("eval_test", "eval_test_nearest", "eval_test_half", "eval_test_ref-images")
    }
    assert results["eval_test"]["appearance"]["protocol"] == "mean"
    assert results["eval_test_nearest"]["appearance"]["protocol"] == "nearest"
    half = results["eval_test_half"]["appearance"]
    assert half["protocol"] == "half" and half["measured_region"] == "right half"
    assert results["eval_test_ref-images"]["reference"].endswith("images")
    # the same renders, measured against other images or regions, give other figures
    psnrs = {name: r["means"]["psnr"] for name, r in results.items()}
    assert len({round(v, 6) for v in psnrs.values()}) == 4, psnrs
    with pytest.raises(UserError, match="--appearance sideways"):
        evaluate_run(appearance_run, appearance="sideways", force=True)


@pytest.mark.slow
def test_export_takes_a_photos_appearance(appearance_run, tmp_path):
    from momentumgs.export.commands import export_run

    model = load_model(RunPaths(appearance_run).model)
    photo = model.info["appearance_images"][0]["name"]
    _, neutral = export_run(appearance_run, out=tmp_path / "neutral.ply", sh_degree=0)
    _, photo_look = export_run(appearance_run, out=tmp_path / "photo.ply", sh_degree=0, appearance=photo)
    assert torch.equal(neutral.means, photo_look.means) and torch.equal(
        neutral.opacities, photo_look.opacities
    )
    assert not torch.allclose(neutral.sh, photo_look.sh, atol=1e-4)  # the colours follow the photo
    with pytest.raises(UserError, match="--appearance nope.png: not a training photo"):
        export_run(appearance_run, out=tmp_path / "x.ply", appearance="nope.png")
    assert not (tmp_path / "x.ply").exists()


@pytest.mark.slow
def test_viewer_offers_the_photos_appearances(appearance_run):
    from momentumgs_viewer import ViewerOptions, open_run

    viewer = open_run(appearance_run, ViewerOptions(port=0, verbose=False))
    try:
        model = viewer.holder.get()
        menu = viewer.appearance_menu
        names = [row["name"] for row in model.info["appearance_images"]]
        assert list(menu.options) == ["neutral (mean of the photos)", *names]
        assert viewer.appearance_row(model) is None
        menu.value = names[2]
        assert viewer.appearance_row(model) == model.info["appearance_images"][2]["index"]
    finally:
        viewer.stop()
