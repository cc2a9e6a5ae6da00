"""Baked Gaussians as a 3D Tiles 1.1 tileset with levels of detail (`momentumgs export RUN --format tiles`;
docs/formats.md, 3D Tiles). Spec: github.com/CesiumGS/3d-tiles, specification/ (tileset.json, tile,
boundingVolume, geometricError, refine, transform); content: glTF with KHR_gaussian_splatting
(export/gltf.py).

    OUT/tileset.json
    OUT/block_BBB/level_L.glb       block BBB's level L (0: full detail; higher: coarser, export/lod.py)

The tree is the scene -> its blocks -> each block's levels, coarsest first, each the only child of the next
coarser one, all `refine: REPLACE` (a level replaces the coarser one: a coarse level's Gaussians are not
those of the finer one, they absorb the dropped ones, export/lod.py). The root has no content; its
geometric error is the largest block's diagonal (the error of showing nothing). A block's top tile holds
its coarsest level, with that level's geometric error (export/lod.py: the detail it leaves out); the full
level is the leaf, error 0.

Frames. Each block's tile carries a `transform` that moves its Gaussians from the block's centre (they are
stored relative to it: SPZ's fixed point and the viewer's float32 keep their precision at city scale). The
glTF content is y-up; 3D Tiles turns glTF's y-up into its z-up (a quarter turn about x) before the tile
transforms. The content's SPZ payload holds the Gaussians in SPZ's own axes, RUB, as export/gltf.py packs
them (the 3DGS RDF axes with y and z negated), and CesiumJS 1.145 reads that payload without an axis
conversion (GltfSpzLoader: `coordinateSystem: "UNSPECIFIED"`), i.e. takes RUB for glTF's axes, not LUF as
the draft's unpacking says: a half turn about up apart. We place the tiles for CesiumJS, the one 3D Tiles
renderer of these splats: a world point p lies at (p_x, p_z, -p_y) in the tileset's frame
(TILES_FROM_WORLD: RUB, then y-up to z-up); the bounding boxes are in that frame, checked against the
Gaussians CesiumJS draws (tests/test_tiles.py renders them). A reader that unpacks to LUF as the draft says
would see each block turned half a turn about up in place (and the whole scene so about the root).
The root's `transform` turns the frame so that the scene's up axis (partition.json's `up_axis`) is +z;
with an origin (`--origin LAT,LON,HEIGHT`: WGS84 degrees and metres, the scene's units taken as metres) it
then places the frame's x, y, z on east, north, up at that point of the globe (ENU -> ECEF, the transform
CesiumJS's Transforms.eastNorthUpToFixedFrame makes).

The content is SPZ-compressed (KHR_gaussian_splatting_compression_spz_2), and the tileset lists both glTF
extensions as used and required in `3DTILES_content_gltf`: CesiumJS renders a glTF tile as Gaussian splats
only then (1.145: GaussianSplat3DTileContent.tilesetRequiresGaussianSplattingExt).

Streamed: the writer takes the blocks one at a time (an iterator) and keeps only the tree's numbers between
them, so peak memory is one block's Gaussians and levels, not the scene's (tools/bench_tiles.py). The
tileset is written into a temporary folder beside OUT and renamed into place: a crash leaves the earlier
OUT (or none), never half a tileset.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from momentumgs.errors import UserError
from momentumgs.export.gaussians import BakedGaussians
from momentumgs.export.gltf import EXTENSION, SPZ_EXTENSION, glb_bytes
from momentumgs.export.lod import DEFAULT_LEVELS, make_levels, parse_levels
from momentumgs.io_utils import refuse_existing, replace_dir, write_bytes_atomic, write_text_atomic

TILESET_VERSION = "1.1"
WGS84_A = 6378137.0  # semi-major axis, metres
WGS84_E2 = 6.69437999014e-3  # first eccentricity squared
# world (3DGS RDF) -> the SPZ payload's RUB, taken by CesiumJS as glTF's axes -> 3D Tiles z-up (y-up turned
# about x): see the module doc
TILES_FROM_WORLD = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
SIGMAS = 3.0  # a bounding box holds each Gaussian out to 3 sigma (where the rasterizers cut it)


def parse_origin(text: str) -> tuple[float, float, float]:
    """`--origin LAT,LON,HEIGHT` (degrees, degrees, metres above the WGS84 ellipsoid; HEIGHT optional).
    A UserError (one line) for anything else."""
    parts = text.split(",")
    try:
        values = [float(v) for v in parts]
    except ValueError:
        values = []
    if len(values) == 2:
        values.append(0.0)
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise UserError(
            f"--origin {text}: expected LAT,LON[,HEIGHT] in degrees and metres, e.g. 48.85,2.35,35"
        )
    lat, lon, height = values
    if not -90.0 <= lat <= 90.0 or not -180.0 <= lon <= 180.0:
        raise UserError(f"--origin {text}: latitude in [-90, 90], longitude in [-180, 180] degrees")
    return lat, lon, height


def ecef(lat: float, lon: float, height: float) -> np.ndarray:
    """Earth-centred, earth-fixed coordinates (metres) of a WGS84 geodetic point. -> [3]"""
    phi, lam = math.radians(lat), math.radians(lon)
    n = WGS84_A / math.sqrt(1.0 - WGS84_E2 * math.sin(phi) ** 2)  # prime vertical radius of curvature
    return np.array(
        [
            (n + height) * math.cos(phi) * math.cos(lam),
            (n + height) * math.cos(phi) * math.sin(lam),
            (n * (1.0 - WGS84_E2) + height) * math.sin(phi),
        ]
    )


def enu_to_ecef(lat: float, lon: float, height: float) -> np.ndarray:
    """The 4x4 matrix taking east-north-up metres at a geodetic point to ECEF. -> [4, 4]"""
    phi, lam = math.radians(lat), math.radians(lon)
    east = [-math.sin(lam), math.cos(lam), 0.0]
    north = [-math.sin(phi) * math.cos(lam), -math.sin(phi) * math.sin(lam), math.cos(phi)]
    up = [math.cos(phi) * math.cos(lam), math.cos(phi) * math.sin(lam), math.sin(phi)]
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = east, north, up, ecef(lat, lon, height)
    return m


def enu_from_world(up_axis: str) -> np.ndarray:
    """A rotation taking the scene's axes to east, north, up with `up_axis` ('+z', '-y', ...) up and the
    first other axis east. -> [3, 3]"""
    from momentumgs.partition import ground_axes, parse_up_axis

    axis, sign = parse_up_axis(up_axis)
    up = np.zeros(3)
    up[axis] = sign
    east = np.zeros(3)
    east[ground_axes(axis)[0]] = 1.0
    return np.stack([east, np.cross(up, east), up])


def root_transform(up_axis: str, origin: tuple[float, float, float] | None = None) -> np.ndarray:
    """The root tile's transform: the tileset frame turned so that the scene's up is +z, then (with an
    origin) placed east-north-up on the globe. -> [4, 4]"""
    m = np.eye(4)
    m[:3, :3] = enu_from_world(up_axis) @ TILES_FROM_WORLD.T
    return m if origin is None else enu_to_ecef(*origin) @ m


def world_bounds(g: BakedGaussians) -> tuple[np.ndarray, np.ndarray]:
    """The world box holding every Gaussian of `g` out to SIGMAS. -> (min [3], max [3])"""
    q = torch.nn.functional.normalize(g.quats.double(), dim=1)
    w, x, y, z = q.unbind(1)
    rot = torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], 1),
            torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], 1),
            torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], 1),
        ],
        1,
    )  # [M, 3, 3]
    reach = SIGMAS * torch.sqrt(((rot * g.scales.double()[:, None, :]) ** 2).sum(dim=2))  # [M, 3]
    means = g.means.double()
    return (means - reach).min(0).values.numpy(), (means + reach).max(0).values.numpy()


def _box(lo: np.ndarray, hi: np.ndarray) -> list[float]:
    """A 3D Tiles `box` (centre, then three half-axis vectors) of the tileset-frame box lo..hi."""
    centre, half = (lo + hi) / 2.0, np.maximum((hi - lo) / 2.0, 1e-6)
    return [*centre.tolist(), half[0], 0.0, 0.0, 0.0, half[1], 0.0, 0.0, 0.0, half[2]]


def _tiles_box(lo: np.ndarray, hi: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The world box lo..hi, moved by -offset, in the tileset frame (TILES_FROM_WORLD is a signed
    permutation: a box stays a box). -> (min, max)"""
    a, b = TILES_FROM_WORLD @ (lo - offset), TILES_FROM_WORLD @ (hi - offset)
    return np.minimum(a, b), np.maximum(a, b)


