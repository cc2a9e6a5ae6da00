"""Read a COLMAP scene into a `Scene`: pinhole K, world->camera viewmats, train/test split, SfM points.

The model is read by pycolmap after its files are checked (`data/colmap_files.py`); distorted cameras'
photos are undistorted once into a cache (`data/undistort.py`).

Supported layouts (`root` is the scene folder):
  root/sparse/0 (or root/sparse) + root/images        one model; split by `test_every` or `split_file`
  root/images_{d}                                     used for downscale d when present
  root/train/{sparse/0, images} + root/val/{sparse/0, images}
                                                      Mill-19 / UrbanScene3D as prepared by the
                                                      Momentum-GS and CityGaussian pipelines: the val
                                                      model holds the test images, posed in the same
                                                      frame; camera names are "train/..." and "val/..."

Downscale d: the image is resized to round(W/d) x round(H/d) (halves up) and K is scaled per axis by
round(W/d)/W and round(H/d)/H. With pixel centres at +0.5 that is exact for any resize that maps the
full image extent onto the new one; it equals fx/d, cx/d, ... when W and H are divisible by d.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from momentumgs.data.colmap_cameras import (
    DISTORTED_MODELS,
    PINHOLE_MODELS,
    cam_from_world,
    is_distorted,
    pinhole_K,
    scale_K,
    scaled_size,
)
from momentumgs.data.colmap_files import check_image, find_model_dir, model_format, read_model
from momentumgs.data.scene import Camera, ImageCache, Scene
from momentumgs.data.undistort import ModelView, undistorted_cache, undistorted_camera
from momentumgs.errors import ConfigError, SceneError

# ----------------------------------------------------------------------------------------------
# One model (the whole scene, or the train or val half of a train/val layout)


@dataclass
class _Part:
    cameras: list[Camera]
    points: np.ndarray  # [P, 3] float32
    colors: np.ndarray  # [P, 3] uint8


def _load_part(
    model_dir: Path, image_root: Path, images: str, downscale: int, prefix: str, check_images: bool
) -> _Part:
    rec = read_model(model_dir)
    fmt = model_format(model_dir)
    images_file = model_dir / f"images.{fmt}"
    views = _registered_views(rec, images_file)
    used = sorted({v.camera_id for v in views})
    _check_camera_models(rec, used, model_dir / f"cameras.{fmt}")
    source_dir, pre_scaled = _image_source(image_root, images, downscale)
    # Every check that can fail happens before anything is written to the cache.
    _check_photos(rec, views, source_dir, images_file, downscale if pre_scaled else None, check_images)

    outputs = {cid: _output_camera(rec.cameras[cid], downscale, pre_scaled) for cid in used}
    image_path = {v.name: source_dir / v.name for v in views}
    maps_for = {cid: out.undistortion for cid, out in outputs.items() if out.undistortion is not None}
    distorted = [v for v in views if v.camera_id in maps_for]
    if distorted:
        image_path.update(undistorted_cache(model_dir, source_dir, distorted, maps_for))

    cameras = [
        Camera(
            name=prefix + v.name,
            K=outputs[v.camera_id].K,
            viewmat=v.viewmat,
            width=outputs[v.camera_id].size[0],
            height=outputs[v.camera_id].size[1],
            image_path=image_path[v.name],
            downscale=outputs[v.camera_id].downscale,
        )
        for v in views
    ]
    points, colors = _points(rec)
    return _Part(cameras, points, colors)


def _registered_views(rec, images_file: Path) -> list[ModelView]:
    """The model's registered images, by name."""
    views = []
    for image_id in rec.reg_image_ids():
        image = rec.image(image_id)
        views.append(ModelView(image.name, image.camera_id, cam_from_world(image)))
    views.sort(key=lambda v: v.name)
    if not views:
        raise SceneError(f"{images_file}: the model has no registered images")
    return views


def _check_camera_models(rec, camera_ids: list[int], cameras_file: Path) -> None:
    for cid in camera_ids:
        name = rec.cameras[cid].model.name
        if name not in PINHOLE_MODELS + DISTORTED_MODELS:
            raise SceneError(
                f"{cameras_file}: camera {cid} uses the unsupported model {name} "
                f"(supported: {', '.join(PINHOLE_MODELS + DISTORTED_MODELS)})"
            )


def _image_source(image_root: Path, images: str, downscale: int) -> tuple[Path, bool]:
    """The folder the photos are read from: images_{d} when it exists for downscale d (then True: the
    files are already at the target size), else images."""
    pre_dir = image_root / f"{images}_{downscale}"
    pre_scaled = downscale > 1 and pre_dir.is_dir()
    source_dir = pre_dir if pre_scaled else image_root / images
    if not source_dir.is_dir():
        raise SceneError(f"{source_dir}: image folder does not exist")
    return source_dir, pre_scaled


def _check_photos(
    rec, views: list[ModelView], source_dir: Path, images_file: Path, pre_scaled: int | None, headers: bool
) -> None:
    """Each view's photo exists in `source_dir` and, with `headers`, reads as an image of its camera's
    size (downscaled by `pre_scaled` when the folder holds downscaled copies)."""
    for v in views:
        path = source_dir / v.name
        if not path.is_file():
            raise SceneError(f"{path}: image listed in {images_file} but missing")
    if not headers:
        return
    for v in views:
        cam = rec.cameras[v.camera_id]
        if pre_scaled:
            w, h = scaled_size(cam.width, cam.height, pre_scaled)
            check_image(source_dir / v.name, w, h, tolerance=1)  # resize tools round differently
        else:
            check_image(source_dir / v.name, cam.width, cam.height)


