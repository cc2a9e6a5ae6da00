"""Photos -> COLMAP scene with pycolmap: SIFT features, matching chosen by the capture, incremental or global
mapping, undistortion to pinhole cameras, and a report of what failed and why.

Output folder:

    OUT/database.db            COLMAP database: features, matches, two-view geometries (the resume state)
    OUT/distorted/sparse/0     the mapper's largest model, cameras as estimated (with distortion)
    OUT/images, OUT/sparse/0   the undistorted pinhole scene that `load_colmap_scene` reads
    OUT/report.json            registered / total, mean reprojection error, failed images with reasons,
                               plausibility checks of the poses (momentumgs/prepare/plausibility.py) and
                               their warnings, per-stage status ("done" or "reused") and seconds
    OUT/prepare_state.json     inputs, options and finished stages, rewritten atomically after each stage

Resuming: feature extraction runs in batches and an image counts as extracted when the database holds its
keypoints and descriptors, so a run killed at any point redoes at most one batch and never extracts an
image twice. COLMAP's matchers skip pairs already in the database, so a killed matching stage resumes
where it stopped. Mapping and undistortion rerun unless the state file marks them finished.

Matching (`matcher="auto"`): spatial when every photo carries GPS EXIF (COLMAP stores it as a pose prior
during extraction), exhaustive up to `exhaustive_max_images` photos, sequential (video frames, neighbours
by file order) beyond. No vocabulary tree: it needs a downloaded tree file.

The model is in COLMAP's own similarity frame (arbitrary scale, rotation and origin): later stages must not
assume metres or an up axis. With one thread per stage and a fixed seed it repeats bit for bit run to run
(`PhotoOptions` says what more threads cost).

This is the one SfM pipeline of the project: the demo scene (momentumgs/demo/build.py) runs it too, in a
scratch folder, with its own options (`demo_sfm_options`: one matching thread, all views in one
extraction call, no undistortion).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from momentumgs.errors import UserError
from momentumgs.io_utils import write_text_atomic
from momentumgs.prepare.images import describe_sizes, list_image_names, scan_folder, size_counts

STATE_FILE = "prepare_state.json"
REPORT_FILE = "report.json"
STATE_VERSION = 1
MATCHERS = ("auto", "exhaustive", "sequential", "spatial")
MAPPERS = ("incremental", "global")
CAMERA_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")
MAX_IMAGE_ID = 2147483647  # COLMAP's pair_id = id1 * 2147483647 + id2 (database.h, kMaxNumImages)


@dataclass
class PhotoOptions:
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
    matcher: str = "auto"  # auto | exhaustive | sequential | spatial
    mapper: str = "incremental"  # incremental | global (GLOMAP inside pycolmap 4.2)
    exhaustive_max_images: int = 300  # auto: exhaustive up to this many photos (n^2/2 pairs)
    sequential_overlap: int = 10  # sequential: each frame is matched with the next `overlap` (and 2^k)
    spatial_neighbours: int = 50  # spatial: GPS nearest neighbours per photo
    extraction_batch: int = 16  # photos per extraction call: the resume granularity
    min_features: int = 64  # report: fewer keypoints than this is "too few features"
    undistort: bool = True
    progress: bool = True  # tqdm bars on stderr


@dataclass
class PhotoResult:
    out: Path
    report: dict

    def summary(self) -> str:
        r = self.report
        lines = [
            f"registered {r['registered']}/{r['images']} images, {r['points']} points, mean reprojection "
            f"error {r['mean_reprojection_error']:.3f} px (matcher {r['matcher']}, mapper {r['mapper']})"
        ]
        for name, st in r["stages"].items():
            lines.append(f"  {name}: {st['status']} ({st['seconds']:.1f} s)")
        for f in r["failed"][:20]:
            lines.append(f"  failed: {f['name']}: {f['reason']}")
        if len(r["failed"]) > 20:
            lines.append(f"  ... {len(r['failed']) - 20} more failed images (see {REPORT_FILE})")
        lines += [f"  warning: {w}" for w in r.get("warnings", [])]
        return "\n".join(lines)


# --- checks and state ---------------------------------------------------------------------------


def check_options(opts: PhotoOptions) -> None:
    if opts.matcher not in MATCHERS:
        raise UserError(f"matcher: expected one of {', '.join(MATCHERS)}, got {opts.matcher!r}")
    if opts.mapper not in MAPPERS:
        raise UserError(f"mapper: expected one of {', '.join(MAPPERS)}, got {opts.mapper!r}")
    if opts.camera_model not in CAMERA_MODELS:
        raise UserError(
            f"camera model: expected one of {', '.join(CAMERA_MODELS)}, got {opts.camera_model!r}"
        )


def choose_matcher(opts: PhotoOptions, n_images: int, n_gps: int) -> str:
    if opts.matcher != "auto":
        return opts.matcher
    if n_gps == n_images:
        return "spatial"
    return "exhaustive" if n_images <= opts.exhaustive_max_images else "sequential"


def _state_key(photos: Path, names: list[str], opts: PhotoOptions, matcher: str) -> dict:
    """What must not change between a run and its resume (anything else may, e.g. thread counts)."""
    return {
        "version": STATE_VERSION,
        "photos": str(photos.resolve()),
        "images": names,
        "camera_model": opts.camera_model,
        "single_camera": opts.single_camera,
        "camera_params": list(opts.camera_params),
        "max_num_features": opts.max_num_features,
        "matcher": matcher,
        "mapper": opts.mapper,
    }


def _load_state(out: Path, key: dict) -> dict:
    path = out / STATE_FILE
    if not path.is_file():
        if out.exists() and any(out.iterdir()):
            raise UserError(f"{out}: exists, is not empty and holds no {STATE_FILE}; choose a new folder")
        return {"key": key, "done": {}, "seconds": {}}
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable ({exc}); delete the folder to start again") from None
    old = state.get("key", {})
    changed = [k for k in key if old.get(k) != key[k]]
    if changed:
        raise UserError(
            f"{out}: holds a preparation with other inputs or options ({', '.join(changed)} differ); "
            "use a new folder, or delete this one to start again"
        )
    return state


def _save_state(out: Path, state: dict) -> None:
    write_text_atomic(out / STATE_FILE, json.dumps(state, indent=1))


# --- progress and logs --------------------------------------------------------------------------


@contextlib.contextmanager
def quiet_colmap(pycolmap):
    """Silence COLMAP's INFO log lines (they go to stderr by the thousand); warnings still show."""
    old = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = 1
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = old


