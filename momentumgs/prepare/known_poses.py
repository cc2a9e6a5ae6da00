"""A COLMAP scene from images whose poses and intrinsics are known (converted datasets).

Output (what `load_colmap_scene` reads as the train/val layout):

    OUT/train/images/...   the train images (hard links where the file system allows, else copies)
    OUT/train/sparse/0     PINHOLE cameras (one per distinct intrinsics), the known poses, and points
                           triangulated from SIFT matches with the poses held fixed
    OUT/train/database.db  the features and matches of that triangulation
    OUT/val/images/...     the held-out images
    OUT/val/sparse/0       their cameras and poses in the same frame; no points (they would leak the
                           test views into training)
    OUT/converted.json     source, format, conventions and each output name's source file

Pairs for matching come from the poses: each image with its `neighbours` nearest cameras whose optical
axes differ by less than `max_view_angle_deg`, so the cost grows with n, not n^2.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from momentumgs.errors import UserError
from momentumgs.io_utils import refuse_existing, replace_dir, write_text_atomic
from momentumgs.prepare.images import read_header
from momentumgs.prepare.photos import quiet_colmap

MARKER = "converted.json"


@dataclass
class PosedImage:
    name: str  # name in the output images/ folder
    source: Path  # file to link or copy
    K: np.ndarray  # [3, 3] pinhole intrinsics, COLMAP pixel convention (centres at +0.5)
    width: int
    height: int
    viewmat: np.ndarray  # [4, 4] world -> camera, OpenCV axes (x right, y down, z forward)


@dataclass
class KnownPoseOptions:
    triangulate: bool = True
    neighbours: int = 20  # matching partners per image, chosen by camera distance
    max_view_angle_deg: float = 90.0  # partners must look within this angle of the image's own axis
    max_num_features: int = 8192
    link: bool = True  # hard-link images into OUT when possible (large datasets), else copy
    extraction_threads: int = 1
    matching_threads: int = -1
    triangulation_threads: int = -1  # one thread (and one for matching) repeats the model bit for bit
    seed: int = 0
    progress: bool = True


def camera_centres(viewmats: np.ndarray) -> np.ndarray:
    """[N, 4, 4] world->camera -> [N, 3]."""
    return -np.einsum("nji,nj->ni", viewmats[:, :3, :3], viewmats[:, :3, 3])


def unique_names(paths: list[Path]) -> list[str]:
    """Basenames when they are unique; else parent_basename; else a running index with the suffix."""
    for make in (lambda p: p.name, lambda p: f"{p.parent.name}_{p.name}"):
        names = [make(p) for p in paths]
        if len(set(names)) == len(names):
            return names
    return [f"{i:05d}{p.suffix.lower()}" for i, p in enumerate(paths)]


# --- output folder ------------------------------------------------------------------------------


def check_out(out: Path, force: bool) -> None:
    """`out` must be new, empty, or an earlier conversion (replaced with `force` only)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; choose a new folder")
    if any(out.iterdir()) and not (out / MARKER).is_file():
        raise UserError(f"{out}: exists, is not empty and is not a converted scene; choose a new folder")
    refuse_existing(out, force)


def new_out(out: Path) -> Path:
    """A hidden folder beside `out` to convert into: the earlier conversion stays whole until the new one
    is complete (then `replace_dir` swaps them)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".new", dir=out.parent))


def place_images(images: list[PosedImage], folder: Path, link: bool, progress: bool) -> None:
    """Check each source (readable, the size the dataset says) and link or copy it into `folder`."""
    from tqdm import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    for im in tqdm(images, desc=f"images -> {folder.parent.name}", unit="img", disable=not progress):
        if not im.source.is_file():
            raise UserError(f"{im.source}: image listed by the dataset but missing")
        try:
            w, h, _ = read_header(im.source)
        except Exception as exc:
            raise UserError(f"{im.source}: unreadable image ({type(exc).__name__})") from None
        if (w, h) != (im.width, im.height):
            raise UserError(f"{im.source}: image is {w}x{h} but the dataset says {im.width}x{im.height}")
        dst = folder / im.name
        if link:
            try:
                os.link(im.source, dst)
                continue
            except OSError:  # another file system, or links not allowed: copy
                pass
        shutil.copy2(im.source, dst)


def _camera_key(im: PosedImage) -> tuple:
    K = im.K
    return (im.width, im.height, float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]))


def pinhole_cameras(images: list[PosedImage]) -> tuple[list, list[int]]:
    """pycolmap PINHOLE cameras (ids 1..k, one per distinct intrinsics) and each image's camera id."""
    import pycolmap

    keys: dict[tuple, int] = {}
    ids = [keys.setdefault(_camera_key(im), len(keys) + 1) for im in images]
    cams = [
        pycolmap.Camera(model="PINHOLE", width=k[0], height=k[1], params=list(k[2:]), camera_id=cid)
        for k, cid in keys.items()
    ]
    return cams, ids


