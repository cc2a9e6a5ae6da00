"""glTF 2.0 binary (.glb) with the `KHR_gaussian_splatting` extension (github.com/KhronosGroup/glTF,
extensions/2.0/Khronos/KHR_gaussian_splatting; the ellipse kernel).

One scene, one node, one mesh with one primitive of mode POINTS (0) whose attributes are

    POSITION                                     VEC3 float, with min / max (the core spec requires them)
    COLOR_0                                      VEC4 u8 normalised: the fallback colour of a viewer that
                                                 draws points: linear RGB of clamp(0.5 + 0.2821 f_dc), opacity
    KHR_gaussian_splatting:ROTATION              VEC4 float, unit quaternion in glTF's x y z w order
    KHR_gaussian_splatting:SCALE                 VEC3 float, linear
    KHR_gaussian_splatting:OPACITY               SCALAR float in [0, 1] (after the sigmoid)
    KHR_gaussian_splatting:SH_DEGREE_0_COEF_0    VEC3 float, the DC coefficients (RGB)
    KHR_gaussian_splatting:SH_DEGREE_l_COEF_n    VEC3 float, l = 1..degree, n = 0..2l (m = -l..l), RGB

each in its own tightly packed buffer view of the one binary chunk, 4-byte aligned. The extension's SH basis
(real, with the Condon-Shortley phase, colour = 0.5 + sum) is the 3DGS / gsplat one, coefficient for
coefficient, so the SH are stored as they are. The primitive's extension object says `kernel: ellipse`,
`colorSpace: srgb_rec709_display` (3DGS fits display-referred sRGB photos), `projection: perspective`,
`sortingMethod: cameraDistance`. The extension is listed in `extensionsUsed` only: a viewer without it
still shows the points.

glTF's axes are +y up, +z forward, +x left; 3DGS PLY data is RDF (y down, z forward). As PlayCanvas'
splat-transform does, the writer turns the data half a turn about z: x and y negate in positions, in the
quaternion's x and y, and in the SH coefficients odd in x + y (degree 1: y, x; degree 2: yz, xz;
degree 3: all but xyz and z(x^2 - y^2)), so the scene stands upright in a glTF viewer when the PLY's
-y is up (COLMAP scenes are usually so).

With `spz=True` the Gaussians are stored SPZ-compressed instead (`KHR_gaussian_splatting_compression_spz_2`,
a draft that extends the extension; KhronosGroup/glTF, extensions/2.0/Khronos/
KHR_gaussian_splatting_compression_spz_2): one buffer view holds an SPZ file of version 3 (gzip; the
format of the SPZ library's version 2, which the draft names), packed from glTF's LUF axes, i.e. the SPZ
file `write_spz` writes; the attributes keep their accessors (type, count, POSITION's bounds) without a
buffer view, the extension object sits inside the KHR_gaussian_splatting one, and the file lists it in
`extensionsRequired`: a viewer without it has no data to show. About 10 times smaller than the float
attributes, with SPZ's quantisation.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import torch

from momentumgs.errors import UserError
from momentumgs.export.gaussians import BakedGaussians
from momentumgs.export.sh import MAX_SH_DEGREE, SH_C0
from momentumgs.export.spz import decode_spz, spz_bytes
from momentumgs.io_utils import write_bytes_atomic

EXTENSION = "KHR_gaussian_splatting"
SPZ_EXTENSION = "KHR_gaussian_splatting_compression_spz_2"
SPZ_IN_GLB_VERSION = 3  # gzip, smallest-three rotations: what the SPZ library's version 2 writes
GLB_MAGIC = 0x46546C67  # "glTF"
_CHUNK_JSON = 0x4E4F534A  # "JSON"
_CHUNK_BIN = 0x004E4942  # "BIN\0"
_FLOAT, _UNSIGNED_BYTE = 5126, 5121
_ARRAY_BUFFER = 34962
_COMPONENTS = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}
# RDF (3DGS PLY) <-> glTF: a half turn about z, its own inverse.
_FLIP_P = np.array([-1.0, -1.0, 1.0], dtype=np.float32)
# Sign of each SH coefficient after the DC under that turn (x, y -> -x, -y), in gsplat's order:
# y, z, x | xy, yz, 2z^2-x^2-y^2, xz, x^2-y^2 | y(3x^2-y^2), xyz, y(4z^2-..), z(2z^2-..), x(4z^2-..),
# z(x^2-y^2), x(x^2-3y^2)
_FLIP_SH = np.array([-1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1], dtype=np.float32)


def sh_semantics(degree: int) -> list[str]:
    """The extension's attribute names of the SH coefficients of `degree`, DC first (gsplat's order)."""
    names = [f"{EXTENSION}:SH_DEGREE_0_COEF_0"]
    for band in range(1, degree + 1):
        names += [f"{EXTENSION}:SH_DEGREE_{band}_COEF_{n}" for n in range(2 * band + 1)]
    return names


def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """sRGB transfer function inverse (IEC 61966-2-1), c in [0, 1]."""
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def gltf_attributes(g: BakedGaussians) -> dict[str, np.ndarray]:
    """The primitive's attributes of `g` in glTF axes, by semantic. -> {name: [N, C] float32 or uint8}"""
    means = g.means.detach().cpu().numpy().astype(np.float32) * _FLIP_P  # [N, 3]
    q = g.quats.detach().cpu().numpy().astype(np.float64)  # [N, 4] wxyz
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    xyzw = np.concatenate([q[:, 1:] * _FLIP_P, q[:, :1]], axis=1).astype(np.float32)  # [N, 4]
    sh = g.sh.detach().cpu().numpy().astype(np.float32)  # [N, B, 3]
    sh = np.concatenate([sh[:, :1], sh[:, 1:] * _FLIP_SH[: sh.shape[1] - 1, None]], axis=1)
    opacity = g.opacities.detach().cpu().numpy().astype(np.float32).clip(0.0, 1.0)  # [N]
    rgb = _srgb_to_linear(np.clip(0.5 + SH_C0 * sh[:, 0], 0.0, 1.0))  # [N, 3] linear, as COLOR_0 must be
    color = np.concatenate([rgb, opacity[:, None]], axis=1)
    attributes = {
        "POSITION": means,
        "COLOR_0": np.floor(color * 255.0 + 0.5).astype(np.uint8),  # [N, 4]
        f"{EXTENSION}:ROTATION": xyzw,
        f"{EXTENSION}:SCALE": g.scales.detach().cpu().numpy().astype(np.float32),  # [N, 3]
        f"{EXTENSION}:OPACITY": opacity[:, None],  # [N, 1]
    }
    for j, name in enumerate(sh_semantics(g.sh_degree)):
        attributes[name] = np.ascontiguousarray(sh[:, j])  # [N, 3]
    return attributes


