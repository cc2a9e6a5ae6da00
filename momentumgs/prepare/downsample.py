"""Cached downsampled image folders: images -> images_{f} beside it (the paper evaluates at 1/4 resolution).

`load_colmap_scene(..., downscale=f)` reads images_{f} when present, expecting round(W/f) x round(H/f)
(halves up; `momentumgs.data.colmap_cameras.scaled_size`), so this module writes exactly that size. Area
filter (cv2.INTER_AREA); EXIF orientation ignored, as COLMAP does. A manifest in each images_{f} records the
source files' size and mtime, so a rerun only redoes images that changed; every file is written atomically.
Scenes with train/ and val/ folders get both image folders downsampled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2

from momentumgs.data.colmap_cameras import scaled_size
from momentumgs.errors import UserError
from momentumgs.io_utils import write_bytes_atomic, write_text_atomic
from momentumgs.prepare.images import list_image_names

FACTORS = (2, 4, 8)
MANIFEST = ".momentumgs_downsample.json"


@dataclass
class DownsampleResult:
    folder: Path
    written: int
    skipped: int


def image_folders(scene: Path, images: str = "images") -> list[Path]:
    parts = [scene / "train", scene / "val"] if (scene / "train" / images).is_dir() else [scene]
    folders = [p / images for p in parts if (p / images).is_dir()]
    if not folders:
        raise UserError(f"{scene}: no {images}/ folder (nor train/{images} and val/{images})")
    return folders


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def downsample_image(src: Path, dst: Path, factor: int) -> None:
    img = cv2.imread(str(src), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        raise UserError(f"{src}: cannot read image")
    h, w = img.shape[:2]
    size = scaled_size(w, h, factor)
    small = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if dst.suffix.lower() in (".jpg", ".jpeg") else []
    ok, data = cv2.imencode(dst.suffix, small, params)
    if not ok:
        raise UserError(f"{dst}: cannot encode image")
    write_bytes_atomic(dst, data.tobytes())


def downsample_folder(folder: Path, factor: int, progress: bool = True) -> DownsampleResult:
    from tqdm import tqdm

    out = folder.with_name(f"{folder.name}_{factor}")
    out.mkdir(exist_ok=True)
    manifest_path = out / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    except ValueError:
        manifest = {}  # damaged manifest: rebuild everything
    names = list_image_names(folder, recursive=True)
    written = skipped = 0
    for name in tqdm(names, desc=f"{folder.name}_{factor}", unit="img", disable=not progress):
        src, dst = folder / name, out / name
        stamp = _stamp(src)
        if manifest.get(name) == stamp and dst.is_file():
            skipped += 1
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        downsample_image(src, dst, factor)
        manifest[name] = stamp
        written += 1
        if written % 64 == 0:  # a killed run keeps most of its work
            write_text_atomic(manifest_path, json.dumps(manifest))
    write_text_atomic(manifest_path, json.dumps(manifest))
    return DownsampleResult(out, written, skipped)


def downsample_scene(scene: str | Path, factor: int, images: str = "images", progress: bool = True):
    if factor not in FACTORS:
        raise UserError(f"--factor: expected one of {', '.join(map(str, FACTORS))}, got {factor}")
    scene = Path(scene).expanduser()
    if not scene.is_dir():
        raise UserError(f"{scene}: scene folder does not exist")
    return [downsample_folder(f, factor, progress) for f in image_folders(scene, images)]
