"""Locate a COLMAP model and check its files before pycolmap reads them; check the photos' headers.

pycolmap's binary readers trust the record counts in the files: a truncated file can make them return
garbage silently, loop (practically) forever, or abort the process (measured with pycolmap 4.2.1). So
before pycolmap sees a binary model we walk its record layout and check that it ends exactly at the end of
the file, which costs one pass over the headers; text models are checked against the counts COLMAP writes
in their header comments.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from pathlib import Path

import cv2
import pycolmap

from momentumgs.data.scene import Scene
from momentumgs.errors import SceneError

MODEL_FILES = ("cameras", "images", "points3D")


def find_model_dir(root: Path, sparse: str | os.PathLike | None = None) -> Path:
    """The folder holding cameras/images/points3D: `sparse` if given, else root/sparse/0 or root/sparse."""
    if sparse is not None:
        model_dir = Path(sparse)
        if not model_dir.is_absolute():
            model_dir = root / model_dir
        candidates = [model_dir]
    else:
        candidates = [root / "sparse" / "0", root / "sparse"]
    for cand in candidates:
        if model_format(cand) is not None:
            return cand
    raise SceneError(
        f"{candidates[0]}: no COLMAP model (expected cameras, images and points3D as .bin or .txt)"
    )


def model_format(model_dir: Path) -> str | None:
    """ "bin" or "txt" as pycolmap's Reconstruction.read would choose it (binary first), else None."""
    for ext in ("bin", "txt"):
        if all((model_dir / f"{name}.{ext}").is_file() for name in MODEL_FILES):
            return ext
    return None


def _num_params(model_id: int) -> int | None:
    try:
        model = pycolmap.CameraModelId(model_id)
    except ValueError:
        return None
    if model.name == "INVALID":
        return None
    return int(pycolmap.Camera.create_from_model_id(0, model, 1.0, 1, 1).params.size)


class _Reader:
    """Bounds-checked cursor over a binary model file; any overrun is a SceneError naming the file."""

    def __init__(self, path: Path, buf):
        self.path, self.buf, self.pos, self.size = path, buf, 0, len(buf)

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise SceneError(f"{self.path}: truncated or corrupt ({what} runs past the end of the file)")

    def unpack(self, fmt: str, what: str) -> tuple:
        n = struct.calcsize(fmt)
        self.need(n, what)
        out = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return out

    def skip(self, n: int, what: str) -> None:
        self.need(n, what)
        self.pos += n

    def count(self, what: str, record_min: int) -> int:
        (n,) = self.unpack("<Q", f"{what} count")
        # A count that cannot fit in the rest of the file is corrupt; checked before any loop.
        self.need(n * record_min, f"{n} {what}")
        return n

    def finish(self) -> None:
        if self.pos != self.size:
            raise SceneError(f"{self.path}: corrupt ({self.size - self.pos} unexpected bytes at the end)")


def _walk_cameras(r: _Reader) -> None:
    for _ in range(r.count("cameras", 24)):
        camera_id, model_id, width, height = r.unpack("<IiQQ", "camera record")
        n = _num_params(model_id)
        if n is None:
            raise SceneError(f"{r.path}: camera {camera_id} has unknown camera model id {model_id}")
        if width == 0 or height == 0 or width > 1 << 20 or height > 1 << 20:
            raise SceneError(f"{r.path}: camera {camera_id} has an invalid size {width}x{height}")
        r.skip(8 * n, f"camera {camera_id} parameters")


def _walk_images(r: _Reader) -> None:
    for _ in range(r.count("images", 64 + 1 + 8)):
        r.skip(4 + 56 + 4, "image record")
        end = r.buf.find(b"\0", r.pos)
        if end < 0:
            raise SceneError(f"{r.path}: truncated or corrupt (image name runs past the end of the file)")
        r.pos = end + 1
        (num_points2d,) = r.unpack("<Q", "image keypoint count")
        r.skip(24 * num_points2d, "image keypoints")


_TRACK_LENGTH = struct.Struct("<Q")


def _walk_points(r: _Reader) -> None:
    # Millions of records: plain locals here (3-4x faster than the cursor's methods); a record that does
    # not fit is walked again through them, for their message.
    count = r.count("points", 51)
    buf, pos, size = r.buf, r.pos, r.size
    track_length_at = _TRACK_LENGTH.unpack_from
    for _ in range(count):
        if pos + 51 > size:
            r.pos = pos
            r.skip(43, "point record")
            r.unpack("<Q", "point track length")
        (track_length,) = track_length_at(buf, pos + 43)
        pos += 51 + 8 * track_length
        if pos > size:
            r.pos = pos - 8 * track_length
            r.skip(8 * track_length, "point track")
    r.pos = pos


