"""The survey scene: rolling farmland flown low in strips, points triangulated at the known poses."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pycolmap
import pytest

from momentumgs import cli
from momentumgs.config import load_config
from momentumgs.data.colmap import load_colmap_scene
from momentumgs.demo import MARKER, build_scene, cached_survey_scene, raycast, survey
from momentumgs.demo.align import camera_centers
from momentumgs.errors import UserError
from momentumgs.partition import partition_scene

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def survey_scene(tmp_path_factory) -> Path:
    """The `test` survey with its triangulated points, built once into the session's cache folder."""
    cache = tmp_path_factory.getbasetemp() / "momentumgs-cache"
    return cached_survey_scene(size="test", seed=0, cache_dir=cache, log=lambda _: None)


def seen_fraction(rec: pycolmap.Reconstruction) -> np.ndarray:
    """Per image, the fraction of the model's points it observes -> [V]."""
    n_points = rec.num_points3D()
    return np.array([img.num_points3D / n_points for img in rec.images.values()])


def test_sizes_fly_strips_with_the_overlaps_asked():
    views = {size: survey.survey_params(size).num_views for size in survey.SIZES}
    assert views == {"survey": 88, "test": 28, "large": 236}
    for size in survey.SIZES:
        p = survey.survey_params(size)
        assert len(survey.camera_poses(p)) == p.num_views
        across, along = survey.footprint(p)
        step, strip = survey.flight_spacing(p)
        assert 0.6 <= 1 - step / along <= 0.7 and 0.6 <= 1 - strip / across <= 0.7
    area = {s: math.prod(survey.survey_half_extent(survey.survey_params(s))) for s in ("survey", "large")}
    assert 2 <= area["large"] / area["survey"] <= 3 and 2 <= views["large"] / views["survey"] <= 3
    p = survey.survey_params("test")
    assert (p.width, p.height) == (128, 96)
    again = survey.camera_poses(survey.survey_params("test"))
    assert all(a.tobytes() == b.tobytes() for a, b in zip(survey.camera_poses(p), again, strict=True))


def test_strip_views_lean_forward_and_obliques_look_sideways():
    p = survey.survey_params("test")
    axes = np.stack([v[2, :3] for v in survey.camera_poses(p)])  # [V, 3] optical axes in world
    tilt = np.degrees(np.arccos(-axes[:, 2]))
    strips = p.strips * p.views_per_strip
    np.testing.assert_allclose(tilt[:strips], p.tilt_deg, atol=1e-9)
    np.testing.assert_allclose(tilt[strips:], p.oblique_tilt_deg, atol=1e-9)
    assert (np.abs(axes[strips:, 0]) > np.abs(axes[strips:, 1])).all()  # along y lines, looking across x


def test_unknown_scene_or_size_is_a_one_line_error(tmp_path):
    for scene, size, message in (
        ("city", "survey", "unknown demo size 'survey' for the city"),
        ("survey", "demo", "unknown demo size 'demo' for the survey"),
        ("forest", None, "unknown demo scene 'forest'"),
    ):
        with pytest.raises(UserError, match=message) as info:
            build_scene(tmp_path / "x", scene, size, sfm=False)
        assert "\n" not in str(info.value)
    assert not (tmp_path / "x").exists()


