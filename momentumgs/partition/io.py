"""`partition.json`: a partition written to disk and read back, with every block's cameras and start points,
so that a run (and its resume, the report, the viewer, export) uses the very partition it was trained on.
Point ids are stored as base64 of little-endian int32 (they run to millions). See docs/formats.md.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np

from momentumgs.io_utils import write_text_atomic
from momentumgs.partition.bounds import PartitionError, format_up_axis, parse_up_axis
from momentumgs.partition.grid import Block, Partition

PARTITION_FORMAT = "momentumgs-partition"
PARTITION_VERSION = 1


def _encode_ids(ids: np.ndarray) -> str:
    """int ids -> base64 of little-endian int32 (compact: point ids run to millions)."""
    return base64.b64encode(np.asarray(ids, dtype="<i4").tobytes()).decode("ascii")


def _decode_ids(text: str, count: int) -> np.ndarray:
    ids = np.frombuffer(base64.b64decode(text.encode("ascii"), validate=True), dtype="<i4")
    if len(ids) != count:
        raise ValueError(f"expected {count} ids, found {len(ids)}")
    return ids.astype(np.int64)


def _list(v: np.ndarray | None):
    return None if v is None else [float(x) for x in v]


def partition_to_dict(p: Partition) -> dict:
    return {
        "format": PARTITION_FORMAT,
        "version": PARTITION_VERSION,
        "aabb": _list(p.aabb),
        "up_axis": p.up_axis,
        "block_dim": list(p.block_dim),
        "margin": p.margin,
        "assign": p.assign,
        "block_points": p.block_points,
        "num_points": p.num_points,
        "camera_names": p.camera_names,
        "blocks": [
            {
                "index": b.index,
                "grid_index": list(b.grid_index),
                "cell_min": _list(b.cell_min),
                "cell_max": _list(b.cell_max),
                "world_min": _list(b.world_min),
                "world_max": _list(b.world_max),
                "camera_ids": [int(i) for i in b.camera_ids],
                "num_point_ids": len(b.point_ids),
                "point_ids_int32_b64": _encode_ids(b.point_ids),
                "n_cell_points": b.n_cell_points,
            }
            for b in p.blocks
        ],
    }


def _array(v) -> np.ndarray | None:
    return None if v is None else np.asarray(v, dtype=np.float64)


def _aabb(values) -> np.ndarray:
    """A file's AABB [min x, min y, min z, max x, max y, max z] -> [6] float64, or ValueError."""
    aabb = np.asarray(values, dtype=np.float64).reshape(-1)
    if aabb.shape != (6,) or not np.isfinite(aabb).all() or (aabb[:3] >= aabb[3:]).any():
        raise ValueError(f"aabb: expected 6 finite numbers, each min below its max, got {values!r}")
    return aabb


def _block_dim(values) -> tuple[int, int, int]:
    """A file's block_dim -> 3 positive ints, or ValueError."""
    ok = isinstance(values, list) and len(values) == 3
    if not ok or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
        raise ValueError(f"block_dim: expected 3 positive integers, got {values!r}")
    return int(values[0]), int(values[1]), int(values[2])


def partition_from_dict(d: dict) -> Partition:
    if d.get("format") != PARTITION_FORMAT:
        raise ValueError(f"not a partition file (format {d.get('format')!r})")
    if d.get("version") != PARTITION_VERSION:
        raise ValueError(f"partition format version {d.get('version')!r}, expected {PARTITION_VERSION}")
    part = Partition(
        aabb=_aabb(d["aabb"]),
        up_axis=format_up_axis(*parse_up_axis(d["up_axis"])),
        block_dim=_block_dim(d["block_dim"]),
        margin=float(d["margin"]),
        assign=str(d["assign"]),
        block_points=str(d.get("block_points", "cell")),  # files written before the option: their cells
        num_points=int(d["num_points"]),
        camera_names=[str(n) for n in d["camera_names"]],
    )
    for b in d["blocks"]:
        point_ids = _decode_ids(b["point_ids_int32_b64"], int(b["num_point_ids"]))
        camera_ids = np.asarray(b["camera_ids"], dtype=np.int64)
        if (point_ids < 0).any() or (point_ids >= part.num_points).any():
            raise ValueError(f"block {b['index']}: point ids outside the cloud of {part.num_points}")
        if (camera_ids < 0).any() or (camera_ids >= len(part.camera_names)).any():
            raise ValueError(f"block {b['index']}: camera ids outside the {len(part.camera_names)} cameras")
        part.blocks.append(
            Block(
                index=int(b["index"]),
                grid_index=tuple(int(i) for i in b["grid_index"]),
                cell_min=_array(b["cell_min"]),
                cell_max=_array(b["cell_max"]),
                world_min=_array(b["world_min"]),
                world_max=_array(b["world_max"]),
                camera_ids=camera_ids,
                point_ids=point_ids,
                n_cell_points=int(b["n_cell_points"]),
            )
        )
    if [b.index for b in part.blocks] != list(range(int(np.prod(part.block_dim)))):
        raise ValueError(f"expected blocks 0..{int(np.prod(part.block_dim)) - 1} in order")
    return part


def save_partition(path: str | Path, p: Partition) -> None:
    """Write `p` as JSON, atomically (a crash leaves the old file or the new one)."""
    write_text_atomic(path, json.dumps(partition_to_dict(p), indent=1) + "\n")


def load_partition(path: str | Path) -> Partition:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise PartitionError(f"{path}: partition file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PartitionError(f"{path}: not a readable partition file ({exc})") from None
    try:
        return partition_from_dict(data)
    except PartitionError as exc:
        raise PartitionError(f"{path}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        detail = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
        raise PartitionError(f"{path}: malformed partition file ({detail})") from None
