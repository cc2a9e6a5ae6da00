"""The embedded demo city: generator, ground-truth model, real SfM on it, alignment, cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pycolmap
import pytest
from colmap_helpers import viewmats_by_name

from momentumgs.demo import MARKER, build_demo_scene, cached_demo_scene, city, raycast
from momentumgs.demo.align import camera_centers, pose_errors, umeyama
from momentumgs.errors import UserError


@pytest.fixture(scope="session")
def sfm_scene(tmp_path_factory) -> Path:
    """The `test` city with real SfM, built once per session into the session's cache folder."""
    cache = tmp_path_factory.getbasetemp() / "momentumgs-cache"
    return cached_demo_scene(size="test", seed=0, cache_dir=cache, sfm=True, log=lambda _: None)


@pytest.mark.slow
def test_sfm_registers_every_view_and_matches_ground_truth(sfm_scene):
    sfm = pycolmap.Reconstruction(sfm_scene / "sparse" / "0")
    gt = pycolmap.Reconstruction(sfm_scene / "ground_truth" / "sparse" / "0")
    n_images = len(list((sfm_scene / "images").glob("*.png")))
    assert n_images == city.city_params("test").num_views == gt.num_images()
    est, ref = viewmats_by_name(sfm), viewmats_by_name(gt)
    assert sorted(est) == sorted(ref)  # every view registered
    assert sfm.num_points3D() > 500
    assert sfm.compute_mean_reprojection_error() < 0.5
    names = sorted(ref)
    centre_err, rot_err = pose_errors(np.stack([est[n] for n in names]), np.stack([ref[n] for n in names]))
    assert centre_err.max() < 0.15  # metres, after the similarity that best aligns the centres
    assert rot_err.max() < 0.5  # degrees
    # one shared camera, principal point kept at the image centre, focal refined close to the truth
    (cam,) = sfm.cameras.values()
    (cam_gt,) = gt.cameras.values()
    assert cam.model == pycolmap.CameraModelId.SIMPLE_PINHOLE
    np.testing.assert_allclose(cam.params[1:], cam_gt.params[1:])
    assert abs(cam.params[0] / cam_gt.params[0] - 1) < 0.01
    stats = json.loads((sfm_scene / MARKER).read_text())["stats"]["sfm"]
    assert stats["registered"] == n_images and stats["unregistered"] == []