def _bar(opts: PhotoOptions, total: int | None, desc: str, initial: int = 0, unit: str = "img"):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not opts.progress, leave=True)


class _PairPoller:
    """Updates a tqdm bar from the number of verified pairs in the database while a matcher runs
    (pycolmap's matchers take no callback; they release the GIL, so a thread can watch)."""

    def __init__(self, database: Path, bar, every: float = 0.5):
        self.database, self.bar, self.every = database, bar, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._poll()

    def _poll(self) -> None:
        try:
            with sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=0.1) as con:
                (n,) = con.execute("SELECT count(*) FROM two_view_geometries").fetchone()
        except sqlite3.Error:  # locked by the writer or not created yet: try again later
            return
        self.bar.n = n
        self.bar.refresh()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._poll()


# --- stages -------------------------------------------------------------------------------------


def extracted_names(database: Path) -> set[str]:
    """Images whose keypoints and descriptors are in the database."""
    import pycolmap

    if not database.is_file():
        return set()
    db = pycolmap.Database.open(str(database))
    try:
        return {
            im.name
            for im in db.read_all_images()
            if db.exists_keypoints(im.image_id) and db.exists_descriptors(im.image_id)
        }
    finally:
        db.close()


def _shared_camera_id(database: Path) -> int:
    import pycolmap

    db = pycolmap.Database.open(str(database))
    try:
        cams = db.read_all_cameras()
        return int(cams[0].camera_id) if cams else -1
    finally:
        db.close()


