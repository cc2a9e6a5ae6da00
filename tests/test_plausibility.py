"""Plausibility checks of a reconstruction: a survey model whose poses were corrupted on purpose is flagged,
naming the photos; the correct survey and the demo city raise no warning; prepare scan reports them."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pycolmap
import pytest

from momentumgs.cli import main
from momentumgs.demo import survey
from momentumgs.prepare.plausibility import (
    capture_order_jumps,
    check_pycolmap,
    check_reconstruction,
    dominant_plane,
    ground_side_outliers,
    view_direction_outliers,
)


def survey_model(n_points: int = 1500, seed: int = 0) -> pycolmap.Reconstruction:
    """The `test` survey's flight (28 views, 128x96) as a COLMAP model at the exact poses, with points on
    its terrain observed by every view that sees them; no rendering."""
    p = survey.survey_params("test", seed)
    viewmats = survey.camera_poses(p)
    K = survey.intrinsics(p)
    x_half, y_half = survey.survey_half_extent(p)
    rng = np.random.default_rng(seed)
    xy = rng.uniform([-x_half, -y_half], [x_half, y_half], size=(n_points, 2))
    points = np.c_[xy, survey.make_terrain(p).height(xy[:, 0], xy[:, 1])]  # [N, 3]

    rec = pycolmap.Reconstruction()
    cam = pycolmap.Camera.create_from_model_name(1, "PINHOLE", 1.0, p.width, p.height)
    cam.params = [K[0, 0], K[1, 1], K[0, 2], K[1, 2]]
    rec.add_camera_with_trivial_rig(cam)
    tracks: list[list[tuple[int, int]]] = [[] for _ in range(n_points)]
    for v, viewmat in enumerate(viewmats):
        cam_points = points @ viewmat[:3, :3].T + viewmat[:3, 3]  # [N, 3]
        uv = cam_points @ K.T
        uv = uv[:, :2] / np.maximum(uv[:, 2:], 1e-9)  # [N, 2]
        seen = np.flatnonzero(
            (cam_points[:, 2] > 0.1) & (uv >= 0).all(1) & (uv[:, 0] < p.width) & (uv[:, 1] < p.height)
        )
        image = pycolmap.Image(
            name=f"{v:04d}.png",
            camera_id=1,
            image_id=v + 1,
            points2D=pycolmap.Point2DList([pycolmap.Point2D(xy) for xy in uv[seen]]),
        )
        rec.add_image_with_trivial_frame(
            image, pycolmap.Rigid3d(pycolmap.Rotation3d(viewmat[:3, :3]), viewmat[:3, 3])
        )
        for k, i in enumerate(seen):
            tracks[i].append((v + 1, k))
    for xyz, elements in zip(points, tracks, strict=True):
        if len(elements) >= 2:
            track = pycolmap.Track()
            for image_id, k in elements:
                track.add_element(image_id, k)
            rec.add_point3D(xyz, track, np.array([128, 128, 128], np.uint8))
    return rec


def set_pose(rec: pycolmap.Reconstruction, name: str, viewmat: np.ndarray) -> None:
    image = next(im for im in rec.images.values() if im.name == name)
    rec.frames[image.frame_id].rig_from_world = pycolmap.Rigid3d(
        pycolmap.Rotation3d(viewmat[:3, :3]), viewmat[:3, 3]
    )


def viewmat_of(rec: pycolmap.Reconstruction, name: str) -> np.ndarray:
    from momentumgs.data.colmap_cameras import cam_from_world

    return cam_from_world(next(im for im in rec.images.values() if im.name == name))


def flipped(viewmat: np.ndarray) -> np.ndarray:
    """The camera turned upside down about its own x axis (it now looks up), at the same centre."""
    turn = np.diag([1.0, -1.0, -1.0])
    out = viewmat.copy()
    centre = -viewmat[:3, :3].T @ viewmat[:3, 3]
    out[:3, :3] = turn @ viewmat[:3, :3]
    out[:3, 3] = -out[:3, :3] @ centre
    return out


def mirrored_below(viewmat: np.ndarray, ground_z: float) -> np.ndarray:
    """The camera mirrored through the horizontal plane z = ground_z (a folded model): below the ground,
    looking up; its x axis flipped too, to stay a proper rotation."""
    mirror = np.diag([1.0, 1.0, -1.0])
    R = np.diag([-1.0, 1.0, 1.0]) @ viewmat[:3, :3] @ mirror
    centre = mirror @ (-viewmat[:3, :3].T @ viewmat[:3, 3]) + [0.0, 0.0, 2 * ground_z]
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = R, -R @ centre
    return out


def moved(viewmat: np.ndarray, offset) -> np.ndarray:
    out = viewmat.copy()
    out[:3, 3] = viewmat[:3, 3] - viewmat[:3, :3] @ np.asarray(offset, float)
    return out


@pytest.fixture(scope="module")
def correct_model() -> pycolmap.Reconstruction:
    return survey_model()


def test_the_correct_survey_raises_no_warning(correct_model):
    result = check_pycolmap(correct_model)
    assert result.warnings == []
    figures = {c.name: c for c in result.checks}
    assert all(c.applies for c in result.checks)  # a survey: every check has something to say
    assert figures["view directions"].value > 0.9 and figures["ground side"].value == 1.0
    assert figures["tracks"].value > 0.8


def test_a_corrupted_survey_names_the_photos(correct_model, tmp_path):
    rec = pycolmap.Reconstruction(correct_model)
    for name in ("0003.png", "0004.png", "0005.png"):  # turned upside down: they look at the sky
        set_pose(rec, name, flipped(viewmat_of(rec, name)))
    mirrored = ("0014.png", "0015.png")
    for name in mirrored:  # mirrored below the ground
        set_pose(rec, name, mirrored_below(viewmat_of(rec, name), ground_z=0.0))
    for name in ("0009.png", "0010.png"):  # a run of two thrown 300 m sideways
        set_pose(rec, name, moved(viewmat_of(rec, name), (0.0, 300.0, 0.0)))
    model = tmp_path / "broken" / "sparse" / "0"
    model.mkdir(parents=True)
    rec.write_binary(str(model))

    result = check_pycolmap(pycolmap.Reconstruction(model))
    flagged = {c.name: result.flagged_names(c.name) for c in result.checks}
    assert flagged["view directions"] == ["0003.png", "0004.png", "0005.png", "0014.png", "0015.png"]
    assert flagged["ground side"] == ["0003.png", "0004.png", "0005.png", "0014.png", "0015.png"]
    # the thrown run, and perhaps the mirrored pair (64 m below its neighbours), but no correct photo
    assert {"0009.png", "0010.png"} <= set(flagged["capture order"]) <= {"0009.png", "0010.png", *mirrored}
    assert any("0014.png" in w and "below the ground plane" in w for w in result.warnings)
    (jump,) = [w for w in result.warnings if "jump more than 5x the median step" in w]
    assert ": 0009.png, 0010.png" in jump
    assert all("\n" not in w for w in result.warnings)


def test_long_lists_are_capped_and_weak_photos_named():
    axes = np.tile([0.0, 0.0, -1.0], (40, 1))
    axes[10:18] *= -1  # eight photos looking up
    points = np.c_[np.random.default_rng(0).uniform(-5, 45, (500, 2)), np.zeros(500)]
    check = view_direction_outliers(axes, dominant_plane(points))
    assert check.flagged == list(range(10, 18))

    names = [f"{i:03d}.jpg" for i in range(40)]
    centres = np.c_[np.arange(40.0), np.zeros(40), np.full(40, 30.0)]
    observations = np.full(40, 400)
    observations[7] = 12  # below the mapper's 15 inliers
    observations[8] = 30  # under a tenth of the median 400
    result = check_reconstruction(names, centres, axes, observations, points, np.full(500, 2))
    warnings = "\n".join(result.warnings)
    assert "8 of 40 photos look more than 90 deg away" in warnings
    assert "010.jpg, 011.jpg, 012.jpg, 013.jpg, 014.jpg and 3 more" in warnings
    assert "2 of 40 photos see few points (weakly registered): 007.jpg, 008.jpg" in warnings
    assert "only 0% of the points are seen by 3 or more photos" in warnings


def test_a_street_walked_both_ways_is_no_flip_but_a_half_mirrored_survey_is():
    """Views along the ground may look back (a street walked there and back); a survey whose cameras sit on
    both sides of the ground, half of them mirrored below it, is flagged on the side fewer are on."""
    rng = np.random.default_rng(0)
    ground = np.c_[rng.uniform(0, 100, (400, 2)), rng.normal(0, 0.05, 400)]  # [400, 3] a flat street
    centres = np.c_[np.linspace(0, 100, 30), np.full(30, 50.0), np.full(30, 1.6)]
    axes = np.tile([1.0, 0.0, 0.0], (30, 1))
    axes[24:] = [-1.0, 0.0, 0.0]  # the last six walk back
    names = [f"{i:03d}.jpg" for i in range(30)]
    result = check_reconstruction(names, centres, axes, np.full(30, 300), ground, np.full(400, 4))
    assert result.warnings == []
    assert not next(c for c in result.checks if c.name == "view directions").applies

    centres = np.c_[rng.uniform(0, 100, (30, 2)), np.full(30, 40.0)]
    axes = np.tile([0.0, 0.0, -1.0], (30, 1))
    centres[:14, 2], axes[:14, 2] = -40.0, 1.0  # 14 of 30 mirrored below the ground, looking up
    check = ground_side_outliers(centres, axes, dominant_plane(ground))
    assert check.flagged == list(range(14)) and check.value == 16 / 30


def test_capture_order_allows_new_lines_but_not_a_detour():
    strip = np.arange(10.0)
    lines = np.concatenate(
        [np.c_[strip, np.zeros(10)], np.c_[strip[::-1], np.full(10, 60.0)]]  # a second line far away
    )
    centres = np.c_[lines, np.zeros(20)]
    assert capture_order_jumps(centres).flagged == []  # one jump to a new line and no return: fine
    centres[4:6, 1] += 100.0  # two photos out and back
    assert capture_order_jumps(centres).flagged == [4, 5]


def test_the_demo_city_raises_no_warning(gt_test_scene):
    result = check_pycolmap(pycolmap.Reconstruction(gt_test_scene / "sparse" / "0"))
    assert result.warnings == [], result.warnings
    assert all(c.applies for c in result.checks)  # buildings on flat ground: a plane, a shared direction


def test_scan_and_its_json_carry_the_warnings(correct_model, tmp_path, capsys):
    p = survey.survey_params("test")
    rec = pycolmap.Reconstruction(correct_model)
    for name in ("0003.png", "0004.png"):
        set_pose(rec, name, flipped(viewmat_of(rec, name)))
    scene = tmp_path / "scene"
    (scene / "sparse" / "0").mkdir(parents=True)
    rec.write_binary(str(scene / "sparse" / "0"))
    (scene / "images").mkdir()
    for image in rec.images.values():
        cv2.imwrite(str(scene / "images" / image.name), np.zeros((p.height, p.width, 3), np.uint8))
    report = tmp_path / "scan.json"
    assert main(["prepare", "scan", str(scene), "--json", str(report)]) == 0
    out = capsys.readouterr().out
    line = "  warning: implausible poses: 2 of 28 photos look more than 90 deg away from the direction most "
    assert line + "photos share: 0003.png, 0004.png" in out
    saved = json.loads(report.read_text())
    assert saved["plausibility"]["model"]["view directions"]["applies"] is True
    assert len(saved["plausibility"]["model"]["view directions"]["flagged"]) == 2
    assert any("0003.png, 0004.png" in w for w in saved["warnings"])


def test_the_flip_helpers_keep_proper_rotations():
    viewmat = survey.camera_poses(survey.survey_params("test"))[0]
    for out in (flipped(viewmat), mirrored_below(viewmat, 0.0), moved(viewmat, (1, 2, 3))):
        assert math.isclose(np.linalg.det(out[:3, :3]), 1.0, abs_tol=1e-9)
