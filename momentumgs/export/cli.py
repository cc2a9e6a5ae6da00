"""`momentumgs export` and `momentumgs render`: their sub-parsers (the command bodies are in commands.py,
imported only when a command runs, so that `--help` stays fast)."""

from __future__ import annotations


def cmd_export(args) -> int:
    from momentumgs.export.commands import cmd_export as run

    return run(args)


def cmd_render(args) -> int:
    from momentumgs.export.commands import cmd_render as run

    return run(args)


def add_export_parsers(sub) -> None:
    """Register `export` and `render` on the main parser's subparsers."""
    _add_export_parser(sub)
    _add_render_parser(sub)


def _add_export_parser(sub) -> None:
    p = sub.add_parser(
        "export", help="bake a trained run into explicit Gaussians: PLY, .splat, SPZ, glTF or 3D Tiles"
    )
    p.add_argument("run", help="run folder")
    _add_format_args(p)
    _add_tiles_args(p)
    p.add_argument("--out", help="output file (default RUN/export/model.<format>; never an existing one)")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.add_argument("--sh-degree", type=int, default=3, choices=[0, 1, 2, 3], help="SH degree of the colours")
    p.add_argument(
        "--refine",
        type=int,
        default=0,
        metavar="EPOCHS",
        help="then fit the Gaussians to the model's renders: passes over the training views (try 2)",
    )
    p.add_argument(
        "--appearance",
        metavar="IMAGE",
        help="colours in the appearance of this training photo (models with a per-photo appearance; "
        "default: the neutral appearance, the mean of the photos')",
    )
    p.set_defaults(func=cmd_export)


def _add_format_args(p) -> None:
    """The file format and its variants."""
    p.add_argument(
        "--format",
        choices=["ply", "splat", "spz", "glb", "tiles"],
        help="default: from --out's suffix, else ply; tiles: a 3D Tiles 1.1 tileset with levels of detail "
        "(a folder; default RUN/export/tiles)",
    )
    p.add_argument(
        "--spz-version",
        type=int,
        default=4,
        choices=[2, 3, 4],
        help="SPZ version to write (default 4, ZSTD streams; 2 or 3, gzip, for readers older than 2026)",
    )
    p.add_argument(
        "--spz-axes",
        default="RUB",
        choices=["RUB", "RDF"],
        help="axes of the SPZ data: RUB (default, the SPZ spec's) or RDF (3DGS PLY's, declared by the "
        "SPZ_ADOBE_coordinate_system extension: the axes splat-transform assumes of any SPZ; version 4)",
    )
    p.add_argument(
        "--glb-spz",
        action="store_true",
        help="a .glb holding the Gaussians SPZ-compressed (KHR_gaussian_splatting_compression_spz_2, a "
        "draft: for viewers that have it, e.g. CesiumJS)",
    )


def _add_tiles_args(p) -> None:
    """The options of `--format tiles`: levels of detail and the place on the globe."""
    p.add_argument(
        "--levels",
        default="1,0.25,0.06",
        metavar="F,F,...",
        help="tiles: the share of each block's Gaussians each level keeps, full detail first (default "
        "1,0.25,0.06)",
    )
    p.add_argument(
        "--lod-prune",
        action="store_true",
        help="tiles: coarse levels only drop Gaussians (default: the kept ones absorb the dropped ones "
        "nearest them, size and colour; 4 to 6 dB better on the demo city)",
    )
    p.add_argument(
        "--lod-tune",
        type=int,
        default=0,
        metavar="EPOCHS",
        help="tiles: fit each coarse level to its block's anchor renders, passes over the block's training "
        "views (1: +1.4 to +2.2 dB on the demo city, about a minute there on a CPU)",
    )
    p.add_argument(
        "--origin",
        metavar="LAT,LON[,HEIGHT]",
        help="tiles: place the scene on the globe, its origin at this WGS84 point (degrees, metres), its up "
        "axis up, its units as metres",
    )


def _add_render_parser(sub) -> None:
    p = sub.add_parser("render", help="render views of a run or of a baked .ply / .spz / .glb to PNG files")
    p.add_argument(
        "source", help="run folder, or a .ply / .spz / .glb file (cameras from its run or --scene)"
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--view", type=int, help="camera index in the scene")
    which.add_argument("--all-test", action="store_true", help="every test view")
    p.add_argument("--out", required=True, help="output folder for the PNG files (new or empty)")
    p.add_argument("--force", action="store_true", help="write into a folder holding files (PNGs replaced)")
    p.add_argument("--scene", help="COLMAP scene for the cameras (default: the run's)")
    p.set_defaults(func=cmd_render)