def posed_reconstruction(images: list[PosedImage], cameras, camera_ids, image_ids=None):
    """A pycolmap Reconstruction with the cameras and fixed poses and no points."""
    import pycolmap

    rec = pycolmap.Reconstruction()
    for cam in cameras:
        rec.add_camera_with_trivial_rig(cam)
    for i, (im, cid) in enumerate(zip(images, camera_ids, strict=True)):
        image_id = image_ids[i] if image_ids is not None else i + 1
        image = pycolmap.Image(name=im.name, camera_id=cid, image_id=image_id)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(im.viewmat[:3, :4]))
    return rec


# --- triangulation ------------------------------------------------------------------------------


def pose_pairs(viewmats: np.ndarray, neighbours: int, max_angle_deg: float) -> list[tuple[int, int]]:
    """Index pairs (i < j): each camera with its nearest cameras that look roughly the same way."""
    centres = camera_centres(viewmats)  # [N, 3]
    axes = viewmats[:, 2, :3]  # [N, 3] optical axes in world coordinates
    cos_max = np.cos(np.radians(max_angle_deg))
    pairs = set()
    for i in range(len(viewmats)):
        ok = axes @ axes[i] > cos_max
        ok[i] = False
        cand = np.flatnonzero(ok)
        d = np.linalg.norm(centres[cand] - centres[i], axis=1)
        for j in cand[np.argsort(d, kind="stable")[:neighbours]]:
            pairs.add((min(i, int(j)), max(i, int(j))))
    return sorted(pairs)


def triangulate(
    images: list[PosedImage], image_dir: Path, model_dir: Path, opts: KnownPoseOptions, log
) -> dict:
    """Features + matching on pose-chosen pairs + pycolmap.triangulate_points with the poses fixed."""
    import pycolmap

    t0 = time.perf_counter()
    database = model_dir.parent.parent / "database.db"
    database.unlink(missing_ok=True)
    cameras, camera_ids = pinhole_cameras(images)
    _extract_features(database, image_dir, images, cameras, camera_ids, opts)
    t_features = time.perf_counter() - t0

    t1 = time.perf_counter()
    n_pairs = _match_pose_pairs(database, images, opts, log)
    t_matching = time.perf_counter() - t1

    ids = _database_image_ids(database, images, image_dir)
    rec = posed_reconstruction(images, cameras, camera_ids, ids)
    t2 = time.perf_counter()
    model_dir.mkdir(parents=True, exist_ok=True)
    pycolmap.set_random_seed(opts.seed)
    options = pycolmap.IncrementalPipelineOptions(num_threads=opts.triangulation_threads)
    with quiet_colmap(pycolmap):
        rec = pycolmap.triangulate_points(rec, database, image_dir, model_dir, options=options)
    stats = {
        "points": rec.num_points3D(),
        "pairs": n_pairs,
        "mean_reprojection_error": float(rec.compute_mean_reprojection_error()),
        "seconds": {
            "features": t_features,
            "matching": t_matching,
            "triangulation": time.perf_counter() - t2,
        },
    }
    log(
        f"  triangulated {stats['points']} points, mean reprojection error "
        f"{stats['mean_reprojection_error']:.3f} px"
    )
    return stats


def _extract_features(
    database: Path, image_dir: Path, images: list[PosedImage], cameras, camera_ids, opts: KnownPoseOptions
) -> None:
    """SIFT features of every image into a new `database`, each image attached to its known camera."""
    import pycolmap
    from tqdm import tqdm

    db = pycolmap.Database.open(str(database))
    for cam in cameras:  # our intrinsics, our ids: extraction attaches each image to its camera
        db.write_camera(cam, use_camera_id=True)
    db.close()
    extraction = pycolmap.FeatureExtractionOptions(num_threads=opts.extraction_threads)
    extraction.sift.max_num_features = opts.max_num_features
    with tqdm(total=len(images), desc="features", unit="img", disable=not opts.progress) as bar:
        for cam in cameras:  # in camera-id order, so COLMAP's trivial rig ids equal the camera ids
            names = [im.name for im, cid in zip(images, camera_ids, strict=True) if cid == cam.camera_id]
            reader = pycolmap.ImageReaderOptions(camera_model="PINHOLE", existing_camera_id=cam.camera_id)
            for k in range(0, len(names), 32):
                with quiet_colmap(pycolmap):
                    pycolmap.extract_features(
                        database,
                        image_dir,
                        image_names=names[k : k + 32],
                        camera_mode=pycolmap.CameraMode.SINGLE,
                        reader_options=reader,
                        extraction_options=extraction,
                        device=pycolmap.Device.cpu,
                    )
                bar.update(len(names[k : k + 32]))


