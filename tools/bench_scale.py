"""Cost at scale: wall time and peak RSS of info, prepare scan, partition and one training slot on synthetic
survey scenes far larger than the demo, and whether they grow at most linearly with the scene.

    python tools/bench_scale.py                              # 300/210k, 1000/700k, 3000/2.1M cameras/points
    python tools/bench_scale.py --cameras 100 300 --points-per-camera 200 --keep --workdir /tmp/scale

The scene is a drone survey over a ground plane: a grid of nadir cameras (random heading) 30 units up,
10 units apart, tiny 32x24 images, random ground points, each seen by the 3 cameras nearest to it. The
COLMAP model is written straight into the binary format with numpy (pycolmap's Python API adds points one
call at a time, minutes for millions) and read back by pycolmap like any other scene; generation is timed
on its own and is not one of the stages.

Each stage runs in its own process (the command line for info, scan and partition; the trainer's API for
the training slot, as `momentumgs train` calls it, so that it can report the image cache), and its peak RSS
is that process's own (os.wait4). The training stage trains one slot of one block for --steps steps, then
loads every training view of that block once, as an epoch would, through the scene's bounded image cache
(data.image_cache_mb, --image-cache-mb) and reports the cache's peak size. Prints a table, the growth
ratios (time/size and RSS/size between consecutive sizes, size = points), a warning line per stage that
grows faster than linear beyond --tolerance, and a final JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("info", "scan", "partition", "train")
WIDTH, HEIGHT, FOCAL = 32, 24, 30.0  # pinhole camera of every image
SPACING, ALTITUDE = 10.0, 30.0  # camera grid step and flying height (scene units ~ metres)
TRACK_LENGTH = 3

# COLMAP binary records (src/colmap/scene/reconstruction_io.cc; little endian, packed)
CAMERA_RECORD = np.dtype(
    [("id", "<i4"), ("model", "<i4"), ("width", "<u8"), ("height", "<u8"), ("params", "<f8", 4)]
)
POINT2D_RECORD = np.dtype([("xy", "<f8", 2), ("point3d_id", "<i8")])
POINT3D_RECORD = np.dtype(
    [
        ("id", "<u8"),
        ("xyz", "<f8", 3),
        ("rgb", "u1", 3),
        ("error", "<f8"),
        ("track_length", "<u8"),
        ("track", "<u4", (TRACK_LENGTH, 2)),  # (image id, point2D index) pairs
    ]
)
PINHOLE_MODEL_ID = 1


# --- the synthetic scene --------------------------------------------------------------------------------


def survey_cameras(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """World->camera rotations [N, 3, 3] and centres [N, 3] of a near-square grid of nadir cameras, each
    with a random heading (so that the up axis is clear from the cameras' x axes); the grid (rows, cols)."""
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    idx = np.arange(n)
    centres = np.stack([idx % cols * SPACING, idx // cols * SPACING, np.full(n, ALTITUDE)], 1)  # [N, 3]
    heading = rng.uniform(0, 2 * np.pi, n)
    x_axis = np.stack([np.cos(heading), np.sin(heading), np.zeros(n)], 1)  # image right, horizontal
    z_axis = np.broadcast_to([0.0, 0.0, -1.0], (n, 3))  # looking straight down
    y_axis = np.cross(z_axis, x_axis)
    return np.stack([x_axis, y_axis, z_axis], 1), centres, (rows, cols)  # rows of R are the camera axes


def quaternions(R: np.ndarray) -> np.ndarray:
    """[N, 3, 3] rotations whose third row is (0, 0, -1) (nadir) -> [N, 4] unit quaternions (w, x, y, z).

    For these w = 0 and the rotation is 180 degrees about a horizontal axis (x, y, 0)."""
    x = np.sqrt(np.clip((1 + R[:, 0, 0]) / 2, 0, None))
    y = np.sqrt(np.clip((1 + R[:, 1, 1]) / 2, 0, None))
    y = np.where(x > 1e-6, R[:, 0, 1] / (2 * np.maximum(x, 1e-12)), y)  # R01 = 2xy; x >= 0 fixes the sign
    q = np.stack([np.zeros(len(R)), x, y, np.zeros(len(R))], 1)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def survey_points(
    n_points: int, centres: np.ndarray, grid: tuple[int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Ground points [P, 3] over the camera grid and their tracks [P, TRACK_LENGTH]: the nearest camera and
    its next neighbours in the grid (x and y), so every point is seen by TRACK_LENGTH distinct cameras."""
    rows, cols = grid
    n = len(centres)
    lo, hi = centres[:, :2].min(0), centres[:, :2].max(0)
    xy = rng.uniform(lo - SPACING / 2, hi + SPACING / 2, (n_points, 2))
    z = rng.normal(0.0, 0.5, n_points)  # a slightly rough ground
    points = np.column_stack([xy, z])  # [P, 3]
    col = np.clip(np.rint(xy[:, 0] / SPACING), 0, cols - 1).astype(np.int64)
    row = np.clip(np.rint(xy[:, 1] / SPACING), 0, rows - 1).astype(np.int64)
    row = np.minimum(row, (n - 1 - col) // cols)  # the last row may be partial
    home = row * cols + col
    step_x = np.where((col + 1 < cols) & (home + 1 < n), 1, -1)
    step_y = np.where(home + cols < n, cols, -cols)
    tracks = np.stack([home, home + step_x, home + step_y], 1)  # [P, 3] camera indices
    return points, tracks


def project(R: np.ndarray, centres: np.ndarray, cam: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Pixel coordinates [M, 2] (centres at +0.5) of points [M, 3] in cameras cam [M]."""
    p = np.einsum("mij,mj->mi", R[cam], points - centres[cam])  # [M, 3] camera frame
    return FOCAL * p[:, :2] / p[:, 2:3] + np.array([WIDTH / 2, HEIGHT / 2])


def write_model(model_dir: Path, R: np.ndarray, centres: np.ndarray, points: np.ndarray, tracks: np.ndarray):
    """cameras.bin, images.bin and points3D.bin of one shared PINHOLE camera; image i has id i + 1 and the
    name {i:05d}.png; point j has id j + 1."""
    model_dir.mkdir(parents=True, exist_ok=True)
    n, n_points = len(centres), len(points)
    camera = np.zeros(1, CAMERA_RECORD)
    camera[0] = (1, PINHOLE_MODEL_ID, WIDTH, HEIGHT, (FOCAL, FOCAL, WIDTH / 2, HEIGHT / 2))
    with open(model_dir / "cameras.bin", "wb") as f:
        f.write(np.uint64(1).tobytes() + camera.tobytes())

    # Observations grouped by image: a stable sort keeps each image's point2D order = point order.
    obs_cam = tracks.reshape(-1)  # [P * T]
    obs_point = np.repeat(np.arange(n_points), TRACK_LENGTH)  # [P * T]
    order = np.argsort(obs_cam, kind="stable")
    counts = np.bincount(obs_cam, minlength=n)  # [N]
    starts = np.concatenate([[0], np.cumsum(counts)])
    point2d_index = np.empty(len(order), np.int64)  # of each observation inside its image
    point2d_index[order] = np.arange(len(order)) - np.repeat(starts[:-1], counts)
    uv = project(R, centres, obs_cam[order], points[obs_point[order]])  # [P * T, 2]
    records = np.zeros(len(order), POINT2D_RECORD)
    records["xy"], records["point3d_id"] = uv, obs_point[order] + 1

    q = quaternions(R)
    t = -np.einsum("nij,nj->ni", R, centres)  # [N, 3]
    with open(model_dir / "images.bin", "wb") as f:
        f.write(np.uint64(n).tobytes())
        for i in range(n):
            head = np.uint32(i + 1).tobytes() + q[i].astype("<f8").tobytes() + t[i].astype("<f8").tobytes()
            f.write(head + np.uint32(1).tobytes() + f"{i:05d}.png".encode() + b"\0")
            f.write(np.uint64(counts[i]).tobytes() + records[starts[i] : starts[i + 1]].tobytes())

    pts = np.zeros(n_points, POINT3D_RECORD)
    pts["id"] = np.arange(1, n_points + 1)
    pts["xyz"] = points
    pts["rgb"] = np.clip(96 + 40 * points[:, 2:3] + np.array([20, 10, 0]), 0, 255).astype(np.uint8)
    pts["error"] = 0.5
    pts["track_length"] = TRACK_LENGTH
    pts["track"][..., 0] = tracks + 1
    pts["track"][..., 1] = point2d_index.reshape(n_points, TRACK_LENGTH)
    with open(model_dir / "points3D.bin", "wb") as f:
        f.write(np.uint64(n_points).tobytes() + pts.tobytes())


def write_images(image_dir: Path, n: int, rng: np.random.Generator) -> None:
    import cv2

    image_dir.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(0, 255, WIDTH, dtype=np.float32)[None, :, None]
    for i in range(n):
        img = np.clip(ramp * 0.5 + rng.integers(0, 128, (HEIGHT, 1, 3)), 0, 255).astype(np.uint8)
        cv2.imwrite(str(image_dir / f"{i:05d}.png"), np.broadcast_to(img, (HEIGHT, WIDTH, 3)).copy())


def make_scene(root: Path, n_cameras: int, n_points: int, seed: int = 0) -> Path:
    """A COLMAP scene (sparse/0 + images/) of the survey at this size, in `root`."""
    rng = np.random.default_rng(seed)
    R, centres, grid = survey_cameras(n_cameras, rng)
    points, tracks = survey_points(n_points, centres, grid, rng)
    write_model(root / "sparse" / "0", R, centres, points, tracks)
    write_images(root / "images", n_cameras, rng)
    return root


# --- stages -----------------------------------------------------------------------------------------------


def train_slot(scene: str, run_dir: str, steps: int, overrides: list[str]) -> None:
    """The training stage, in its own process: open a new run as `momentumgs train` does, train `steps`
    steps of the first slot (one block on one worker), then read every training view of that block once
    through the scene's image cache. Prints one JSON line with the cache figures."""
    import torch

    from momentumgs.config import load_config
    from momentumgs.run_setup import open_training

    torch.set_num_threads(1)
    cfg = load_config(None, [*overrides, f"data.path={scene}"])
    t0 = time.perf_counter()
    trainer = open_training(cfg, run_dir, resume=False)
    t_open = time.perf_counter() - t0
    trainer.run(progress=False, stop_after=steps)
    t_steps = time.perf_counter() - t0 - t_open
    cache = trainer.scene.cache
    peak_steps = cache.peak_nbytes
    ((block_id, held),) = trainer.residency.resident_blocks()  # the one slot's block
    block = trainer.partition.blocks[block_id]
    for i in block.camera_ids:
        trainer.scene.load_image(int(i))
    stats = {
        "open_s": t_open,
        "steps_s": t_steps,
        "steps": trainer.global_step,
        "block_views": len(block.camera_ids),
        "block_points": len(block.point_ids),
        "anchors": held.field.n_anchors,
        "cache_bound_bytes": cache.max_bytes,
        "cache_peak_bytes_steps": peak_steps,
        "cache_peak_bytes": cache.peak_nbytes,
    }
    print("STAGE " + json.dumps(stats), flush=True)


def stage_command(stage: str, scene: Path, work: Path, steps: int, overrides: list[str]) -> list[str]:
    cli = [sys.executable, "-m", "momentumgs.cli"]
    sets = [a for o in overrides for a in ("--set", o)]
    if stage == "info":
        return [*cli, "info", str(scene), *sets]
    if stage == "scan":
        return [*cli, "prepare", "scan", str(scene), *sets]
    if stage == "partition":
        return [*cli, "partition", str(scene), "--out", str(work / "partition.json"), "--force", *sets]
    slot = [str(scene), str(work / "run"), str(steps), json.dumps(overrides)]
    return [sys.executable, __file__, "--train-slot", *slot]


def run_stage(cmd: list[str]) -> dict:
    """Run `cmd`; its wall time, its own peak RSS (os.wait4: this child only) and its STAGE JSON if any."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stdout.close()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{out}")
    row = {"seconds": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "cpu_s": usage.ru_utime + usage.ru_stime}
    for line in out.splitlines():
        if line.startswith("STAGE "):
            row.update(json.loads(line[6:]))
    return row


# --- growth -----------------------------------------------------------------------------------------------


def growth(results: list[dict], tolerance: float) -> tuple[list[dict], list[str]]:
    """Between consecutive sizes, per stage: (ratio of wall time, of CPU time, of peak RSS) / (ratio of
    sizes), size = points; a warning when the CPU time or RSS ratio exceeds 1 + tolerance (superlinear).
    Wall time also counts waiting for a shared CPU, so it is reported but not judged. Each process has
    fixed costs (python, torch: ~300 MB, a few seconds), so the ratios stay below 1 until the data
    dominates."""
    rows, warnings = [], []
    for a, b in zip(results, results[1:], strict=False):
        size_ratio = b["points"] / a["points"]
        for stage in STAGES:
            sa, sb = a["stages"][stage], b["stages"][stage]
            row = {"stage": stage, "from": a["points"], "to": b["points"]}
            for key, field in (("time", "seconds"), ("cpu", "cpu_s"), ("rss", "peak_rss_mb")):
                row[key] = sb[field] / sa[field] / size_ratio
            rows.append(row)
            for key, what in (("cpu", "CPU time"), ("rss", "peak RSS")):
                if row[key] > 1 + tolerance:
                    warnings.append(
                        f"{stage}: {what} grows superlinearly from {a['points']} to {b['points']} points "
                        f"({row[key]:.2f}x the size ratio {size_ratio:.2f})"
                    )
    return rows, warnings


def print_table(results: list[dict]) -> None:
    """Wall seconds (CPU seconds) and peak RSS of each stage, one row per size."""
    head = f"{'cameras':>8} {'points':>9} {'gen s':>6}"
    for s in STAGES:
        head += f" {s + ' s (cpu)':>18} {s + ' MB':>12}"
    print(head)
    for r in results:
        line = f"{r['cameras']:>8} {r['points']:>9} {r['generate_s']:>6.1f}"
        for s in STAGES:
            st = r["stages"][s]
            line += f" {st['seconds']:>10.1f} ({st['cpu_s']:>5.1f}) {st['peak_rss_mb']:>12.0f}"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, nargs="+", default=[300, 1000, 3000])
    parser.add_argument("--points-per-camera", type=int, default=700)
    parser.add_argument("--steps", type=int, default=5, help="training steps of the one slot")
    parser.add_argument("--image-cache-mb", type=int, default=1, help="data.image_cache_mb (the bound)")
    parser.add_argument("--tolerance", type=float, default=0.25, help="allowed excess over linear growth")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--workdir", help="folder for the scenes (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the scenes and runs")
    parser.add_argument("--train-slot", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train_slot:
        scene, run_dir, steps, overrides = args.train_slot
        return train_slot(scene, run_dir, int(steps), json.loads(overrides))
    if any(n < 4 for n in args.cameras) or args.points_per_camera < 1:
        raise SystemExit("--cameras: at least 4 each; --points-per-camera: at least 1")

    overrides = [
        f"data.image_cache_mb={args.image_cache_mb}",
        "train.device=cpu",
        "train.threads=1",
        "train.eval_every=0",
        "train.checkpoint_every=0",
        "method.workers=1",
        *args.overrides,
    ]
    base = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="momentumgs-scale-"))
    base.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for n in sorted(args.cameras):
            work = base / f"c{n}"
            if work.exists():
                shutil.rmtree(work)
            t0 = time.perf_counter()
            scene = make_scene(work / "scene", n, n * args.points_per_camera)
            row = {"cameras": n, "points": n * args.points_per_camera, "generate_s": time.perf_counter() - t0}
            print(f"{n} cameras, {row['points']} points: generated in {row['generate_s']:.1f} s", flush=True)
            row["stages"] = {}
            for stage in STAGES:
                row["stages"][stage] = run_stage(stage_command(stage, scene, work, args.steps, overrides))
                s = row["stages"][stage]
                print(
                    f"  {stage:<9} {s['seconds']:7.1f} s ({s['cpu_s']:.1f} s CPU) {s['peak_rss_mb']:7.0f} MB",
                    flush=True,
                )
            results.append(row)
            if not args.keep:
                shutil.rmtree(work)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    print()
    print_table(results)
    ratios, warnings = growth(results, args.tolerance)
    for g in ratios:
        print(
            f"growth {g['stage']:<9} {g['from']:>9} -> {g['to']:>9} points: wall/size {g['time']:.2f}, "
            f"cpu/size {g['cpu']:.2f}, rss/size {g['rss']:.2f}"
        )
    for r in results:
        t = r["stages"]["train"]
        ok = t["cache_peak_bytes"] <= t["cache_bound_bytes"]
        print(
            f"image cache at {r['cameras']} cameras: peak {t['cache_peak_bytes'] / 2**20:.2f} MB of "
            f"{t['cache_bound_bytes'] / 2**20:.2f} MB bound ({'within' if ok else 'OVER'})"
        )
        if not ok:
            warnings.append(f"image cache over its bound at {r['cameras']} cameras")
    for w in warnings:
        print(f"warning: {w}")
    summary = {"machine": machine(), "sizes": results, "growth": ratios, "warnings": warnings}
    print("JSON " + json.dumps(summary))


def machine() -> dict:
    import platform

    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


if __name__ == "__main__":
    main()