def glb_bytes(g: BakedGaussians, spz: bool = False) -> bytes:
    """The .glb file of `g`: 12-byte header, JSON chunk, binary chunk. `spz`: the Gaussians SPZ-compressed
    in one buffer view (KHR_gaussian_splatting_compression_spz_2), the accessors without data."""
    views, accessors, semantics, blobs, offset = [], [], {}, [], 0
    compressed = spz_bytes(g, SPZ_IN_GLB_VERSION) if spz else b""
    if spz:  # the accessors describe the decoded values: POSITION's bounds are the quantised ones
        g = decode_spz(compressed, "the SPZ payload")
        views.append({"buffer": 0, "byteOffset": 0, "byteLength": len(compressed)})
        blobs.append(compressed + b"\0" * (-len(compressed) % 4))
        offset = len(blobs[-1])
    for name, values in gltf_attributes(g).items():
        accessor = _accessor_of(name, values)
        if not spz:
            data = np.ascontiguousarray(values).tobytes()
            views.append(
                {"buffer": 0, "byteOffset": offset, "byteLength": len(data), "target": _ARRAY_BUFFER}
            )
            accessor = {"bufferView": len(views) - 1, **accessor}
            blobs.append(data + b"\0" * (-len(data) % 4))
            offset += len(blobs[-1])
        accessors.append(accessor)
        semantics[name] = len(accessors) - 1
    binary = b"".join(blobs)
    splatting = {
        "kernel": "ellipse",
        "colorSpace": "srgb_rec709_display",
        "projection": "perspective",
        "sortingMethod": "cameraDistance",
    }
    if spz:
        splatting["extensions"] = {SPZ_EXTENSION: {"bufferView": 0}}
    primitive = {"attributes": semantics, "mode": 0, "extensions": {EXTENSION: splatting}}
    document = {
        "asset": {"version": "2.0", "generator": "momentumgs"},
        "extensionsUsed": [EXTENSION, SPZ_EXTENSION] if spz else [EXTENSION],
        **({"extensionsRequired": [SPZ_EXTENSION]} if spz else {}),
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": "gaussians"}],
        "meshes": [{"primitives": [primitive]}],
        "buffers": [{"byteLength": len(binary)}],
        "bufferViews": views,
        "accessors": accessors,
    }
    return _glb_container(document, binary)