def test_cli_names_the_wrong_scene_and_size_in_one_line(tmp_path, capsys):
    rc = cli.main(["demo-scene", str(tmp_path / "x"), "--scene", "city", "--size", "large"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert err == "momentumgs: error: unknown demo size 'large' for the city (expected 'demo' or 'test')"


def test_terrain_rays_stop_at_the_first_crossing():
    """Against dense sampling along each ray: camera rays going down, and shallow rays from the ground
    going up and down (occlusion rays), some of which graze a hill."""
    p = survey.survey_params("test")
    terrain = survey.make_terrain(p)
    rng = np.random.default_rng(0)
    n = 180  # a third each: from a camera above going steeply down; from the ground going down, up
    d = rng.normal(size=(n, 3))
    o = np.c_[rng.uniform(-40, 40, (n, 2)), np.zeros(n)]
    o[:, 2] = terrain.height(o[:, 0], o[:, 1]) + 0.01
    d[:, 2] = 0.3 * np.abs(d[:, 2]) * np.where(np.arange(n) < 2 * n // 3, -1, 1)
    o[: n // 3], d[: n // 3, 2] = (0.0, 0.0, 40.0), -1 - 4 * np.abs(d[: n // 3, 2])
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    t = raycast.terrain_t(terrain, o, d, 60.0)
    ts = np.linspace(0, 60, 4001)
    P = o[:, None] + ts[None, :, None] * d[:, None]  # [N, S, 3]
    below = P[..., 2] < terrain.height(P[..., 0], P[..., 1])
    first = np.where(below.any(1), ts[np.argmax(below, 1)], np.inf)
    clear = np.isinf(first) & np.isinf(t)
    assert (np.isfinite(t) == np.isfinite(first)).mean() > 0.98  # a tangent grazing ray may differ
    both = np.isfinite(t) & np.isfinite(first)
    assert np.abs(t[both] - first[both]).max() < 0.05 and clear.sum() > 15 and both.sum() > 70
    hit = o[both] + t[both, None] * d[both]
    assert np.abs(hit[:, 2] - terrain.height(hit[:, 0], hit[:, 1])).max() < 1e-4


@pytest.mark.slow
def test_builds_loads_and_keeps_the_exact_poses(survey_scene):
    scene = load_colmap_scene(survey_scene, test_every=8)
    truth = load_colmap_scene(survey_scene, sparse="ground_truth/sparse/0", test_every=8)
    names = [c.name for c in scene.cameras]
    assert names == [f"{i:04d}.png" for i in range(28)] == [c.name for c in truth.cameras]
    assert [names[i] for i in scene.test_ids] == [f"{i:04d}.png" for i in range(0, 28, 8)]
    for a, b in zip(scene.cameras, truth.cameras, strict=True):
        assert (a.width, a.height) == (128, 96)
        np.testing.assert_allclose(a.viewmat, b.viewmat, atol=1e-9)
        np.testing.assert_allclose(a.K, b.K, atol=1e-9)
    rec = pycolmap.Reconstruction(survey_scene / "sparse" / "0")
    assert rec.num_points3D() > 500 and rec.compute_mean_reprojection_error() < 0.3
    assert rec.compute_mean_track_length() > 3
    marker = json.loads((survey_scene / MARKER).read_text())
    assert marker["scene"] == "survey"
    assert marker["stats"]["sfm"]["method"] == "triangulation at the known poses"


@pytest.mark.slow
def test_two_builds_are_identical(survey_scene, tmp_path):
    again = build_scene(tmp_path / "again", "survey", "test", seed=0, log=lambda _: None)
    for part in ("images", "sparse/0", "ground_truth/sparse/0"):
        files = sorted(p.relative_to(survey_scene) for p in (survey_scene / part).iterdir())
        assert files == sorted(p.relative_to(again) for p in (again / part).iterdir())
        for f in files:
            assert (survey_scene / f).read_bytes() == (again / f).read_bytes(), f


@pytest.mark.slow
def test_each_photo_sees_a_small_part(survey_scene):
    """The survey's photos each see under a quarter of the scene's surface (the city's see about half,
    measured the same way: 0.5), and under a fifth of the triangulated points."""
    truth = pycolmap.Reconstruction(survey_scene / "ground_truth" / "sparse" / "0")
    assert np.median(seen_fraction(truth)) < 0.25
    sparse = pycolmap.Reconstruction(survey_scene / "sparse" / "0")
    fraction = seen_fraction(sparse)
    assert np.median(fraction) < 0.2 and fraction.max() < 0.35
    assert min(img.num_points3D for img in sparse.images.values()) > 20  # ... yet every photo has points


@pytest.mark.slow
def test_ground_truth_points_lie_on_the_terrain_or_boxes(survey_scene):
    description = json.loads((survey_scene / "ground_truth" / "survey.json").read_text())
    t = description["terrain"]
    terrain = raycast.HeightField(
        np.array(t["amplitude"]), np.array(t["wavevector"]), np.array(t["phase"]), t["base"]
    )
    gt = pycolmap.Reconstruction(survey_scene / "ground_truth" / "sparse" / "0")
    xyz = np.stack([p.xyz for p in gt.points3D.values()])  # [P, 3]
    above = xyz[:, 2] - terrain.height(xyz[:, 0], xyz[:, 1])
    on_terrain = np.abs(above) < 1e-3
    assert on_terrain.mean() > 0.6  # mostly ground, seen from above
    assert (above > -1e-3).all()  # nothing below the ground
    boxes = description["boxes"]
    centres, half = np.array([b["center"] for b in boxes]), np.array([b["half"] for b in boxes])
    reach = np.linalg.norm(half, axis=1)  # [B] a box's points lie within this of its centre
    off = xyz[~on_terrain]
    near_box = (np.linalg.norm(off[:, None] - centres[None], axis=2) <= reach[None] + 1e-6).any(1)
    assert near_box.all()


@pytest.mark.slow
def test_partitions_into_four_blocks_with_cameras(survey_scene):
    cfg = load_config(str(ROOT / "configs" / "demo.yaml"), [])
    scene = load_colmap_scene(survey_scene, test_every=cfg.data.test_every)
    part = partition_scene(scene, cfg.partition)
    assert part.up_axis == "+z" and tuple(part.block_dim) == (2, 2, 1)
    assert len(part.blocks) == 4
    for b in part.blocks:
        assert len(b.camera_ids) >= 6 and b.n_cell_points > 50
    # the blocks split the flown area: their cells hold the cameras' centres in roughly equal shares
    centres = camera_centers(np.stack([scene.cameras[i].viewmat for i in scene.train_ids]))
    mid = (part.aabb[:2] + part.aabb[3:5]) / 2
    quadrant = (centres[:, 0] > mid[0]) * 2 + (centres[:, 1] > mid[1])
    assert np.bincount(quadrant, minlength=4).min() >= 3


@pytest.mark.slow
def test_sfm_of_the_survey_photos_is_right_and_raises_no_plausibility_warning(survey_scene, tmp_path):
    """Real SfM (`prepare colmap`) on the survey's photos: the checks stay quiet on a model that is right,
    and their figures are those of a survey (shared view direction, cameras above the ground)."""
    from colmap_helpers import viewmats_by_name

    from momentumgs.demo.align import pose_errors
    from momentumgs.prepare.photos import PhotoOptions, prepare_colmap

    opts = PhotoOptions(undistort=False, progress=False)
    report = prepare_colmap(survey_scene / "images", tmp_path / "sfm", opts, log=lambda _: None).report
    assert report["registered"] == 28 and report["warnings"] == []
    checks = report["plausibility"]
    assert checks["view directions"]["value"] > 0.9 and checks["ground side"]["value"] == 1.0
    est = viewmats_by_name(pycolmap.Reconstruction(tmp_path / "sfm" / "distorted" / "sparse" / "0"))
    gt = viewmats_by_name(pycolmap.Reconstruction(survey_scene / "ground_truth" / "sparse" / "0"))
    names = sorted(gt)
    centre_err, rot_err = pose_errors(np.stack([est[n] for n in names]), np.stack([gt[n] for n in names]))
    assert centre_err.max() < 1.0 and rot_err.max() < 2.0  # metres, degrees: the model is right
