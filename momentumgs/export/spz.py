"""SPZ, Niantic's compressed Gaussian splat format (github.com/nianticlabs/spz, src/cc/load-spz.cc, MIT).

We write version 4 (default), 3 or 2 and read versions 2, 3 and 4. Every version stores the same six
attribute arrays, point after point:

    positions   N x 3 x 24-bit signed fixed point, value * 2^fractional_bits
    alphas      N x u8, sigmoid(opacity) * 255
    colours     N x 3 x u8, f_dc * (0.15 * 255) + 0.5 * 255 (a wider range than 0.282 so that DC terms that
                higher bands bring back into range survive)
    scales      N x 3 x u8, (log scale + 10) * 16
    rotations   v2: N x 3 x u8, x y z of the unit quaternion with w >= 0, times 127.5 plus 127.5;
                v3, v4: N x u32 "smallest three" (index of the largest component in the top 2 bits, then 3 x
                (sign bit + 9-bit magnitude / sqrt(1/2)))
    SH          N x D x 3 x u8 (D = 3, 8, 15 coefficients after the DC, channel innermost),
                round(x * 128) + 128 snapped to buckets of 8 (degree 1, 5 bits) or 16 (higher bands, 4 bits)

every u8 rounded half away from zero and clamped to 0..255. Versions 2 and 3 are the gzip of

    header (16 bytes, little endian): magic 0x5053474e ("NGSP"), version u32, number of points u32,
        SH degree u8, fractional bits u8, flags u8 (bit 0: antialiased; bit 1: extensions follow), reserved u8
    the six arrays, concatenated

Version 4 is not gzipped: a 32-byte header (magic, version, number of points u32, SH degree u8, fractional
bits u8, flags u8, number of streams u8, byte offset of the table of contents u32, 12 reserved bytes), any
extensions, the table of contents (per stream: compressed size u64, uncompressed size u64) and then each
array as its own ZSTD frame, in the order above; an empty array (SH of degree 0) has no stream. Separate
streams compress better (each array has its own statistics) and decompress in parallel.

The spec fixes the stored axes as RUB (x right, y up, z back, three.js); 3DGS PLY data is RDF (y down,
z forward), so writing flips y and z: positions, the quaternion's x y z (x, -y, -z) and the SH coefficients
odd in y or z (the spec's flipSh table). A file may declare other axes with the extension
SPZ_ADOBE_coordinate_system (extensions/README.md of the reference; a record u32 type 0xADBE0003, u32
length 4, u32 system; records sit between the v4 header and its table of contents, after the arrays in
v2/v3, and flag bit 1 says they are there): the reader honours the systems made of axis flips (RUB, RDF,
LUF, ...), skips extensions it does not know, and the writer declares RDF on request (`axes="RDF"`, version
4 only: the data stays in 3DGS PLY axes, which PlayCanvas splat-transform and SuperSplat assume of every
SPZ). The writer picks the largest fractional bits (at most 12, the reference value) that hold every
coordinate.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
import zstandard

from momentumgs.errors import UserError
from momentumgs.export.gaussians import BakedGaussians
from momentumgs.export.sh import n_coeffs
from momentumgs.io_utils import write_bytes_atomic

SPZ_MAGIC = 0x5053474E
SPZ_WRITE_VERSION = 4
SPZ_WRITE_VERSIONS = (2, 3, 4)
SPZ_READ_VERSIONS = (2, 3, 4)
SPZ_COLOR_SCALE = 0.15
SPZ_MAX_POINTS = 10_000_000  # the reference loader's limit for versions 2 and 3
SPZ_ZSTD_LEVEL = 12  # the reference writer's level
_HEADER = struct.Struct("<IIIBBBB")  # versions 2 and 3, inside the gzip
_HEADER_V4 = struct.Struct("<IIIBBBBI12x")  # version 4: + number of streams, table of contents offset
_TOC_ENTRY = struct.Struct("<QQ")  # compressed size, uncompressed size
_FLAG_EXTENSIONS = 0x2
_STREAMS = ("positions", "alphas", "colours", "scales", "rotations", "SH")
_EXT_RECORD = struct.Struct("<II")  # extension type, payload bytes
_EXT_COORDINATES = 0xADBE0003  # SPZ_ADOBE_coordinate_system: payload u32, the system
# The extension's systems made of axis flips, by their value (9-16, its "rotated family", swap y and z).
SPZ_AXES = {"LDB": 1, "RDB": 2, "LUB": 3, "RUB": 4, "LDF": 5, "RDF": 6, "LUF": 7, "RUF": 8}
# Which of x, y, z each SH basis function after the DC is odd in (gsplat's order: y, z, x | xy, yz,
# 2z^2-x^2-y^2, xz, x^2-y^2 | y(3x^2-y^2), xyz, y(4z^2-..), z(2z^2-..), x(4z^2-..), z(x^2-y^2), x(x^2-3y^2)).
_SH_ODD = np.array(
    [[0, 1, 0], [0, 0, 1], [1, 0, 0]]
    + [[1, 1, 0], [0, 1, 1], [0, 0, 0], [1, 0, 1], [0, 0, 0]]
    + [[0, 1, 0], [1, 1, 1], [0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 0, 1], [1, 0, 0]],
    dtype=bool,
)


def axis_flips(src: str, dst: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What takes data in axes `src` to axes `dst` (names of SPZ_AXES): the sign of each coordinate [3], of
    the quaternion's x y z [3] and of each SH coefficient after the DC [15]. A flip of two axes is a half
    turn, which negates those two quaternion components; a flip of one or three is a turn times -1, and
    -1 leaves every covariance alone, so the quaternion takes the turn's signs (f times its determinant).
    RDF -> RUB: (1, -1, -1), the quaternion (1, -1, -1), the SH as the spec's flipSh table."""
    sign = {"R": 1, "L": -1, "U": 1, "D": -1, "B": 1, "F": -1}
    f = np.array([sign[a] * sign[b] for a, b in zip(src, dst, strict=True)], dtype=np.float32)
    sh = np.where(_SH_ODD, f, 1.0).prod(axis=1).astype(np.float32)
    return f, f * f.prod(), sh