def _accessor_of(name: str, values: np.ndarray) -> dict:
    """The accessor of one attribute's values [N, C], without its buffer view."""
    accessor = {
        "componentType": _UNSIGNED_BYTE if values.dtype == np.uint8 else _FLOAT,
        "count": values.shape[0],
        "type": {1: "SCALAR", 3: "VEC3", 4: "VEC4"}[values.shape[1]],
    }
    if values.dtype == np.uint8:
        accessor["normalized"] = True
    if name == "POSITION":
        accessor["min"] = values.min(axis=0).tolist()
        accessor["max"] = values.max(axis=0).tolist()
    return accessor


def _glb_container(document: dict, binary: bytes) -> bytes:
    """The .glb file: 12-byte header, JSON chunk, binary chunk."""
    text = json.dumps(document, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 4)  # the JSON chunk is padded with spaces, the binary one with zeros
    total = 12 + 8 + len(text) + 8 + len(binary)
    return b"".join(
        [
            struct.pack("<III", GLB_MAGIC, 2, total),
            struct.pack("<II", len(text), _CHUNK_JSON),
            text,
            struct.pack("<II", len(binary), _CHUNK_BIN),
            binary,
        ]
    )


def write_glb(path: str | Path, g: BakedGaussians, spz: bool = False) -> Path:
    """Write `g` as a .glb with KHR_gaussian_splatting (`spz`: SPZ-compressed), atomically. -> the path"""
    if g.sh_degree > MAX_SH_DEGREE:
        raise ValueError(f"{EXTENSION} holds SH degrees 0 to {MAX_SH_DEGREE}, got {g.sh_degree}")
    if g.count == 0:
        raise ValueError("a glTF accessor holds at least one element: no Gaussians to write")
    path = Path(path)
    write_bytes_atomic(path, glb_bytes(g, spz))
    return path


