"""Cheap checks on photo folders: readable headers, sizes, GPS EXIF. They run before any heavy work so that
a bad input fails in a second with one line rather than after an hour of feature extraction."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from momentumgs.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
GPS_IFD = 0x8825  # EXIF pointer to the GPS block; tags 2 and 4 are latitude and longitude (EXIF 2.3, §4.6.6)


@dataclass
class ImageInfo:
    name: str  # relative to the folder, "/" separated
    width: int
    height: int
    has_gps: bool


def list_image_names(folder: Path, recursive: bool = False) -> list[str]:
    """Image file names under `folder` (sorted, relative, "/" separated); subfolders only if `recursive`."""
    files = folder.rglob("*") if recursive else folder.iterdir()
    names = [
        p.relative_to(folder).as_posix() for p in files if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    ]
    return sorted(names)


def read_header(path: Path) -> tuple[int, int, bool]:
    """(width, height, has GPS) from the file header; raises OSError/ValueError when unreadable."""
    from PIL import Image

    with Image.open(path) as im:
        im.verify()  # checks the structure without decoding the pixels (detects truncated PNGs)
    with Image.open(path) as im:
        width, height = im.size
        try:
            gps = im.getexif().get_ifd(GPS_IFD)
        except Exception:  # a malformed EXIF block is no reason to reject the photo
            gps = {}
    return width, height, bool(gps) and 2 in gps and 4 in gps


def scan_folder(folder: Path, names: list[str]) -> list[ImageInfo]:
    """Headers of all `names`; one UserError listing the unreadable ones (up to 5 by name)."""
    infos, bad = [], []
    for name in names:
        try:
            w, h, gps = read_header(folder / name)
        except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
            bad.append(f"{name} ({type(exc).__name__})")
            continue
        infos.append(ImageInfo(name, w, h, gps))
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise UserError(
            f"{folder}: {len(bad)} unreadable image(s): {', '.join(bad[:5])}{more}; remove or replace them"
        )
    return infos


def size_counts(infos: list[ImageInfo]) -> Counter:
    return Counter((i.width, i.height) for i in infos)


def describe_sizes(counts: Counter, limit: int = 3) -> str:
    parts = [f"{w}x{h} ({n} images)" for (w, h), n in counts.most_common(limit)]
    return ", ".join(parts) + (" ..." if len(counts) > limit else "")
