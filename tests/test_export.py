"""Export: bake, PLY (INRIA layout), .splat, SPZ, glTF, readers, CLI (foreign readers: test_interop.py)."""

from __future__ import annotations

import gzip
import json
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import look_at
from plyfile import PlyData, PlyElement

from momentumgs.cli import main
from momentumgs.data.scene import Camera
from momentumgs.errors import UserError
from momentumgs.export import (
    BakedGaussians,
    bake,
    read_glb,
    read_ply,
    read_spz,
    render_baked,
    write_glb,
    write_ply,
    write_splat,
    write_spz,
)
from momentumgs.export.sh import SH_C0, fit_sh, sh_bases
from momentumgs.model.anchors import AnchorField, init_anchors_from_points
from momentumgs.model.store import AnchorModel, DecoderSpec, save_model
from momentumgs.render.anchors import render_model_view
from momentumgs.render.view import camera_view

INRIA_PROPERTIES_DEGREE_3 = (
    ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    + [f"f_rest_{i}" for i in range(45)]
    + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
)


def ring_cameras(n: int = 8, w: int = 48, h: int = 36) -> list[Camera]:
    K = np.array([[40.0, 0, w / 2], [0, 40.0, h / 2], [0, 0, 1]])
    cams = []
    for i in range(n):
        a = 2 * np.pi * i / n
        center = (4 * np.cos(a), 4 * np.sin(a), 1.5)
        cams.append(Camera(f"{i:04d}.png", K, look_at(center), w, h, Path(f"{i:04d}.png")))
    return cams


def tiny_model(seed: int = 0, n_points: int = 300) -> AnchorModel:
    """Anchors from random points with random features and offsets, a randomly initialised decoder."""
    gen = torch.Generator().manual_seed(seed)
    points = torch.rand(n_points, 3, generator=gen) * 2 - 1
    field = init_anchors_from_points(points, voxel_size=0.25, n_offsets=4, feat_dim=8)
    with torch.no_grad():
        field.features.copy_(torch.randn(field.features.shape, generator=gen))
        field.offsets.copy_(torch.randn(field.offsets.shape, generator=gen) * 0.5)
    spec = DecoderSpec(feat_dim=8, n_offsets=4, hidden_dim=16)
    torch.manual_seed(seed)
    decoder = spec.build().requires_grad_(False)
    return AnchorModel(field, decoder, spec, {})


def random_gaussians(m: int = 64, degree: int = 3, seed: int = 0, extent: float = 2.0) -> BakedGaussians:
    gen = torch.Generator().manual_seed(seed)
    return BakedGaussians(
        means=(torch.rand(m, 3, generator=gen) * 2 - 1) * extent,
        quats=torch.nn.functional.normalize(torch.randn(m, 4, generator=gen), dim=1),
        scales=torch.rand(m, 3, generator=gen) * 0.1 + 0.02,
        opacities=torch.rand(m, generator=gen) * 0.9 + 0.05,
        sh=(torch.rand(m, (degree + 1) ** 2, 3, generator=gen) - 0.5) * 1.6,
    )


# ---------------------------------------------------------------- SH and bake


def test_sh_fit_recovers_known_coefficients():
    gen = torch.Generator().manual_seed(1)
    s, v = 20, 40
    sh = torch.randn(s, 16, 3, generator=gen) * 0.2
    dirs = torch.randn(s, v, 3, generator=gen)
    bases = sh_bases(dirs, 3)  # [S, V, 16]
    colors = 0.5 + torch.einsum("svb,sbc->svc", bases, sh)
    fitted = fit_sh(bases, colors, torch.ones(s, v), ridge=0.0)
    assert torch.allclose(fitted, sh, atol=1e-4)
    # The DC term alone gives the colour C0 * dc + 0.5 the PLY convention prescribes.
    assert torch.allclose(sh_bases(dirs[:, :1], 0)[..., 0], torch.full((s, 1), SH_C0))


def test_bake_of_a_view_independent_decoder_renders_like_the_model():
    model = tiny_model()
    k = model.spec.feat_dim
    for mlp in (model.decoder.mlp_opacity, model.decoder.mlp_color, model.decoder.mlp_cov):
        mlp[0].weight.data[:, k : k + 3] = 0.0  # no view direction input: every view decodes the same
    cams = ring_cameras()
    baked = bake(model, cams, sh_degree=3, n_directions=16)
    n_slots = model.field.n_anchors * model.spec.n_offsets
    assert 0 < baked.count < n_slots  # tanh <= 0 slots are never kept
    assert baked.info["slots"] == n_slots and baked.info["gaussians"] == baked.count
    assert torch.allclose(baked.quats.norm(dim=1), torch.ones(baked.count), atol=1e-5)
    assert (baked.opacities >= 1 / 255).all() and (baked.opacities < 1).all() and (baked.scales > 0).all()
    assert baked.sh[:, 1:].abs().max() < 1e-3  # constant colours need no higher band
    for i in (0, 3):
        view = camera_view(cams[i], "cpu", i)
        with torch.no_grad():
            ref = render_model_view(model, view)
            img = render_baked(baked, view)[0]
        assert ref.std() > 0.01
        assert (img - ref).abs().max() < 2e-3


