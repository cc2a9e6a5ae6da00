"""Data preparation: photos -> COLMAP (killed during matching, resumed), the Mega-NeRF and MatrixCity
converters on files written in the datasets' own formats from the demo city's ground truth, downsampling,
the scan, and bad inputs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pycolmap
import pytest
from colmap_helpers import viewmats_by_name
from helpers import cli_cmd, one_thread_env

from momentumgs.cli import main
from momentumgs.data.colmap import load_colmap_scene
from momentumgs.demo.align import pose_errors, rotation_angle_deg

RDF_TO_DRB = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])


def cli(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        cli_cmd(*args), capture_output=True, text=True, timeout=timeout, env=one_thread_env()
    )


def gt_views(scene: Path) -> dict[str, tuple[np.ndarray, np.ndarray, int, int]]:
    """name -> (K [3, 3], viewmat [4, 4], width, height) of the ground-truth model."""
    rec = pycolmap.Reconstruction(scene / "ground_truth" / "sparse" / "0")
    out = {}
    for im in rec.images.values():
        cam = rec.cameras[im.camera_id]
        vm = np.eye(4)
        vm[:3] = im.cam_from_world().matrix()
        out[im.name] = (cam.calibration_matrix(), vm, cam.width, cam.height)
    return dict(sorted(out.items()))


def keypoint_rows(database: Path) -> list[tuple]:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as con:
        return sorted(con.execute("SELECT image_id, rows, cols, hex(substr(data, 1, 64)) FROM keypoints"))


def verified_pairs(database: Path) -> int:
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=0.1) as con:
            return con.execute("SELECT count(*) FROM two_view_geometries").fetchone()[0]
    except sqlite3.Error:
        return 0


def one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.startswith("momentumgs: error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for w in words:
        assert w in lines[0], lines[0]


# --- photos -> COLMAP ---------------------------------------------------------------------------


@pytest.mark.slow
def test_photos_to_colmap_killed_during_matching_resumes_and_matches_ground_truth(gt_test_scene, tmp_path):
    photos, out = tmp_path / "photos", tmp_path / "out"
    shutil.copytree(gt_test_scene / "images", photos)
    cmd = cli_cmd("prepare", "colmap", photos, out, "--no-progress")
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=one_thread_env()
    )
    for line in proc.stdout:  # wait for the matching stage, then for its first verified pairs
        if line.startswith("matching:"):
            break
    deadline = time.time() + 60
    while verified_pairs(out / "database.db") == 0 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "report.json").exists()  # it died before the end
    state = json.loads((out / "prepare_state.json").read_text())
    assert not state["done"].get("matching")  # ... during matching
    before = keypoint_rows(out / "database.db")
    assert len(before) == 24

    t0 = time.perf_counter()
    result = cli("prepare", "colmap", photos, out, "--no-progress")
    resume_seconds = time.perf_counter() - t0
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["stages"]["features"]["status"] == "reused"
    assert report["stages"]["features"]["extracted"] == 0
    assert keypoint_rows(out / "database.db") == before  # the same features, not re-extracted
    assert report["stages"]["matching"]["status"] == "done"
    assert report["registered"] == report["images"] == 24 and report["failed"] == []
    assert report["mean_reprojection_error"] < 1.0
    assert report["warnings"] == []  # the plausibility checks stay quiet on the right model
    print(f"resumed run {resume_seconds:.1f} s, stages {report['stages']}")

    gt = gt_views(gt_test_scene)
    est = viewmats_by_name(pycolmap.Reconstruction(out / "sparse" / "0"))
    assert sorted(est) == sorted(gt)
    centre_err, rot_err = pose_errors(np.stack([est[n] for n in gt]), np.stack([gt[n][1] for n in gt]))
    print(f"pose errors: centres max {centre_err.max():.3f} m, rotations max {rot_err.max():.3f} deg")
    assert centre_err.max() < 0.15 and rot_err.max() < 0.5
    scene = load_colmap_scene(out, test_every=8)  # the undistorted pinhole scene loads
    assert len(scene.cameras) == 24 and len(scene.points) == report["points"] > 500
    assert (out / "images" / "0000.png").is_file()


@pytest.mark.slow
def test_photos_bad_inputs_are_one_line_errors(tmp_path, gt_test_scene):
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(cli("prepare", "colmap", empty, tmp_path / "o1"), "need at least 2 photos")
    one_line_error(cli("prepare", "colmap", tmp_path / "nope", tmp_path / "o1"), "does not exist")

    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("0000.png", "0001.png"):
        shutil.copy(gt_test_scene / "images" / name, bad / name)
    (bad / "0002.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    png = (gt_test_scene / "images" / "0003.png").read_bytes()
    (bad / "0003.png").write_bytes(png[: len(png) // 2])  # truncated
    one_line_error(cli("prepare", "colmap", bad, tmp_path / "o2"), "2 unreadable", "0002.jpg", "0003.png")

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    img = cv2.imread(str(gt_test_scene / "images" / "0000.png"))
    cv2.imwrite(str(mixed / "a.png"), img)
    cv2.imwrite(str(mixed / "b.png"), cv2.resize(img, (160, 120)))
    one_line_error(cli("prepare", "colmap", mixed, tmp_path / "o3"), "different sizes", "per-image")
    assert not (tmp_path / "o3").exists()  # refused before any work


# --- Mega-NeRF ----------------------------------------------------------------------------------


def write_meganerf(gt_scene: Path, dst: Path, scale: float = 40.0, wrong_axes: bool = False) -> list[str]:
    """The demo city's ground truth as Mega-NeRF's scripts/colmap_to_mega_nerf.py writes a dataset:
    DRB world, centred and scaled positions, c2w columns [c1, -c0, c2, t], torch.save'd dicts."""
    import torch

    views = gt_views(gt_scene)
    c2ws = {}
    for name, (_, vm, _, _) in views.items():
        c2w = np.linalg.inv(vm)
        c2ws[name] = np.hstack([RDF_TO_DRB @ c2w[:3, :3] @ RDF_TO_DRB.T, RDF_TO_DRB @ c2w[:3, 3:]])
    positions = np.stack([c[:, 3] for c in c2ws.values()])
    origin = (positions.max(0) + positions.min(0)) * 0.5
    for split in ("train", "val"):
        (dst / split / "metadata").mkdir(parents=True)
        (dst / split / "rgbs").mkdir(parents=True)
    names = list(views)
    with (dst / "mappings.txt").open("w") as f:
        for i, name in enumerate(names):
            split = "val" if i % int(len(names) / 4) == 0 else "train"
            K, _, w, h = views[name]
            img = cv2.imread(str(gt_scene / "images" / name))
            cv2.imwrite(str(dst / split / "rgbs" / f"{i:06d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 98])
            cam = c2ws[name].copy()
            cam[:, 3] = (cam[:, 3] - origin) / scale
            assert np.all(np.abs(cam) <= 1)
            stored = cam if wrong_axes else np.concatenate([cam[:, 1:2], -cam[:, :1], cam[:, 2:4]], -1)
            torch.save(
                {
                    "H": h,
                    "W": w,
                    "c2w": torch.FloatTensor(stored),
                    "intrinsics": torch.FloatTensor([K[0, 0], K[1, 1], K[0, 2], K[1, 2]]),
                    "distortion": torch.FloatTensor([0.0, 0, 0, 0]),
                },
                dst / split / "metadata" / f"{i:06d}.pt",
            )
            f.write(f"{name},{i:06d}.pt\n")
    torch.save({"origin_drb": torch.FloatTensor(origin), "pose_scale_factor": scale}, dst / "coordinates.pt")
    return names


def converted_vs_gt(out: Path, gt_scene: Path, names: list[str]) -> tuple[float, float, float]:
    """Largest pose difference (translation, rotation in degrees) and K difference, converted vs truth,
    with no alignment: the conversion must restore the ground-truth frame itself."""
    gt = gt_views(gt_scene)
    scene = load_colmap_scene(out)
    dt = dr = dk = 0.0
    for cam in scene.cameras:
        i = int(Path(cam.name).stem)
        K, vm, w, h = gt[names[i]]
        assert (cam.width, cam.height) == (w, h)
        dt = max(dt, float(np.abs(cam.viewmat[:3, 3] - vm[:3, 3]).max()))
        dr = max(dr, float(rotation_angle_deg(cam.viewmat[None, :3, :3], vm[None, :3, :3])[0]))
        dk = max(dk, float(np.abs(cam.K - K).max()))
    assert len(scene.cameras) == 24
    return dt, dr, dk


@pytest.mark.slow
def test_meganerf_converter_recovers_ground_truth_and_triangulates(gt_test_scene, tmp_path):
    src, out = tmp_path / "meganerf", tmp_path / "converted"
    names = write_meganerf(gt_test_scene, src)
    t0 = time.perf_counter()
    assert main(["prepare", "meganerf", str(src), str(out), "--no-progress"]) == 0
    seconds = time.perf_counter() - t0
    dt, dr, dk = converted_vs_gt(out, gt_test_scene, names)
    print(f"meganerf: {seconds:.1f} s; max |dt| {dt:.2e}, rotation {dr:.2e} deg, |dK| {dk:.2e}")
    assert dt < 1e-4 and dr < 1e-3 and dk < 1e-3
    summary = json.loads((out / "converted.json").read_text())
    assert summary["train"]["images"] == 20 and summary["val"]["images"] == 4
    assert summary["train"]["points"] > 500 and summary["train"]["mean_reprojection_error"] < 1.0
    scene = load_colmap_scene(out)
    assert len(scene.points) == summary["train"]["points"] and len(scene.test_ids) == 4
    # the points lie on the city: in front of every camera that sees them, within the ground truth's bounds
    gt_points = np.array(
        [p.xyz for p in pycolmap.Reconstruction(gt_test_scene / "ground_truth/sparse/0").points3D.values()]
    )
    lo, hi = gt_points.min(0) - 1.0, gt_points.max(0) + 1.0
    inside = np.all((scene.points >= lo) & (scene.points <= hi), axis=1).mean()
    assert inside > 0.95

    # scan on the converted scene
    result = cli("prepare", "scan", out)
    assert result.returncode == 0, result.stderr
    print(result.stdout)
    assert "images: 24" in result.stdout and "block 0:" in result.stdout and "VRAM" in result.stdout

    # the same dataset written with the camera axes left in DRB order: the comparison must fail
    bad_src, bad_out = tmp_path / "meganerf_wrong", tmp_path / "converted_wrong"
    write_meganerf(gt_test_scene, bad_src, wrong_axes=True)
    assert main(["prepare", "meganerf", str(bad_src), str(bad_out), "--no-points", "--no-progress"]) == 0
    _, dr_wrong, _ = converted_vs_gt(bad_out, gt_test_scene, names)
    assert dr_wrong > 45.0

    # a metadata file without c2w: a one-line error
    import torch

    md = src / "train" / "metadata" / "000001.pt"
    data = torch.load(md, weights_only=True)
    del data["c2w"]
    torch.save(data, md)
    one_line_error(cli("prepare", "meganerf", src, tmp_path / "x"), "000001.pt", "'c2w'")


# --- MatrixCity ---------------------------------------------------------------------------------


def write_matrixcity(gt_scene: Path, dst: Path, opencv_axes: bool = False, angle_only: bool = False):
    """transforms_{train,test}.json as MatrixCity's load_aerial.py writes them: camera_angle_x, fl_x, fl_y,
    cx, cy, w, h, frames with file_path and transform_matrix (camera-to-world, OpenGL camera axes)."""
    views = gt_views(gt_scene)
    (dst / "images").mkdir(parents=True)
    frames = {"train": [], "test": []}
    K, _, w, h = next(iter(views.values()))
    for i, (name, (_, vm, _, _)) in enumerate(views.items()):
        shutil.copy(gt_scene / "images" / name, dst / "images" / name)
        c2w = np.linalg.inv(vm)
        if not opencv_axes:
            c2w[:3, 1:3] *= -1  # OpenCV (y down, z forward) -> OpenGL (y up, z back)
        frames["test" if i % 6 == 0 else "train"].append(
            {"file_path": f"images/{Path(name).stem}", "transform_matrix": c2w.tolist()}
        )
    for split, fr in frames.items():
        header = {"camera_angle_x": float(2 * np.arctan(0.5 * w / K[0, 0]))}
        if not angle_only:
            header.update(
                fl_x=K[0, 0], fl_y=K[1, 1], cx=K[0, 2], cy=K[1, 2], w=float(w), h=float(h), k1=0, p1=0
            )
        (dst / f"transforms_{split}.json").write_text(json.dumps({**header, "frames": fr}, indent=1))


def matrixcity_vs_gt(out: Path, gt_scene: Path) -> tuple[float, float, float]:
    gt = gt_views(gt_scene)
    scene = load_colmap_scene(out)
    assert len(scene.cameras) == 24 and len(scene.test_ids) == 4
    dt = dr = dk = 0.0
    for cam in scene.cameras:
        K, vm, _, _ = gt[cam.name.split("/", 1)[1]]
        dt = max(dt, float(np.abs(cam.viewmat[:3, 3] - vm[:3, 3]).max()))
        dr = max(dr, float(rotation_angle_deg(cam.viewmat[None, :3, :3], vm[None, :3, :3])[0]))
        dk = max(dk, float(np.abs(cam.K - K).max()))
    return dt, dr, dk


def test_matrixcity_converter_recovers_ground_truth(gt_test_scene, tmp_path):
    src = tmp_path / "mc"
    write_matrixcity(gt_test_scene, src)
    assert (
        main(["prepare", "matrixcity", str(src), str(tmp_path / "out"), "--no-points", "--no-progress"]) == 0
    )
    dt, dr, dk = matrixcity_vs_gt(tmp_path / "out", gt_test_scene)
    assert dt < 1e-9 and dr < 1e-6 and dk < 1e-9

    # intrinsics from camera_angle_x alone (principal point at the centre, as the demo's cameras have it)
    src2 = tmp_path / "mc_angle"
    write_matrixcity(gt_test_scene, src2, angle_only=True)
    assert (
        main(["prepare", "matrixcity", str(src2), str(tmp_path / "out2"), "--no-points", "--no-progress"])
        == 0
    )
    assert max(matrixcity_vs_gt(tmp_path / "out2", gt_test_scene)) < 1e-6

    # camera-to-world written with OpenCV axes instead of OpenGL ones: the comparison must fail
    src3 = tmp_path / "mc_wrong"
    write_matrixcity(gt_test_scene, src3, opencv_axes=True)
    assert (
        main(["prepare", "matrixcity", str(src3), str(tmp_path / "out3"), "--no-points", "--no-progress"])
        == 0
    )
    assert matrixcity_vs_gt(tmp_path / "out3", gt_test_scene)[1] > 90.0


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_converted_scene_is_replaced_only_with_force(gt_test_scene, tmp_path, capsys):
    src, out = tmp_path / "mc", tmp_path / "out"
    write_matrixcity(gt_test_scene, src)
    args = ["prepare", "matrixcity", str(src), str(out), "--no-points", "--no-progress"]
    assert main(args) == 0
    earlier = tree_bytes(out)
    capsys.readouterr()
    assert main(args) == 2
    assert (
        capsys.readouterr().err == f"momentumgs: error: {out}: exists and is not empty; --force replaces it\n"
    )
    assert tree_bytes(out) == earlier

    # a --force conversion that fails part-way (a test image smaller than its JSON says, found once the train
    # images are written) leaves the earlier scene whole and nothing beside it
    stem = Path(json.loads((src / "transforms_test.json").read_text())["frames"][0]["file_path"]).name
    image = next((src / "images").glob(f"{stem}.*"))
    image.unlink()  # the earlier scene holds a hard link to it: write a new file, not into that one
    cv2.imwrite(str(image), np.zeros((10, 10, 3), np.uint8))
    assert main([*args, "--force"]) == 2
    assert "10x10" in capsys.readouterr().err
    assert tree_bytes(out) == earlier and sorted(p.name for p in tmp_path.iterdir()) == ["mc", "out"]

    image.unlink()
    shutil.copy(gt_test_scene / "images" / image.name, image)
    assert main([*args, "--force", "--scale", "2"]) == 0
    assert json.loads((out / "converted.json").read_text())["scale"] == 2.0
    assert len(load_colmap_scene(out).cameras) == 24
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mc", "out"]


@pytest.mark.slow
def test_matrixcity_raw_rot_mat_and_bad_files(gt_test_scene, tmp_path):
    from momentumgs.prepare.matrixcity import read_transforms

    src = tmp_path / "mc"
    write_matrixcity(gt_test_scene, src)
    data = json.loads((src / "transforms_train.json").read_text())
    raw = {"camera_angle_x": data["camera_angle_x"], "frames": []}
    for frame in data["frames"]:  # MatrixCity's raw per-block files: rotation / 100, frame_index, 0000.png
        m = np.array(frame["transform_matrix"])
        m[:3, :3] /= 100.0
        idx = int(Path(frame["file_path"]).name)
        raw["frames"].append({"frame_index": idx, "rot_mat": m.tolist()})
        shutil.copy(src / "images" / f"{idx:04d}.png", tmp_path / f"{idx:04d}.png")
    (tmp_path / "transforms.json").write_text(json.dumps(raw))
    ours = read_transforms(src / "transforms_train.json")
    theirs = read_transforms(tmp_path / "transforms.json")
    assert len(ours) == len(theirs) == 20
    for a, b in zip(ours, theirs, strict=True):
        assert np.allclose(a[2], b[2], atol=1e-9) and np.allclose(a[1], b[1], atol=1e-9)

    del data["camera_angle_x"], data["fl_x"]
    (src / "transforms_train.json").write_text(json.dumps(data))
    one_line_error(cli("prepare", "matrixcity", src, tmp_path / "x", "--no-points"), "camera_angle_x")
    (src / "transforms_train.json").write_text(json.dumps({"camera_angle_x": 1.0}))
    one_line_error(cli("prepare", "matrixcity", src, tmp_path / "x", "--no-points"), "'frames'")
    (src / "transforms_train.json").write_text("{not json")
    one_line_error(cli("prepare", "matrixcity", src, tmp_path / "x", "--no-points"), "JSON")


# --- downsampling and scan ----------------------------------------------------------------------


def test_downsample_is_cached_and_used_by_the_loader(gt_test_scene, tmp_path):
    scene = tmp_path / "scene"
    shutil.copytree(gt_test_scene / "images", scene / "images")
    shutil.copytree(gt_test_scene / "sparse", scene / "sparse")
    assert main(["prepare", "downsample", str(scene), "--factor", "4", "--no-progress"]) == 0
    small = cv2.imread(str(scene / "images_4" / "0005.png"))
    assert small.shape[:2] == (60, 80)
    full = cv2.imread(str(scene / "images" / "0005.png")).astype(np.float32)
    assert np.abs(cv2.resize(full, (80, 60), interpolation=cv2.INTER_AREA) - small).max() <= 1
    mtime = (scene / "images_4" / "0005.png").stat().st_mtime_ns

    from momentumgs.prepare.downsample import downsample_scene

    (r,) = downsample_scene(scene, 4, progress=False)
    assert (r.written, r.skipped) == (0, 24)
    assert (scene / "images_4" / "0005.png").stat().st_mtime_ns == mtime
    os.utime(scene / "images" / "0007.png")  # a changed source is redone, alone
    (r,) = downsample_scene(scene, 4, progress=False)
    assert (r.written, r.skipped) == (1, 23)

    loaded = load_colmap_scene(scene, downscale=4)
    assert loaded.cameras[0].image_path.parent.name == "images_4"
    assert loaded.load_image(5).shape == (60, 80, 3)
    with pytest.raises(SystemExit):  # argparse refuses factors other than 2, 4, 8
        main(["prepare", "downsample", str(scene), "--factor", "3"])


def test_scan_block_shares_of_the_scene():
    """A block's points and anchors as a percentage of the scene's, in the report's text."""
    from momentumgs.config import Config
    from momentumgs.prepare.scan import ScanReport, block_estimate, set_shares, voxel_count

    grid = np.stack(np.meshgrid(np.arange(10.0), np.arange(10.0), [0.0], indexing="ij"), -1).reshape(-1, 3)
    points = np.concatenate([grid, grid + 0.1])  # [200, 3]: two points per unit voxel
    assert voxel_count(points, 1.0) == 100
    cfg = Config()
    half = points[points[:, 0] < 5]  # [100, 3] a block over half the scene
    report = ScanReport(Path("scene"), points=len(points), anchors=voxel_count(points, 1.0))
    report.blocks = [block_estimate(0, half, 1.0, cfg, 100), block_estimate(1, points, 1.0, cfg, 100)]
    set_shares(report.blocks, report.points, report.anchors)
    assert [(b.point_share, b.anchor_share) for b in report.blocks] == [(50.0, 50.0), (100.0, 100.0)]
    text = report.text()
    assert "block 0: 100 points (50% of the scene's) -> 50 anchors (50%)" in text
    assert "100 anchors in all" in text


@pytest.mark.slow
def test_scan_demo_city_report_and_warnings(gt_test_scene, tmp_path):
    result = cli(
        "prepare",
        "scan",
        gt_test_scene,
        "--set",
        "partition.block_dim=[2,2,1]",
        "--json",
        tmp_path / "s.json",
    )
    assert result.returncode == 0, result.stderr
    print(result.stdout)
    report = json.loads((tmp_path / "s.json").read_text())
    assert report["images"] == 24 and report["points"] > 1000 and len(report["blocks"]) == 4
    assert all(b["gaussians"] == 10 * b["anchors"] > 0 for b in report["blocks"])
    assert "block 3:" in result.stdout
    # each block's share of the scene: coarse (the default) starts a block from more than its cell
    assert 0 < report["anchors"] <= sum(b["anchors"] for b in report["blocks"])
    for b in report["blocks"]:
        assert b["point_share"] == pytest.approx(100 * b["points"] / report["points"])
        assert b["anchor_share"] == pytest.approx(100 * b["anchors"] / report["anchors"])
        assert 25 < b["anchor_share"] <= 100
    assert f"({report['blocks'][3]['anchor_share']:.0f}%)" in result.stdout

    # a missing image, a camera far from the rest, and a millimetre-scale scene
    from momentumgs.prepare.scan import geometry_warnings

    scene = tmp_path / "scene"
    shutil.copytree(gt_test_scene / "images", scene / "images")
    shutil.copytree(gt_test_scene / "sparse", scene / "sparse")
    (scene / "images" / "0004.png").unlink()
    cv2.imwrite(str(scene / "images" / "0005.png"), np.zeros((10, 10, 3), np.uint8))
    result = cli("prepare", "scan", scene)
    assert result.returncode == 0, result.stderr
    assert "1 image(s) missing: 0004.png" in result.stdout
    assert "mixed image sizes" in result.stdout and "differ in size" in result.stdout

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(50, 3)) * 10.0
    centres[7] = [500.0, 0.0, 0.0]
    names = [f"{i:03d}.jpg" for i in range(50)]
    warnings: list[str] = []
    geometry_warnings(centres, names, 100, warnings)
    assert len(warnings) == 1 and "1 camera(s) far" in warnings[0] and "007.jpg" in warnings[0]
    warnings = []
    geometry_warnings(centres * 1e-3, names, 0, warnings)
    assert any("scale looks arbitrary" in w for w in warnings) and any("no SfM points" in w for w in warnings)
