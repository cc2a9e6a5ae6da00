"""The embedded demo scene: render the synthetic city (momentumgs/demo/city.py) and reconstruct it with
real SfM (the pipeline of `prepare colmap`, momentumgs/prepare/photos.py), so that the README's command
works with nothing downloaded.

Output folder (a normal COLMAP scene):

    OUT/images/0000.png ...                  the rendered views
    OUT/sparse/0/{cameras,images,points3D}.bin  SfM model, in COLMAP's arbitrary frame (as users get it);
                                            with sfm=False a copy of the ground-truth model
    OUT/ground_truth/sparse/0/...           exact poses and intrinsics, and 3D points on the visible
                                            true surfaces with their observations, in metres, z up
    OUT/ground_truth/city.json              parameters, boxes, sun and camera poses
    OUT/demo_scene.json                     what was built and the SfM figures; written last

The SfM model is deliberately not aligned to the ground truth: later stages must handle any frame.
`momentumgs.demo.align.pose_errors` compares the two.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from momentumgs.demo.city import CityParams, build_world, camera_poses, city_params, intrinsics
from momentumgs.demo.raycast import GROUND, MISS, Boxes, Render, World, any_box_hit, box_surface, render
from momentumgs.errors import UserError
from momentumgs.prepare.images import list_image_names
from momentumgs.prepare.photos import PhotoOptions, prepare_colmap

GENERATOR_VERSION = 2  # bump when the rendered images or models change for the same parameters
MARKER = "demo_scene.json"


def demo_sfm_options(num_views: int) -> PhotoOptions:
    """`prepare colmap`'s options as the demo sets them: the renders are distortion free, so a pinhole
    camera (f, cx, cy) and no undistortion; all views in one extraction call; exhaustive matching on one
    thread, so that the demo's model repeats bit for bit on every machine; no progress bars."""
    return PhotoOptions(
        camera_model="SIMPLE_PINHOLE",
        matcher="exhaustive",
        matching_threads=1,
        extraction_batch=num_views,
        undistort=False,
        progress=False,
    )


def run_demo_sfm(images: Path, model: Path, log: Callable[[str], None] = print) -> dict:
    """Reconstruct the views in `images` with `prepare colmap`'s pipeline in a scratch folder; the
    largest model goes to `model`. Returns the SfM figures that the marker file records."""
    opts = demo_sfm_options(len(list_image_names(images)))
    with tempfile.TemporaryDirectory(prefix="momentumgs-sfm-") as work:
        result = prepare_colmap(images, work, opts, log=lambda line: log("  sfm: " + line))
        shutil.copytree(Path(work) / "distorted" / "sparse" / "0", model)
    log("  " + result.summary().replace("\n", "\n  "))
    report = result.report
    return {
        "registered": report["registered"],
        "images": report["images"],
        "points": report["points"],
        "mean_reprojection_error": report["mean_reprojection_error"],
        "seconds": {stage: st["seconds"] for stage, st in report["stages"].items()},
        "unregistered": [f["name"] for f in report["failed"]],
    }


def image_name(i: int) -> str:
    return f"{i:04d}.png"


# --- ground-truth points ------------------------------------------------------------------------


