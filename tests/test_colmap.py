"""COLMAP loader: models, K/viewmat conventions, undistortion cache, downscale, splits, errors."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from colmap_helpers import (
    blob_centroid,
    blob_image,
    build_reconstruction,
    listing,
    make_scene,
    ring_spec,
    write_images,
    write_model,
)
from helpers import cli_cmd, look_at

from momentumgs.data import undistort
from momentumgs.data.colmap import load_colmap_scene
from momentumgs.data.colmap_files import validate_images
from momentumgs.errors import SceneError


@pytest.fixture
def cache_dir() -> Path:
    return Path(os.environ["MOMENTUMGS_CACHE"])


def pinhole_pixels(K: np.ndarray, viewmat: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Where a pinhole camera sees `points` [N, 3]: [N, 2], written out independently of Camera.project."""
    cam = points @ viewmat[:3, :3].T + viewmat[:3, 3]
    return np.stack([K[0, 0] * cam[:, 0] / cam[:, 2] + K[0, 2], K[1, 1] * cam[:, 1] / cam[:, 2] + K[1, 2]], 1)


# ----------------------------------------------------------------------------------------------
# Pinhole models: K, viewmat, points, both file formats


@pytest.mark.parametrize("model", ["SIMPLE_PINHOLE", "PINHOLE"])
@pytest.mark.parametrize("fmt,legacy", [("bin", False), ("bin", True), ("txt", False)])
def test_pinhole_round_trip(tmp_path, model, fmt, legacy):
    spec = ring_spec(model=model)
    make_scene(tmp_path, spec, fmt=fmt, legacy=legacy)
    scene = load_colmap_scene(tmp_path, test_every=0)

    params = spec.cameras[1][3]
    fx, fy, cx, cy = (params[0], params[0], params[1], params[2]) if model == "SIMPLE_PINHOLE" else params
    K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    assert [c.name for c in scene.cameras] == sorted(v[0] for v in spec.views)
    for cam, (name, _, viewmat) in zip(scene.cameras, spec.views, strict=True):
        assert cam.name == name
        assert cam.viewmat.dtype == np.float64 and cam.viewmat.shape == (4, 4)
        np.testing.assert_allclose(cam.viewmat, viewmat, atol=1e-12)
        np.testing.assert_allclose(cam.K, K)
        assert (cam.width, cam.height) == (64, 48)
        uv, depth = cam.project(spec.points)
        np.testing.assert_allclose(uv, pinhole_pixels(K, viewmat, spec.points), atol=1e-9)
        assert np.all(depth > 0)
    assert scene.points.dtype == np.float32 and scene.point_colors.dtype == np.uint8
    # Point order is pycolmap's; compare as sets of rows.
    order = np.lexsort(scene.points.T)
    want = np.lexsort(spec.points.astype(np.float32).T)
    np.testing.assert_allclose(scene.points[order], spec.points[want], atol=1e-6)
    np.testing.assert_array_equal(scene.point_colors[order], spec.colors[want])
    img = scene.load_image(0)
    assert img.shape == (48, 64, 3) and img.dtype == np.uint8


def test_principal_point_is_honoured(tmp_path):
    """Moving one camera's principal point moves its projections by exactly that much, no others'."""
    base = ring_spec(n_views=4)
    base.cameras[2] = base.cameras[1]
    base.views = [(n, 1 + i % 2, vm) for i, (n, _, vm) in enumerate(base.views)]
    moved = ring_spec(n_views=4)
    model, w, h, (fx, fy, cx, cy) = base.cameras[1]
    moved.cameras[2] = (model, w, h, [fx, fy, cx + 7.25, cy - 3.5])
    moved.views = base.views
    a = load_colmap_scene(make_scene(tmp_path / "a", base), test_every=0)
    b = load_colmap_scene(make_scene(tmp_path / "b", moved), test_every=0)
    for ca, cb, (_, cid, _) in zip(a.cameras, b.cameras, base.views, strict=True):
        shift = cb.project(base.points)[0] - ca.project(base.points)[0]
        want = [7.25, -3.5] if cid == 2 else [0.0, 0.0]
        np.testing.assert_allclose(shift, np.broadcast_to(want, shift.shape), atol=1e-9)


