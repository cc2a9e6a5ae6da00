"""`momentumgs prepare {colmap,meganerf,matrixcity,downsample,scan}`: argument parsing only; the work
is imported inside each command so that `momentumgs --help` stays fast."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _log(text: str) -> None:
    print(text, flush=True)  # flushed: progress lines reach a pipe at once (and the resume test reads them)


def cmd_colmap(args: argparse.Namespace) -> int:
    from momentumgs.prepare.photos import PhotoOptions, prepare_colmap

    opts = PhotoOptions(
        camera_model=args.camera_model,
        single_camera=args.camera == "single",
        matcher=args.matcher,
        mapper=args.mapper,
        max_num_features=args.max_features,
        undistort=not args.no_undistort,
        progress=not args.no_progress,
    )
    t0 = time.perf_counter()
    result = prepare_colmap(args.photos, args.out, opts, log=_log)
    _log(result.summary())
    _log(f"scene written to {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0


def _known_pose_options(args: argparse.Namespace):
    from momentumgs.prepare.known_poses import KnownPoseOptions

    return KnownPoseOptions(
        triangulate=not args.no_points,
        neighbours=args.neighbours,
        link=not args.copy,
        progress=not args.no_progress,
    )


def _write_converted(args, train, val, meta) -> int:
    from momentumgs.prepare.known_poses import write_known_pose_scene

    t0 = time.perf_counter()
    opts = _known_pose_options(args)
    summary = write_known_pose_scene(args.out, train, val, meta, opts, log=_log, force=args.force)
    _log(
        f"converted {summary['train']['images']} train and {summary['val']['images']} val images, "
        f"{summary['train']['points']} points, into {args.out} in {time.perf_counter() - t0:.1f} s"
    )
    return 0


def cmd_meganerf(args: argparse.Namespace) -> int:
    from momentumgs.prepare.known_poses import check_out
    from momentumgs.prepare.meganerf import load_meganerf

    check_out(Path(args.out).expanduser(), args.force)  # before reading the dataset
    return _write_converted(args, *load_meganerf(args.src, world=args.world))


def cmd_matrixcity(args: argparse.Namespace) -> int:
    from momentumgs.prepare.known_poses import check_out
    from momentumgs.prepare.matrixcity import load_matrixcity

    check_out(Path(args.out).expanduser(), args.force)  # before reading the dataset
    return _write_converted(args, *load_matrixcity(args.src, args.test, args.val_every, args.scale))


def cmd_downsample(args: argparse.Namespace) -> int:
    from momentumgs.prepare.downsample import downsample_scene

    for r in downsample_scene(args.scene, args.factor, args.images, progress=not args.no_progress):
        _log(f"{r.folder}: {r.written} written, {r.skipped} up to date")
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    from momentumgs.config import load_config
    from momentumgs.io_utils import refuse_existing, write_text_atomic
    from momentumgs.prepare.scan import scan_scene

    if args.json:
        refuse_existing(args.json, args.force)
    cfg = load_config(args.config, args.overrides)
    report = scan_scene(args.scene, cfg)
    _log(report.text())
    if args.json:
        write_text_atomic(args.json, json.dumps(report.to_dict(), indent=1))
    return 0


def _add_converter_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-points", action="store_true", help="skip the triangulation (empty point cloud)")
    p.add_argument(
        "--neighbours", type=int, default=20, help="matching partners per image, by camera distance"
    )
    p.add_argument("--copy", action="store_true", help="copy images instead of hard-linking them")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an earlier conversion in OUT once the new one is complete (without it a non-empty OUT "
        "is refused)",
    )


def add_prepare_parser(sub) -> None:
    """Register `prepare` and its sub-commands on the main parser's subparsers."""
    prep = sub.add_parser(
        "prepare", help="prepare data: photos -> COLMAP, dataset converters, downsample, scan"
    )
    psub = prep.add_subparsers(dest="prepare_command", required=True)

    _add_colmap_parser(psub)
    _add_meganerf_parser(psub)
    _add_matrixcity_parser(psub)
    _add_downsample_parser(psub)
    _add_scan_parser(psub)


def _add_colmap_parser(psub) -> None:
    from momentumgs.prepare.photos import CAMERA_MODELS, MAPPERS, MATCHERS

    p = psub.add_parser("colmap", help="photos -> COLMAP scene (features, matching, mapping, undistortion)")
    p.add_argument("photos", help="folder of photos")
    p.add_argument("out", help="output scene folder (rerun the same command to resume)")
    p.add_argument(
        "--camera",
        choices=("single", "per-image"),
        default="single",
        help="one shared camera or one per photo",
    )
    p.add_argument("--camera-model", choices=CAMERA_MODELS, default="SIMPLE_RADIAL")
    p.add_argument(
        "--matcher",
        choices=MATCHERS,
        default="auto",
        help="auto: spatial with GPS, exhaustive if small, else sequential",
    )
    p.add_argument("--mapper", choices=MAPPERS, default="incremental")
    p.add_argument("--max-features", type=int, default=8192, help="SIFT features per photo")
    p.add_argument("--no-undistort", action="store_true", help="keep the distorted model only")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_colmap)


def _add_meganerf_parser(psub) -> None:
    p = psub.add_parser(
        "meganerf", help="Mega-NeRF dataset (Mill-19, UrbanScene3D) -> COLMAP train/val scene"
    )
    p.add_argument("src", help="dataset folder with coordinates.pt, train/ and val/")
    p.add_argument("out", help="output scene folder (new or empty; see --force)")
    p.add_argument(
        "--world",
        choices=("colmap", "meganerf"),
        default="colmap",
        help="colmap: the source COLMAP frame (metric, the paper's); meganerf: normalised DRB coordinates",
    )
    _add_converter_args(p)
    p.set_defaults(func=cmd_meganerf)


def _add_matrixcity_parser(psub) -> None:
    p = psub.add_parser("matrixcity", help="MatrixCity transforms JSON -> COLMAP train/val scene")
    p.add_argument(
        "src", help="transforms JSON (train), or a folder with transforms_train.json / transforms.json"
    )
    p.add_argument("out", help="output scene folder (new or empty; see --force)")
    p.add_argument(
        "--test", help="test transforms JSON (default: transforms_test.json beside the train file)"
    )
    p.add_argument("--val-every", type=int, default=8, help="without a test JSON, hold out every n-th frame")
    p.add_argument("--scale", type=float, default=1.0, help="multiply positions by this")
    _add_converter_args(p)
    p.set_defaults(func=cmd_matrixcity)


def _add_downsample_parser(psub) -> None:
    p = psub.add_parser(
        "downsample", help="write images_{f} beside images/ (cached, skips what is up to date)"
    )
    p.add_argument("scene", help="scene folder (images/, or train/images and val/images)")
    p.add_argument("--factor", type=int, choices=(2, 4, 8), required=True)
    p.add_argument("--images", default="images", help="image folder name")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_downsample)


def _add_scan_parser(psub) -> None:
    p = psub.add_parser("scan", help="size, memory estimate per block and warnings for a scene")
    p.add_argument("scene", help="scene folder")
    p.add_argument("--config", "-c", help="YAML config (model, partition, data settings)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", help="also write the report as JSON to this file (never an existing one)")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    p.set_defaults(func=cmd_scan)