def _match_pose_pairs(database: Path, images: list[PosedImage], opts: KnownPoseOptions, log) -> int:
    """Match the pairs chosen from the poses (pose_pairs), listed in pairs.txt beside `database`, and
    verify them. -> the number of pairs"""
    import pycolmap

    viewmats = np.stack([im.viewmat for im in images])
    pairs = pose_pairs(viewmats, opts.neighbours, opts.max_view_angle_deg)
    pairs_file = database.parent / "pairs.txt"
    pairs_file.write_text("".join(f"{images[i].name} {images[j].name}\n" for i, j in pairs))
    log(f"  matching {len(pairs)} pairs chosen from the poses")
    verification = pycolmap.TwoViewGeometryOptions()
    verification.ransac.random_seed = opts.seed
    with quiet_colmap(pycolmap):
        pycolmap.match_image_pairs(
            database,
            matching_options=pycolmap.FeatureMatchingOptions(num_threads=opts.matching_threads),
            pairing_options=pycolmap.ImportedPairingOptions(match_list_path=str(pairs_file)),
            verification_options=verification,
            device=pycolmap.Device.cpu,
        )
    return len(pairs)


def _database_image_ids(database: Path, images: list[PosedImage], image_dir: Path) -> list[int]:
    """The database's image id of each image, checking the layout posed_reconstruction assumes."""
    import pycolmap

    db = pycolmap.Database.open(str(database))
    by_name = {im.name: im for im in db.read_all_images()}
    frames = {f.frame_id: f for f in db.read_all_frames()}
    db.close()
    missing = [im.name for im in images if im.name not in by_name]
    if missing:
        raise UserError(f"{image_dir}: COLMAP could not read {len(missing)} image(s), e.g. {missing[0]}")
    # add_image_with_trivial_frame assumes frame id = image id, rig id = camera id
    for im in by_name.values():
        frame = frames.get(im.frame_id)
        if im.frame_id != im.image_id or frame is None or frame.rig_id != im.camera_id:
            raise RuntimeError(f"unexpected COLMAP database layout for {im.name}: frame/rig ids differ")
    return [by_name[im.name].image_id for im in images]


# --- entry point --------------------------------------------------------------------------------


def write_part(part: Path, images: list[PosedImage], triangulate_points: bool, opts: KnownPoseOptions, log):
    if not images:
        raise UserError(f"{part.name}: no images to write")
    names = [im.name for im in images]
    if len(set(names)) != len(names):
        raise UserError(f"{part.name}: duplicate image names")
    place_images(images, part / "images", opts.link, opts.progress)
    model_dir = part / "sparse" / "0"
    if triangulate_points:
        return triangulate(images, part / "images", model_dir, opts, log)
    cameras, camera_ids = pinhole_cameras(images)
    model_dir.mkdir(parents=True, exist_ok=True)
    posed_reconstruction(images, cameras, camera_ids).write(model_dir)
    return {"points": 0}


def write_known_pose_scene(
    out: str | Path,
    train: list[PosedImage],
    val: list[PosedImage],
    meta: dict,
    opts: KnownPoseOptions | None = None,
    log: Callable[[str], None] = print,
    force: bool = False,
) -> dict:
    """Write the train/val COLMAP layout (module docstring); an earlier conversion in `out` is replaced only
    with `force`, once the new one is complete. Returns the figures written to converted.json."""
    opts = opts or KnownPoseOptions()
    out = Path(out).expanduser()
    if not train or not val:
        raise UserError(f"{out}: need train and val images (got {len(train)} and {len(val)})")
    check_out(out, force)
    log(f"writing {len(train)} train and {len(val)} val images to {out}")
    tmp = new_out(out)
    try:
        summary = dict(meta)
        summary["train"] = write_part(tmp / "train", train, opts.triangulate, opts, log)
        summary["train"]["images"] = len(train)
        summary["val"] = write_part(tmp / "val", val, False, opts, log)
        summary["val"]["images"] = len(val)
        summary["sources"] = {
            part: {im.name: str(im.source) for im in ims} for part, ims in (("train", train), ("val", val))
        }
        write_text_atomic(tmp / MARKER, json.dumps(summary, indent=1))
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary
