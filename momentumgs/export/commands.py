"""`momentumgs export` and `momentumgs render`: the command bodies (export/cli.py imports this module
lazily)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from momentumgs.config import load_config
from momentumgs.errors import UserError
from momentumgs.export.bake import bake
from momentumgs.export.gaussians import BakedGaussians, render_baked
from momentumgs.export.gltf import read_glb, write_glb
from momentumgs.export.ply import read_ply, write_ply
from momentumgs.export.refine import refine_baked
from momentumgs.export.splat import write_splat
from momentumgs.export.spz import SPZ_WRITE_VERSION, SPZ_WRITE_VERSIONS, read_spz, write_spz
from momentumgs.io_utils import refuse_existing, write_bytes_atomic

FORMATS = {"ply": write_ply, "splat": write_splat, "spz": write_spz, "glb": write_glb}
BAKED_SUFFIXES = (".ply", ".spz", ".glb")


def load_run(run_dir: str | Path, device: str = "cpu"):
    """The trained model and config of a run folder. -> (AnchorModel, Config)"""
    from momentumgs.run_setup import open_finished_run

    run = open_finished_run(run_dir, device)
    return run.model, run.cfg


def scene_or_none(cfg):
    """The run's scene for its training cameras; None (with a warning) when it cannot be loaded."""
    from momentumgs.run_setup import load_scene

    try:
        return load_scene(cfg)
    except UserError as exc:
        print(f"momentumgs: warning: {exc}; baking from sphere directions only", file=sys.stderr)
        return None


def export_run(
    run_dir: str | Path,
    fmt: str | None = None,
    out: str | Path | None = None,
    sh_degree: int = 3,
    refine_epochs: int = 0,
    force: bool = False,
    appearance: str | None = None,
    spz_version: int = SPZ_WRITE_VERSION,
    glb_spz: bool = False,
    spz_axes: str = "RUB",
) -> tuple[Path, BakedGaussians]:
    """Bake the model of `run_dir`, optionally refine it for `refine_epochs` passes over the training views,
    and write it as `fmt` (from `out`'s suffix when not given; default ply) to `out` (default
    RUN/export/model.<ext>; an existing file is replaced only with `force`). Colours are those of the
    training photo named `appearance`, by default the neutral appearance. SPZ is written in version
    `spz_version` (4; 2 or 3 for older readers) in `spz_axes` (RUB, the spec's; RDF, declared: 3DGS PLY
    axes, as SuperSplat reads SPZ); a .glb SPZ-compressed with `glb_spz`.
    -> (path written, the Gaussians)"""
    if fmt is None:
        suffix = Path(out).suffix.lstrip(".").lower() if out else ""
        fmt = suffix if suffix in FORMATS else "ply"
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    if spz_version not in SPZ_WRITE_VERSIONS:
        raise UserError(
            f"--spz-version {spz_version}: choose one of {', '.join(map(str, SPZ_WRITE_VERSIONS))}"
        )
    if fmt == "spz" and spz_axes != "RUB" and spz_version < 4:
        raise UserError(f"--spz-axes {spz_axes}: declared in SPZ version 4 files only (--spz-version 4)")
    path = Path(out) if out else Path(run_dir) / "export" / f"model.{fmt}"
    model, cfg = load_run(run_dir)
    refuse_existing(path, force)  # before baking, which takes a while
    row = None if appearance is None else photo_appearance_row(model, appearance)
    scene = scene_or_none(cfg)
    baked = bake(model, scene, sh_degree=sh_degree, appearance=row)
    if refine_epochs > 0 and scene is not None:
        baked = refine_baked(baked, model, scene, refine_epochs * len(scene.train_ids), appearance=row)
    try:
        if fmt == "spz":
            write_spz(path, baked, version=spz_version, axes=spz_axes)
        elif fmt == "glb":
            write_glb(path, baked, spz=glb_spz)
        else:
            FORMATS[fmt](path, baked)
    except OSError as exc:
        raise UserError(f"{path}: cannot write ({exc.strerror or exc})") from None
    return path, baked