def extract_stage(photos: Path, database: Path, names: list[str], opts: PhotoOptions, log) -> dict:
    import pycolmap

    t0 = time.perf_counter()
    done = extracted_names(database)
    todo = [n for n in names if n not in done]
    log(f"features: {len(done)} of {len(names)} images already extracted, {len(todo)} to go")
    reader = pycolmap.ImageReaderOptions(camera_model=opts.camera_model)
    if opts.camera_params:
        reader.camera_params = ",".join(f"{v:.10g}" for v in opts.camera_params)
    extraction = pycolmap.FeatureExtractionOptions(num_threads=opts.extraction_threads)
    extraction.sift.max_num_features = opts.max_num_features
    mode = pycolmap.CameraMode.SINGLE if opts.single_camera else pycolmap.CameraMode.PER_IMAGE
    with _bar(opts, len(names), "features", initial=len(done)) as bar:
        for i in range(0, len(todo), opts.extraction_batch):
            batch = todo[i : i + opts.extraction_batch]
            if opts.single_camera:  # later batches join the camera the first batch created
                reader.existing_camera_id = _shared_camera_id(database) if database.is_file() else -1
            with quiet_colmap(pycolmap):
                pycolmap.extract_features(
                    database,
                    photos,
                    image_names=batch,
                    camera_mode=mode,
                    reader_options=reader,
                    extraction_options=extraction,
                    device=pycolmap.Device.cpu,
                )
            bar.update(len(batch))
    return {
        "status": "done" if todo else "reused",
        "extracted": len(todo),
        "seconds": time.perf_counter() - t0,
    }


def match_stage(database: Path, n_images: int, matcher: str, opts: PhotoOptions, log) -> dict:
    import pycolmap

    t0 = time.perf_counter()
    matching = pycolmap.FeatureMatchingOptions(num_threads=opts.matching_threads)
    verification = pycolmap.TwoViewGeometryOptions()
    verification.ransac.random_seed = opts.seed
    common = {
        "matching_options": matching,
        "verification_options": verification,
        "device": pycolmap.Device.cpu,
    }
    total = n_images * (n_images - 1) // 2 if matcher == "exhaustive" else None
    log(f"matching: {matcher}" + (f", {total} pairs" if total else ""))
    with (
        _bar(opts, total, "matching", unit="pair") as bar,
        _PairPoller(database, bar) if opts.progress else contextlib.nullcontext(),
        quiet_colmap(pycolmap),
    ):
        if matcher == "exhaustive":
            pycolmap.match_exhaustive(database, **common)
        elif matcher == "sequential":
            pairing = pycolmap.SequentialPairingOptions(
                overlap=opts.sequential_overlap, quadratic_overlap=True, loop_detection=False
            )
            pycolmap.match_sequential(database, pairing_options=pairing, **common)
        else:
            db = pycolmap.Database.open(str(database))
            n_priors = db.num_pose_priors()
            db.close()
            if n_priors == 0:
                raise UserError("spatial matching needs GPS positions in the photos' EXIF; none were found")
            pairing = pycolmap.SpatialPairingOptions(max_num_neighbors=opts.spatial_neighbours)
            pycolmap.match_spatial(database, pairing_options=pairing, **common)
    return {"status": "done", "seconds": time.perf_counter() - t0}