@pytest.mark.slow
def test_generator_is_deterministic(sfm_scene):
    p0 = city.city_params("test", seed=0)
    world, _ = city.build_world(p0)
    K, poses = city.intrinsics(p0), city.camera_poses(p0)
    view = 5
    img = raycast.render(world, K, poses[view], p0.width, p0.height, p0.supersample).image
    img = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    saved = cv2.cvtColor(cv2.imread(str(sfm_scene / "images" / f"{view:04d}.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(img, saved)  # a fresh world renders the cached image bit for bit

    p1 = city.city_params("test", seed=1)
    world1, specs1 = city.build_world(p1)
    img1 = raycast.render(world1, K, city.camera_poses(p1)[view], p1.width, p1.height, p1.supersample).image
    assert np.abs(img1 - img / 255.0).mean() > 0.05
    specs0 = city.layout(p0)
    assert [b.center for b in specs0] != [b.center for b in specs1]


@pytest.mark.slow
def test_images_are_richly_textured(sfm_scene):
    sift = cv2.SIFT_create()
    counts = []
    for path in sorted((sfm_scene / "images").glob("*.png")):
        grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        assert grey.shape == (240, 320)
        assert grey.std() > 25
        # no large flat areas: nearly every 16x16 block has some contrast
        blocks = grey.reshape(15, 16, 20, 16).std(axis=(1, 3))
        assert (blocks > 4).mean() > 0.95
        counts.append(len(sift.detect(grey, None)))
    assert min(counts) > 400, counts


@pytest.mark.slow
def test_cache_is_reused_without_rewriting(sfm_scene):
    files = sorted(p for p in sfm_scene.rglob("*") if p.is_file())
    stamps = [p.stat().st_mtime_ns for p in files]
    t0 = time.perf_counter()
    again = cached_demo_scene(size="test", seed=0, cache_dir=sfm_scene.parent.parent, sfm=True, log=print)
    assert time.perf_counter() - t0 < 0.5
    assert again == sfm_scene
    assert [p.stat().st_mtime_ns for p in files] == stamps
    assert sorted(p for p in sfm_scene.rglob("*") if p.is_file()) == files


def _geometry_world(city_json: dict) -> raycast.World:
    """Boxes from city.json with blank textures: enough to cast rays for visibility."""
    boxes = city_json["boxes"]
    blank = raycast.Texture([np.zeros((2, 2, 3), np.float32)], 1.0)
    geometry = raycast.Boxes(
        center=np.array([b["center"] for b in boxes]),
        half=np.array([b["half"] for b in boxes]),
        yaw=np.array([b["yaw"] for b in boxes]),
        side_rect=np.zeros((len(boxes), 4)),
        top_rect=np.zeros((len(boxes), 4)),
    )
    return raycast.World(geometry, blank, blank, tuple(city_json["ground_rect"]), np.array(city_json["sun"]))


@pytest.mark.slow
def test_ground_truth_points_are_seen_where_recorded(sfm_scene):
    gt = pycolmap.Reconstruction(sfm_scene / "ground_truth" / "sparse" / "0")
    city_json = json.loads((sfm_scene / "ground_truth" / "city.json").read_text())
    assert gt.num_points3D() > 2000
    assert gt.compute_mean_track_length() > 3
    cams = {c["name"]: c for c in city_json["cameras"]}
    xyz, view_of, uv = [], [], []
    for img in gt.images.values():
        np.testing.assert_allclose(viewmats_by_name(gt)[img.name], cams[img.name]["viewmat"], atol=1e-12)
        for p2d in img.points2D:
            assert p2d.has_point3D()
            xyz.append(gt.points3D[p2d.point3D_id].xyz)
            view_of.append(img.name)
            uv.append(p2d.xy)
    xyz, uv = np.array(xyz), np.array(uv)
    # 1. every observation is the exact projection of its point and lies inside the image
    names = sorted(cams)
    V = np.stack([np.array(cams[n]["viewmat"]) for n in view_of])  # [M, 4, 4]
    K = np.array(cams[names[0]]["K"])
    cam = np.einsum("mij,mj->mi", V[:, :3, :3], xyz) + V[:, :3, 3]
    assert (cam[:, 2] > 0).all()
    proj = cam @ K.T
    np.testing.assert_allclose(proj[:, :2] / proj[:, 2:], uv, atol=1e-6)
    w, h = cams[names[0]]["width"], cams[names[0]]["height"]
    assert ((uv >= 0) & (uv < (w, h))).all()
    # 2. independently of how the generator decided visibility: the first surface a ray from the camera
    #    through the observed pixel meets is the point itself (not an occluder in front of it)
    rng = np.random.default_rng(0)
    pick = rng.choice(len(xyz), size=min(4096, len(xyz)), replace=False)
    centres = camera_centers(V[pick])
    d = xyz[pick] - centres
    dist = np.linalg.norm(d, axis=1)
    hits = raycast.cast(_geometry_world(city_json), centres[:, None], (d / dist[:, None])[:, None])
    np.testing.assert_array_less(np.abs(hits.t - dist), 0.02)


@pytest.mark.slow
def test_buildings_fill_a_two_by_two_block_grid(sfm_scene):
    city_json = json.loads((sfm_scene / "ground_truth" / "city.json").read_text())
    centres = camera_centers(np.array([c["viewmat"] for c in city_json["cameras"]]))
    lo, hi = centres[:, :2].min(0), centres[:, :2].max(0)
    mid = (lo + hi) / 2
    buildings = np.array([b["center"][:2] for b in city_json["boxes"] if b["kind"] == "building"])
    cells = {(bool(x > mid[0]), bool(y > mid[1])) for x, y in buildings}
    assert len(cells) == 4


@pytest.mark.slow
def test_loader_agrees_with_ground_truth(sfm_scene):
    colmap = pytest.importorskip("momentumgs.data.colmap")
    scene = colmap.load_colmap_scene(sfm_scene, test_every=0)
    truth = colmap.load_colmap_scene(sfm_scene, sparse="ground_truth/sparse/0", test_every=0)
    assert [c.name for c in scene.cameras] == [c.name for c in truth.cameras]
    for a, b in zip(scene.cameras, truth.cameras, strict=True):
        assert (a.width, a.height) == (b.width, b.height) == (320, 240)
        np.testing.assert_allclose(a.K[:2, 2], b.K[:2, 2])  # principal point
        np.testing.assert_allclose(a.K[[0, 1], [0, 1]], b.K[[0, 1], [0, 1]], rtol=0.01)
    est = np.stack([c.viewmat for c in scene.cameras])
    ref = np.stack([c.viewmat for c in truth.cameras])
    centre_err, rot_err = pose_errors(est, ref)
    assert centre_err.max() < 0.15 and rot_err.max() < 0.5
    # the ground-truth scene is in metres with z up: cameras fly well above the ground
    assert (np.stack([c.center for c in truth.cameras])[:, 2] > 20).all()
    np.testing.assert_array_equal(scene.load_image(0), truth.load_image(0))


def test_umeyama_recovers_a_similarity():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(50, 3))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    R = q * np.sign(np.linalg.det(q))
    dst = 2.5 * src @ R.T + (1.0, -2.0, 3.0)
    s, R_est, t = umeyama(src, dst)
    assert s == pytest.approx(2.5)
    np.testing.assert_allclose(R_est, R, atol=1e-10)
    np.testing.assert_allclose(t, (1.0, -2.0, 3.0), atol=1e-10)
    # pose errors are zero for poses that differ by a similarity only
    eyes, headings = rng.normal(size=(6, 3)) * 10, rng.uniform(0, 6, size=6)
    viewmats = np.stack([city.look_down_viewmat(e, h, 0.3) for e, h in zip(eyes, headings, strict=True)])
    moved = viewmats.copy()
    moved[:, :3, :3] = viewmats[:, :3, :3] @ R.T  # world' = 2.5 R world + t
    moved[:, :3, 3] = 2.5 * viewmats[:, :3, 3] - moved[:, :3, :3] @ np.array([1.0, -2.0, 3.0])
    centre_err, rot_err = pose_errors(viewmats, moved)
    assert centre_err.max() < 1e-9 and rot_err.max() < 1e-5


def test_build_refuses_a_foreign_folder_and_an_unknown_size(tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not a demo scene"):
        build_demo_scene(foreign, size="test", sfm=False, log=lambda _: None)
    assert (foreign / "keep.txt").read_text() == "mine"
    with pytest.raises(UserError, match="unknown demo size"):
        build_demo_scene(tmp_path / "x", size="huge", sfm=False)
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_two_processes_share_one_build(tmp_path):
    """Two processes ask for the same uncached scene at once: one builds, the other waits and reuses."""
    code = (
        "import sys; from momentumgs.demo import cached_demo_scene; "
        "print('PATH', cached_demo_scene(size='test', seed=3, cache_dir=sys.argv[1], sfm=False))"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    procs = [
        subprocess.Popen([sys.executable, "-c", code, cache], stdout=subprocess.PIPE, text=True, env=env)
        for cache in (str(tmp_path), str(tmp_path))
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    paths = {line.split(" ", 1)[1] for out in outs for line in out.splitlines() if line.startswith("PATH ")}
    assert len(paths) == 1
    assert sum("building the demo scene" in out for out in outs) == 1
    root = Path(paths.pop())
    assert (root / MARKER).is_file() and len(list((root / "images").glob("*.png"))) == 24
    leftovers = [p.name for p in root.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    # building over a previous demo scene replaces it; this process renders the same bytes
    before = {p.name: p.read_bytes() for p in (root / "images").iterdir()}
    assert build_demo_scene(root, size="test", seed=3, sfm=False, log=lambda _: None) == root
    assert {p.name: p.read_bytes() for p in (root / "images").iterdir()} == before
    assert [p.name for p in root.parent.iterdir() if p.name.startswith(".")] == []


@pytest.mark.slow
def test_sfm_is_repeatable(sfm_scene, tmp_path):
    """The same photos give the same model bit for bit (the demo's thread counts, fixed seed)."""
    from momentumgs.demo.build import run_demo_sfm

    stats = run_demo_sfm(sfm_scene / "images", tmp_path / "sparse", log=lambda _: None)
    assert stats["registered"] == stats["images"] == 24
    again = viewmats_by_name(pycolmap.Reconstruction(tmp_path / "sparse"))
    cached = viewmats_by_name(pycolmap.Reconstruction(sfm_scene / "sparse" / "0"))
    assert again.keys() == cached.keys()
    for name in cached:
        np.testing.assert_array_equal(again[name], cached[name])
