"""The embedded demo scenes: render a synthetic scene (the city, momentumgs/demo/city.py, or the survey,
momentumgs/demo/survey.py) and reconstruct its sparse points from the renders, so that the README's
commands work with nothing downloaded.

Output folder (a normal COLMAP scene):

    OUT/images/0000.png ...                  the rendered views, named in capture order
    OUT/sparse/0/{cameras,images,points3D}.bin  the reconstruction (below); with sfm=False a copy of the
                                            ground-truth model
    OUT/ground_truth/sparse/0/...           exact poses and intrinsics, and 3D points on the visible
                                            true surfaces with their observations, in metres, z up
    OUT/ground_truth/{city,survey}.json     parameters, boxes (and terrain), sun and camera poses
    OUT/demo_scene.json                     what was built and the reconstruction's figures; written last

The city is reconstructed by real SfM (the pipeline of `prepare colmap`, momentumgs/prepare/photos.py),
its model deliberately not aligned to the ground truth: later stages must handle any frame
(`momentumgs.demo.align.pose_errors` compares the two). The survey keeps the exact poses, as a mapping
drone with RTK positioning records them, and triangulates SIFT matches at those poses
(momentumgs/prepare/known_poses.py): its matching pairs come from the poses, so the cost grows with the
number of views rather than its square, which the `large` size needs.
"""

from __future__ import annotations

import collections
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
from typing import Any

import cv2
import numpy as np

from momentumgs.data.cache import cache_root
from momentumgs.demo.appearance import (
    PhotoAppearance,
    appearance_table,
    draw_appearances,
    photograph,
    vignette,
)
from momentumgs.demo.city import build_world as build_city
from momentumgs.demo.city import camera_poses as city_poses
from momentumgs.demo.city import city_params
from momentumgs.demo.city import intrinsics as city_intrinsics
from momentumgs.demo.raycast import GROUND, MISS, Render, World, any_hit, box_surface, render
from momentumgs.demo.scenery import BoxSpec
from momentumgs.demo.survey import SIZES as SURVEY_SIZES
from momentumgs.demo.survey import build_world as build_survey
from momentumgs.demo.survey import camera_poses as survey_poses
from momentumgs.demo.survey import intrinsics as survey_intrinsics
from momentumgs.demo.survey import survey_params
from momentumgs.errors import UserError
from momentumgs.prepare.images import list_image_names
from momentumgs.prepare.known_poses import KnownPoseOptions, PosedImage, triangulate
from momentumgs.prepare.photos import PhotoOptions, prepare_colmap

# bump a scene's version when its rendered images or models change for the same parameters (the ray
# caster and this file are shared: a change to them that alters the output bumps both)
GENERATOR_VERSION = 2  # the city
SURVEY_VERSION = 1
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


def known_pose_options() -> KnownPoseOptions:
    """Triangulation at the survey's exact poses: each view matched with its 12 nearest views (the
    ones it overlaps most), one thread everywhere so that the model repeats bit for bit."""
    return KnownPoseOptions(
        neighbours=12,
        extraction_threads=1,
        matching_threads=1,
        triangulation_threads=1,
        progress=False,
    )


def triangulate_at_poses(images: Path, model: Path, K, poses, log: Callable[[str], None] = print) -> dict:
    """SIFT features of the views in `images` (named in pose order), matched between views chosen by
    their poses and triangulated with the poses and intrinsics K held fixed; the model goes to `model`.
    Returns the figures that the marker file records."""
    names = list_image_names(images)
    height, width = cv2.imread(str(images / names[0]), cv2.IMREAD_GRAYSCALE).shape
    posed = [PosedImage(n, images / n, K, width, height, v) for n, v in zip(names, poses, strict=True)]
    with tempfile.TemporaryDirectory(prefix="momentumgs-triangulate-") as work:
        scratch = Path(work) / "sparse" / "0"
        stats = triangulate(posed, images, scratch, known_pose_options(), log=log)
        shutil.copytree(scratch, model)
    return {
        "method": "triangulation at the known poses",
        "registered": len(names),
        "images": len(names),
        **stats,
    }


def image_name(i: int) -> str:
    return f"{i:04d}.png"


# --- ground-truth points ------------------------------------------------------------------------