def map_stage(photos: Path, database: Path, model_root: Path, opts: PhotoOptions, log) -> dict:
    """Run the mapper; the largest model goes to model_root/0, the others to 1, 2, ..."""
    import pycolmap

    t0 = time.perf_counter()
    work = model_root.with_name(model_root.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    pycolmap.set_random_seed(opts.seed)
    with _bar(opts, None, f"mapping ({opts.mapper})") as bar, quiet_colmap(pycolmap):
        if opts.mapper == "incremental":
            mapping = pycolmap.IncrementalPipelineOptions(
                num_threads=opts.mapping_threads, random_seed=opts.seed
            )
            mapping.mapper.num_threads = opts.mapping_threads
            mapping.mapper.random_seed = opts.seed
            mapping.triangulation.random_seed = opts.seed
            models = pycolmap.incremental_mapping(
                database, photos, work, mapping, next_image_callback=lambda: bar.update(1)
            )
        else:
            options = pycolmap.GlobalPipelineOptions(num_threads=opts.mapping_threads, random_seed=opts.seed)
            models = pycolmap.global_mapping(database, photos, work, options)
    if not models:
        shutil.rmtree(work, ignore_errors=True)
        raise UserError(f"{photos}: the mapper found no model (too little overlap or texture?)")
    ranked = sorted(models.values(), key=lambda r: -r.num_reg_images())
    shutil.rmtree(model_root, ignore_errors=True)
    for i, rec in enumerate(ranked):
        (model_root / str(i)).mkdir(parents=True)
        rec.write(model_root / str(i))
    shutil.rmtree(work, ignore_errors=True)
    sizes = [r.num_reg_images() for r in ranked]
    log(f"mapping: {len(ranked)} model(s), registered images {sizes}")
    return {"status": "done", "models": sizes, "seconds": time.perf_counter() - t0}


def undistort_stage(photos: Path, model: Path, out: Path, log) -> dict:
    """COLMAP's undistorter writes pinhole images and model into a work folder; move them into place."""
    import pycolmap

    t0 = time.perf_counter()
    work = out / "undistort.tmp"
    shutil.rmtree(work, ignore_errors=True)
    with quiet_colmap(pycolmap):
        pycolmap.undistort_images(work, model, photos)
    for name in ("images", "sparse"):
        shutil.rmtree(out / name, ignore_errors=True)
    (work / "images").rename(out / "images")
    (out / "sparse").mkdir()
    (work / "sparse").rename(out / "sparse" / "0")
    shutil.rmtree(work, ignore_errors=True)
    log(f"undistortion: pinhole scene in {out / 'images'} and {out / 'sparse' / '0'}")
    return {"status": "done", "seconds": time.perf_counter() - t0}


# --- report -------------------------------------------------------------------------------------


def _database_counts(database: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Per image name: keypoint count, and the number of images it has a verified geometry with."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as con:
        names = dict(con.execute("SELECT image_id, name FROM images"))
        keypoints = {names[i]: n for i, n in con.execute("SELECT image_id, rows FROM keypoints")}
        partners = {n: 0 for n in names.values()}
        for pair_id, rows in con.execute("SELECT pair_id, rows FROM two_view_geometries"):
            if rows <= 0:
                continue
            id2 = pair_id % MAX_IMAGE_ID
            id1 = (pair_id - id2) // MAX_IMAGE_ID
            for i in (id1, id2):
                if i in names:
                    partners[names[i]] += 1
    return keypoints, partners


def build_report(names, database: Path, model_root: Path, matcher: str, opts: PhotoOptions, stages) -> dict:
    import pycolmap

    from momentumgs.prepare.plausibility import check_pycolmap

    models = []
    i = 0
    while (model_root / str(i)).is_dir():
        models.append(pycolmap.Reconstruction(model_root / str(i)))
        i += 1
    best = models[0]
    registered = {im.name for im in best.images.values() if im.has_pose}
    elsewhere = {}
    for k, rec in enumerate(models[1:], 1):
        for im in rec.images.values():
            if im.has_pose:
                elsewhere.setdefault(im.name, (k, rec.num_reg_images()))
    keypoints, partners = _database_counts(database)
    failed = []
    for name in names:
        if name in registered:
            continue
        n_kp = keypoints.get(name)
        if n_kp is None:
            reason = "not in the database: COLMAP could not read the image"
        elif n_kp < opts.min_features:
            reason = f"too few features ({n_kp} keypoints)"
        elif partners.get(name, 0) == 0:
            reason = f"no verified matches with any other image ({n_kp} keypoints)"
        elif name in elsewhere:
            k, size = elsewhere[name]
            reason = f"registered only in a separate model (model {k}, {size} images): the capture splits"
        else:
            reason = (
                f"not registered: verified matches with {partners[name]} images, "
                "but the mapper could not place it"
            )
        failed.append({"name": name, "reason": reason})
    plausibility = check_pycolmap(best)
    return {
        "images": len(names),
        "registered": len(registered),
        "points": best.num_points3D(),
        "mean_reprojection_error": float(best.compute_mean_reprojection_error()),
        "models": [m.num_reg_images() for m in models],
        "matcher": matcher,
        "mapper": opts.mapper,
        "camera_model": opts.camera_model,
        "single_camera": opts.single_camera,
        "failed": failed,
        "warnings": plausibility.warnings,
        "plausibility": plausibility.to_dict(),
        "stages": stages,
    }


# --- entry point --------------------------------------------------------------------------------


def prepare_colmap(
    photos: str | Path, out: str | Path, opts: PhotoOptions | None = None, log: Callable[[str], None] = print
) -> PhotoResult:
    """Reconstruct the photos in `photos` into the scene folder `out` (layout in the module docstring)."""
    opts = opts or PhotoOptions()
    check_options(opts)
    photos, out = Path(photos).expanduser(), Path(out).expanduser()
    names, infos = _scan_photos(photos, out, opts)
    matcher = choose_matcher(opts, len(names), sum(i.has_gps for i in infos))
    state = _load_state(out, _state_key(photos, names, opts, matcher))
    out.mkdir(parents=True, exist_ok=True)
    _save_state(out, state)
    database = out / "database.db"
    model_root = out / "distorted" / "sparse"
    stages: dict[str, dict] = {}

    stages["features"] = extract_stage(photos, database, names, opts, log)
    missing = [n for n in names if n not in extracted_names(database)]
    if len(missing) > len(names) - 2:
        raise UserError(f"{photos}: COLMAP extracted features from only {len(names) - len(missing)} photos")

    stages.update(_match_and_map(photos, out, len(names), matcher, opts, state, log))
    if opts.undistort:
        if state["done"].get("undistortion") and (out / "sparse" / "0").is_dir():
            stages["undistortion"] = {"status": "reused", "seconds": 0.0}
        else:
            stages["undistortion"] = undistort_stage(photos, model_root / "0", out, log)
            state["done"]["undistortion"] = True
            _save_state(out, state)

    report = build_report(names, database, model_root, matcher, opts, stages)
    write_text_atomic(out / REPORT_FILE, json.dumps(report, indent=1))
    if report["registered"] < opts.min_registered_fraction * len(names):
        raise UserError(
            f"{photos}: only {report['registered']} of {len(names)} photos registered; "
            f"see {out / REPORT_FILE}"
        )
    return PhotoResult(out, report)


def _scan_photos(photos: Path, out: Path, opts: PhotoOptions) -> tuple[list[str], list]:
    """The photos' names and what their files say, once the folder passes the checks a reconstruction
    needs (two photos at least, one size for a shared camera, an output apart from the photos)."""
    if not photos.is_dir():
        raise UserError(f"{photos}: photo folder does not exist")
    names = list_image_names(photos)
    if len(names) < 2:
        raise UserError(f"{photos}: need at least 2 photos (.jpg, .png, .tif, .bmp), found {len(names)}")
    if (out / "images").resolve() == photos.resolve():
        raise UserError(f"{out}: the output would overwrite the photos; choose another folder")
    infos = scan_folder(photos, names)
    sizes = size_counts(infos)
    if opts.single_camera and len(sizes) > 1:
        raise UserError(
            f"{photos}: photos of different sizes ({describe_sizes(sizes)}) cannot share one camera; "
            "use --camera per-image"
        )
    return names, infos


def _match_and_map(
    photos: Path, out: Path, n_photos: int, matcher: str, opts: PhotoOptions, state: dict, log
) -> dict[str, dict]:
    """The matching and mapping stages, each reused when an earlier run finished it (`state`, saved after
    each stage). -> {stage: its record}"""
    database = out / "database.db"
    model_root = out / "distorted" / "sparse"
    stages: dict[str, dict] = {}
    for stage, run in (
        ("matching", lambda: match_stage(database, n_photos, matcher, opts, log)),
        ("mapping", lambda: map_stage(photos, database, model_root, opts, log)),
    ):
        reusable = state["done"].get(stage) and (stage != "mapping" or (model_root / "0").is_dir())
        if reusable:
            stages[stage] = {"status": "reused", "seconds": 0.0}
            log(f"{stage}: finished in an earlier run, reused")
            continue
        stages[stage] = run()
        state["done"][stage] = True
        if stage == "matching":  # a new matching invalidates the models and the undistorted scene
            state["done"].pop("mapping", None)
            state["done"].pop("undistortion", None)
        if stage == "mapping":
            state["done"].pop("undistortion", None)
        _save_state(out, state)
    return stages
