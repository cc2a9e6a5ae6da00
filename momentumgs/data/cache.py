"""Where momentumgs keeps what it can rebuild (undistorted photos, demo scenes, CUDA builds)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """`cache_dir` if given, else $MOMENTUMGS_CACHE, else ~/.cache/momentumgs."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get("MOMENTUMGS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "momentumgs"
