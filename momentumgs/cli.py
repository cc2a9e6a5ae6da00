"""Command line: `momentumgs {demo,demo-scene,info,...}`.

Each sub-command is a small function taking the parsed arguments. A UserError (bad file, option or
config value) prints one line and exits with code 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from momentumgs.config import Config, load_config
from momentumgs.errors import UserError

EXIT_USER_ERROR = 2


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML config file")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set train.iterations=2000 (repeatable)",
    )


def _config(args: argparse.Namespace, default: str | None = None) -> Config:
    path = args.config or default
    return load_config(path, args.overrides)


def _default_demo_config() -> str | None:
    """configs/demo.yaml of a source checkout, if present; otherwise the built-in defaults."""
    candidate = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
    return str(candidate) if candidate.is_file() else None


def cmd_demo_scene(args: argparse.Namespace) -> int:
    from momentumgs.data.demo import build_demo_scene

    t0 = time.perf_counter()
    out = build_demo_scene(args.out, size=args.size, seed=args.seed, sfm=not args.no_sfm)
    print(f"demo scene written to {out} in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from momentumgs.data.colmap import load_colmap_scene

    scene = load_colmap_scene(
        args.scene,
        images=cfg.data.images,
        downscale=cfg.data.downscale,
        test_every=cfg.data.test_every,
        split_file=cfg.data.split_file or None,
    )
    print(scene.summary())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    cfg = _config(args, _default_demo_config())
    from momentumgs.data.colmap import load_colmap_scene
    from momentumgs.data.demo import cached_demo_scene

    t0 = time.perf_counter()
    root = cached_demo_scene(size=cfg.demo.size, seed=cfg.demo.seed, cache_dir=cfg.demo.cache_dir or None)
    scene = load_colmap_scene(
        root,
        images=cfg.data.images,
        downscale=cfg.data.downscale,
        test_every=cfg.data.test_every,
    )
    print(f"demo scene ready in {time.perf_counter() - t0:.1f} s")
    print(scene.summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="momentumgs", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="build (or reuse) the demo city and run the main job on it")
    _add_config_args(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("demo-scene", help="render the demo city and reconstruct it with SfM into OUT")
    p.add_argument("out", help="output folder (a COLMAP scene: images/, sparse/0, ground_truth/)")
    p.add_argument("--size", default="demo", choices=["demo", "test"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-sfm", action="store_true", help="write only the ground-truth model")
    p.set_defaults(func=cmd_demo_scene)

    p = sub.add_parser("info", help="load a COLMAP scene and print its summary")
    p.add_argument("scene", help="scene root holding sparse/0 and images/")
    _add_config_args(p)
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        if args.debug:
            raise
        print(f"momentumgs: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("momentumgs: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