@dataclass
class _OutputCamera:
    """What `Scene.load_image` returns for one COLMAP camera."""

    K: np.ndarray  # [3, 3]
    size: tuple[int, int]  # width, height
    downscale: int  # the resize applied to the file on loading (1: the file is at the target size)
    undistortion: tuple | None  # (distorted camera at the file's size, its pinhole) when distorted


def _output_camera(cam, downscale: int, pre_scaled: bool) -> _OutputCamera:
    if pre_scaled:
        src_size = scaled_size(cam.width, cam.height, downscale)
        d = 1  # the files are already at the target size
    else:
        src_size, d = (cam.width, cam.height), downscale
    undistortion = None
    if is_distorted(cam):
        src, pinhole = undistortion = undistorted_camera(cam, *src_size)
        base_K, base_size = pinhole_K(pinhole), (pinhole.width, pinhole.height)
    else:
        base_K = scale_K(pinhole_K(cam), src_size[0] / cam.width, src_size[1] / cam.height)
        base_size = src_size
    size = scaled_size(*base_size, d)
    K = scale_K(base_K, size[0] / base_size[0], size[1] / base_size[1])
    return _OutputCamera(K, size, d, undistortion)


def _points(rec) -> tuple[np.ndarray, np.ndarray]:
    pts = list(rec.points3D.values())
    xyz = np.array([p.xyz for p in pts], dtype=np.float32).reshape(-1, 3)  # [P, 3]
    rgb = np.array([p.color for p in pts], dtype=np.uint8).reshape(-1, 3)  # [P, 3]
    return xyz, rgb


# ----------------------------------------------------------------------------------------------
# Splits and the public entry point


def read_split_file(split_file: str | os.PathLike, root: Path, names: list[str]) -> set[str]:
    """Test image names listed in `split_file` (one per line, '#' comments); each must be in `names`."""
    path = Path(split_file)
    if not path.is_absolute() and not path.is_file():
        path = root / path
    if not path.is_file():
        raise SceneError(f"{split_file}: split file does not exist")
    known = set(names)
    test = set()
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        if name not in known:
            raise SceneError(f"{path}:{lineno}: unknown image name {name!r} (not in the model)")
        test.add(name)
    return test


def split_every(n: int, test_every: int) -> tuple[list[int], list[int]]:
    """Every `test_every`-th index (0, k, 2k, ...) is test, as the 3DGS 'llffhold' split; 0 = none."""
    test = list(range(0, n, test_every)) if test_every > 0 else []
    test_set = set(test)
    return [i for i in range(n) if i not in test_set], test


def load_colmap_scene(
    root: str | os.PathLike,
    images: str = "images",
    downscale: int = 1,
    test_every: int = 8,
    split_file: str | os.PathLike | None = None,
    image_cache_mb: float = 512,
    sparse: str | os.PathLike | None = None,
    check_images: bool = True,
) -> Scene:
    """Load a COLMAP scene (layouts in the module docstring) into a Scene with lazily loaded images.

    `check_images` reads every image header up front so that a missing, corrupt or wrongly sized image
    fails here with a one-line SceneError rather than hours into training.
    """
    if int(downscale) != downscale or downscale < 1:
        raise ConfigError(f"downscale must be a positive integer, got {downscale!r}")
    if int(test_every) != test_every or test_every < 0:
        raise ConfigError(f"test_every must be a non-negative integer, got {test_every!r}")
    downscale, test_every = int(downscale), int(test_every)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise SceneError(f"{root}: scene folder does not exist")

    train_val = sparse is None and not (root / "sparse").exists() and (root / "train").is_dir()
    if train_val:
        if split_file:
            raise SceneError(f"{root}: has train/ and val/ folders, which define the split; drop split_file")
        train = _load_part(
            find_model_dir(root / "train"), root / "train", images, downscale, "train/", check_images
        )
        val_root = root / "val"
        if not val_root.is_dir():
            raise SceneError(f"{val_root}: missing (a train/ layout needs val/ beside it)")
        val = _load_part(find_model_dir(val_root), val_root, images, downscale, "val/", check_images)
        cameras = train.cameras + val.cameras
        train_ids = list(range(len(train.cameras)))
        test_ids = list(range(len(train.cameras), len(cameras)))
        points, colors = train.points, train.colors  # val points would leak test images into training
    else:
        part = _load_part(find_model_dir(root, sparse), root, images, downscale, "", check_images)
        cameras, points, colors = part.cameras, part.points, part.colors
        if split_file:
            test_names = read_split_file(split_file, root, [c.name for c in cameras])
            test_ids = [i for i, c in enumerate(cameras) if c.name in test_names]
            train_ids = [i for i, c in enumerate(cameras) if c.name not in test_names]
        else:
            train_ids, test_ids = split_every(len(cameras), test_every)
    if not train_ids:
        raise SceneError(f"{root}: no training images left after the train/test split")
    return Scene(
        cameras=cameras,
        points=points,
        point_colors=colors,
        train_ids=train_ids,
        test_ids=test_ids,
        root=root,
        cache=ImageCache(int(image_cache_mb * (1 << 20))),
    )
