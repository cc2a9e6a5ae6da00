"""Read a COLMAP scene into a `Scene`: pinhole K, world->camera viewmats, train/test split, SfM points.

The model is read by pycolmap. pycolmap's binary readers trust the record counts in the files: a
truncated file can make them return garbage silently, loop (practically) forever, or abort the process
(measured with pycolmap 4.2.1). So before pycolmap sees a binary model we walk its record layout and
check that it ends exactly at the end of the file, which costs one pass over the headers; text models
are checked against the counts COLMAP writes in their header comments.

Distorted cameras (SIMPLE_RADIAL, RADIAL, OPENCV) are undistorted once into a cache folder under
$MOMENTUMGS_CACHE (default ~/.cache/momentumgs), never into the scene folder. The undistorted pinhole
camera is pycolmap's `undistort_camera` (COLMAP's own choice of focal length, size and principal
point); the pixels are resampled with one OpenCV remap per camera, its map built from pycolmap's own
`img_from_cam`. This keeps COLMAP's distortion formulas exact while undistorting only the images that
need it (pycolmap's `undistort_images` rewrites the whole model and every image) and writing each
cached image atomically, so an interrupted run leaves a usable partial cache.

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

import hashlib
import json
import mmap
import os
import re
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pycolmap

from momentumgs.data.scene import Camera, ImageCache, Scene
from momentumgs.errors import ConfigError, SceneError
from momentumgs.io_utils import write_bytes_atomic, write_text_atomic

PINHOLE_MODELS = ("SIMPLE_PINHOLE", "PINHOLE")
DISTORTED_MODELS = ("SIMPLE_RADIAL", "RADIAL", "OPENCV")
MODEL_FILES = ("cameras", "images", "points3D")
UNDISTORT_VERSION = 1  # bump when the cached pixels would change


# ----------------------------------------------------------------------------------------------
# Locating and checking the model files


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
# Cameras


def _cam_from_world(image) -> np.ndarray:
    """World -> camera 4x4 float64 of a pycolmap image (method in pycolmap 3.12+, property before)."""
    pose = image.cam_from_world
    pose = pose() if callable(pose) else pose
    viewmat = np.eye(4)
    viewmat[:3, :] = pose.matrix()
    return viewmat


def _pinhole_K(camera) -> np.ndarray:
    """[3, 3] pinhole K of a camera's focal length and principal point (distortion ignored)."""
    return np.array(
        [
            [camera.focal_length_x, 0.0, camera.principal_point_x],
            [0.0, camera.focal_length_y, camera.principal_point_y],
            [0.0, 0.0, 1.0],
        ]
    )


def is_distorted(camera) -> bool:
    """True when the model has distortion terms and any of them is non-zero."""
    if camera.model.name in PINHOLE_MODELS:
        return False
    idxs = list(camera.extra_params_idxs())
    return bool(np.any(np.asarray(camera.params)[idxs] != 0.0))


def scaled_size(width: int, height: int, downscale: int) -> tuple[int, int]:
    """round(W/d), round(H/d) with halves rounded up (Python's round() would round 32.5 to 32)."""
    return max(1, int(width / downscale + 0.5)), max(1, int(height / downscale + 0.5))


