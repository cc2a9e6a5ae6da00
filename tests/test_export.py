"""Export: bake, PLY (INRIA layout), .splat, SPZ, readers, CLI, and a third-party reader (splat-transform)."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import look_at
from plyfile import PlyData, PlyElement

from momentumgs.anchor_render import render_model_view
from momentumgs.cli import main
from momentumgs.data.scene import Camera
from momentumgs.errors import UserError
from momentumgs.export import (
    BakedGaussians,
    bake,
    read_ply,
    read_spz,
    render_baked,
    write_ply,
    write_splat,
    write_spz,
)
from momentumgs.export.sh import SH_C0, fit_sh, sh_bases
from momentumgs.model.anchors import AnchorField, init_anchors_from_points
from momentumgs.model.store import AnchorModel, DecoderSpec, save_model
from momentumgs.render.view import camera_view

INRIA_PROPERTIES_DEGREE_3 = (
    ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    + [f"f_rest_{i}" for i in range(45)]
    + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
)
SPLAT_TRANSFORM = "@playcanvas/splat-transform@2.7.1"  # the newest release that runs on Node 18-20


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
    for err in (UserError,):
        try:
            read_ply(tmp_path / "nan.ply")
        except err as exc:
            assert "\n" not in str(exc) and "nan.ply" in str(exc)


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


def test_spz_round_trip_within_quantisation(tmp_path):
    g = random_gaussians(m=200, degree=3)
    path = write_spz(tmp_path / "m.spz", g)
    raw = gzip.decompress(path.read_bytes())
    magic, version, n, degree, bits, flags, _ = struct.unpack_from("<IIIBBBB", raw)
    assert (magic, version, n, degree, bits, flags) == (0x5053474E, 2, 200, 3, 12, 0)
    assert len(raw) == 16 + 200 * (9 + 1 + 3 + 3 + 3 + 45)
    back = read_spz(path)
    assert (back.means - g.means).abs().max() <= 0.5 / 4096 + 1e-6
    assert (back.scales.log() - g.scales.log()).abs().max() <= 1 / 32 + 1e-5
    assert (back.opacities - g.opacities).abs().max() <= 0.5 / 255 + 1e-6
    assert (back.sh[:, 0] - g.sh[:, 0]).abs().max() <= 0.5 / (0.15 * 255) + 1e-5
    # round(x * 128), then snapped to a bucket of 8 (5 bits, degree 1) or 16 (4 bits, degrees 2-3)
    assert (back.sh[:, 1:4] - g.sh[:, 1:4]).abs().max() <= 4.5 / 128 + 1e-5
    assert (back.sh[:, 4:] - g.sh[:, 4:]).abs().max() <= 8.5 / 128 + 1e-5
    assert (back.quats * g.quats).sum(dim=1).abs().min() > 0.99  # the same rotation up to sign
    # Coordinates beyond 2^11 lower the fractional bits so that they still fit 24 bits.
    far = BakedGaussians(g.means * 3000, g.quats, g.scales, g.opacities, g.sh)
    back_far = read_spz(write_spz(tmp_path / "far.spz", far))
    bits = back_far.info["fractional_bits"]
    assert bits < 12 and (back_far.means - far.means).abs().max() <= 0.5 / 2**bits + 1e-3


def test_bad_spz_files_give_one_line_errors(tmp_path):
    data = write_spz(tmp_path / "m.spz", random_gaussians(m=20)).read_bytes()
    (tmp_path / "cut.spz").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cut.spz: not a gzipped SPZ file or truncated"):
        read_spz(tmp_path / "cut.spz")
    raw = gzip.decompress(data)
    (tmp_path / "short.spz").write_bytes(gzip.compress(raw[:-7]))
    with pytest.raises(UserError, match=r"short.spz: SPZ body has \d+ bytes, \d+ expected for 20 points"):
        read_spz(tmp_path / "short.spz")
    (tmp_path / "magic.spz").write_bytes(gzip.compress(b"XXXX" + raw[4:]))
    with pytest.raises(UserError, match="not an SPZ file"):
        read_spz(tmp_path / "magic.spz")


# ---------------------------------------------------------------- CLI


@pytest.fixture
def tiny_run(gt_test_scene, tmp_path):
    """A run folder: a random tiny model over the small demo city and a config pointing at the scene."""
    from momentumgs.config import load_config
    from momentumgs.run import load_scene

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
    assert read_spz(tmp_path / "m.spz").sh_degree == 1 and read_spz(tmp_path / "m.spz").count == count
    assert main(["export", str(run), "--format", "splat"]) == 0
    assert (run / "export" / "model.splat").stat().st_size == 32 * count

    import cv2

    view = scene.test_ids[0]
    assert main(["render", str(ply), "--view", str(view), "--out", str(tmp_path / "png")]) == 0
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


# ---------------------------------------------------------------- third-party reader


def _splat_transform() -> Path:
    """splat-transform installed once into a cache folder; skips when Node/npm or the registry is missing."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("node and npm are needed for the splat-transform check")
    major = int(
        subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()[1:].split(".")[0]
    )
    if major < 18:
        pytest.skip(f"splat-transform 2.7 needs Node >= 18, found {major}")
    root = Path(os.environ.get("MOMENTUMGS_TOOLS_CACHE", Path(tempfile.gettempdir()) / "momentumgs-tools"))
    prefix = root / SPLAT_TRANSFORM.replace("/", "_").replace("@", "")
    exe = prefix / "node_modules" / ".bin" / "splat-transform"
    if not exe.exists():
        prefix.mkdir(parents=True, exist_ok=True)
        cmd = [npm, "install", "--no-audit", "--no-fund", "--prefix", str(prefix), SPLAT_TRANSFORM]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            pytest.skip("npm install of splat-transform timed out (offline?)")
        if done.returncode != 0 or not exe.exists():
            pytest.skip(f"npm install of {SPLAT_TRANSFORM} failed (offline?): {done.stderr.strip()[-200:]}")
    return exe


