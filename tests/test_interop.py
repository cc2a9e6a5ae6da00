"""Our SPZ, PLY, .splat and glTF files against readers and writers we did not write (tools/interop/, npm):
PlayCanvas splat-transform (its own SPZ reader; SPZ written through @adobe/spz), Niantic's reference SPZ
library (@adobe/spz, its WebAssembly build), the Khronos glTF validator and glTF-Transform.

The tools are installed by `npm ci --prefix tools/interop` (.ci/run does it). Without them these tests
skip on a developer's machine and fail in CI (`CI` set), as the browser tests do without chromium."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from interop_tools import MODULES, TOOLS, require_tools
from plyfile import PlyData
from test_export import SH_C0, random_gaussians

from momentumgs.export import (
    BakedGaussians,
    read_glb,
    read_ply,
    read_spz,
    write_glb,
    write_ply,
    write_splat,
    write_spz,
)
from momentumgs.export.gltf import EXTENSION, SPZ_EXTENSION, sh_semantics

SPLAT_TRANSFORM = MODULES / ".bin" / "splat-transform"
NEEDED = [
    SPLAT_TRANSFORM,
    MODULES / "@adobe" / "spz",
    MODULES / "gltf-validator",
    MODULES / "@gltf-transform" / "core",
]

pytestmark = pytest.mark.interop

# SPZ's quantisation steps (load-spz.cc): the largest error of a value that survives the round trip.
POSITION_STEP = 0.5 / 4096 + 1e-6  # 12 fractional bits
LOG_SCALE_STEP = 0.5 / 16 + 1e-5
ALPHA_STEP = 0.5 / 255 + 1e-6
DC_STEP = 0.5 / (0.15 * 255) + 1e-5
SH1_STEP = 4.5 / 128 + 1e-5  # round(x * 128), then a bucket of 8 (5 bits)
SH_REST_STEP = 8.5 / 128 + 1e-5  # ... of 16 (4 bits)
COV_RTOL = 0.08  # exp(2 / 32) - 1 = 0.065 from the log-scale step, plus the 9-bit rotations
COV_RTOL_V2 = 0.2  # version 2's rotations: x y z in 8 bits, w from unit length (poor near w = 0)


@pytest.fixture(scope="module")
def tools() -> Path:
    return require_tools(NEEDED)


def _run(args: list[str], timeout: float = 120) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def _convert(src: Path, dst: Path, *options: str) -> None:
    """splat-transform SRC DST (the format from the suffixes)."""
    _run([str(SPLAT_TRANSFORM), "-w", *options, str(src), str(dst)])


def _node(script: str, *args) -> None:
    _run(["node", str(TOOLS / script), *map(str, args)])


def half_turn(g: BakedGaussians, axis: str) -> BakedGaussians:
    """`g` turned half a turn about x (3DGS PLY <-> SPZ's RUB) or z (<-> glTF), SH included."""
    if axis == "x":
        flip, sh_sign = [1.0, -1.0, -1.0], [-1, -1, 1, -1, 1, 1, -1, 1, -1, 1, -1, -1, 1, -1, 1]
    else:
        flip, sh_sign = [-1.0, -1.0, 1.0], [-1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1]
    flip_t = torch.tensor(flip)
    sh = g.sh.clone()
    sh[:, 1:] *= torch.tensor(sh_sign, dtype=sh.dtype)[: sh.shape[1] - 1, None]
    quats = torch.cat([g.quats[:, :1], g.quats[:, 1:] * flip_t], dim=1)
    return BakedGaussians(g.means * flip_t, quats, g.scales, g.opacities, sh)


def covariances(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """R diag(s^2) R^T of wxyz quaternions [N, 4] and scales [N, 3]. -> [N, 3, 3]"""
    w, x, y, z = torch.nn.functional.normalize(quats.double(), dim=1).unbind(1)
    r = torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        dim=1,
    )
    return r @ torch.diag_embed(scales.double() ** 2) @ r.transpose(1, 2)


def differences(a: BakedGaussians, b: BakedGaussians) -> dict[str, float]:
    """Largest difference of each attribute between two sets of the same Gaussians in the same order."""
    cov_a, cov_b = covariances(a.quats, a.scales), covariances(b.quats, b.scales)
    scale = cov_a.abs().amax(dim=(1, 2), keepdim=True)
    out = {
        "positions": (a.means - b.means).abs().max(),
        "log_scales": (a.scales.log() - b.scales.log()).abs().max(),
        "opacities": (a.opacities - b.opacities).abs().max(),
        "dc": (a.sh[:, 0] - b.sh[:, 0]).abs().max(),
        "covariance_rel": ((cov_a - cov_b).abs() / scale).max(),
        "rotation_dot": 1 - (a.quats * b.quats).sum(dim=1).abs().min(),
    }
    if a.sh.shape[1] > 1:
        out["sh1"] = (a.sh[:, 1:4] - b.sh[:, 1:4]).abs().max()
    if a.sh.shape[1] > 4:
        out["sh_rest"] = (a.sh[:, 4:] - b.sh[:, 4:]).abs().max()
    return {k: float(v) for k, v in out.items()}


def assert_within_spz_quantisation(got: BakedGaussians, want: BakedGaussians, version: int = 4) -> dict:
    assert got.count == want.count and got.sh_degree == want.sh_degree
    d = differences(got, want)
    print(json.dumps(d))  # the figures, with -s
    assert d["positions"] <= POSITION_STEP
    assert d["log_scales"] <= LOG_SCALE_STEP
    assert d["opacities"] <= ALPHA_STEP
    assert d["dc"] <= DC_STEP
    assert d.get("sh1", 0.0) <= SH1_STEP and d.get("sh_rest", 0.0) <= SH_REST_STEP
    assert d["covariance_rel"] <= (COV_RTOL if version > 2 else COV_RTOL_V2)
    assert d["rotation_dot"] <= (2e-3 if version > 2 else 1e-2)  # the same rotation up to sign
    return d


def _from_reference_json(path: Path) -> BakedGaussians:
    """The reference library's decoded cloud (RDF axes; log scales, logit alphas, xyzw quaternions)."""
    d = json.loads(path.read_text())
    n, degree = d["numPoints"], d["shDegree"]
    xyzw = torch.tensor(d["rotations"]).reshape(n, 4)
    dc = torch.tensor(d["colors"]).reshape(n, 1, 3)
    rest = torch.tensor(d["sh"]).reshape(n, (degree + 1) ** 2 - 1, 3)
    return BakedGaussians(
        means=torch.tensor(d["positions"]).reshape(n, 3),
        quats=torch.nn.functional.normalize(torch.cat([xyzw[:, 3:], xyzw[:, :3]], dim=1), dim=1),
        scales=torch.tensor(d["scales"]).reshape(n, 3).exp(),
        opacities=torch.sigmoid(torch.tensor(d["alphas"])),
        sh=torch.cat([dc, rest], dim=1),
    )


def _to_reference_json(g: BakedGaussians, path: Path) -> Path:
    q = g.quats
    d = {
        "numPoints": g.count,
        "shDegree": g.sh_degree,
        "positions": g.means.flatten().tolist(),
        "scales": g.scales.log().flatten().tolist(),
        "rotations": torch.cat([q[:, 1:], q[:, :1]], dim=1).flatten().tolist(),
        "alphas": torch.logit(g.opacities).tolist(),
        "colors": g.sh[:, 0].flatten().tolist(),
        "sh": g.sh[:, 1:].flatten().tolist(),
    }
    path.write_text(json.dumps(d))
    return path


# ---------------------------------------------------------------- SPZ: Niantic's reference library


@pytest.mark.parametrize("version,degree", [(4, 3), (4, 0), (2, 1)])
def test_reference_library_reads_our_spz(tools, tmp_path, version, degree):
    g = random_gaussians(m=300, degree=degree, seed=version + degree)
    ours = write_spz(tmp_path / "ours.spz", g, version=version)
    _node("spz_reference.mjs", "decode", ours, tmp_path / "ref.json")
    theirs = _from_reference_json(tmp_path / "ref.json")
    assert_within_spz_quantisation(theirs, g, version)
    # ... and decodes the same bytes to what our reader returns.
    back = read_spz(ours)
    assert differences(theirs, back)["positions"] <= 1e-6 and differences(theirs, back)["dc"] <= 1e-5


def test_we_read_the_reference_librarys_spz_v4(tools, tmp_path):
    g = random_gaussians(m=300, degree=3, seed=11)
    _node("spz_reference.mjs", "encode", _to_reference_json(g, tmp_path / "g.json"), tmp_path / "ref.spz", 4)
    assert (tmp_path / "ref.spz").read_bytes()[:8] == b"NGSP\x04\x00\x00\x00"  # version 4, not gzipped
    back = read_spz(tmp_path / "ref.spz")
    assert back.info["spz_version"] == 4
    assert_within_spz_quantisation(back, g)


# ---------------------------------------------------------------- SPZ: splat-transform
# splat-transform (3.x) reads and writes SPZ without SPZ's axis convention: its files hold 3DGS PLY
# axes where the SPZ spec and Niantic's library hold RUB. The same Gaussians therefore come out half a
# turn about x between it and a reader that follows the spec (ours, the reference's).


def test_splat_transform_reads_our_spz_v4(tools, tmp_path):
    g = random_gaussians(m=300, degree=3, seed=3)
    ours = write_spz(tmp_path / "ours.spz", g)
    _convert(ours, tmp_path / "theirs.ply")
    theirs = read_ply(tmp_path / "theirs.ply")
    assert_within_spz_quantisation(half_turn(theirs, "x"), g)


def test_we_read_splat_transforms_spz_v4(tools, tmp_path):
    g = random_gaussians(m=300, degree=3, seed=4)
    _convert(write_ply(tmp_path / "ours.ply", g), tmp_path / "theirs.spz")
    assert (tmp_path / "theirs.spz").read_bytes()[:8] == b"NGSP\x04\x00\x00\x00"
    back = read_spz(tmp_path / "theirs.spz")
    assert_within_spz_quantisation(half_turn(back, "x"), g)


def test_both_readers_agree_on_our_spz_with_declared_rdf_axes(tools, tmp_path):
    """`axes="RDF"` (SPZ_ADOBE_coordinate_system): the data in 3DGS PLY axes, as splat-transform reads
    every SPZ, and declared, so that the reference library converts it as it should."""
    g = random_gaussians(m=300, degree=3, seed=9)
    ours = write_spz(tmp_path / "ours.spz", g, axes="RDF")
    _convert(ours, tmp_path / "theirs.ply")
    assert_within_spz_quantisation(read_ply(tmp_path / "theirs.ply"), g)  # no half turn
    _node("spz_reference.mjs", "decode", ours, tmp_path / "ref.json")
    assert_within_spz_quantisation(_from_reference_json(tmp_path / "ref.json"), g)


@pytest.mark.slow
def test_splat_transform_reads_our_ply_and_splat(tools, tmp_path):
    g = random_gaussians(m=200, degree=3, seed=5)
    ply = write_ply(tmp_path / "ours.ply", g)
    # Our PLY -> their CSV: the same values, by property name.
    _convert(ply, tmp_path / "theirs.csv")
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

    # Our .splat -> their PLY: the same Gaussians (in the file's sorted order) within 8-bit colour / alpha.
    _convert(write_splat(tmp_path / "ours.splat", g), tmp_path / "from_splat.ply")
    from_splat = read_ply(tmp_path / "from_splat.ply")
    assert from_splat.count == g.count
    mine, theirs_order = g.means[:, 0].argsort(), from_splat.means[:, 0].argsort()
    assert torch.equal(from_splat.means[theirs_order], g.means[mine])
    assert torch.allclose(from_splat.scales[theirs_order], g.scales[mine], rtol=1e-4)
    assert (from_splat.opacities[theirs_order] - g.opacities[mine]).abs().max() <= 1.5 / 255
    rgb_theirs = 0.5 + SH_C0 * from_splat.sh[theirs_order, 0]
    rgb_ours = (0.5 + SH_C0 * g.sh[mine, 0]).clamp(0, 1)
    assert (rgb_theirs - rgb_ours).abs().max() <= 1.5 / 255
    assert (from_splat.quats[theirs_order] * g.quats[mine]).sum(dim=1).abs().min() > 0.98


# ---------------------------------------------------------------- glTF


def validator_problems(report: dict) -> list[str]:
    """The validator's errors and warnings, less those that only say it does not know
    KHR_gaussian_splatting: while it reports the extension as unsupported it also calls the attribute
    semantics the extension defines invalid names (the core spec's rule for semantics it does not know)."""
    messages = report["issues"]["messages"]
    unknown = any(m["code"] == "UNSUPPORTED_EXTENSION" and f"'{EXTENSION}'" in m["message"] for m in messages)
    problems = []
    for m in messages:
        if m["severity"] > 1:  # infos and hints
            continue
        pointer = m.get("pointer", "")
        if (
            unknown
            and m["code"] == "MESH_PRIMITIVE_INVALID_ATTRIBUTE"
            and pointer.split("/")[-1].startswith(f"{EXTENSION}:")
        ):
            continue
        problems.append(f"{m['code']} {pointer}: {m['message']}")
    return problems


@pytest.mark.parametrize("degree,spz", [(3, False), (0, False), (3, True)])
def test_our_glb_passes_the_khronos_validator(tools, tmp_path, degree, spz):
    glb = write_glb(tmp_path / "ours.glb", random_gaussians(m=100, degree=degree, seed=6), spz=spz)
    _node("gltf_check.mjs", "validate", glb, tmp_path / "report.json")
    report = json.loads((tmp_path / "report.json").read_text())
    print(report["validatorVersion"], json.dumps(report["issues"], indent=1)[:3000])
    assert validator_problems(report) == []
    info = report["info"]
    assert info["version"] == "2.0" and info["drawCallCount"] == 1 and info["totalVertexCount"] == 100
    assert report["issues"]["numErrors"] == 3 + len(sh_semantics(degree))  # ROTATION, SCALE, OPACITY, SH


def test_gltf_transform_reads_our_glb_as_splat_transform_writes_it(tools, tmp_path):
    g = random_gaussians(m=200, degree=3, seed=7)
    _node("gltf_check.mjs", "read", write_glb(tmp_path / "ours.glb", g), tmp_path / "ours.json")
    _convert(write_ply(tmp_path / "ours.ply", g), tmp_path / "theirs.glb")
    _node("gltf_check.mjs", "read", tmp_path / "theirs.glb", tmp_path / "theirs.json")
    ours, theirs = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("ours", "theirs"))
    assert ours["extensionsUsed"] == [EXTENSION]
    prim = ours["primitives"][0]
    assert prim["mode"] == 0 and prim["extensions"][EXTENSION]["kernel"] == "ellipse"

    def attribute(doc, name, width):
        a = doc["primitives"][0]["attributes"][name]
        assert a["count"] == g.count
        return torch.tensor(a["values"], dtype=torch.float64).reshape(g.count, width)

    # Our splats, as glTF-Transform reads them, in glTF's axes (half a turn about z from 3DGS PLY's).
    want = half_turn(g, "z")
    xyzw = attribute(ours, f"{EXTENSION}:ROTATION", 4)
    back = BakedGaussians(
        means=attribute(ours, "POSITION", 3).float(),
        quats=torch.cat([xyzw[:, 3:], xyzw[:, :3]], dim=1).float(),
        scales=attribute(ours, f"{EXTENSION}:SCALE", 3).float(),
        opacities=attribute(ours, f"{EXTENSION}:OPACITY", 1)[:, 0].float(),
        sh=torch.stack([attribute(ours, n, 3) for n in sh_semantics(3)], dim=1).float(),
    )
    d = differences(back, want)
    print(json.dumps(d))
    assert max(d.values()) <= 1e-6
    assert torch.equal(back.sh, want.sh.float())
    # ... and as splat-transform writes the same Gaussians from our PLY: the same attributes but for
    # the fallback COLOR_0 (ours linear, as the core spec says; theirs sRGB) and the quaternion (theirs
    # is the turn composed with the Gaussian's, ours the Gaussian's conjugated by the turn: the same
    # covariance).
    for name in ["POSITION", f"{EXTENSION}:SCALE", f"{EXTENSION}:OPACITY", *sh_semantics(3)]:
        width = 1 if name.endswith("OPACITY") else 3
        assert torch.allclose(attribute(ours, name, width), attribute(theirs, name, width), atol=1e-6), name
    xyzw_t = attribute(theirs, f"{EXTENSION}:ROTATION", 4)
    cov_ours = covariances(back.quats, back.scales)
    cov_theirs = covariances(torch.cat([xyzw_t[:, 3:], xyzw_t[:, :3]], dim=1), back.scales)
    assert torch.allclose(cov_ours, cov_theirs, atol=1e-9)
    # Their .glb read by us: the Gaussians, back in 3DGS PLY axes (the quaternion other, the covariance not).
    d = differences(read_glb(tmp_path / "theirs.glb"), g)
    assert d["covariance_rel"] <= 1e-5
    assert max(v for k, v in d.items() if k not in ("covariance_rel", "rotation_dot")) <= 1e-6


def test_reference_library_reads_the_spz_in_our_glb(tools, tmp_path):
    g = random_gaussians(m=300, degree=3, seed=8)
    glb = write_glb(tmp_path / "ours.glb", g, spz=True)
    _node("gltf_check.mjs", "spz", glb, tmp_path / "payload.spz")  # the buffer view, found by glTF-Transform
    # unpacked to LUF, as the compression extension prescribes: glTF's axes
    _node("spz_reference.mjs", "decode", tmp_path / "payload.spz", tmp_path / "ref.json", "LUF")
    theirs = _from_reference_json(tmp_path / "ref.json")
    assert_within_spz_quantisation(theirs, half_turn(g, "z"), version=3)
    report_path = tmp_path / "report.json"
    _node("gltf_check.mjs", "validate", glb, report_path)
    report = json.loads(report_path.read_text())
    assert validator_problems(report) == []
    codes = {m["code"] for m in report["issues"]["messages"]}
    assert (
        f"'{SPZ_EXTENSION}'" in json.dumps(report["issues"]["messages"]) and "UNSUPPORTED_EXTENSION" in codes
    )