def photo_appearance_row(model, name: str) -> int:
    """The embedding row of the training photo `name` (`--appearance`), or a UserError naming the choices."""
    from momentumgs.model.appearance import appearance_image_row

    if model.decoder.appearance is None:
        raise UserError(f"--appearance {name}: the model has no per-photo appearance (model.appearance off)")
    try:
        return appearance_image_row(model.info, name)
    except KeyError:
        names = [row["name"] for row in model.info.get("appearance_images", [])]
        shown = ", ".join(names[:3]) + (f" ... ({len(names)} in all)" if len(names) > 3 else "")
        raise UserError(
            f"--appearance {name}: not a training photo of this model (photos: {shown})"
        ) from None


def cmd_export(args) -> int:
    t0 = time.perf_counter()
    if args.format == "tiles":
        return _cmd_export_tiles(args, t0)
    path, baked = export_run(
        args.run,
        args.format,
        args.out,
        args.sh_degree,
        args.refine,
        args.force,
        args.appearance,
        args.spz_version,
        args.glb_spz,
        args.spz_axes,
    )
    size_mb = path.stat().st_size / 1e6
    print(
        f"{baked.count} Gaussians (of {baked.info.get('slots')} neural Gaussian slots, SH degree "
        f"{args.sh_degree}) -> {path} ({size_mb:.2f} MB) in {time.perf_counter() - t0:.1f} s"
    )
    return 0


def export_tiles(
    run_dir: str | Path,
    out: str | Path | None = None,
    levels: str = "1,0.25,0.06",
    origin: str | None = None,
    merge: bool = True,
    sh_degree: int = 3,
    appearance: str | None = None,
    force: bool = False,
    tune_epochs: int = 0,
):
    """`momentumgs export RUN --format tiles`: the run's model baked block by block (its partition.json)
    into a 3D Tiles tileset at `out` (default RUN/export/tiles; export/tiles3d.py). With `tune_epochs`,
    each coarse level is fitted (export/refine.py) to the renders of its block's anchors for that many
    passes over the block's training views. -> TilesetSummary"""
    from momentumgs.export.lod import parse_levels
    from momentumgs.export.tiles3d import block_models, parse_origin, write_tileset

    fractions = parse_levels(levels)
    where = None if origin is None else parse_origin(origin)
    out = _tiles_folder(run_dir, out)
    model, cfg = load_run(run_dir)
    refuse_existing(out, force)
    partition = _run_partition(run_dir)
    row = None if appearance is None else photo_appearance_row(model, appearance)
    scene = scene_or_none(cfg)
    if tune_epochs > 0 and scene is None:
        raise UserError("--lod-tune: needs the run's scene (its training views)")
    current = {}

    def blocks():
        for index, sub in block_models(model, partition):
            baked = bake(sub, scene, sh_degree=sh_degree, appearance=row)
            if baked.count:
                current["model"] = sub
                yield index, baked

    def tune(index: int, g: BakedGaussians) -> BakedGaussians:
        cams = [scene.cameras[int(i)] for i in partition.blocks[index].camera_ids]
        return refine_baked(g, current["model"], cams, tune_epochs * len(cams), appearance=row)

    def log(line: str) -> None:
        print(f"  {line}", file=sys.stderr)

    return write_tileset(
        out,
        blocks(),
        partition.up_axis,
        fractions,
        where,
        merge,
        force=force,
        log=log,
        tune=tune if tune_epochs > 0 else None,
    )


def _tiles_folder(run_dir: str | Path, out: str | Path | None) -> Path:
    """Where the tileset goes: `out`, by default RUN/export/tiles; a folder or nothing yet."""
    out = Path(out) if out else Path(run_dir) / "export" / "tiles"
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; a tileset is a folder")
    return out