@dataclass
class TilesetSummary:
    """What `write_tileset` wrote: per block and level, Gaussians, geometric error and bytes."""

    path: Path
    blocks: list[dict] = field(default_factory=list)  # {name, levels: [{fraction, gaussians, error, bytes}]}

    @property
    def gaussians(self) -> int:
        return sum(b["levels"][0]["gaussians"] for b in self.blocks)

    @property
    def bytes(self) -> int:
        return sum(level["bytes"] for b in self.blocks for level in b["levels"])


def _level_node(block_dir: str, levels: list[dict], box: list[float], i: int) -> dict:
    """The tile of level i of a block and, as its child, level i - 1's (finer), down to level 0."""
    node = {
        "boundingVolume": {"box": box},
        "geometricError": levels[i]["error"],
        "refine": "REPLACE",
        "content": {"uri": f"{block_dir}/level_{i}.glb"},
    }
    if i > 0:
        node["children"] = [_level_node(block_dir, levels, box, i - 1)]
    return node


def write_tileset(
    out: str | Path,
    blocks: Iterable[tuple[int, BakedGaussians]],
    up_axis: str = "-y",
    fractions=DEFAULT_LEVELS,
    origin: tuple[float, float, float] | None = None,
    merge: bool = True,
    force: bool = False,
    log: Callable[[str], None] | None = None,
    tune: Callable[[int, BakedGaussians], BakedGaussians] | None = None,
) -> TilesetSummary:
    """Write the tileset of `blocks` ((block index, its Gaussians), one at a time) to the folder `out` (an
    earlier one replaced only with `force`). `tune(block index, level's Gaussians)`, if given, fine-tunes
    each coarse level before it is written. See the module doc. -> what was written"""
    out = Path(out)
    fractions = parse_levels(fractions)
    refuse_existing(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    summary = TilesetSummary(out)
    try:
        children, scene_lo, scene_hi = [], np.full(3, np.inf), np.full(3, -np.inf)
        for index, g in blocks:
            if g.count == 0:
                continue
            name = f"block_{index:03d}"
            levels = make_levels(g, fractions, merge)
            del g
            rows, lo, hi = _write_levels(tmp / name, index, levels, tune)
            del levels
            centre = (lo + hi) / 2.0
            top = _level_node(name, rows, _box(*_tiles_box(lo, hi, centre)), len(rows) - 1)
            top = {"transform": _column_major(_translation(TILES_FROM_WORLD @ centre)), **top}
            children.append((float(np.linalg.norm(hi - lo)), top))
            scene_lo, scene_hi = np.minimum(scene_lo, lo), np.maximum(scene_hi, hi)
            summary.blocks.append({"name": name, "index": index, "levels": rows})
            if log:
                counts = " / ".join(str(r["gaussians"]) for r in rows)
                log(f"{name}: {counts} Gaussians")
        if not children:
            raise UserError("no Gaussians to write: every block is empty")
        document = tileset_document(children, scene_lo, scene_hi, up_axis, origin, fractions, merge)
        document["asset"]["extras"]["momentumgs"]["counts"] = [
            [r["gaussians"] for r in b["levels"]] for b in summary.blocks
        ]
        write_text_atomic(tmp / "tileset.json", json.dumps(document, indent=1))
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _write_levels(
    folder: Path,
    index: int,
    levels: list,
    tune: Callable[[int, BakedGaussians], BakedGaussians] | None,
) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Write the levels of block `index` to folder/level_<i>.glb, centred on the block's box, the coarse
    levels tuned first when `tune` is given. -> ({fraction, gaussians, error, bytes} per level, min, max)"""
    if tune is not None:
        for level in levels[1:]:
            level.gaussians = tune(index, level.gaussians)
    lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
    for level in levels:
        a, b = world_bounds(level.gaussians)
        lo, hi = np.minimum(lo, a), np.maximum(hi, b)
    centre = (lo + hi) / 2.0
    rows = []
    for i, level in enumerate(levels):
        g_i = level.gaussians
        local = BakedGaussians(
            g_i.means - torch.from_numpy(centre).to(g_i.means), g_i.quats, g_i.scales, g_i.opacities, g_i.sh
        )
        data = glb_bytes(local, spz=True)
        write_bytes_atomic(folder / f"level_{i}.glb", data)
        rows.append(
            {
                "fraction": level.fraction,
                "gaussians": g_i.count,
                "error": round(level.geometric_error, 6),
                "bytes": len(data),
            }
        )
    return rows, lo, hi


def tileset_document(children, lo, hi, up_axis, origin, fractions, merge) -> dict:
    """tileset.json: the root (the scene) over the blocks' tiles (children: [(diagonal, tile)])."""
    root_error = max(d for d, _ in children)
    root = {
        "transform": _column_major(root_transform(up_axis, origin)),
        "boundingVolume": {"box": _box(*_tiles_box(lo, hi, np.zeros(3)))},
        "geometricError": root_error,
        "refine": "REPLACE",
        "children": [tile for _, tile in children],
    }
    gltf_extensions = [EXTENSION, SPZ_EXTENSION]
    return {
        "asset": {
            "version": TILESET_VERSION,
            "generator": "momentumgs",
            "extras": {
                "momentumgs": {
                    "levels": list(fractions),
                    "lod_merge": merge,
                    "up_axis": up_axis,
                    "origin": None if origin is None else list(origin),
                }
            },
        },
        "extensionsUsed": ["3DTILES_content_gltf"],
        "extensions": {
            "3DTILES_content_gltf": {"extensionsUsed": gltf_extensions, "extensionsRequired": gltf_extensions}
        },
        "geometricError": float(np.linalg.norm(hi - lo)),
        "root": root,
    }


def _translation(t: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = t
    return m


def _column_major(m: np.ndarray) -> list[float]:
    """A 4x4 matrix as 3D Tiles stores it: 16 numbers, column by column."""
    return [float(v) for v in np.asarray(m, dtype=np.float64).T.reshape(-1)]


# --- a run's blocks ------------------------------------------------------------------------------------


def block_models(model, partition) -> Iterator[tuple[int, object]]:
    """The run's model cut into its blocks: for each block with anchors, (its index, an AnchorModel of the
    anchors whose position lies in its cell (partition.block_of_points) and the shared decoder)."""
    from momentumgs.model.anchors import AnchorField
    from momentumgs.model.store import AnchorModel

    field_ = model.field
    owner = torch.from_numpy(
        partition.block_of_points(field_.positions.detach().cpu().numpy().astype(np.float64))
    )
    state = field_.state_dict()
    for block in partition.blocks:
        ids = (owner == block.index).nonzero().squeeze(1)
        if ids.numel() == 0:
            continue
        part = {k: (v if k == "voxel_size" else v[ids]) for k, v in state.items()}
        yield (
            block.index,
            AnchorModel(
                AnchorField.from_state_dict(part),
                model.decoder,
                model.spec,
                model.info,
                model.block_decoders,
                None if model.anchor_block is None else model.anchor_block[ids],
            ),
        )


def run_blocks(
    model, partition, scene, sh_degree: int = 3, appearance=None
) -> Iterator[tuple[int, BakedGaussians]]:
    """Bake a trained run block by block (block_models), each block baked alone, so only one block's
    Gaussians are in memory."""
    from momentumgs.export.bake import bake

    for index, sub in block_models(model, partition):
        baked = bake(sub, scene, sh_degree=sh_degree, appearance=appearance)
        if baked.count:
            yield index, baked