# ----------------------------------------------------------------------------------------------
# Distorted models: undistortion and its cache


DISTORTED = {
    "SIMPLE_RADIAL": ([82.0, 50.3, 33.1, -0.45], lambda p: [p[3], 0, 0, 0]),
    "RADIAL": ([82.0, 50.3, 33.1, -0.35, 0.1], lambda p: [p[3], p[4], 0, 0]),
    "OPENCV": ([80.0, 84.0, 50.3, 33.1, -0.35, 0.1, 0.004, -0.003], lambda p: p[4:8]),
}


def _distorted_blob_scene(root: Path, model: str):
    """Two views of one distorted camera; each image shows blobs where OpenCV's formula puts the points."""
    params, dist_of = DISTORTED[model]
    width, height = 96, 72
    viewmats = [look_at(np.array([0.2 * i, -4.0, 0.3]), np.array([0.2 * i, 0.0, 0.3])) for i in range(2)]
    # Points at chosen normalised image positions of view 0 (off-centre, where distortion is large).
    grid = np.array([[x, y] for x in (-0.33, 0.0, 0.3) for y in (-0.22, 0.22)])
    depth = np.linspace(3.5, 4.5, len(grid))
    cam_pts = np.concatenate([grid * depth[:, None], depth[:, None]], 1)
    R, t = viewmats[0][:3, :3], viewmats[0][:3, 3]
    points = (cam_pts - t) @ R  # camera -> world, [N, 3]

    if model == "OPENCV":
        fx, fy, cx, cy = params[:4]
    else:
        fx = fy = params[0]
        cx, cy = params[1:3]
    K0 = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    dist = np.array(dist_of(params), dtype=np.float64)
    pixels = []
    for vm in viewmats:
        rvec, _ = cv2.Rodrigues(vm[:3, :3])
        uv, _ = cv2.projectPoints(points, rvec, vm[:3, 3], K0, dist)
        pixels.append(uv.reshape(-1, 2))  # COLMAP and OpenCV share this formula; cx is at +0.5 centres

    spec = ring_spec(n_views=2, model=model, width=width, height=height, params=params)
    spec.views = [(f"v{i}.png", 1, vm) for i, vm in enumerate(viewmats)]
    spec.points = points
    spec.colors = np.full((len(points), 3), 200, dtype=np.uint8)
    make_scene(root, spec, make=lambda name, cid, w, h: blob_image(w, h, pixels[int(name[1])]))
    return spec, K0, pixels


@pytest.mark.parametrize("model", list(DISTORTED))
def test_undistortion_puts_points_where_pinhole_K_says(tmp_path, model, cache_dir):
    spec, K0, distorted_pixels = _distorted_blob_scene(tmp_path / "scene", model)
    before = listing(tmp_path / "scene")
    scene = load_colmap_scene(tmp_path / "scene", test_every=0)
    assert listing(tmp_path / "scene") == before  # nothing written into the user's scene
    for i, cam in enumerate(scene.cameras):
        assert cam.image_path.is_relative_to(cache_dir)
        img = scene.load_image(i)
        assert img.shape == (cam.height, cam.width, 3)
        uv, _ = cam.project(spec.points)
        found = np.stack([blob_centroid(img, p) for p in uv])
        assert np.abs(found - uv).max() < 0.3, (found, uv)
        # Without undistortion the pinhole K would be off by pixels: the test can tell the difference.
        naive = pinhole_pixels(K0, cam.viewmat, spec.points)
        assert np.abs(naive - distorted_pixels[i]).max() > 1.0