def scale_K(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """K of an image resized by (sx, sy) over its full extent (pixel centres at +0.5)."""
    return np.diag([sx, sy, 1.0]) @ K


def undistorted_camera(camera, width: int, height: int):
    """pycolmap PINHOLE camera of `camera` (rescaled to width x height first), as COLMAP chooses it."""
    src = pycolmap.Camera(camera.todict())
    if (src.width, src.height) != (width, height):
        src.rescale(width, height)
    return src, pycolmap.undistort_camera(pycolmap.UndistortCameraOptions(), src)


def undistortion_maps(src, pinhole, rows_per_block: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """cv2.remap maps [h, w] float32: for each undistorted pixel, where to sample the distorted image.

    Built in blocks of rows so that a 50-megapixel camera needs tens of MB of scratch, not gigabytes.
    """
    w, h = pinhole.width, pinhole.height
    K = _pinhole_K(pinhole)
    map_x = np.empty((h, w), np.float32)
    map_y = np.empty((h, w), np.float32)
    x = (np.arange(w) + 0.5 - K[0, 2]) / K[0, 0]  # [w] pixel centres -> normalised coordinates
    for r0 in range(0, h, rows_per_block):
        r1 = min(r0 + rows_per_block, h)
        y = (np.arange(r0, r1) + 0.5 - K[1, 2]) / K[1, 1]  # [b]
        xx, yy = np.meshgrid(x, y)  # [b, w]
        rays = np.stack([xx, yy, np.ones_like(xx)], -1).reshape(-1, 3)
        src_uv = np.asarray(src.img_from_cam(rays, check_cheirality=False)).reshape(r1 - r0, w, 2)
        map_x[r0:r1] = src_uv[..., 0] - 0.5  # COLMAP puts pixel centres at +0.5, cv2 at 0
        map_y[r0:r1] = src_uv[..., 1] - 0.5
    return map_x, map_y


# ----------------------------------------------------------------------------------------------
# Images


def cache_root() -> Path:
    return Path(os.environ.get("MOMENTUMGS_CACHE") or Path.home() / ".cache" / "momentumgs")


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


def _read_bgr(path: Path, width: int, height: int) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)  # as COLMAP does
    if img is None:
        raise SceneError(f"{path}: cannot decode image")
    if img.shape[:2] != (height, width):
        img = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
    return img


def _undistort_one(src_path: Path, dst_path: Path, size: tuple[int, int], maps) -> None:
    img = _read_bgr(src_path, *size)
    out = cv2.remap(img, maps[0], maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    ok, data = cv2.imencode(".png", out, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise SceneError(f"{src_path}: cannot encode the undistorted image")
    write_bytes_atomic(dst_path, data.tobytes())


def _file_stamp(path: Path) -> list:
    st = path.stat()
    return [path.name, st.st_size, st.st_mtime_ns]


# ----------------------------------------------------------------------------------------------
# One model (the whole scene, or the train or val half of a train/val layout)


@dataclass
class _View:
    name: str  # image name in the model
    camera_id: int
    viewmat: np.ndarray  # [4, 4]


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
    cameras_file = model_dir / f"cameras.{fmt}"
    images_file = model_dir / f"images.{fmt}"

    views = []
    for image_id in rec.reg_image_ids():
        image = rec.image(image_id)
        views.append(_View(image.name, image.camera_id, _cam_from_world(image)))
    views.sort(key=lambda v: v.name)
    if not views:
        raise SceneError(f"{images_file}: the model has no registered images")

    used = sorted({v.camera_id for v in views})
    for cid in used:
        name = rec.cameras[cid].model.name
        if name not in PINHOLE_MODELS + DISTORTED_MODELS:
            raise SceneError(
                f"{cameras_file}: camera {cid} uses the unsupported model {name} "
                f"(supported: {', '.join(PINHOLE_MODELS + DISTORTED_MODELS)})"
            )

    image_dir = image_root / images
    pre_dir = image_root / f"{images}_{downscale}"
    pre_scaled = downscale > 1 and pre_dir.is_dir()
    source_dir = pre_dir if pre_scaled else image_dir
    if not source_dir.is_dir():
        raise SceneError(f"{source_dir}: image folder does not exist")

    # Every check that can fail happens before anything is written to the cache.
    for v in views:
        path = source_dir / v.name
        if not path.is_file():
            raise SceneError(f"{path}: image listed in {images_file} but missing")
    if check_images:
        for v in views:
            cam = rec.cameras[v.camera_id]
            if pre_scaled:
                w, h = scaled_size(cam.width, cam.height, downscale)
                check_image(source_dir / v.name, w, h, tolerance=1)  # resize tools round differently
            else:
                check_image(source_dir / v.name, cam.width, cam.height)

    # Per camera: the K, size and file resize of what load_image returns.
    load_downscale, out_K, out_size, maps_for = {}, {}, {}, {}
    for cid in used:
        cam = rec.cameras[cid]
        if pre_scaled:
            src_size = scaled_size(cam.width, cam.height, downscale)
            d = 1  # the files are already at the target size
        else:
            src_size, d = (cam.width, cam.height), downscale
        if is_distorted(cam):
            src, pinhole = undistorted_camera(cam, *src_size)
            maps_for[cid] = (src, pinhole)
            base_K, base_size = _pinhole_K(pinhole), (pinhole.width, pinhole.height)
        else:
            base_K = scale_K(_pinhole_K(cam), src_size[0] / cam.width, src_size[1] / cam.height)
            base_size = src_size
        size = scaled_size(*base_size, d)
        out_K[cid] = scale_K(base_K, size[0] / base_size[0], size[1] / base_size[1])
        out_size[cid] = size
        load_downscale[cid] = d

    image_path = {v.name: source_dir / v.name for v in views}
    distorted = [v for v in views if v.camera_id in maps_for]
    if distorted:
        image_path.update(_undistorted_cache(model_dir, source_dir, distorted, maps_for))

    cameras = [
        Camera(
            name=prefix + v.name,
            K=out_K[v.camera_id],
            viewmat=v.viewmat,
            width=out_size[v.camera_id][0],
            height=out_size[v.camera_id][1],
            image_path=image_path[v.name],
            downscale=load_downscale[v.camera_id],
        )
        for v in views
    ]
    points, colors = _points(rec)
    return _Part(cameras, points, colors)


def _points(rec) -> tuple[np.ndarray, np.ndarray]:
    pts = list(rec.points3D.values())
    xyz = np.array([p.xyz for p in pts], dtype=np.float32).reshape(-1, 3)  # [P, 3]
    rgb = np.array([p.color for p in pts], dtype=np.uint8).reshape(-1, 3)  # [P, 3]
    return xyz, rgb


def _undistorted_cache(model_dir: Path, source_dir: Path, views: list[_View], maps_for: dict) -> dict:
    """Undistort `views` into the cache once; return {name: cached path}. Reused while nothing changed."""
    model_files = sorted(p for p in model_dir.iterdir() if p.suffix in (".bin", ".txt") and p.is_file())
    key_data = {
        "version": UNDISTORT_VERSION,
        "model_dir": str(model_dir.resolve()),
        "model_files": [_file_stamp(p) for p in model_files],
        "source_dir": str(source_dir.resolve()),
        "images": [[v.name, *_file_stamp(source_dir / v.name)[1:]] for v in views],
        "cameras": {
            str(cid): [np.asarray(src.params).tolist(), src.width, src.height]
            for cid, (src, _) in maps_for.items()
        },
    }
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:20]
    folder = cache_root() / "undistorted" / key
    paths = {v.name: folder / "images" / (v.name + ".png") for v in views}
    done = folder / "done.json"
    if done.is_file() and all(p.is_file() for p in paths.values()):
        return paths

    todo = [v for v in views if not paths[v.name].is_file()]
    # Work in chunks of images sharing a camera: each chunk builds its camera's maps once, and at most
    # `workers` maps are alive at a time (scenes with one camera per image stay bounded in memory).
    workers = min(4, os.cpu_count() or 1)
    chunks = []
    for cid in sorted({v.camera_id for v in todo}):
        group = [v for v in todo if v.camera_id == cid]
        size = max(1, min(32, -(-len(group) // workers)))
        chunks += [(cid, group[i : i + size]) for i in range(0, len(group), size)]

    def work(chunk) -> None:
        cid, group = chunk
        src, pinhole = maps_for[cid]
        maps = undistortion_maps(src, pinhole)
        for v in group:
            _undistort_one(source_dir / v.name, paths[v.name], (src.width, src.height), maps)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(work, chunks))  # list() re-raises the first error
    write_text_atomic(done, json.dumps(key_data, indent=1))
    return paths


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