def surface_normals(boxes: Boxes, box: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Normals [N, 3] of points [N, 3] lying on the ground (box == GROUND) or on boxes."""
    normal = np.zeros_like(points)
    normal[box == GROUND] = (0.0, 0.0, 1.0)
    on_box = box >= 0
    if on_box.any():
        normal[on_box] = box_surface(boxes, box[on_box], points[on_box])[0]
    return normal


def visible_from(world: World, points, normals, K, viewmat, width, height, group: int = 64):
    """Which points [N, 3] camera (K, viewmat) sees, and where: bool [N], pixels [N, 2].

    Visible = in front, inside the image, facing the camera, and no box on the segment to the camera.
    """
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    cam = points @ R.T + t
    z = cam[:, 2]
    uv = (cam @ K.T)[:, :2] / np.where(z > 1e-9, z, 1.0)[:, None]
    centre = -R.T @ t
    to_cam = centre - points
    dist = np.linalg.norm(to_cam, axis=1)
    ok = (z > 1e-3) & (uv[:, 0] >= 0) & (uv[:, 0] < width) & (uv[:, 1] >= 0) & (uv[:, 1] < height)
    ok &= np.einsum("ij,ij->i", normals, to_cam) > 1e-6 * dist
    idx = np.flatnonzero(ok)
    if len(idx):
        pad = -len(idx) % group  # occlusion rays in groups of nearby points (they come in raster order)
        sel = np.r_[idx, np.full(pad, idx[-1])]
        o = points[sel] + 1e-3 * normals[sel]
        d = to_cam[sel] / dist[sel, None]
        limit = np.where(np.arange(len(sel)) < len(idx), dist[sel] - 1e-2, np.nan)
        blocked = any_box_hit(
            world, o.reshape(-1, group, 3), d.reshape(-1, group, 3), limit.reshape(-1, group)
        )
        ok[idx] = ~blocked.reshape(-1)[: len(idx)]
    return ok, uv


@dataclasses.dataclass
class GroundTruthPoints:
    xyz: np.ndarray  # [P, 3] float64
    rgb: np.ndarray  # [P, 3] uint8
    seen: np.ndarray  # [V, P] bool: view j sees point i
    uv: np.ndarray  # [V, P, 2] float64 pixel position of point i in view j (where seen)


def surface_samples(rnd: Render, image: np.ndarray, p: CityParams, stride: int = 16):
    """The surface points one view hits every `stride` pixels: xyz [n, 3], box ids [n], colours [n, 3]."""
    s = p.supersample
    ys, xs = np.mgrid[stride // 2 : p.height : stride, stride // 2 : p.width : stride]
    box = rnd.box[ys * s, xs * s].reshape(-1)
    keep = box != MISS
    return rnd.point[ys * s, xs * s].reshape(-1, 3)[keep], box[keep], image[ys, xs].reshape(-1, 3)[keep]


def ground_truth_points(world: World, samples, K, poses, p: CityParams) -> GroundTruthPoints:
    """The surface samples of all views, each with every view that sees it (at least two): the
    ground-truth counterpart of an SfM point cloud."""
    xyz, box, rgb = (np.concatenate(parts) for parts in zip(*samples, strict=True))
    normals = surface_normals(world.boxes, box, xyz)
    seen = np.zeros((len(poses), len(xyz)), dtype=bool)
    uvs = np.zeros((len(poses), len(xyz), 2))
    for j, viewmat in enumerate(poses):
        seen[j], uvs[j] = visible_from(world, xyz, normals, K, viewmat, p.width, p.height)
    keep = seen.sum(0) >= 2
    return GroundTruthPoints(xyz[keep], rgb[keep], seen[:, keep], uvs[:, keep])


def write_colmap_model(path: Path, K, width, height, poses, names, gt: GroundTruthPoints) -> None:
    """A COLMAP model (pycolmap writes it) with one SIMPLE_PINHOLE camera and exact poses."""
    import pycolmap

    rec = pycolmap.Reconstruction()
    cam = pycolmap.Camera(
        model="SIMPLE_PINHOLE", width=width, height=height, params=[K[0, 0], K[0, 2], K[1, 2]], camera_id=1
    )
    rec.add_camera_with_trivial_rig(cam)
    rank = np.cumsum(gt.seen, axis=1) - 1  # [V, P] index of point i among view j's keypoints
    for j, (viewmat, name) in enumerate(zip(poses, names, strict=True)):
        keypoints = gt.uv[j, gt.seen[j]]  # [n_j, 2], in point order
        image = pycolmap.Image(name=name, keypoints=keypoints, camera_id=1, image_id=j + 1)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(viewmat[:3, :4]))
    for i, (xyz, rgb) in enumerate(zip(gt.xyz, gt.rgb, strict=True)):
        track = pycolmap.Track()
        for view in np.flatnonzero(gt.seen[:, i]):
            track.add_element(int(view) + 1, int(rank[view, i]))
        rec.add_point3D(xyz, track, rgb)
    rec.update_point_3d_errors()
    path.mkdir(parents=True, exist_ok=True)
    rec.write(path)


# --- building a scene folder --------------------------------------------------------------------


def _params_dict(p: CityParams) -> dict:
    return dataclasses.asdict(p)


def scene_key(p: CityParams, sfm: bool) -> str:
    """Hash of everything that decides the output: parameters, generator version, SfM flag."""
    text = json.dumps({"params": _params_dict(p), "version": GENERATOR_VERSION, "sfm": sfm}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _write_scene(root: Path, p: CityParams, sfm: bool, log: Callable[[str], None]) -> dict:
    t0 = time.perf_counter()
    world, specs = build_world(p)
    poses = camera_poses(p)
    K = intrinsics(p)
    names = [image_name(i) for i in range(len(poses))]
    stats: dict = {"views": len(poses), "width": p.width, "height": p.height}
    stats["world_seconds"] = time.perf_counter() - t0
    n_buildings = sum(b.kind == "building" for b in specs)
    log(f"demo scene: {n_buildings} buildings, {len(specs)} boxes, {len(poses)} views")

    t0 = time.perf_counter()
    (root / "images").mkdir(parents=True)
    samples = []  # per view: surface points for the ground-truth model (the full renders are dropped)
    for i, (viewmat, name) in enumerate(zip(poses, names, strict=True)):
        rnd = render(world, K, viewmat, p.width, p.height, p.supersample)
        img = (np.clip(rnd.image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        if not cv2.imwrite(str(root / "images" / name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
            raise UserError(f"{root / 'images' / name}: cannot write image")
        samples.append(surface_samples(rnd, img, p))
        if (i + 1) % 16 == 0 or i + 1 == len(poses):
            log(f"  rendered {i + 1}/{len(poses)} views ({time.perf_counter() - t0:.1f} s)")
    stats["render_seconds"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    gt = ground_truth_points(world, samples, K, poses, p)
    gt_dir = root / "ground_truth"
    write_colmap_model(gt_dir / "sparse" / "0", K, p.width, p.height, poses, names, gt)
    city = {
        "generator_version": GENERATOR_VERSION,
        "params": _params_dict(p),
        "sun": world.sun.tolist(),
        "ground_rect": list(world.ground_rect),
        "boxes": [dataclasses.asdict(b) for b in specs],
        "cameras": [
            {"name": n, "K": K.tolist(), "viewmat": v.tolist(), "width": p.width, "height": p.height}
            for n, v in zip(names, poses, strict=True)
        ],
    }
    (gt_dir / "city.json").write_text(json.dumps(city, indent=1))
    stats["ground_truth_points"] = len(gt.xyz)
    stats["ground_truth_seconds"] = time.perf_counter() - t0

    if sfm:
        log("  running SfM (pycolmap) ...")
        stats["sfm"] = run_demo_sfm(root / "images", root / "sparse" / "0", log=log)
    else:
        shutil.copytree(gt_dir / "sparse" / "0", root / "sparse" / "0")
    return stats


def is_demo_scene(path: Path) -> bool:
    return (path / MARKER).is_file() and (path / "ground_truth" / "city.json").is_file()


def build_demo_scene(
    out: str | os.PathLike,
    size: str = "demo",
    seed: int = 0,
    sfm: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Render the demo city (`size` "demo" or "test") and reconstruct it into the folder `out`.

    The folder is built beside `out` and renamed into place, so `out` is either absent, the previous
    demo scene, or the complete new one. An existing non-empty `out` that is not a demo scene is refused.
    """
    try:
        p = city_params(size, seed)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    out = Path(out).expanduser().absolute()
    if out.exists() and not (out.is_dir() and (is_demo_scene(out) or not any(out.iterdir()))):
        raise UserError(f"{out}: exists and is not a demo scene; choose an empty or new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        stats = _write_scene(tmp, p, sfm, log)
        stats["total_seconds"] = time.perf_counter() - t0
        marker = {"key": scene_key(p, sfm), "size": size, "seed": seed, "sfm": sfm, "stats": stats}
        (tmp / MARKER).write_text(json.dumps(marker, indent=1))
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder `tmp` to `out`, replacing an empty folder or a previous demo scene."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        if old is not None:
            os.rename(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --- cache ----------------------------------------------------------------------------------------


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get("MOMENTUMGS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "momentumgs"


def cached_scene_path(size: str = "demo", seed: int = 0, cache_dir=None, sfm: bool = True) -> Path:
    try:
        p = city_params(size, seed)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return cache_root(cache_dir) / "demo" / f"{size}-seed{seed}-{scene_key(p, sfm)}"


def cached_demo_scene(
    size: str = "demo", seed: int = 0, cache_dir=None, sfm: bool = True, log: Callable[[str], None] = print
) -> Path:
    """The demo scene from the cache, built on first use. Safe when several processes ask at once:
    one builds (under a lock file) while the others wait, then all return the same folder."""
    root = cached_scene_path(size, seed, cache_dir, sfm)
    if (root / MARKER).is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(root.with_name(root.name + ".lock")):
        if not (root / MARKER).is_file():
            log(f"building the demo scene into the cache: {root}")
            build_demo_scene(root, size=size, seed=seed, sfm=sfm, log=log)
    return root


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive advisory lock (POSIX flock); elsewhere the atomic rename alone keeps it safe."""
    with open(path, "a") as f:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            yield
            return
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