def _run_partition(run_dir: str | Path):
    """The run's blocks (RUN/partition.json). -> Partition"""
    from momentumgs.partition import load_partition
    from momentumgs.train.paths import RunPaths

    paths = RunPaths(Path(run_dir))
    if not paths.partition.is_file():
        raise UserError(f"{run_dir}: no partition.json; a tileset needs the run's blocks")
    return load_partition(paths.partition)


def _cmd_export_tiles(args, t0: float) -> int:
    if args.refine:
        raise UserError("--refine: not with --format tiles (each level is cut from the bake as it is)")
    summary = export_tiles(
        args.run,
        args.out,
        args.levels,
        args.origin,
        not args.lod_prune,
        args.sh_degree,
        args.appearance,
        args.force,
        args.lod_tune,
    )
    shares = ", ".join(
        f"{sum(b['levels'][i]['gaussians'] for b in summary.blocks)}"
        for i in range(len(summary.blocks[0]["levels"]))
    )
    print(
        f"{summary.gaussians} Gaussians in {len(summary.blocks)} blocks, levels of {shares} -> "
        f"{summary.path}/tileset.json ({summary.bytes / 1e6:.2f} MB) in {time.perf_counter() - t0:.1f} s"
    )
    return 0


def read_baked(path: str | Path) -> BakedGaussians:
    """A baked file: .ply (INRIA layout), .spz (versions 2 to 4) or .glb (KHR_gaussian_splatting)."""
    path = Path(path)
    if path.suffix.lower() == ".spz":
        return read_spz(path)
    if path.suffix.lower() == ".glb":
        return read_glb(path)
    return read_ply(path)


def _config_near(path: Path):
    """The config.yaml of the run a baked file was exported from (RUN/export/model.ply), if any."""
    for folder in (path.parent, path.parent.parent):
        if (folder / "config.yaml").is_file():
            return load_config(folder / "config.yaml")
    return None


def cmd_render(args) -> int:
    from momentumgs.render.anchors import render_model_view
    from momentumgs.render.view import camera_view
    from momentumgs.run_setup import load_scene

    source, out_dir = Path(args.source), Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a folder; choose another --out")
    refuse_existing(out_dir, args.force, replaces="writes over the PNG files in it")
    if source.suffix.lower() in BAKED_SUFFIXES:
        baked = read_baked(source)
        cfg = _config_near(source)
        if args.scene:
            cfg = cfg or load_config(None)
            cfg.data.path = args.scene
        if cfg is None:
            raise UserError(f"{source}: no run config beside it; pass --scene SCENE for the cameras")

        def render(view):
            return render_baked(baked, view)[0]
    else:
        model, cfg = load_run(source)
        if args.scene:
            cfg.data.path = args.scene

        def render(view):
            return render_model_view(model, view)

    scene = load_scene(cfg)
    ids = list(scene.test_ids) if args.all_test else [args.view]
    for i in ids:
        if not 0 <= i < len(scene.cameras):
            raise UserError(f"--view {i}: the scene has views 0 to {len(scene.cameras) - 1}")
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in ids:
            cam = scene.cameras[i]
            image = render(camera_view(cam, "cpu", i)).clamp(0.0, 1.0)
            path = out_dir / f"{Path(cam.name).stem}.png"
            write_png(path, image)
    print(f"{len(ids)} view(s) rendered to {out_dir} in {time.perf_counter() - t0:.1f} s")
    return 0


def write_png(path: Path, image: torch.Tensor) -> None:
    """[H, W, 3] float in [0, 1] -> 8-bit PNG, written atomically."""
    rgb = (image.detach().cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise UserError(f"{path}: PNG encoding failed")
    try:
        write_bytes_atomic(path, data.tobytes())
    except OSError as exc:
        raise UserError(f"{path}: cannot write ({exc.strerror or exc})") from None