def test_render_model_view_records_no_graph_for_a_trainable_model():
    """Evaluation, export and the viewer render trained models whose parameters may still require grad:
    their renders must not build an autograd graph (time and memory for nothing)."""
    model = tiny_model(0)
    model.decoder.requires_grad_(True)
    model.field.features.requires_grad_(True)
    view = camera_view(ring_cameras()[0], "cpu", 0)
    image = render_model_view(model, view)
    assert image.std() > 0.01 and not image.requires_grad


def test_bake_follows_view_dependent_colour_and_drops_faint_gaussians():
    model = tiny_model(seed=2)
    cams = ring_cameras()
    baked = bake(model, cams, sh_degree=3)
    faint = bake(model, cams, min_opacity=0.3)
    assert faint.count < baked.count and (faint.opacities >= 0.3).all()
    flat = bake(model, cams, sh_degree=0)
    errors = {}
    for name, g in (("sh3", baked), ("sh0", flat)):
        err = []
        for i, cam in enumerate(cams):
            view = camera_view(cam, "cpu", i)
            with torch.no_grad():
                err.append((render_baked(g, view)[0] - render_model_view(model, view)).abs().mean())
        errors[name] = float(torch.stack(err).mean())
    assert errors["sh3"] < errors["sh0"]  # the SH fit captures part of the decoder's view dependence


def _sub_model(model: AnchorModel, rows: torch.Tensor, decoder) -> AnchorModel:
    state = model.field.state_dict()
    state.update({k: v[rows] for k, v in state.items() if k != "voxel_size"})
    return AnchorModel(AnchorField.from_state_dict(state), decoder, model.spec, {})


def test_bake_uses_each_blocks_decoder():
    model = tiny_model(seed=3)
    other = tiny_model(seed=4).decoder
    block = (model.field.positions[:, 0] > 0).long()
    split = AnchorModel(model.field, model.decoder, model.spec, {}, [model.decoder, other], block)
    cams = ring_cameras()
    baked = bake(split, cams, n_directions=8)
    parts = [
        bake(_sub_model(model, (block == b).nonzero().squeeze(1), d), cams, n_directions=8)
        for b, d in enumerate([model.decoder, other])
    ]
    assert min(p.count for p in parts) > 0 and baked.count == sum(p.count for p in parts)
    for name in ("means", "quats", "scales", "opacities", "sh"):
        assert torch.allclose(getattr(baked, name), torch.cat([getattr(p, name) for p in parts]), atol=1e-5)
    # ... and block 1 really differs from decoding it with the shared decoder.
    shared = bake(_sub_model(model, (block == 1).nonzero().squeeze(1), model.decoder), cams, n_directions=8)
    assert shared.count != parts[1].count or not torch.allclose(shared.sh, parts[1].sh)


# ---------------------------------------------------------------- PLY