def _walk_rigs(r: _Reader) -> None:
    for _ in range(r.count("rigs", 8)):
        _, num_sensors = r.unpack("<II", "rig record")
        if num_sensors > 0:
            r.skip(8, "rig reference sensor")
        for _ in range(max(num_sensors - 1, 0)):
            r.skip(8, "rig sensor")
            (has_pose,) = r.unpack("<B", "rig sensor pose flag")
            if has_pose:
                r.skip(56, "rig sensor pose")


def _walk_frames(r: _Reader) -> None:
    for _ in range(r.count("frames", 68)):
        r.skip(8 + 56, "frame record")
        (num_data,) = r.unpack("<I", "frame data count")
        r.skip(16 * num_data, "frame data ids")


_BINARY_WALKERS = {
    "rigs": _walk_rigs,
    "cameras": _walk_cameras,
    "frames": _walk_frames,
    "images": _walk_images,
    "points3D": _walk_points,
}


def check_binary_model(model_dir: Path) -> None:
    """Walk each .bin file's record layout; raise SceneError unless it ends exactly at the file end."""
    for name, walk in _BINARY_WALKERS.items():
        path = model_dir / f"{name}.bin"
        if not path.is_file():
            continue  # rigs.bin and frames.bin are absent in models written before COLMAP 3.12
        size = path.stat().st_size
        if size == 0:
            raise SceneError(f"{path}: empty file (truncated?)")
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            reader = _Reader(path, buf)
            walk(reader)
            reader.finish()


_HEADER_COUNT = {
    "cameras": re.compile(r"#\s*Number of cameras:\s*(\d+)"),
    "images": re.compile(r"#\s*Number of images:\s*(\d+)"),
    "points3D": re.compile(r"#\s*Number of points:\s*(\d+)"),
}


def _text_header_count(path: Path, name: str) -> int | None:
    with open(path, encoding="utf-8", errors="replace") as f:
        for _ in range(8):
            line = f.readline()
            if not line.startswith("#"):
                break
            m = _HEADER_COUNT[name].match(line)
            if m:
                return int(m.group(1))
    return None


def read_model(model_dir: Path) -> pycolmap.Reconstruction:
    """pycolmap reconstruction of `model_dir`, checked first so that a damaged file cannot hang or crash."""
    fmt = model_format(model_dir)
    if fmt is None:
        raise SceneError(f"{model_dir}: no COLMAP model (expected cameras, images and points3D)")
    if fmt == "bin":
        check_binary_model(model_dir)
    rec = pycolmap.Reconstruction()
    try:
        if fmt == "bin":
            rec.read_binary(str(model_dir))
        else:
            rec.read_text(str(model_dir))
    except Exception as exc:  # pycolmap raises ValueError/RuntimeError/IndexError with C++ check text
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SceneError(f"{model_dir}: pycolmap cannot read the {fmt} model: {detail}") from None
    if fmt == "txt":
        # A text file cut at a line boundary reads as a smaller model; COLMAP's header says how many.
        counts = {"cameras": rec.num_cameras(), "images": rec.num_images(), "points3D": rec.num_points3D()}
        for name, got in counts.items():
            path = model_dir / f"{name}.txt"
            want = _text_header_count(path, name)
            if want is not None and want != got:
                raise SceneError(f"{path}: header says {want} {name} but {got} were read (truncated?)")
    return rec


# ----------------------------------------------------------------------------------------------
# Photos


def image_header_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header; SceneError if missing or not a readable image."""
    if not path.is_file():
        raise SceneError(f"{path}: image listed in the model but missing")
    try:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                return im.size
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            pass
    except ImportError:
        pass
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # formats PIL does not know (e.g. EXR)
    if img is None:
        raise SceneError(f"{path}: cannot read image (corrupt or not an image)")
    return img.shape[1], img.shape[0]


def check_image(path: Path, width: int, height: int, tolerance: float = 0.0) -> None:
    """The file exists, its header reads and its size is width x height (within `tolerance` pixels)."""
    w, h = image_header_size(path)
    if abs(w - width) > tolerance or abs(h - height) > tolerance:
        raise SceneError(f"{path}: image is {w}x{h} but the model expects {width}x{height}")


def validate_images(scene: Scene) -> None:
    """Cheap early check of every camera's image file (header only): exists, readable, right size."""
    for cam in scene.cameras:
        check_image(
            cam.image_path, cam.width * cam.downscale, cam.height * cam.downscale, tolerance=cam.downscale
        )