def _convert(exe: Path, src: Path, dst: Path) -> str:
    done = subprocess.run([str(exe), "-w", str(src), str(dst)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


@pytest.mark.slow
def test_splat_transform_reads_our_ply_and_spz(tmp_path):
    exe = _splat_transform()
    model = tiny_model(seed=5)
    g = bake(model, ring_cameras())
    ply = write_ply(tmp_path / "ours.ply", g)
    spz = write_spz(tmp_path / "ours.spz", g)

    # Our PLY -> their CSV: the same values, by property name.
    log = _convert(exe, ply, tmp_path / "theirs.csv")
    print(log)
    theirs = np.genfromtxt(tmp_path / "theirs.csv", delimiter=",", names=True)
    ours = PlyData.read(str(ply))["vertex"]
    assert len(theirs) == g.count
    for name in (
        "x",
        "y",
        "z",
        "scale_0",
        "scale_2",
        "opacity",
        "f_dc_0",
        "f_dc_2",
        "rot_0",
        "rot_3",
        "f_rest_44",
    ):
        np.testing.assert_allclose(theirs[name], ours[name], rtol=1e-4, atol=1e-5, err_msg=name)

    # Our SPZ -> their PLY (decoded by the reference SPZ library): equal to our own SPZ reader, and to the
    # Gaussians within the format's quantisation.
    print(_convert(exe, spz, tmp_path / "from_spz.ply"))
    via_them, via_us = read_ply(tmp_path / "from_spz.ply"), read_spz(spz)
    assert via_them.count == g.count
    for name in ("means", "scales", "opacities", "sh"):
        assert torch.allclose(getattr(via_them, name), getattr(via_us, name), atol=1e-5), name
    assert (via_them.quats * via_us.quats).sum(dim=1).abs().min() > 1 - 1e-5
    assert (via_them.means - g.means).abs().max() <= 0.5 / 4096 + 1e-6
    assert (via_them.opacities - g.opacities).abs().max() <= 0.5 / 255 + 1e-6
    assert (via_them.sh[:, 0] - g.sh[:, 0]).abs().max() <= 0.5 / (0.15 * 255) + 1e-5
    assert (via_them.quats * g.quats).sum(dim=1).abs().min() > 0.99

    # Our .splat -> their PLY: the same Gaussians (in the file's sorted order) within 8-bit colour / alpha.
    print(_convert(exe, write_splat(tmp_path / "ours.splat", g), tmp_path / "from_splat.ply"))
    from_splat = read_ply(tmp_path / "from_splat.ply")
    assert from_splat.count == g.count
    mine = g.means[:, 0].argsort()
    theirs_order = from_splat.means[:, 0].argsort()
    assert torch.equal(from_splat.means[theirs_order], g.means[mine])
    assert torch.allclose(from_splat.scales[theirs_order], g.scales[mine], rtol=1e-4)
    assert (from_splat.opacities[theirs_order] - g.opacities[mine]).abs().max() <= 1.5 / 255
    rgb_theirs = 0.5 + SH_C0 * from_splat.sh[theirs_order, 0]
    rgb_ours = (0.5 + SH_C0 * g.sh[mine, 0]).clamp(0, 1)
    assert (rgb_theirs - rgb_ours).abs().max() <= 1.5 / 255
    assert (from_splat.quats[theirs_order] * g.quats[mine]).sum(dim=1).abs().min() > 0.98
