"""Structure from motion with pycolmap: SIFT features, exhaustive matching, incremental mapping.

`run_sfm(images, out)` turns a folder of photos into a COLMAP model at `out` (cameras/images/points3D
.bin), the input every other stage reads. The model is in COLMAP's own similarity frame (arbitrary
scale, rotation and origin): later stages must not assume metres or an up axis.

Exhaustive matching costs O(n^2) pairs: fine for the demo and for up to a few hundred photos. With one
thread per stage (the demo's settings) and a fixed seed the model repeats bit for bit run to run; several
matching threads (the default, for speed) may move poses by ~1e-5 of the scene size.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from momentumgs.errors import SceneError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


@dataclass
class SfmOptions:
    camera_model: str = "SIMPLE_RADIAL"  # SIMPLE_PINHOLE for distortion-free (synthetic) images
    single_camera: bool = True  # all photos share one camera (one drone, one lens)
    camera_params: tuple[float, ...] = ()  # optional initial intrinsics, e.g. (f, cx, cy); refined
    max_num_features: int = 4096
    # threads per stage, -1 = all cores. Measured with pycolmap 4.2.1 on the demo: several extraction or
    # mapping threads move poses by ~1e-4 of the scene size from run to run, and so, now and then, do
    # several matching threads (a CI run saw 6e-5): where a model must repeat bit for bit (the demo), use
    # one thread everywhere
    extraction_threads: int = 1
    matching_threads: int = -1
    mapping_threads: int = 1
    seed: int = 0
    min_registered_fraction: float = 0.5  # below this the result is an error, not a model


@dataclass
class SfmResult:
    path: Path  # folder holding cameras.bin, images.bin, points3D.bin
    num_images: int
    num_registered: int
    num_points: int
    mean_reprojection_error: float  # pixels
    seconds: dict[str, float] = field(default_factory=dict)  # per stage
    unregistered: list[str] = field(default_factory=list)

    def summary(self) -> str:
        times = ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
        return (
            f"SfM: {self.num_registered}/{self.num_images} images registered, {self.num_points} points, "
            f"mean reprojection error {self.mean_reprojection_error:.3f} px ({times})"
        )


def list_images(image_dir: Path) -> list[str]:
    return sorted(p.name for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def run_sfm(
    image_dir: str | Path,
    out_dir: str | Path,
    options: SfmOptions | None = None,
    log: Callable[[str], None] = print,
) -> SfmResult:
    """Reconstruct the photos in `image_dir`; write the largest model to `out_dir`."""
    import pycolmap

    opts = options or SfmOptions()
    image_dir, out_dir = Path(image_dir), Path(out_dir)
    names = list_images(image_dir) if image_dir.is_dir() else []
    if len(names) < 2:
        raise SceneError(f"{image_dir}: need at least 2 images for SfM, found {len(names)}")
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="momentumgs-sfm-") as work:
        work = Path(work)
        database = work / "database.db"
        pycolmap.set_random_seed(opts.seed)
        with _quiet_colmap(pycolmap):
            t0 = time.perf_counter()
            reader = pycolmap.ImageReaderOptions(camera_model=opts.camera_model)
            if opts.camera_params:
                reader.camera_params = ",".join(f"{v:.10g}" for v in opts.camera_params)
            extraction = pycolmap.FeatureExtractionOptions(num_threads=opts.extraction_threads)
            extraction.sift.max_num_features = opts.max_num_features
            pycolmap.extract_features(
                database,
                image_dir,
                image_names=names,
                camera_mode=pycolmap.CameraMode.SINGLE if opts.single_camera else pycolmap.CameraMode.AUTO,
                reader_options=reader,
                extraction_options=extraction,
                device=pycolmap.Device.cpu,
            )
            seconds["features"] = time.perf_counter() - t0
            log(f"  sfm: features extracted from {len(names)} images ({seconds['features']:.1f} s)")

            t0 = time.perf_counter()
            matching = pycolmap.FeatureMatchingOptions(num_threads=opts.matching_threads)
            verification = pycolmap.TwoViewGeometryOptions()
            verification.ransac.random_seed = opts.seed
            pycolmap.match_exhaustive(
                database,
                matching_options=matching,
                verification_options=verification,
                device=pycolmap.Device.cpu,
            )
            seconds["matching"] = time.perf_counter() - t0
            log(f"  sfm: {len(names) * (len(names) - 1) // 2} pairs matched ({seconds['matching']:.1f} s)")

            t0 = time.perf_counter()
            mapping = pycolmap.IncrementalPipelineOptions(
                num_threads=opts.mapping_threads, random_seed=opts.seed
            )
            mapping.mapper.num_threads = opts.mapping_threads
            mapping.mapper.random_seed = opts.seed
            mapping.triangulation.random_seed = opts.seed
            models = pycolmap.incremental_mapping(database, image_dir, work / "models", mapping)
            seconds["mapping"] = time.perf_counter() - t0
        if not models:
            raise SceneError(f"{image_dir}: SfM found no model (too little overlap or texture?)")
        rec = max(models.values(), key=lambda r: r.num_reg_images())
        registered = {img.name for img in rec.images.values() if img.has_pose}
        result = SfmResult(
            path=out_dir,
            num_images=len(names),
            num_registered=len(registered),
            num_points=rec.num_points3D(),
            mean_reprojection_error=float(rec.compute_mean_reprojection_error()),
            seconds=seconds,
            unregistered=[n for n in names if n not in registered],
        )
        log(f"  sfm: mapping done ({seconds['mapping']:.1f} s), {len(models)} model(s)")
        if result.num_registered < opts.min_registered_fraction * len(names):
            raise SceneError(
                f"{image_dir}: SfM registered only {result.num_registered} of {len(names)} images"
            )
        out_dir.mkdir(parents=True, exist_ok=True)
        rec.write(out_dir)
    return result


@contextlib.contextmanager
def _quiet_colmap(pycolmap):
    """Silence COLMAP's INFO log lines (they go to stderr by the thousand); warnings still show."""
    old = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = 1
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = old


def reprojection_errors(rec) -> np.ndarray:
    """Reprojection error (pixels) of every observation of a pycolmap Reconstruction, [M]."""
    errs = []
    for img in rec.images.values():
        if not img.has_pose:
            continue
        for p2d in img.points2D:
            if p2d.has_point3D():
                uv = img.project_point(rec.points3D[p2d.point3D_id].xyz)
                if uv is not None:
                    errs.append(np.linalg.norm(np.asarray(uv) - p2d.xy))
    return np.asarray(errs)


def copy_model(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file():
            shutil.copy2(f, dst / f.name)