def test_undistortion_cache_is_reused(tmp_path, cache_dir, monkeypatch):
    root = make_scene(tmp_path / "scene", ring_spec(n_views=3, model="OPENCV"))
    calls = []
    real = undistort._undistort_one
    monkeypatch.setattr(undistort, "_undistort_one", lambda *a: calls.append(a[0]) or real(*a))
    first = load_colmap_scene(root)
    assert len(calls) == 3
    cached = listing(cache_dir / "undistorted")
    second = load_colmap_scene(root)
    assert len(calls) == 3  # no re-undistortion
    assert listing(cache_dir / "undistorted") == cached
    assert [c.image_path for c in second.cameras] == [c.image_path for c in first.cameras]
    np.testing.assert_array_equal(second.load_image(1), first.load_image(1))

    # A changed model (new mtime/size) is a new cache entry, undistorted again.
    cams = root / "sparse" / "0" / "cameras.bin"
    os.utime(cams, ns=(cams.stat().st_atime_ns, cams.stat().st_mtime_ns + 10**9))
    third = load_colmap_scene(root)
    assert len(calls) == 6
    assert third.cameras[0].image_path != first.cameras[0].image_path


def test_zero_distortion_is_used_as_pinhole(tmp_path, cache_dir):
    params = [55.0, 58.0, 30.5, 25.0, 0.0, 0.0, 0.0, 0.0]
    root = make_scene(tmp_path / "scene", ring_spec(model="OPENCV", params=params))
    before = listing(cache_dir)
    scene = load_colmap_scene(root)
    assert scene.cameras[0].image_path.parent == root / "images"
    np.testing.assert_allclose(scene.cameras[0].K, [[55, 0, 30.5], [0, 58, 25], [0, 0, 1]])
    assert listing(cache_dir) == before  # nothing undistorted


# ----------------------------------------------------------------------------------------------
# Downscale


def test_downscale_divisible(tmp_path):
    spec = ring_spec(width=64, height=48)
    root = make_scene(tmp_path, spec)
    full = load_colmap_scene(root, test_every=0)
    half = load_colmap_scene(root, downscale=2, test_every=0)
    for cf, ch in zip(full.cameras, half.cameras, strict=True):
        assert (ch.width, ch.height, ch.downscale) == (32, 24, 2)
        np.testing.assert_allclose(ch.K, np.diag([0.5, 0.5, 1.0]) @ cf.K)
        np.testing.assert_allclose(ch.project(spec.points)[0], cf.project(spec.points)[0] / 2, atol=1e-9)
    img = half.load_image(0)
    assert img.shape == (24, 32, 3)
    # Area resize by 2 is the mean of each 2x2 block.
    want = full.load_image(0).reshape(24, 2, 32, 2, 3).astype(np.float64).mean((1, 3))
    assert np.abs(img - want).max() <= 1


def test_downscale_odd_size_keeps_pixel_centres(tmp_path):
    """65x49 / 2 -> 33x25 with K scaled by 33/65, 25/49; a blob stays where the scaled K says."""
    K = np.array([[50.0, 0, 31.7], [0, 52.0, 23.2], [0, 0, 1]])
    spec = ring_spec(n_views=1, width=65, height=49, params=[50.0, 52.0, 31.7, 23.2])
    # Three well separated points, placed at chosen full-resolution pixels of the one view.
    pixels = np.array([[12.3, 10.7], [33.1, 24.9], [50.6, 38.2]])
    rays = np.concatenate([pixels, np.ones((3, 1))], 1) @ np.linalg.inv(K).T * 4.0  # depth 4
    R, t = spec.views[0][2][:3, :3], spec.views[0][2][:3, 3]
    spec.points = (rays - t) @ R
    spec.colors = spec.colors[:3]
    root = make_scene(tmp_path, spec, make=lambda name, cid, w, h: blob_image(w, h, pixels, sigma=2.0))
    scene = load_colmap_scene(root, downscale=2, test_every=0)
    cam = scene.cameras[0]
    assert (cam.width, cam.height) == (33, 25)
    np.testing.assert_allclose(np.diag(cam.K)[:2], [50 * 33 / 65, 52 * 25 / 49])
    uv, _ = cam.project(spec.points)
    np.testing.assert_allclose(uv, pixels * [33 / 65, 25 / 49], atol=1e-9)
    img = scene.load_image(0)
    for p in uv:
        assert np.abs(blob_centroid(img, p, radius=3) - p).max() < 0.05