def read_glb(path: str | Path) -> BakedGaussians:
    """Read the first KHR_gaussian_splatting primitive of a .glb (float attributes, as `write_glb` and
    splat-transform write them, or SPZ-compressed) back into RDF (3DGS PLY) axes. A malformed file raises
    a one-line UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such glTF file")
    data = path.read_bytes()
    document, binary = _glb_chunks(path, data)
    primitive = next(
        (
            p
            for mesh in document.get("meshes", [])
            for p in mesh.get("primitives", [])
            if EXTENSION in p.get("extensions", {})
        ),
        None,
    )
    if primitive is None:
        raise UserError(f"{path}: no {EXTENSION} primitive")
    compression = primitive["extensions"][EXTENSION].get("extensions", {}).get(SPZ_EXTENSION)
    if compression is not None:
        return decode_spz(_buffer_view(path, document, binary, compression.get("bufferView")), path)
    attributes = primitive.get("attributes", {})
    degree = 0
    while degree < MAX_SH_DEGREE and sh_semantics(degree + 1)[-1] in attributes:
        degree += 1
    names = ["POSITION", f"{EXTENSION}:ROTATION", f"{EXTENSION}:SCALE", f"{EXTENSION}:OPACITY"]
    names += sh_semantics(degree)
    missing = [n for n in names if n not in attributes]
    if missing:
        raise UserError(f"{path}: missing attribute{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    arrays = {n: _accessor(path, document, binary, attributes[n]) for n in names}
    counts = {a.shape[0] for a in arrays.values()}
    if len(counts) != 1 or 0 in counts:
        raise UserError(f"{path}: attributes of different or zero lengths ({sorted(counts)})")
    xyzw = arrays[f"{EXTENSION}:ROTATION"].astype(np.float32)
    quats = np.concatenate([xyzw[:, 3:], xyzw[:, :3] * _FLIP_P], axis=1)  # wxyz, RDF
    sh = np.stack([arrays[n] for n in sh_semantics(degree)], axis=1).astype(np.float32)  # [N, B, 3]
    sh[:, 1:] *= _FLIP_SH[: sh.shape[1] - 1, None]
    norms = np.linalg.norm(quats, axis=1, keepdims=True)
    if (norms == 0).any() or not all(np.isfinite(a).all() for a in arrays.values()):
        raise UserError(f"{path}: zero quaternions or non-finite values")
    return BakedGaussians(
        means=torch.from_numpy(arrays["POSITION"].astype(np.float32) * _FLIP_P),
        quats=torch.from_numpy(quats / norms),
        scales=torch.from_numpy(arrays[f"{EXTENSION}:SCALE"].astype(np.float32)),
        opacities=torch.from_numpy(arrays[f"{EXTENSION}:OPACITY"][:, 0].astype(np.float32)),
        sh=torch.from_numpy(sh),
        info={"source": str(path)},
    )


def _glb_chunks(path: Path, data: bytes) -> tuple[dict, bytes]:
    """The JSON document and the binary chunk of a .glb."""
    if len(data) < 20:
        raise UserError(f"{path}: not a .glb file ({len(data)} bytes)")
    magic, version, total = struct.unpack_from("<III", data)
    if magic != GLB_MAGIC or version != 2:
        raise UserError(f"{path}: not a glTF 2.0 binary file (magic {magic:#010x}, version {version})")
    if total != len(data):
        raise UserError(f"{path}: .glb header says {total} bytes, the file has {len(data)} (truncated?)")
    length, kind = struct.unpack_from("<II", data, 12)
    if kind != _CHUNK_JSON or 20 + length > len(data):
        raise UserError(f"{path}: the first .glb chunk is not a whole JSON chunk")
    try:
        document = json.loads(data[20 : 20 + length])
    except ValueError as exc:
        raise UserError(f"{path}: unreadable glTF JSON ({exc})") from None
    binary = b""
    at = 20 + length
    if at + 8 <= len(data):
        length, kind = struct.unpack_from("<II", data, at)
        if kind != _CHUNK_BIN or at + 8 + length > len(data):
            raise UserError(f"{path}: the second .glb chunk is not a whole binary chunk")
        binary = data[at + 8 : at + 8 + length]
    return document, binary


def _buffer_view(path: Path, document: dict, binary: bytes, index) -> bytes:
    """The bytes of buffer view `index` of the binary chunk."""
    try:
        view = document["bufferViews"][index]
        start, length = view.get("byteOffset", 0), view["byteLength"]
        if view.get("buffer", 0) != 0 or start + length > len(binary):
            raise KeyError("outside the binary chunk")
    except (KeyError, IndexError, TypeError) as exc:
        raise UserError(f"{path}: buffer view {index} is not readable here ({exc})") from None
    return binary[start : start + length]


def _accessor(path: Path, document: dict, binary: bytes, index: int) -> np.ndarray:
    """The values of accessor `index` (float or normalised unsigned bytes, in the binary chunk). -> [N, C]"""
    try:
        accessor = document["accessors"][index]
        view = document["bufferViews"][accessor["bufferView"]]
        width = _COMPONENTS[accessor["type"]]
        dtype = {_FLOAT: np.dtype("<f4"), _UNSIGNED_BYTE: np.dtype("u1")}[accessor["componentType"]]
        if (
            view.get("buffer", 0) != 0
            or view.get("byteStride", width * dtype.itemsize) != width * dtype.itemsize
        ):
            raise KeyError("an interleaved or external buffer view")
        start = view.get("byteOffset", 0) + accessor.get("byteOffset", 0)
        count = accessor["count"]
        if start + count * width * dtype.itemsize > len(binary):
            raise KeyError("past the end of the binary chunk")
    except (KeyError, IndexError, TypeError) as exc:
        raise UserError(f"{path}: accessor {index} is not readable here ({exc})") from None
    values = np.frombuffer(binary, dtype=dtype, count=count * width, offset=start).reshape(count, width)
    return values / 255.0 if dtype == np.uint8 else values