def surface_normals(world: World, box: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Normals [N, 3] of points [N, 3] lying on the ground (box == GROUND) or on boxes."""
    normal = np.zeros_like(points)
    on_ground = box == GROUND
    normal[on_ground] = world.ground_normal(points[on_ground])
    on_box = box >= 0
    if on_box.any():
        normal[on_box] = box_surface(world.boxes, box[on_box], points[on_box])[0]
    return normal


def visible_from(world: World, points, normals, K, viewmat, width, height, group: int = 64):
    """Which points [N, 3] camera (K, viewmat) sees, and where: bool [N], pixels [N, 2].

    Visible = in front, inside the image, facing the camera, and no box (nor terrain) on the segment
    to the camera.
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
        blocked = any_hit(world, o.reshape(-1, group, 3), d.reshape(-1, group, 3), limit.reshape(-1, group))
        ok[idx] = ~blocked.reshape(-1)[: len(idx)]
    return ok, uv


@dataclasses.dataclass
class GroundTruthPoints:
    xyz: np.ndarray  # [P, 3] float64
    rgb: np.ndarray  # [P, 3] uint8
    seen: np.ndarray  # [V, P] bool: view j sees point i
    uv: np.ndarray  # [V, P, 2] float64 pixel position of point i in view j (where seen)


def surface_samples(rnd: Render, image: np.ndarray, p):
    """The surface points one view hits on a grid of about 20 x 15 pixels (every 16 pixels at 320x240):
    xyz [n, 3], box ids [n], colours [n, 3]. `p`: the scene's parameters (width, height, supersample)."""
    s, stride = p.supersample, max(p.width // 20, 1)
    ys, xs = np.mgrid[stride // 2 : p.height : stride, stride // 2 : p.width : stride]
    box = rnd.box[ys * s, xs * s].reshape(-1)
    keep = box != MISS
    return rnd.point[ys * s, xs * s].reshape(-1, 3)[keep], box[keep], image[ys, xs].reshape(-1, 3)[keep]


def ground_truth_points(world: World, samples, K, poses, p) -> GroundTruthPoints:
    """The surface samples of all views, each with every view that sees it (at least two): the
    ground-truth counterpart of an SfM point cloud."""
    xyz, box, rgb = (np.concatenate(parts) for parts in zip(*samples, strict=True))
    normals = surface_normals(world, box, xyz)
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


# --- the scenes -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SceneKind:
    """One synthetic scene: its parameters for a (size, seed), its world and cameras, and how its sparse
    points are reconstructed from the renders."""

    name: str  # "city" | "survey": names the ground-truth file, ground_truth/<name>.json
    sizes: tuple[str, ...]  # the first is the default
    version: int
    params: Callable[[str, int], Any]  # (size, seed) -> frozen parameters with width, height, supersample
    build_world: Callable[[Any], tuple[World, list[BoxSpec]]]
    camera_poses: Callable[[Any], list[np.ndarray]]  # world->camera [4, 4] in capture order
    intrinsics: Callable[[Any], np.ndarray]  # [3, 3]
    reconstruct: Callable[..., dict]  # (images, model, K, poses, log) -> figures; writes the model
    cache_folder: str  # below the cache root


SCENES = {
    "city": SceneKind(
        name="city",
        sizes=("demo", "test"),
        version=GENERATOR_VERSION,
        params=city_params,
        build_world=build_city,
        camera_poses=city_poses,
        intrinsics=city_intrinsics,
        reconstruct=lambda images, model, K, poses, log: run_demo_sfm(images, model, log=log),
        cache_folder="demo",
    ),
    "survey": SceneKind(
        name="survey",
        sizes=SURVEY_SIZES,
        version=SURVEY_VERSION,
        params=survey_params,
        build_world=build_survey,
        camera_poses=survey_poses,
        intrinsics=survey_intrinsics,
        reconstruct=triangulate_at_poses,
        cache_folder="survey",
    ),
}


def scene_kind(scene: str) -> SceneKind:
    if scene not in SCENES:
        raise UserError(f"unknown demo scene {scene!r} (expected {' or '.join(repr(k) for k in SCENES)})")
    return SCENES[scene]


def scene_params(scene: str, size: str | None, seed: int):
    """The parameters of `scene` at `size` (None: the scene's default size); UserError for a size the
    scene does not come in."""
    kind = scene_kind(scene)
    if size is not None and size not in kind.sizes:
        names = [repr(s) for s in kind.sizes]
        expected = f"{', '.join(names[:-1])} or {names[-1]}"
        raise UserError(f"unknown demo size {size!r} for the {scene} (expected {expected})")
    return kind.params(size or kind.sizes[0], seed)


# --- building a scene folder --------------------------------------------------------------------


def _params_dict(p) -> dict:
    return dataclasses.asdict(p)


def scene_key(p, sfm: bool, scene: str = "city", appearance: bool = False) -> str:
    """Hash of everything that decides the output: scene, parameters, generator version, SfM flag,
    changing appearance."""
    kind = scene_kind(scene)
    fields = {
        "scene": kind.name,
        "params": _params_dict(p),
        "version": kind.version,
        "sfm": sfm,
        "appearance": appearance,
    }
    text = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _write_png(path: Path, image: np.ndarray) -> np.ndarray:
    """[H, W, 3] float in [0, 1] -> 8-bit PNG at `path`; returns the 8-bit image."""
    img = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if not cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
        raise UserError(f"{path}: cannot write image")
    return img


def render_views(
    world: World,
    K,
    poses,
    names,
    p,
    folder: Path,
    log: Callable[[str], None],
    looks: list[PhotoAppearance] | None = None,
    neutral_folder: Path | None = None,
) -> list:
    """Render every view into `folder` (PNG) -> per view, the surface samples for the ground truth. With
    `looks`, each photo gets its own appearance and the neutral renders go to `neutral_folder`."""
    t0 = time.perf_counter()
    folder.mkdir(parents=True)
    if looks is not None:
        neutral_folder.mkdir(parents=True)
        falloff = vignette(p.width, p.height)
    samples = []  # the full renders are dropped
    for i, (viewmat, name) in enumerate(zip(poses, names, strict=True)):
        rnd = render(world, K, viewmat, p.width, p.height, p.supersample)
        if looks is None:
            img = _write_png(folder / name, rnd.image)
        else:
            img = _write_png(neutral_folder / name, rnd.image)
            lit = render(
                dataclasses.replace(world, ambient=looks[i].ambient),
                K,
                viewmat,
                p.width,
                p.height,
                p.supersample,
            )
            _write_png(folder / name, photograph(lit.image, looks[i], falloff))
        samples.append(surface_samples(rnd, img, p))
        if (i + 1) % 16 == 0 or i + 1 == len(poses):
            log(f"  rendered {i + 1}/{len(poses)} views ({time.perf_counter() - t0:.1f} s)")
    return samples


def describe_world(kind: SceneKind, p, world: World, specs: list[BoxSpec], K, names, poses) -> dict:
    """The ground-truth description, ground_truth/<scene>.json: parameters, boxes, terrain, cameras."""
    description = {
        "generator_version": kind.version,
        "params": _params_dict(p),
        "sun": world.sun.tolist(),
        "ground_rect": list(world.ground_rect),
        "boxes": [dataclasses.asdict(b) for b in specs],
        "cameras": [
            {"name": n, "K": K.tolist(), "viewmat": v.tolist(), "width": p.width, "height": p.height}
            for n, v in zip(names, poses, strict=True)
        ],
    }
    if world.terrain is not None:
        t = world.terrain
        description["terrain"] = {
            "base": t.base,
            "amplitude": t.amplitude.tolist(),
            "wavevector": t.wavevector.tolist(),
            "phase": t.phase.tolist(),
        }
    return description


def _write_scene(
    root: Path, kind: SceneKind, p, sfm: bool, log: Callable[[str], None], appearance: bool = False
) -> dict:
    t0 = time.perf_counter()
    world, specs = kind.build_world(p)
    poses = kind.camera_poses(p)
    K = kind.intrinsics(p)
    names = [image_name(i) for i in range(len(poses))]
    stats: dict = {"views": len(poses), "width": p.width, "height": p.height}
    stats["world_seconds"] = time.perf_counter() - t0
    counts = collections.Counter(b.kind for b in specs)
    log(f"{kind.name} scene: {', '.join(f'{n} {k}' for k, n in counts.items())}; {len(poses)} views")

    t0 = time.perf_counter()
    looks = draw_appearances(len(poses), p.seed, world.ambient) if appearance else None
    neutral = root / "ground_truth" / "images"
    samples = render_views(world, K, poses, names, p, root / "images", log, looks, neutral)
    stats["render_seconds"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    gt = ground_truth_points(world, samples, K, poses, p)
    gt_dir = root / "ground_truth"
    write_colmap_model(gt_dir / "sparse" / "0", K, p.width, p.height, poses, names, gt)
    description = describe_world(kind, p, world, specs, K, names, poses)
    if looks is not None:
        description["appearance"] = appearance_table(looks, names)
    (gt_dir / f"{kind.name}.json").write_text(json.dumps(description, indent=1))
    stats["ground_truth_points"] = len(gt.xyz)
    stats["ground_truth_seconds"] = time.perf_counter() - t0

    if sfm:
        log("  reconstructing the sparse points (pycolmap) ...")
        stats["sfm"] = kind.reconstruct(root / "images", root / "sparse" / "0", K, poses, log=log)
    else:
        shutil.copytree(gt_dir / "sparse" / "0", root / "sparse" / "0")
    return stats


def is_demo_scene(path: Path) -> bool:
    """A folder written by `build_scene` (of any scene)."""
    return (path / MARKER).is_file() and any((path / "ground_truth" / f"{k}.json").is_file() for k in SCENES)


def build_scene(
    out: str | os.PathLike,
    scene: str = "city",
    size: str | None = None,
    seed: int = 0,
    sfm: bool = True,
    log: Callable[[str], None] = print,
    appearance: bool = False,
) -> Path:
    """Render `scene` ("city" or "survey") at `size` (None: the scene's default) and reconstruct it into
    the folder `out`. With `appearance` the photos' exposure, white balance and sun change from photo to
    photo (demo/appearance.py) and ground_truth/images holds the neutral renders.

    The folder is built beside `out` and renamed into place, so `out` is either absent, the previous
    demo scene, or the complete new one. An existing non-empty `out` that is not a demo scene is refused.
    """
    p = scene_params(scene, size, seed)
    kind = SCENES[scene]
    out = Path(out).expanduser().absolute()
    if out.exists() and not (out.is_dir() and (is_demo_scene(out) or not any(out.iterdir()))):
        raise UserError(f"{out}: exists and is not a demo scene; choose an empty or new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        stats = _write_scene(tmp, kind, p, sfm, log, appearance)
        stats["total_seconds"] = time.perf_counter() - t0
        marker = {
            "key": scene_key(p, sfm, scene, appearance),
            "scene": scene,
            "size": size or kind.sizes[0],
            "seed": seed,
            "sfm": sfm,
            "appearance": appearance,
            "stats": stats,
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=1))
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def build_demo_scene(
    out: str | os.PathLike,
    size: str = "demo",
    seed: int = 0,
    sfm: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Render the demo city (`size` "demo" or "test") and reconstruct it into the folder `out`."""
    return build_scene(out, "city", size, seed, sfm, log)


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


def cached_scene_path(
    size: str | None = "demo",
    seed: int = 0,
    cache_dir=None,
    sfm: bool = True,
    scene: str = "city",
    appearance: bool = False,
) -> Path:
    p = scene_params(scene, size, seed)
    kind = SCENES[scene]
    folder = f"{size or kind.sizes[0]}-seed{seed}-{scene_key(p, sfm, scene, appearance)}"
    return cache_root(cache_dir) / kind.cache_folder / folder


def cached_scene(
    scene: str = "city",
    size: str | None = None,
    seed: int = 0,
    cache_dir=None,
    sfm: bool = True,
    log: Callable[[str], None] = print,
    appearance: bool = False,
) -> Path:
    """A demo scene from the cache, built on first use. Safe when several processes ask at once:
    one builds (under a lock file) while the others wait, then all return the same folder."""
    root = cached_scene_path(size, seed, cache_dir, sfm, scene, appearance)
    if (root / MARKER).is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(root.with_name(root.name + ".lock")):
        if not (root / MARKER).is_file():
            log(f"building the demo scene ({scene}) into the cache: {root}")
            build_scene(root, scene=scene, size=size, seed=seed, sfm=sfm, log=log, appearance=appearance)
    return root


def cached_demo_scene(
    size: str = "demo",
    seed: int = 0,
    cache_dir=None,
    sfm: bool = True,
    log: Callable[[str], None] = print,
    appearance: bool = False,
) -> Path:
    """The demo city from the cache, built on first use (`cached_scene`)."""
    return cached_scene("city", size, seed, cache_dir, sfm, log, appearance)


def cached_survey_scene(
    size: str = "survey", seed: int = 0, cache_dir=None, sfm: bool = True, log: Callable[[str], None] = print
) -> Path:
    """The survey from the cache, built on first use (`cached_scene`)."""
    return cached_scene("survey", size, seed, cache_dir, sfm, log)


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