def _coordinates_record(axes: str) -> bytes:
    """The SPZ_ADOBE_coordinate_system record declaring `axes` (none for RUB, the spec's own)."""
    if axes == "RUB":
        return b""
    return _EXT_RECORD.pack(_EXT_COORDINATES, 4) + struct.pack("<I", SPZ_AXES[axes])


def _to_u8(x: np.ndarray) -> np.ndarray:
    """C++ toUint8: round half away from zero, clamp to 0..255."""
    return np.clip(np.sign(x) * np.floor(np.abs(x) + 0.5), 0, 255).astype(np.uint8)


def _fractional_bits(positions: np.ndarray) -> int:
    """Largest fractional bits <= 12 such that every coordinate fits a signed 24-bit integer."""
    extent = float(np.abs(positions).max(initial=0.0))
    bits = 12
    while bits > 0 and extent * (1 << bits) >= (1 << 23) - 1:
        bits -= 1
    if extent * (1 << bits) >= (1 << 23) - 1:
        raise ValueError(f"coordinates up to {extent:.0f} do not fit SPZ's 24-bit fixed point")
    return bits


def spz_arrays(
    g: BakedGaussians, version: int = SPZ_WRITE_VERSION, axes: str = "RUB"
) -> tuple[int, list[np.ndarray]]:
    """The quantised attribute arrays of `g` (3DGS PLY axes) in SPZ's stream order, stored in `axes`, for
    `version` (its rotation encoding). -> (fractional bits, [positions, alphas, colours, scales, rotations,
    SH], each uint8)"""
    degree = g.sh_degree
    flip_p, flip_q, flip_sh = axis_flips("RDF", axes)
    pos = g.means.detach().cpu().numpy().astype(np.float32) * flip_p  # [N, 3] in `axes`
    bits = _fractional_bits(pos)
    fixed = (np.sign(pos) * np.floor(np.abs(pos.astype(np.float64)) * (1 << bits) + 0.5)).astype(np.int64)
    fixed = fixed.astype(np.uint32)  # two's complement; the low three bytes are the 24-bit value
    positions = np.stack([(fixed >> s) & 0xFF for s in (0, 8, 16)], axis=-1).astype(np.uint8)  # [N, 3, 3]

    opacity = g.opacities.detach().cpu().numpy().astype(np.float32)
    alphas = _to_u8(opacity * 255.0)  # [N]
    sh = g.sh.detach().cpu().numpy().astype(np.float32)  # [N, B, 3]
    colors = _to_u8(sh[:, 0, :] * (SPZ_COLOR_SCALE * 255.0) + 0.5 * 255.0)  # [N, 3]
    scales = _to_u8((np.log(np.maximum(g.scales.detach().cpu().numpy(), 1e-30)) + 10.0) * 16.0)  # [N, 3]

    q = g.quats.detach().cpu().numpy().astype(np.float32)  # [N, 4] wxyz
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    xyzw = np.concatenate([q[:, 1:] * flip_q, q[:, :1]], axis=1)
    rotations = _first_three(xyzw) if version == 2 else _pack_smallest_three(xyzw)

    rest = sh[:, 1:, :] * flip_sh[: n_coeffs(degree) - 1, None]  # [N, D, 3]
    q_sh = np.sign(rest * 128.0) * np.floor(np.abs(rest * 128.0) + 0.5) + 128.0
    bucket = np.where(np.arange(rest.shape[1]) < 3, 8, 16)[None, :, None]  # 5 bits degree 1, 4 bits above
    q_sh = np.trunc((q_sh + bucket // 2) / bucket) * bucket
    sh_bytes = np.clip(q_sh, 0, 255).astype(np.uint8)  # [N, D, 3]
    return bits, [positions, alphas, colors, scales, rotations, sh_bytes]


def _first_three(xyzw: np.ndarray) -> np.ndarray:
    """Version-2 rotations: x y z of the quaternion with w >= 0 (w follows from unit length). [N, 4] ->
    [N, 3] u8"""
    xyz = np.where(xyzw[:, 3:] < 0, -xyzw[:, :3], xyzw[:, :3])
    return _to_u8(xyz * 127.5 + 127.5)


def _pack_smallest_three(xyzw: np.ndarray) -> np.ndarray:
    """Version-3/4 rotations (load-spz.cc, packQuaternionSmallestThree): the index of the largest |component|
    in the top 2 bits, then the other three in xyzw order, each a sign bit and 9 bits of |c| / sqrt(1/2);
    the largest is made positive (q and -q are the same rotation) and follows from unit length.
    [N, 4] unit -> [N, 4] u8 (a little-endian u32)"""
    n = xyzw.shape[0]
    largest = np.argmax(np.abs(xyzw), axis=1)  # [N], the first of equal maxima, as the reference
    negate = xyzw[np.arange(n), largest] < 0
    comp = largest.astype(np.uint32)
    mask = (1 << 9) - 1
    for i in range(4):
        here = largest != i
        sign = ((xyzw[:, i] < 0) ^ negate).astype(np.uint32)
        mag = np.floor(mask * (np.abs(xyzw[:, i]) / np.sqrt(0.5)) + 0.5)
        mag = np.minimum(mag, mask).astype(np.uint32)  # |c| <= sqrt(1/2) up to rounding
        comp = np.where(here, (comp << 10) | (sign << 9) | mag, comp)
    return np.stack([(comp >> s) & 0xFF for s in (0, 8, 16, 24)], axis=1).astype(np.uint8)


def spz_bytes(g: BakedGaussians, version: int = SPZ_WRITE_VERSION, axes: str = "RUB") -> bytes:
    """The SPZ file of `g`, version 4 (ZSTD streams behind a table of contents), 3 or 2 (gzip), stored in
    `axes` (RUB, the spec's; another name of SPZ_AXES is declared by SPZ_ADOBE_coordinate_system)."""
    if version not in SPZ_WRITE_VERSIONS:
        raise ValueError(f"SPZ version {version}: writes {SPZ_WRITE_VERSIONS}")
    if axes not in SPZ_AXES:
        raise ValueError(f"SPZ axes {axes}: choose one of {', '.join(SPZ_AXES)}")
    if axes != "RUB" and version < 4:
        # The reference library skips extension records after the arrays of a gzip file (its stream there
        # cannot tell how many bytes remain), so it would read such a file as RUB.
        raise ValueError(f"SPZ axes {axes} are declared in version 4 files only")
    bits, arrays = spz_arrays(g, version, axes)
    streams = [np.ascontiguousarray(a).tobytes() for a in arrays]
    extensions = _coordinates_record(axes)
    flags = _FLAG_EXTENSIONS if extensions else 0
    if version < 4:
        header = _HEADER.pack(SPZ_MAGIC, version, g.count, g.sh_degree, bits, flags, 0)
        return gzip.compress(header + b"".join(streams) + extensions, compresslevel=6, mtime=0)
    streams = [s for s in streams if s]  # no SH stream at degree 0, as the reference writes
    codec = zstandard.ZstdCompressor(level=SPZ_ZSTD_LEVEL)  # frames carry their content size
    frames = [codec.compress(s) for s in streams]
    toc_at = _HEADER_V4.size + len(extensions)
    header = _HEADER_V4.pack(SPZ_MAGIC, 4, g.count, g.sh_degree, bits, flags, len(frames), toc_at)
    toc = b"".join(_TOC_ENTRY.pack(len(f), len(s)) for f, s in zip(frames, streams, strict=True))
    return header + extensions + toc + b"".join(frames)


def write_spz(
    path: str | Path, g: BakedGaussians, version: int = SPZ_WRITE_VERSION, axes: str = "RUB"
) -> Path:
    """Write `g` as SPZ (version 4 by default; 3 or 2 for older readers) in `axes` (RUB, the spec's; RDF
    keeps 3DGS PLY axes and says so), atomically. -> the path"""
    if g.sh_degree > 3:
        raise ValueError(f"SPZ holds SH degrees 0 to 3, got {g.sh_degree}")
    if g.count == 0:
        raise ValueError("SPZ readers refuse files of 0 Gaussians")
    if version < 4 and g.count > SPZ_MAX_POINTS:
        raise ValueError(f"{g.count} Gaussians: SPZ version {version} readers load at most {SPZ_MAX_POINTS}")
    path = Path(path)
    write_bytes_atomic(path, spz_bytes(g, version, axes))
    return path


def read_spz(path: str | Path) -> BakedGaussians:
    """Read an SPZ file of version 2, 3 (gzip) or 4 (ZSTD streams) back into RDF (3DGS PLY) axes, from RUB
    or the axes its SPZ_ADOBE_coordinate_system declares. A malformed file raises a one-line UserError
    naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such SPZ file")
    return decode_spz(path.read_bytes(), path)


def decode_spz(data: bytes, path: str | Path) -> BakedGaussians:
    """The Gaussians of SPZ bytes (any version read here); `path` names their file in errors."""
    if data[:4] == struct.pack("<I", SPZ_MAGIC):
        return _read_v4(path, data)
    try:
        data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(
            f"{path}: not an SPZ file (neither version 4 nor gzip) or truncated ({exc})"
        ) from None
    if len(data) < _HEADER.size:
        raise UserError(f"{path}: truncated SPZ header ({len(data)} bytes)")
    magic, version, n, degree, bits, flags, _ = _HEADER.unpack_from(data)
    _check_header(path, magic, version, n, degree, flags, (2, 3))
    sizes = _stream_sizes(n, degree, version)
    expected = _HEADER.size + sum(sizes)
    if len(data) < expected or (len(data) > expected and not flags & _FLAG_EXTENSIONS):
        raise UserError(f"{path}: SPZ body has {len(data)} bytes, {expected} expected for {n} points")
    arrays, offset = [], _HEADER.size
    for size in sizes:
        arrays.append(np.frombuffer(data, dtype=np.uint8, count=size, offset=offset))
        offset += size
    axes, skipped = _read_extensions(path, data[expected:])
    return _unpack(n, degree, bits, version, *arrays, path, axes, skipped)


def _check_header(path, magic, version, n, degree, flags, versions) -> None:
    if magic != SPZ_MAGIC:
        raise UserError(f"{path}: not an SPZ file (magic {magic:#010x})")
    if version not in versions:
        raise UserError(f"{path}: SPZ version {version} is not supported here (reads {SPZ_READ_VERSIONS})")
    if n == 0 or degree > 3 or (version < 4 and n > SPZ_MAX_POINTS):
        raise UserError(f"{path}: implausible SPZ header ({n} points, SH degree {degree})")


def _stream_sizes(n: int, degree: int, version: int) -> list[int]:
    """Bytes of each of the six arrays for `n` points."""
    rot_bytes = 3 if version == 2 else 4
    return [9 * n, n, 3 * n, 3 * n, rot_bytes * n, 3 * (n_coeffs(degree) - 1) * n]


def _read_v4(path: str | Path, data: bytes) -> BakedGaussians:
    """Version 4: header, table of contents, one ZSTD frame per non-empty array."""
    if len(data) < _HEADER_V4.size:
        raise UserError(f"{path}: truncated SPZ header ({len(data)} bytes)")
    magic, version, n, degree, bits, flags, n_streams, toc_at = _HEADER_V4.unpack_from(data)
    _check_header(path, magic, version, n, degree, flags, (4,))
    sizes = [s for s in _stream_sizes(n, degree, version) if s > 0]
    names = [name for name, s in zip(_STREAMS, _stream_sizes(n, degree, version), strict=True) if s > 0]
    if (
        n_streams != len(sizes)
        or toc_at < _HEADER_V4.size
        or (toc_at > _HEADER_V4.size) != bool(flags & _FLAG_EXTENSIONS)
    ):
        where = "just after the header" if not flags & _FLAG_EXTENSIONS else "after the extensions"
        raise UserError(
            f"{path}: SPZ table of contents of {n_streams} streams at byte {toc_at}, expected "
            f"{len(sizes)} {where}"
        )
    offset = toc_at + n_streams * _TOC_ENTRY.size
    if len(data) < offset:
        raise UserError(f"{path}: truncated SPZ table of contents ({len(data)} bytes)")
    codec = zstandard.ZstdDecompressor()
    arrays = []
    for i, (name, size) in enumerate(zip(names, sizes, strict=True)):
        packed, unpacked = _TOC_ENTRY.unpack_from(data, toc_at + i * _TOC_ENTRY.size)
        if unpacked != size:
            raise UserError(
                f"{path}: SPZ {name} stream holds {unpacked} bytes, {size} expected for {n} points"
            )
        if offset + packed > len(data):
            raise UserError(f"{path}: SPZ file truncated in the {name} stream ({len(data)} bytes)")
        try:
            raw = codec.decompress(data[offset : offset + packed], max_output_size=size)
        except zstandard.ZstdError as exc:
            raise UserError(f"{path}: corrupt SPZ {name} stream ({exc})") from None
        if len(raw) != size:
            raise UserError(f"{path}: SPZ {name} stream decompresses to {len(raw)} bytes, {size} expected")
        arrays.append(np.frombuffer(raw, dtype=np.uint8))
        offset += packed
    if offset != len(data):
        raise UserError(f"{path}: {len(data) - offset} bytes after the last SPZ stream")
    if degree == 0:
        arrays.append(np.zeros(0, dtype=np.uint8))
    axes, skipped = _read_extensions(path, data[_HEADER_V4.size : toc_at])
    return _unpack(n, degree, bits, version, *arrays, path, axes, skipped)


def _read_extensions(path, block: bytes) -> tuple[str, list[str]]:
    """The axes declared by SPZ_ADOBE_coordinate_system in the extension records `block` (RUB without
    one), and the types of the records skipped (unknown here, as the reference skips them)."""
    axes, skipped, at = "RUB", [], 0
    while at < len(block):
        if at + _EXT_RECORD.size > len(block):
            raise UserError(f"{path}: truncated SPZ extension record at byte {at} of {len(block)}")
        kind, length = _EXT_RECORD.unpack_from(block, at)
        payload = block[at + _EXT_RECORD.size : at + _EXT_RECORD.size + length]
        if len(payload) != length:
            raise UserError(f"{path}: SPZ extension {kind:#010x} runs past its block")
        if kind == _EXT_COORDINATES and length == 4:
            value = struct.unpack("<I", payload)[0]
            names = {v: k for k, v in SPZ_AXES.items()} | {0: "RUB"}  # unspecified: RUB, as the reference
            if value not in names:
                raise UserError(
                    f"{path}: SPZ coordinate system {value} (axes swapped, not only flipped) is not read here"
                )
            axes = names[value]
        else:
            skipped.append(f"{kind:#010x}")
        at += _EXT_RECORD.size + length
    return axes, skipped


def _unpack(
    n, degree, bits, version, positions, alphas, colors, scales, rotations, sh_bytes, path, axes, skipped
):
    flip_p, flip_q, flip_sh = axis_flips(axes, "RDF")
    p = positions.reshape(n, 3, 3).astype(np.int32)
    fixed = p[..., 0] | (p[..., 1] << 8) | (p[..., 2] << 16)
    fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)  # sign extension
    means = fixed.astype(np.float32) / (1 << bits) * flip_p
    if version == 2:
        xyz = rotations.reshape(n, 3).astype(np.float32) / 127.5 - 1.0
        w = np.sqrt(np.maximum(0.0, 1.0 - (xyz * xyz).sum(axis=1, keepdims=True)))
        quats = np.concatenate([w, xyz], axis=1)  # wxyz
    else:
        quats = _smallest_three(rotations.reshape(n, 4))
    quats[:, 1:] *= flip_q
    dc = (colors.reshape(n, 3).astype(np.float32) / 255.0 - 0.5) / SPZ_COLOR_SCALE
    rest = (sh_bytes.reshape(n, -1, 3).astype(np.float32) - 128.0) / 128.0
    rest = rest * flip_sh[: rest.shape[1], None]
    opacities = alphas.astype(np.float32) / 255.0
    return BakedGaussians(
        means=torch.from_numpy(means),
        quats=torch.nn.functional.normalize(torch.from_numpy(quats), dim=1),
        scales=torch.from_numpy(np.exp(scales.reshape(n, 3).astype(np.float32) / 16.0 - 10.0)),
        opacities=torch.from_numpy(opacities),
        sh=torch.from_numpy(np.concatenate([dc[:, None, :], rest], axis=1)),
        info={
            "source": str(path),
            "spz_version": version,
            "fractional_bits": bits,
            "spz_axes": axes,
            **({"spz_skipped_extensions": skipped} if skipped else {}),
        },
    )


def _smallest_three(r: np.ndarray) -> np.ndarray:
    """Decode version-3 rotations [N, 4] u8 to wxyz quaternions [N, 4] (load-spz.cc's xyzw order inside)."""
    comp = r[:, 0].astype(np.uint32) | (r[:, 1].astype(np.uint32) << 8)
    comp |= (r[:, 2].astype(np.uint32) << 16) | (r[:, 3].astype(np.uint32) << 24)
    largest = (comp >> 30).astype(np.int64)
    xyzw = np.zeros((r.shape[0], 4), dtype=np.float32)
    mask = (1 << 9) - 1
    for i in range(3, -1, -1):  # the reference decodes from the last component down
        here = largest != i
        mag = (comp & mask).astype(np.float32)
        neg = (comp >> 9) & 1
        value = np.sqrt(0.5) * mag / mask * np.where(neg == 1, -1.0, 1.0)
        xyzw[here, i] = value[here]
        comp = np.where(here, comp >> 10, comp)
    rest = (xyzw * xyzw).sum(axis=1)
    xyzw[np.arange(len(r)), largest] = np.sqrt(np.maximum(0.0, 1.0 - rest))
    return np.concatenate([xyzw[:, 3:], xyzw[:, :3]], axis=1)
