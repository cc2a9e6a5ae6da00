"""The `.splat` format of antimatter15's WebGL viewer (github.com/antimatter15/splat, convert.py): no header,
32 bytes per Gaussian, little endian:

    3 x float32 position | 3 x float32 scale (linear) | 4 x uint8 RGBA | 4 x uint8 quaternion (w, x, y, z)

with RGB = 0.5 + C0 * f_dc, A = sigmoid(opacity logit), both times 255, clipped and truncated to uint8; the
quaternion normalised, times 128 plus 128, clipped and truncated. Gaussians are sorted by decreasing
volume times opacity, as convert.py sorts them. SH beyond the DC term is not stored (no view dependence).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from momentumgs.export.gaussians import BakedGaussians
from momentumgs.export.ply import ply_columns, ply_property_names
from momentumgs.export.sh import SH_C0
from momentumgs.io_utils import write_bytes_atomic

SPLAT_RECORD = np.dtype([("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])
assert SPLAT_RECORD.itemsize == 32


def splat_records(g: BakedGaussians) -> np.ndarray:
    """The records of `g`, in file order, computed from the PLY's float32 values as convert.py does. -> [M]"""
    names = ply_property_names(g.sh_degree)
    columns = ply_columns(g)  # [M, P] float32

    def col(*wanted: str) -> np.ndarray:
        return columns[:, [names.index(n) for n in wanted]]

    log_scales = col("scale_0", "scale_1", "scale_2")
    logit = col("opacity")[:, 0]
    order = np.argsort(-np.exp(log_scales.sum(axis=1)) / (1.0 + np.exp(-logit)), kind="stable")
    rgb = 0.5 + SH_C0 * col("f_dc_0", "f_dc_1", "f_dc_2").astype(np.float64)
    rgba = np.concatenate([rgb, 1.0 / (1.0 + np.exp(-logit[:, None]))], axis=1)
    rot = col("rot_0", "rot_1", "rot_2", "rot_3")
    rot = rot / np.linalg.norm(rot, axis=1, keepdims=True)
    records = np.empty(g.count, dtype=SPLAT_RECORD)
    records["position"] = col("x", "y", "z")
    records["scale"] = np.exp(log_scales)
    records["rgba"] = (rgba * 255).clip(0, 255).astype(np.uint8)
    records["rot"] = (rot * 128 + 128).clip(0, 255).astype(np.uint8)
    return records[order]


def write_splat(path: str | Path, g: BakedGaussians) -> Path:
    """Write `g` as an antimatter15 .splat file, atomically. -> the path"""
    path = Path(path)
    write_bytes_atomic(path, splat_records(g).tobytes())
    return path