def test_ply_header_and_layout_are_inria(tmp_path):
    g = random_gaussians(m=10)
    sh = torch.zeros(10, 16, 3)
    for c in range(3):
        for j in range(16):
            sh[:, j, c] = 100 * c + j
    g = BakedGaussians(g.means, g.quats, g.scales, g.opacities, sh)
    path = write_ply(tmp_path / "m.ply", g)
    header = path.read_bytes().split(b"end_header\n")[0].decode().splitlines()
    assert header[:3] == ["ply", "format binary_little_endian 1.0", "element vertex 10"]
    assert header[3:] == [f"property float {n}" for n in INRIA_PROPERTIES_DEGREE_3]
    v = PlyData.read(str(path))["vertex"]
    assert v["f_rest_0"][0] == 1 and v["f_rest_14"][0] == 15  # all R coefficients first ...
    assert v["f_rest_15"][0] == 101 and v["f_rest_44"][0] == 215  # ... then G, then B
    assert v["f_dc_1"][0] == 100
    assert np.all(v["nx"] == 0) and np.all(v["nz"] == 0)
    np.testing.assert_allclose(v["opacity"], torch.logit(g.opacities).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(v["scale_2"], g.scales[:, 2].log().numpy(), rtol=1e-5)
    np.testing.assert_allclose(v["rot_0"], g.quats[:, 0].numpy())  # w first


def test_ply_round_trip_renders_the_same(tmp_path):
    model = tiny_model()
    cams = ring_cameras()
    baked = bake(model, cams)
    back = read_ply(write_ply(tmp_path / "m.ply", baked))
    assert back.count == baked.count and back.sh_degree == 3
    for name in ("means", "quats", "scales", "opacities", "sh"):
        assert torch.allclose(getattr(back, name), getattr(baked, name), atol=1e-5), name
    view = camera_view(cams[1], "cpu", 1)
    with torch.no_grad():
        a, b = render_baked(baked, view)[0], render_baked(back, view)[0]
    assert a.std() > 0.01 and (a - b).abs().max() < 1e-4
    # A lower degree keeps the other bands and writes 3 * 3 f_rest properties.
    for degree in (0, 1):
        low = read_ply(write_ply(tmp_path / f"d{degree}.ply", baked.with_sh_degree(degree)))
        b = (degree + 1) ** 2
        assert low.sh_degree == degree and torch.allclose(low.sh, baked.sh[:, :b], atol=1e-6)


def _write_raw_ply(path: Path, columns: dict[str, np.ndarray]) -> Path:
    n = len(next(iter(columns.values())))
    arr = np.empty(n, dtype=[(k, "<f4") for k in columns])
    for k, v in columns.items():
        arr[k] = v
    PlyData([PlyElement.describe(arr, "vertex")]).write(str(path))
    return path


def _columns(g: BakedGaussians) -> dict[str, np.ndarray]:
    path = Path(tempfile.mkdtemp()) / "x.ply"
    v = PlyData.read(str(write_ply(path, g)))["vertex"]
    return {p.name: np.array(v[p.name]) for p in v.properties}


def test_bad_ply_files_give_one_line_errors(tmp_path):
    cols = _columns(random_gaussians(m=5, degree=1))
    missing = {k: v for k, v in cols.items() if k != "opacity"}
    with pytest.raises(UserError, match=r"missing property opacity"):
        read_ply(_write_raw_ply(tmp_path / "missing.ply", missing))
    bad = dict(cols)
    bad["scale_1"] = bad["scale_1"].copy()
    bad["scale_1"][2] = np.nan
    with pytest.raises(UserError, match=r"1 non-finite value\(s\) in property scale_1"):
        read_ply(_write_raw_ply(tmp_path / "nan.ply", bad))
    odd = {k: v for k, v in cols.items() if k != "f_rest_8"}
    with pytest.raises(UserError, match="8 f_rest properties"):
        read_ply(_write_raw_ply(tmp_path / "rest.ply", odd))
    (tmp_path / "junk.ply").write_bytes(b"not a ply at all\n" * 4)
    with pytest.raises(UserError, match="junk.ply: not a readable PLY"):
        read_ply(tmp_path / "junk.ply")
    good = write_ply(tmp_path / "good.ply", random_gaussians(m=50))
    (tmp_path / "cut.ply").write_bytes(good.read_bytes()[:-100])
    with pytest.raises(UserError, match="cut.ply"):
        read_ply(tmp_path / "cut.ply")
    with pytest.raises(UserError, match="no such PLY file"):
        read_ply(tmp_path / "absent.ply")
    with pytest.raises(UserError) as err:
        read_ply(tmp_path / "nan.ply")
    assert "\n" not in str(err.value) and "nan.ply" in str(err.value)


# ---------------------------------------------------------------- .splat


def test_splat_byte_layout(tmp_path):
    g = random_gaussians(m=30, degree=3)
    data = write_splat(tmp_path / "m.splat", g).read_bytes()
    assert len(data) == 32 * g.count
    # The first record is the Gaussian with the largest volume x opacity (convert.py's order).
    first = int(torch.argmax(g.scales.prod(dim=1) * g.opacities))
    pos = struct.unpack_from("<3f", data, 0)
    scale = struct.unpack_from("<3f", data, 12)
    rgba = struct.unpack_from("<4B", data, 24)
    rot = struct.unpack_from("<4B", data, 28)
    np.testing.assert_allclose(pos, g.means[first].numpy())
    np.testing.assert_allclose(scale, g.scales[first].numpy(), rtol=1e-5)
    dc = g.sh[first, 0].double().numpy()
    want_rgb = [int(np.clip((0.5 + SH_C0 * c) * 255, 0, 255)) for c in dc]
    assert all(abs(a - b) <= 1 for a, b in zip(rgba[:3], want_rgb, strict=True))
    assert abs(rgba[3] - int(float(g.opacities[first]) * 255)) <= 1
    want_rot = [int(np.clip(q * 128 + 128, 0, 255)) for q in g.quats[first].tolist()]  # w x y z
    assert all(abs(a - b) <= 1 for a, b in zip(rot, want_rot, strict=True))
    # Records are sorted by decreasing volume x opacity.
    recs = np.frombuffer(data, dtype=np.float32).reshape(-1, 8)
    alpha = np.frombuffer(data, dtype=np.uint8).reshape(-1, 32)[:, 27] / 255.0
    key = recs[:, 3:6].prod(axis=1) * alpha
    assert np.all(np.diff(key) <= 1e-3 * key.max())


# ---------------------------------------------------------------- SPZ


def _assert_spz_close(back: BakedGaussians, g: BakedGaussians, bits: int = 12, rotation_dot: float = 0.999):
    """Equal within SPZ's quantisation steps (load-spz.cc)."""
    assert back.count == g.count and back.sh_degree == g.sh_degree
    assert (back.means - g.means).abs().max() <= 0.5 / 2**bits + 1e-6 * max(1.0, float(g.means.abs().max()))
    assert (back.scales.log() - g.scales.log()).abs().max() <= 1 / 32 + 1e-5
    assert (back.opacities - g.opacities).abs().max() <= 0.5 / 255 + 1e-6
    assert (back.sh[:, 0] - g.sh[:, 0]).abs().max() <= 0.5 / (0.15 * 255) + 1e-5
    if g.sh.shape[1] > 1:
        # round(x * 128), then snapped to a bucket of 8 (5 bits, degree 1) or 16 (4 bits, degrees 2-3)
        assert (back.sh[:, 1:4] - g.sh[:, 1:4]).abs().max() <= 4.5 / 128 + 1e-5
        assert (back.sh[:, 4:] - g.sh[:, 4:]).abs().max() <= 8.5 / 128 + 1e-5
    assert (back.quats * g.quats).sum(dim=1).abs().min() > rotation_dot  # the same rotation up to sign


def test_spz_v4_layout_and_round_trip(tmp_path):
    import zstandard

    g = random_gaussians(m=200, degree=3)
    data = write_spz(tmp_path / "m.spz", g).read_bytes()  # version 4 by default
    magic, version, n, degree, bits, flags, streams, toc = struct.unpack_from("<IIIBBBBI", data)
    assert (magic, version, n, degree, bits, flags, streams, toc) == (0x5053474E, 4, 200, 3, 12, 0, 6, 32)
    assert data[20:32] == bytes(12)  # reserved
    sizes = [struct.unpack_from("<QQ", data, 32 + 16 * i) for i in range(6)]
    assert [u for _, u in sizes] == [200 * k for k in (9, 1, 3, 3, 4, 45)]
    offset = 32 + 16 * 6
    for packed, unpacked in sizes:  # six independent ZSTD frames, back to back, nothing after them
        assert len(zstandard.ZstdDecompressor().decompress(data[offset : offset + packed])) == unpacked
        offset += packed
    assert offset == len(data)
    back = read_spz(tmp_path / "m.spz")
    assert back.info["spz_version"] == 4
    _assert_spz_close(back, g)
    # Degree 0 has no SH stream at all (five streams), as the reference writes it.
    flat = random_gaussians(m=50, degree=0)
    data = write_spz(tmp_path / "flat.spz", flat).read_bytes()
    assert struct.unpack_from("<B", data, 15)[0] == 5
    _assert_spz_close(read_spz(tmp_path / "flat.spz"), flat)
    # Coordinates beyond 2^11 lower the fractional bits so that they still fit 24 bits.
    far = BakedGaussians(g.means * 3000, g.quats, g.scales, g.opacities, g.sh)
    back_far = read_spz(write_spz(tmp_path / "far.spz", far))
    bits = back_far.info["fractional_bits"]
    assert bits < 12 and (back_far.means - far.means).abs().max() <= 0.5 / 2**bits + 1e-3


def test_spz_v2_and_v3_still_written_and_read(tmp_path):
    g = random_gaussians(m=200, degree=3)
    for version, rot_bytes, rotation_dot in ((2, 3, 0.99), (3, 4, 0.999)):
        path = write_spz(tmp_path / f"v{version}.spz", g, version=version)
        raw = gzip.decompress(path.read_bytes())
        magic, v, n, degree, bits, flags, _ = struct.unpack_from("<IIIBBBB", raw)
        assert (magic, v, n, degree, bits, flags) == (0x5053474E, version, 200, 3, 12, 0)
        assert len(raw) == 16 + 200 * (9 + 1 + 3 + 3 + rot_bytes + 45)
        back = read_spz(path)
        assert back.info["spz_version"] == version
        _assert_spz_close(back, g, rotation_dot=rotation_dot)
    # Versions 3 and 4 hold the same arrays: only the container differs.
    v3, v4 = read_spz(tmp_path / "v3.spz"), read_spz(write_spz(tmp_path / "v4.spz", g))
    for name in ("means", "quats", "scales", "opacities", "sh"):
        assert torch.equal(getattr(v3, name), getattr(v4, name)), name
    with pytest.raises(ValueError, match="SPZ version 5"):
        write_spz(tmp_path / "v5.spz", g, version=5)


def test_bad_spz_files_give_one_line_errors(tmp_path):
    data = write_spz(tmp_path / "m.spz", random_gaussians(m=20), version=2).read_bytes()
    (tmp_path / "cut.spz").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cut.spz: not an SPZ file .* or truncated"):
        read_spz(tmp_path / "cut.spz")
    raw = gzip.decompress(data)
    (tmp_path / "short.spz").write_bytes(gzip.compress(raw[:-7]))
    with pytest.raises(UserError, match=r"short.spz: SPZ body has \d+ bytes, \d+ expected for 20 points"):
        read_spz(tmp_path / "short.spz")
    (tmp_path / "magic.spz").write_bytes(gzip.compress(b"XXXX" + raw[4:]))
    with pytest.raises(UserError, match="not an SPZ file"):
        read_spz(tmp_path / "magic.spz")


def test_bad_spz_v4_files_give_one_line_errors(tmp_path):
    v4 = write_spz(tmp_path / "m.spz", random_gaussians(m=300)).read_bytes()
    packed_positions = struct.unpack_from("<Q", v4, 32)[0]
    cases = {
        "cut_header.spz": (v4[:20], r"truncated SPZ header \(20 bytes\)"),
        "cut_toc.spz": (v4[:60], "truncated SPZ table of contents"),
        "cut.spz": (v4[:-10], "SPZ file truncated in the SH stream"),
        "long.spz": (v4 + b"\0" * 5, "5 bytes after the last SPZ stream"),
        "version.spz": (v4[:4] + struct.pack("<I", 9) + v4[8:], r"SPZ version 9 is not supported"),
        "count.spz": (
            v4[:8] + struct.pack("<I", 301) + v4[12:],
            "SPZ positions stream holds 2700 bytes, 2709",
        ),
        "garbled.spz": (
            v4[:128] + bytes(b ^ 0x5A for b in v4[128 : 96 + packed_positions]) + v4[96 + packed_positions :],
            "corrupt SPZ positions stream",
        ),
        "flag.spz": (
            v4[:14] + b"\x02" + v4[15:],
            "table of contents of 6 streams at byte 32, expected 6 after",
        ),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UserError, match=message) as err:
            read_spz(tmp_path / name)
        assert str(err.value).startswith(f"{tmp_path / name}: ") and "\n" not in str(err.value), name


def _with_extensions(v4: bytes, records: bytes) -> bytes:
    """A version-4 file (without extensions) with extension records put between header and contents."""
    header = bytearray(v4[:32])
    header[14] |= 0x2
    header[16:20] = struct.pack("<I", 32 + len(records))
    return bytes(header) + records + v4[32:]


def test_spz_declared_axes(tmp_path):
    from momentumgs.export.spz import SPZ_AXES

    g = random_gaussians(m=120, degree=3)
    rub = write_spz(tmp_path / "rub.spz", g).read_bytes()
    rdf = write_spz(tmp_path / "rdf.spz", g, axes="RDF").read_bytes()
    # SPZ_ADOBE_coordinate_system: flag bit 1, the record between the header and the table of contents
    assert rdf[14] == 0x2 and struct.unpack_from("<I", rdf, 16)[0] == 44
    assert rdf[32:44] == struct.pack("<III", 0xADBE0003, 4, 6)  # RDF is the extension's value 6
    assert rdf[44:] != rub[32:]  # the data are stored otherwise ...
    for name in ("rub", "rdf"):
        back = read_spz(tmp_path / f"{name}.spz")  # ... and read back the same
        assert back.info["spz_axes"] == name.upper()
        _assert_spz_close(back, g)
    for axes in SPZ_AXES:  # every system made of axis flips, reflections included
        back = read_spz(write_spz(tmp_path / f"{axes}.spz", g, axes=axes))
        assert back.info["spz_axes"] == axes
        _assert_spz_close(back, g)
    # An extension we do not know is skipped (as the reference does); a rotated system is refused.
    unknown = struct.pack("<II", 0x12340001, 3) + b"abc"
    (tmp_path / "unknown.spz").write_bytes(_with_extensions(rub, unknown))
    back = read_spz(tmp_path / "unknown.spz")
    assert back.info["spz_skipped_extensions"] == ["0x12340001"] and back.info["spz_axes"] == "RUB"
    _assert_spz_close(back, g)
    (tmp_path / "rotated.spz").write_bytes(_with_extensions(rub, struct.pack("<III", 0xADBE0003, 4, 12)))
    with pytest.raises(UserError, match=r"rotated.spz: SPZ coordinate system 12 \(axes swapped"):
        read_spz(tmp_path / "rotated.spz")
    (tmp_path / "cut_record.spz").write_bytes(_with_extensions(rub, struct.pack("<II", 0xADBE0003, 4)))
    with pytest.raises(UserError, match="cut_record.spz: SPZ extension 0xadbe0003 runs past its block"):
        read_spz(tmp_path / "cut_record.spz")
    # Versions 2 and 3 hold extension records after the arrays; we read them there, but write them in
    # version 4 only (the reference library does not find them in a gzip file).
    raw = bytearray(gzip.decompress(write_spz(tmp_path / "v3.spz", g, version=3).read_bytes()))
    raw[14] |= 0x2
    rotated = read_spz(write_spz(tmp_path / "rdf4.spz", g, axes="RDF"))
    (tmp_path / "v3rdf.spz").write_bytes(gzip.compress(bytes(raw) + struct.pack("<III", 0xADBE0003, 4, 6)))
    back = read_spz(tmp_path / "v3rdf.spz")  # RUB data read as RDF: half a turn about x from the truth
    assert back.info["spz_axes"] == "RDF"
    assert torch.allclose(back.means * torch.tensor([1.0, -1.0, -1.0]), rotated.means, atol=1e-6)
    with pytest.raises(ValueError, match="version 4 files only"):
        write_spz(tmp_path / "v2rdf.spz", g, version=2, axes="RDF")


# ---------------------------------------------------------------- glTF


def test_glb_structure(tmp_path):
    g = random_gaussians(m=30, degree=2)
    data = write_glb(tmp_path / "m.glb", g).read_bytes()
    magic, version, total = struct.unpack_from("<III", data)
    assert (magic, version, total) == (0x46546C67, 2, len(data))
    json_len, json_type = struct.unpack_from("<II", data, 12)
    assert json_type == 0x4E4F534A and json_len % 4 == 0
    doc = json.loads(data[20 : 20 + json_len])
    bin_len, bin_type = struct.unpack_from("<II", data, 20 + json_len)
    assert bin_type == 0x004E4942 and bin_len % 4 == 0 and 28 + json_len + bin_len == len(data)
    binary = data[28 + json_len :]
    assert doc["asset"]["version"] == "2.0" and doc["extensionsUsed"] == ["KHR_gaussian_splatting"]
    assert "extensionsRequired" not in doc  # a viewer without the extension still draws the points
    assert doc["scenes"][0]["nodes"] == [0] and doc["nodes"][0]["mesh"] == 0
    (prim,) = doc["meshes"][0]["primitives"]
    assert prim["mode"] == 0
    assert prim["extensions"]["KHR_gaussian_splatting"] == {
        "kernel": "ellipse",
        "colorSpace": "srgb_rec709_display",
        "projection": "perspective",
        "sortingMethod": "cameraDistance",
    }
    k = "KHR_gaussian_splatting:"
    sh_names = [f"{k}SH_DEGREE_0_COEF_0"] + [
        f"{k}SH_DEGREE_{d}_COEF_{c}" for d in (1, 2) for c in range(2 * d + 1)
    ]
    assert list(prim["attributes"]) == [
        "POSITION",
        "COLOR_0",
        f"{k}ROTATION",
        f"{k}SCALE",
        f"{k}OPACITY",
        *sh_names,
    ]
    want = {"POSITION": ("VEC3", 5126), "COLOR_0": ("VEC4", 5121), f"{k}ROTATION": ("VEC4", 5126)}
    want.update({f"{k}SCALE": ("VEC3", 5126), f"{k}OPACITY": ("SCALAR", 5126)})
    want.update({n: ("VEC3", 5126) for n in sh_names})

    def values(name):
        acc = doc["accessors"][prim["attributes"][name]]
        view = doc["bufferViews"][acc["bufferView"]]
        assert (acc["type"], acc["componentType"]) == want[name] and acc["count"] == 30
        assert view["byteOffset"] % 4 == 0 and view["target"] == 34962 and "byteStride" not in view
        width = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}[acc["type"]]
        dtype = np.float32 if acc["componentType"] == 5126 else np.uint8
        assert view["byteLength"] == 30 * width * np.dtype(dtype).itemsize
        return acc, np.frombuffer(binary, dtype, 30 * width, view["byteOffset"]).reshape(30, width)

    acc, pos = values("POSITION")
    # glTF's axes: half a turn about z from 3DGS PLY's (x and y negate); min / max exactly the data's
    np.testing.assert_array_equal(pos, g.means.numpy() * np.array([-1, -1, 1], dtype=np.float32))
    assert acc["min"] == pos.min(axis=0).tolist() and acc["max"] == pos.max(axis=0).tolist()
    acc, color = values("COLOR_0")
    assert acc["normalized"] is True
    np.testing.assert_allclose(color[:, 3], g.opacities.numpy() * 255, atol=0.5 + 1e-4)
    _, rot = values(f"{k}ROTATION")  # x y z w, unit
    np.testing.assert_allclose(np.linalg.norm(rot, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(rot[:, 3], g.quats[:, 0].numpy(), atol=1e-6)
    np.testing.assert_allclose(values(f"{k}SCALE")[1], g.scales.numpy())  # linear
    np.testing.assert_allclose(values(f"{k}OPACITY")[1][:, 0], g.opacities.numpy())
    np.testing.assert_array_equal(values(f"{k}SH_DEGREE_0_COEF_0")[1], g.sh[:, 0].numpy())
    np.testing.assert_array_equal(values(f"{k}SH_DEGREE_1_COEF_1")[1], g.sh[:, 2].numpy())  # z: even in x, y
    np.testing.assert_array_equal(values(f"{k}SH_DEGREE_1_COEF_0")[1], -g.sh[:, 1].numpy())  # y: odd
    np.testing.assert_array_equal(values(f"{k}SH_DEGREE_2_COEF_0")[1], g.sh[:, 4].numpy())  # xy: even

    back = read_glb(tmp_path / "m.glb")  # our reader undoes the axes
    for name in ("means", "scales", "opacities", "sh"):
        assert torch.allclose(getattr(back, name), getattr(g, name), atol=1e-6), name
    assert (back.quats * g.quats).sum(dim=1).abs().min() > 1 - 1e-6


def test_glb_with_spz_compression(tmp_path):
    g = random_gaussians(m=40, degree=3)
    data = write_glb(tmp_path / "m.glb", g, spz=True).read_bytes()
    json_len = struct.unpack_from("<I", data, 12)[0]
    doc = json.loads(data[20 : 20 + json_len])
    binary = data[28 + json_len :]
    spz_ext = "KHR_gaussian_splatting_compression_spz_2"
    assert doc["extensionsUsed"] == ["KHR_gaussian_splatting", spz_ext]
    assert doc["extensionsRequired"] == [spz_ext]  # the accessors hold no data of their own
    (prim,) = doc["meshes"][0]["primitives"]
    view = doc["bufferViews"][
        prim["extensions"]["KHR_gaussian_splatting"]["extensions"][spz_ext]["bufferView"]
    ]
    payload = binary[view["byteOffset"] : view["byteOffset"] + view["byteLength"]]
    assert payload == write_spz(tmp_path / "v3.spz", g, version=3).read_bytes()  # SPZ v3, as write_spz
    accessors = [doc["accessors"][i] for i in prim["attributes"].values()]
    assert all("bufferView" not in a and a["count"] == 40 for a in accessors)
    assert len(accessors) == 5 + 16
    position = doc["accessors"][prim["attributes"]["POSITION"]]
    quantised = read_spz(tmp_path / "v3.spz")
    assert position["max"] == (quantised.means * torch.tensor([-1.0, -1.0, 1.0])).amax(dim=0).tolist()
    back = read_glb(tmp_path / "m.glb")
    for name in ("means", "quats", "scales", "opacities", "sh"):
        assert torch.equal(getattr(back, name), getattr(quantised, name)), name


def test_bad_glb_files_give_one_line_errors(tmp_path):
    data = write_glb(tmp_path / "m.glb", random_gaussians(m=10, degree=0)).read_bytes()
    cases = {
        "cut.glb": (data[:-4], "truncated"),
        "magic.glb": (b"XXXX" + data[4:], "not a glTF 2.0 binary file"),
        "tiny.glb": (data[:10], "not a .glb file"),
        "plain.glb": (
            data.replace(b'KHR_gaussian_splatting":{', b'KHR_gaussian_splattinX":{'),
            "no KHR_gaussian",
        ),
    }
    for name, (bad, message) in cases.items():
        (tmp_path / name).write_bytes(bad)
        with pytest.raises(UserError, match=message) as err:
            read_glb(tmp_path / name)
        assert str(err.value).startswith(f"{tmp_path / name}: ") and "\n" not in str(err.value), name


# ---------------------------------------------------------------- CLI


@pytest.fixture
def tiny_run(gt_test_scene, tmp_path):
    """A run folder: a random tiny model over the small demo city and a config pointing at the scene."""
    from momentumgs.config import load_config
    from momentumgs.run_setup import load_scene

    cfg = load_config(None, [f"data.path={gt_test_scene}"])
    scene = load_scene(cfg)
    points = torch.from_numpy(scene.points[:: max(1, len(scene.points) // 400)]).float()
    field = init_anchors_from_points(points, n_offsets=4, feat_dim=8)
    torch.manual_seed(0)
    spec = DecoderSpec(feat_dim=8, n_offsets=4, hidden_dim=16)
    model = AnchorModel(field, spec.build().requires_grad_(False), spec, {})
    run = tmp_path / "run"
    run.mkdir()
    save_model(run / "model.ckpt", model)
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"path": str(gt_test_scene)}}))
    return run, scene


def test_cli_export_and_render(tiny_run, tmp_path, capsys):
    run, scene = tiny_run
    assert main(["export", str(run)]) == 0
    ply = run / "export" / "model.ply"
    out = capsys.readouterr().out
    count = read_ply(ply).count
    assert f"{count} Gaussians" in out and "MB" in out
    assert main(["export", str(run), "--out", str(tmp_path / "m.spz"), "--sh-degree", "1"]) == 0
    spz = read_spz(tmp_path / "m.spz")
    assert spz.sh_degree == 1 and spz.count == count and spz.info["spz_version"] == 4
    old = tmp_path / "m2.spz"
    assert main(["export", str(run), "--format", "spz", "--spz-version", "2", "--out", str(old)]) == 0
    assert gzip.decompress(old.read_bytes())[4] == 2 and read_spz(old).count == count
    ply_axes = tmp_path / "rdf.spz"
    assert main(["export", str(run), "--out", str(ply_axes), "--spz-axes", "RDF"]) == 0
    assert read_spz(ply_axes).info["spz_axes"] == "RDF"
    assert main(["export", str(run), "--format", "glb"]) == 0
    assert read_glb(run / "export" / "model.glb").count == count
    small = tmp_path / "small.glb"
    assert main(["export", str(run), "--format", "glb", "--glb-spz", "--out", str(small)]) == 0
    assert (
        read_glb(small).count == count
        and small.stat().st_size < (run / "export" / "model.glb").stat().st_size
    )
    assert main(["export", str(run), "--format", "splat"]) == 0
    assert (run / "export" / "model.splat").stat().st_size == 32 * count

    import cv2

    view = scene.test_ids[0]
    assert main(["render", str(ply), "--view", str(view), "--out", str(tmp_path / "png")]) == 0
    for baked in (tmp_path / "m.spz", run / "export" / "model.glb"):  # cameras from --scene
        out = tmp_path / f"png_{baked.suffix[1:]}"
        scene_path = yaml.safe_load((run / "config.yaml").read_text())["data"]["path"]
        args = ["render", str(baked), "--view", str(view), "--out", str(out), "--scene", scene_path]
        assert main(args) == 0 and len(list(out.glob("*.png"))) == 1
    assert main(["render", str(run), "--all-test", "--out", str(tmp_path / "png_run")]) == 0
    img = cv2.imread(str(tmp_path / "png" / f"{Path(scene.cameras[view].name).stem}.png"))
    assert img.shape == (scene.cameras[view].height, scene.cameras[view].width, 3)
    assert len(list((tmp_path / "png_run").glob("*.png"))) == len(scene.test_ids)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "no_run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"momentumgs: error: {tmp_path / 'no_run'}: no such run folder"
    (tmp_path / "empty").mkdir()
    assert main(["render", str(tmp_path / "empty"), "--view", "0", "--out", str(tmp_path / "o")]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert main(["render", str(tmp_path / "x.ply"), "--view", "0", "--out", str(tmp_path / "o")]) == 2
    assert "no such PLY file" in capsys.readouterr().err
