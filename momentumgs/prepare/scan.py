"""Large-scene hygiene scan: size, a memory estimate per block for a config, and warnings, before training.

Memory model (float32 = 4 bytes; per block, for the partition the config asks for):

  anchors    = SfM points of the block (partition.block_points) voxelised at model.voxel_size (0: the
               median 3-NN spacing of the points, as training chooses it); each block's points and
               anchors are also given as a share of the whole scene's (voxelised the same way), which
               tells whether a block costs a block or the scene
  Gaussians  = model.n_offsets (10) x anchors
  state      = anchors x (learned floats  x 4 [value, grad, Adam m, Adam v] + 3 position floats
               + 2 x (n_offsets + 1) densification statistics); learned floats = feat_dim + 3 n_offsets + 6
  decoding   = anchors in view x (n_offsets x 14 Gaussian floats x 3 [value, grad, intermediate]
               + 3 MLPs x hidden_dim x 2) floats; worst case: the whole block in view (VISIBLE_FRACTION)
  rasterizer = Gaussians in view x PROJECTED_BYTES + pixels x (PAIRS_PER_PIXEL x PAIR_BYTES + PIXEL_BYTES)
               at the training resolution (largest camera / data.downscale)
  VRAM       = (CUDA_CONTEXT + state + decoding + rasterizer) x (1 + SLACK)
  RAM        = min(state of all blocks, method.ram_budget_mb; idle blocks beyond it spill to disk)
               + data.image_cache_mb + PROCESS_BASELINE

PAIRS_PER_PIXEL, the (Gaussian, tile) intersections per pixel, is an assumption for dense aerial views, not
a measurement; it dominates only at high resolutions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from momentumgs.errors import UserError

VISIBLE_FRACTION = 1.0
GAUSSIAN_FLOATS = 14  # position 3, scale 3, rotation 4, opacity 1, colour 3
PROJECTED_BYTES = 128  # means2d, conic, depth, radii, colour and their gradients
PAIRS_PER_PIXEL = 10.0
PAIR_BYTES = 24  # 64-bit sort key + 32-bit Gaussian id, double-buffered by the radix sort
PIXEL_BYTES = 96  # render, target, transmittance, contributor count, SSIM maps and gradients
CUDA_CONTEXT = 0.5 * 2**30
PROCESS_BASELINE = 1.0 * 2**30  # python + torch + the scene's cameras
SLACK = 0.2
FAR_FACTOR = 5.0  # a camera is far when > 5x the median distance to the median centre
SCALE_RANGE = (1.0, 100.0)  # plausible median camera spacing in metres

GiB = float(2**30)


def fmt_bytes(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / 2**20:.1f} MiB"


@dataclass
class BlockEstimate:
    index: int
    points: int
    anchors: int
    gaussians: int
    state_bytes: float
    vram_bytes: float
    point_share: float = 0.0  # % of the scene's points
    anchor_share: float = 0.0  # % of the scene's anchors (all its points voxelised alike)


@dataclass
class ScanReport:
    scene: Path
    images: int = 0
    megapixels: float = 0.0
    points: int = 0
    sizes: dict = field(default_factory=dict)
    voxel_size: float = 0.0
    anchors: int = 0  # the whole scene's points voxelised: what one block over the scene starts from
    train_resolution: tuple = (0, 0)
    blocks: list[BlockEstimate] = field(default_factory=list)
    ram_bytes: float = 0.0
    warnings: list[str] = field(default_factory=list)
    plausibility: dict = field(default_factory=dict)  # per model ("model", or "train" and "val"): each check

    def text(self) -> str:
        w, h = self.train_resolution
        sizes = ", ".join(f"{k} ({v})" for k, v in list(self.sizes.items())[:4])
        lines = [
            f"scan: {self.scene}",
            f"  images: {self.images} ({self.megapixels:.1f} megapixels in all; sizes {sizes})",
            f"  points: {self.points}",
            f"  training resolution {w}x{h}, voxel size {self.voxel_size:.4g}, {self.anchors} anchors in all",
        ]
        for b in self.blocks:
            lines.append(
                f"  block {b.index}: {b.points} points ({b.point_share:.0f}% of the scene's) -> {b.anchors} "
                f"anchors ({b.anchor_share:.0f}%), {b.gaussians} Gaussians; "
                f"state {fmt_bytes(b.state_bytes)}, VRAM ~{fmt_bytes(b.vram_bytes)}"
            )
        if self.blocks:
            peak = max(b.vram_bytes for b in self.blocks)
            lines.append(f"  peak VRAM per worker ~{fmt_bytes(peak)}; host RAM ~{fmt_bytes(self.ram_bytes)}")
        lines += [f"  warning: {w}" for w in self.warnings] or ["  no warnings"]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["scene"] = str(self.scene)
        d["blocks"] = [b.__dict__ for b in self.blocks]
        return d


# --- reading ------------------------------------------------------------------------------------


def _parts(root: Path) -> list[tuple[str, Path]]:
    if not (root / "sparse").exists() and (root / "train").is_dir():
        return [("train/", root / "train"), ("val/", root / "val")]
    return [("", root)]


def read_scene(root: Path, images: str, warnings: list[str], plausibility: dict | None = None):
    """Cameras (pinhole, distortion ignored) and train points of a scene, without touching the pixels;
    the plausibility checks of each model go into `plausibility` and their warnings into `warnings`."""
    from momentumgs.data.colmap_cameras import cam_from_world, pinhole_K
    from momentumgs.data.colmap_files import find_model_dir, read_model
    from momentumgs.data.scene import Camera
    from momentumgs.prepare.plausibility import check_pycolmap

    cameras, points, model_sizes = [], np.zeros((0, 3), np.float32), {}
    train_ids, test_ids = [], []
    for prefix, part in _parts(root):
        if not part.is_dir():
            warnings.append(f"{part}: missing")
            continue
        rec = read_model(find_model_dir(part))
        checked = check_pycolmap(rec)
        warnings.extend(f"{prefix.rstrip('/')} model: {w}" if prefix else w for w in checked.warnings)
        if plausibility is not None:
            plausibility[prefix.rstrip("/") or "model"] = checked.to_dict()
        for image_id in sorted(rec.reg_image_ids(), key=lambda i: rec.image(i).name):
            im = rec.image(image_id)
            cam = rec.cameras[im.camera_id]
            (test_ids if prefix == "val/" else train_ids).append(len(cameras))
            model_sizes[prefix + im.name] = (cam.width, cam.height)
            cameras.append(
                Camera(
                    prefix + im.name,
                    pinhole_K(cam),
                    cam_from_world(im),
                    cam.width,
                    cam.height,
                    part / images / im.name,
                )
            )
        if prefix != "val/":
            pts = np.array([p.xyz for p in rec.points3D.values()], np.float32).reshape(-1, 3)
            points = np.concatenate([points, pts])
    if not cameras:
        raise UserError(f"{root}: the scene has no registered images")
    return cameras, points, train_ids, test_ids, model_sizes


def check_files(cameras, model_sizes: dict, warnings: list[str]) -> dict:
    """Image sizes on disk (headers only); warnings for missing, unreadable and mismatched files."""
    from momentumgs.data.colmap_files import image_header_size

    sizes: dict[str, int] = {}
    missing, unreadable, mismatched = [], [], []
    for cam in cameras:
        if not cam.image_path.is_file():
            missing.append(cam.name)
            continue
        try:
            w, h = image_header_size(cam.image_path)
        except UserError:
            unreadable.append(cam.name)
            continue
        sizes[f"{w}x{h}"] = sizes.get(f"{w}x{h}", 0) + 1
        if (w, h) != model_sizes[cam.name]:
            mismatched.append(cam.name)
    for what, names in (("missing", missing), ("unreadable", unreadable)):
        if names:
            warnings.append(
                f"{len(names)} image(s) {what}: {', '.join(names[:5])}" + (" ..." if len(names) > 5 else "")
            )
    if mismatched:
        warnings.append(
            f"{len(mismatched)} image(s) differ in size from their model camera, e.g. {mismatched[0]}"
        )
    if len(sizes) > 1:
        warnings.append(f"mixed image sizes: {', '.join(f'{k} ({v})' for k, v in sizes.items())}")
    return sizes


def geometry_warnings(centres: np.ndarray, names: list[str], n_points: int, warnings: list[str]) -> None:
    median_centre = np.median(centres, axis=0)
    dist = np.linalg.norm(centres - median_centre, axis=1)
    typical = float(np.median(dist))
    if typical > 0:
        far = np.flatnonzero(dist > FAR_FACTOR * typical)
        if len(far):
            shown = ", ".join(f"{names[i]} ({dist[i] / typical:.1f}x)" for i in far[:5])
            warnings.append(
                f"{len(far)} camera(s) far from the rest (> {FAR_FACTOR:g}x the median distance "
                f"{typical:.3g} to the median centre): {shown}"
            )
    if len(centres) >= 2:
        from scipy.spatial import cKDTree

        nn, _ = cKDTree(centres).query(centres, k=2)
        spacing = float(np.median(nn[:, 1]))
        if not SCALE_RANGE[0] <= spacing <= SCALE_RANGE[1]:
            warnings.append(
                f"median camera spacing is {spacing:.3g} units, far from "
                f"{SCALE_RANGE[0]:g}-{SCALE_RANGE[1]:g}: "
                "the scene scale looks arbitrary (SfM frame, not metres); size-dependent settings "
                "(voxel size, AABB) must be given in these units"
            )
    if n_points == 0:
        warnings.append("no SfM points: anchors cannot be initialised (triangulate first)")


# --- estimate -----------------------------------------------------------------------------------


def voxel_count(points: np.ndarray, voxel: float) -> int:
    """Anchors the voxel initialisation makes from points [Q, 3] (as model.anchors.voxelize)."""
    return len(np.unique(np.round(points / voxel).astype(np.int64), axis=0)) if len(points) else 0


def set_shares(blocks: list[BlockEstimate], points: int, anchors: int) -> None:
    """Each block's points and anchors as a percentage of the scene's `points` and `anchors`."""
    for b in blocks:
        b.point_share = 100.0 * b.points / max(points, 1)
        b.anchor_share = 100.0 * b.anchors / max(anchors, 1)


def block_estimate(index: int, points: np.ndarray, voxel: float, cfg, pixels: int) -> BlockEstimate:
    m = cfg.model
    anchors = voxel_count(points, voxel)
    learned = m.feat_dim + 3 * m.n_offsets + 6
    per_anchor_state = 4 * (4 * learned + 3 + 2 * (m.n_offsets + 1))
    per_anchor_decode = 4 * (m.n_offsets * GAUSSIAN_FLOATS * 3 + 3 * m.hidden_dim * 2)
    visible = VISIBLE_FRACTION * anchors
    state = anchors * per_anchor_state
    raster = visible * m.n_offsets * PROJECTED_BYTES + pixels * (PAIRS_PER_PIXEL * PAIR_BYTES + PIXEL_BYTES)
    vram = (CUDA_CONTEXT + state + visible * per_anchor_decode + raster) * (1 + SLACK)
    return BlockEstimate(index, len(points), anchors, anchors * m.n_offsets, float(state), float(vram))


def _blocks(scene, cfg, warnings) -> list[np.ndarray]:
    """Point ids per block from the partition the config asks for (one block if it cannot be made)."""
    import dataclasses

    from momentumgs.config import CenterAssign
    from momentumgs.partition import partition_scene

    pcfg = dataclasses.replace(cfg.partition)
    if pcfg.assign.mode == "ssim":  # needs a trained model; the point split does not depend on it
        pcfg.assign = CenterAssign()
    try:
        part = partition_scene(scene, pcfg)
    except UserError as exc:
        warnings.append(f"partition failed ({exc}); estimating one block for the whole scene")
        return [np.arange(len(scene.points))]
    return [b.point_ids for b in part.blocks]


def scan_scene(root: str | Path, cfg) -> ScanReport:
    from momentumgs.data.scene import Scene
    from momentumgs.model.anchors import choose_voxel_size

    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"{root}: scene folder does not exist")
    report = ScanReport(root)
    cameras, points, train_ids, test_ids, model_sizes = read_scene(
        root, cfg.data.images, report.warnings, report.plausibility
    )
    report.images, report.points = len(cameras), len(points)
    report.megapixels = sum(c.width * c.height for c in cameras) / 1e6
    report.sizes = check_files(cameras, model_sizes, report.warnings)
    centres = np.stack([c.center for c in cameras])
    geometry_warnings(centres, [c.name for c in cameras], len(points), report.warnings)
    if not train_ids:
        raise UserError(f"{root}: no train images")
    d = max(1, int(cfg.data.downscale))
    big = max(cameras, key=lambda c: c.width * c.height)
    report.train_resolution = (round(big.width / d), round(big.height / d))
    pixels = report.train_resolution[0] * report.train_resolution[1]
    if len(points) == 0:
        return report
    rng = np.random.default_rng(0)
    sample = points[rng.choice(len(points), min(len(points), 200_000), replace=False)]
    voxel = cfg.model.voxel_size or choose_voxel_size(sample)
    report.voxel_size = float(voxel)
    scene = Scene(cameras, points, np.zeros((len(points), 3), np.uint8), train_ids or [0], test_ids, root)
    for i, ids in enumerate(_blocks(scene, cfg, report.warnings)):
        report.blocks.append(block_estimate(i, points[ids], voxel, cfg, pixels))
    report.anchors = voxel_count(points, voxel)
    set_shares(report.blocks, len(points), report.anchors)
    all_state = sum(b.state_bytes for b in report.blocks)
    report.ram_bytes = (
        min(all_state, cfg.method.ram_budget_mb * 2**20) + cfg.data.image_cache_mb * 2**20 + PROCESS_BASELINE
    )
    return report