def test_prescaled_folder_is_used(tmp_path):
    spec = ring_spec(width=64, height=48)
    root = make_scene(tmp_path, spec)
    write_images(
        spec, root / "images_2", make=lambda name, cid, w, h: np.full((h // 2, w // 2, 3), 77, np.uint8)
    )
    scene = load_colmap_scene(root, downscale=2)
    cam = scene.cameras[0]
    assert cam.image_path.parent == root / "images_2" and cam.downscale == 1
    assert (cam.width, cam.height) == (32, 24)
    np.testing.assert_array_equal(scene.load_image(0), 77)


def test_prescaled_folder_with_distortion(tmp_path, cache_dir):
    spec = ring_spec(width=64, height=48, model="OPENCV")
    root = make_scene(tmp_path, spec)
    write_images(
        spec, root / "images_2", make=lambda name, cid, w, h: np.full((h // 2, w // 2, 3), 90, np.uint8)
    )
    full = load_colmap_scene(root, test_every=0)
    half = load_colmap_scene(root, downscale=2, test_every=0)
    assert half.cameras[0].image_path.is_relative_to(cache_dir)
    assert abs(half.cameras[0].width - full.cameras[0].width / 2) <= 1
    assert abs(half.cameras[0].K[0, 0] - full.cameras[0].K[0, 0] / 2) < 0.5
    assert np.all(half.load_image(0) == 90)


# ----------------------------------------------------------------------------------------------
# Splits


def test_split_every(tmp_path):
    spec = ring_spec(n_views=7)
    root = make_scene(tmp_path, spec)
    scene = load_colmap_scene(root, test_every=3)
    assert scene.test_ids == [0, 3, 6] and scene.train_ids == [1, 2, 4, 5]
    assert [c.name for c in scene.test_cameras] == ["img_000.png", "img_003.png", "img_006.png"]
    assert load_colmap_scene(root, test_every=0).test_ids == []


def test_split_file(tmp_path):
    root = make_scene(tmp_path, ring_spec(n_views=5))
    (root / "test.txt").write_text("# held out\nimg_004.png\n\nimg_001.png\n")
    scene = load_colmap_scene(root, split_file="test.txt")
    assert [c.name for c in scene.test_cameras] == ["img_001.png", "img_004.png"]
    assert [c.name for c in scene.train_cameras] == ["img_000.png", "img_002.png", "img_003.png"]

    (root / "bad.txt").write_text("img_001.png\nnope.png\n")
    with pytest.raises(SceneError) as err:
        load_colmap_scene(root, split_file=root / "bad.txt")
    assert "bad.txt" in str(err.value) and "nope.png" in str(err.value)


def test_train_val_folders(tmp_path):
    train = ring_spec(n_views=4, seed=1)
    val = ring_spec(n_views=2, seed=2)
    val.views = [
        ("img_000.png", 1, look_at(np.array([0, -5.0, 2]), np.zeros(3))),
        ("img_001.png", 1, look_at(np.array([5.0, 0, 2]), np.zeros(3))),
    ]
    make_scene(tmp_path / "train", train)
    make_scene(tmp_path / "val", val)
    scene = load_colmap_scene(tmp_path, test_every=8)
    assert [c.name for c in scene.train_cameras] == [f"train/img_{i:03d}.png" for i in range(4)]
    assert [c.name for c in scene.test_cameras] == ["val/img_000.png", "val/img_001.png"]
    np.testing.assert_allclose(scene.test_cameras[1].viewmat, val.views[1][2], atol=1e-12)
    assert scene.test_cameras[0].image_path == tmp_path / "val" / "images" / "img_000.png"
    assert len(scene.points) == len(train.points)  # points come from the train model only
    with pytest.raises(SceneError, match="train/ and val/"):
        load_colmap_scene(tmp_path, split_file="x.txt")


# ----------------------------------------------------------------------------------------------
# Bounded image cache


def test_image_cache_stays_within_budget(tmp_path):
    root = make_scene(tmp_path, ring_spec(n_views=6))
    budget_mb = 0.02  # 20971 bytes: two 64x48 RGB images (9216 bytes each)
    scene = load_colmap_scene(root, image_cache_mb=budget_mb)
    budget = int(budget_mb * (1 << 20))
    for _ in range(2):
        for i in range(6):
            scene.load_image(i)
            assert scene.cache.nbytes <= budget
    assert scene.cache.nbytes == 2 * 64 * 48 * 3
    assert scene.load_image(5) is scene.load_image(5)  # most recent one is served from the cache
    assert scene.cache.get(str(scene.cameras[0].image_path)) is None  # oldest evicted


# ----------------------------------------------------------------------------------------------
# Errors: one line naming the file and the problem, nothing written anywhere


def _expect_error(root: Path, cache: Path, *parts: str, **kwargs) -> SceneError:
    before = listing(root, cache)
    with pytest.raises(SceneError) as err:
        load_colmap_scene(root, **kwargs)
    msg = str(err.value)
    assert "\n" not in msg
    for part in parts:
        assert part in msg, (part, msg)
    assert listing(root, cache) == before
    return err.value


def test_error_missing_model(tmp_path, cache_dir):
    (tmp_path / "images").mkdir()
    _expect_error(tmp_path, cache_dir, str(tmp_path / "sparse" / "0"), "no COLMAP model")
    _expect_error(tmp_path / "nowhere", cache_dir, "nowhere", "does not exist")


@pytest.mark.parametrize(
    "name,keep",
    [
        ("cameras.bin", 0),
        ("cameras.bin", 30),
        ("cameras.bin", 60),
        ("cameras.bin", -1),
        ("images.bin", 10),
        ("images.bin", -1),
        ("points3D.bin", 58),
        ("points3D.bin", -1),
        ("frames.bin", 100),
    ],
)
def test_error_truncated_binary(tmp_path, cache_dir, name, keep):
    """pycolmap 4.2.1 reads these silently wrong or hangs; the loader must refuse them up front."""
    root = make_scene(tmp_path, ring_spec(n_views=3, model="OPENCV"))
    path = root / "sparse" / "0" / name
    data = path.read_bytes()
    path.write_bytes(data[: keep if keep >= 0 else len(data) + keep])
    _expect_error(root, cache_dir, str(path), "truncated" if keep else "empty")


def test_error_truncated_text(tmp_path, cache_dir):
    root = make_scene(tmp_path, ring_spec(n_views=3), fmt="txt")
    path = root / "sparse" / "0" / "images.txt"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-2]))  # drop the last image, cut at a line boundary
    _expect_error(root, cache_dir, str(path), "header says 3 images but 2 were read")


def test_error_image_missing(tmp_path, cache_dir):
    root = make_scene(tmp_path, ring_spec(n_views=3, model="OPENCV"))
    (root / "images" / "img_001.png").unlink()
    _expect_error(root, cache_dir, str(root / "images" / "img_001.png"), "missing", "images.bin")


@pytest.mark.parametrize("model", ["FISHEYE", "OPENCV_FISHEYE"])
def test_error_unsupported_model(tmp_path, cache_dir, model):
    spec = ring_spec(n_views=2)
    spec.cameras[1] = (
        model,
        64,
        48,
        [50.0, 50.0, 32.0, 24.0] + [0.01] * (4 if model == "OPENCV_FISHEYE" else 0),
    )
    root = make_scene(tmp_path, spec)
    _expect_error(root, cache_dir, "cameras.bin", f"camera 1 uses the unsupported model {model}")


def test_error_empty_model(tmp_path, cache_dir):
    spec = ring_spec(n_views=2)
    spec.views = []
    root = make_scene(tmp_path, spec)
    _expect_error(root, cache_dir, str(root / "sparse" / "0" / "images.bin"), "no registered images")


def test_error_corrupt_image(tmp_path, cache_dir):
    root = make_scene(tmp_path, ring_spec(n_views=3, model="OPENCV"))
    bad = root / "images" / "img_002.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(40))
    _expect_error(root, cache_dir, str(bad), "cannot read image")


def test_corrupt_image_after_load(tmp_path):
    """validate_images catches what changed after loading; load_image fails with a SceneError too."""
    root = make_scene(tmp_path, ring_spec(n_views=3))
    scene = load_colmap_scene(root)
    validate_images(scene)
    (root / "images" / "img_001.png").write_bytes(b"not an image")
    with pytest.raises(SceneError, match="img_001.png"):
        validate_images(scene)
    with pytest.raises(SceneError, match="img_001.png.*cannot decode"):
        scene.load_image(1)


def test_error_wrong_image_size(tmp_path, cache_dir):
    spec = ring_spec(n_views=2)
    root = make_scene(tmp_path, spec)
    cv2.imwrite(str(root / "images" / "img_000.png"), np.zeros((24, 32, 3), np.uint8))
    _expect_error(root, cache_dir, "img_000.png", "is 32x24 but the model expects 64x48")


@pytest.mark.slow
def test_cli_info_bad_path(tmp_path):
    out = subprocess.run(
        cli_cmd("info", tmp_path / "BADPATH"),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "BADPATH" in lines[0] and "Traceback" not in out.stderr


def test_build_reconstruction_helper_registers_all(tmp_path):
    """The helper the tests rely on writes a model pycolmap reads back with every image posed."""
    spec = ring_spec(n_views=3)
    write_model(build_reconstruction(spec), tmp_path)
    import pycolmap

    rec = pycolmap.Reconstruction(str(tmp_path))
    assert rec.num_reg_images() == 3 and rec.num_points3D() == len(spec.points)


def test_undistortion_maps_blocks_agree():
    """Building the remap in row blocks gives the same map as in one piece."""
    import pycolmap

    cam = pycolmap.Camera.create_from_model_name(1, "OPENCV", 1.0, 40, 30)
    cam.params = [35.0, 36.0, 21.3, 14.2, -0.2, 0.05, 0.001, 0.002]
    src, pinhole = undistort.undistorted_camera(cam, 40, 30)
    whole = undistort.undistortion_maps(src, pinhole, rows_per_block=1000)
    blocks = undistort.undistortion_maps(src, pinhole, rows_per_block=7)
    np.testing.assert_array_equal(whole[0], blocks[0])
    np.testing.assert_array_equal(whole[1], blocks[1])
    assert whole[0].shape == (pinhole.height, pinhole.width)
    # Near the principal point distortion vanishes: the map is the plain change of focal length.
    u, v = int(pinhole.principal_point_x), int(pinhole.principal_point_y)
    want = 21.3 + (u + 0.5 - pinhole.principal_point_x) * 35.0 / pinhole.focal_length_x
    assert abs(whole[0][v, u] + 0.5 - want) < 0.05


@pytest.mark.parametrize("model", ["PINHOLE", "OPENCV"])
def test_exif_orientation_is_ignored_like_colmap(tmp_path, model):
    """A JPEG tagged 'rotate 90' is used as stored: COLMAP's poses and K refer to the stored pixels."""
    from PIL import Image

    spec = ring_spec(n_views=2, model=model)
    root = make_scene(tmp_path, spec)
    raw = np.zeros((48, 64, 3), np.uint8)
    raw[:, :32] = 255  # left half white: a 90-degree turn would be obvious
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW on display
    path = root / "images" / "img_000.png"
    Image.fromarray(raw).save(path, format="JPEG", quality=100, exif=exif)  # JPEG bytes, .png name
    scene = load_colmap_scene(root, test_every=0)
    img = scene.load_image(0).astype(np.int32)
    assert img.shape[:2] == (scene.cameras[0].height, scene.cameras[0].width)
    w = img.shape[1]
    assert img[:, : w // 2 - 4].mean() > 200 and img[:, w // 2 + 4 :].mean() < 50
