"""Levels of detail (export/lod.py) and the 3D Tiles 1.1 export (export/tiles3d.py): the tree, the bounds,
the georeference, atomic writes, the CLI; then readers we did not write (tools/interop: loaders.gl's
Tiles3DLoader, CesiumJS's ENU frame) and CesiumJS rendering each level in headless chromium against our
CPU render (tests/cesium_tiles.py). The node tools and chromium follow test_interop.py's and the browser
tests' rule: skipped where missing on a developer's machine, failures in CI (`CI` set)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from browser import needs_chromium
from interop_tools import MODULES, TOOLS, require_tools
from test_export import random_gaussians, tiny_run  # noqa: F401  (tiny_run: a fixture)

from momentumgs.cli import main
from momentumgs.errors import UserError
from momentumgs.export import BakedGaussians, bake, read_glb
from momentumgs.export.lod import MAX_GROWTH, importance, make_levels, parse_levels
from momentumgs.export.tiles3d import (
    TILES_FROM_WORLD,
    WGS84_A,
    ecef,
    enu_to_ecef,
    parse_origin,
    root_transform,
    run_blocks,
    world_bounds,
    write_tileset,
)

NEEDED = [
    MODULES / "@loaders.gl" / "3d-tiles",
    MODULES / "@loaders.gl" / "core",
    MODULES / "cesium" / "Build" / "Cesium" / "Cesium.js",
]


def blocks_on_a_row(n: int = 3, m: int = 400, seed: int = 0) -> list[tuple[int, BakedGaussians]]:
    """n blocks of m random Gaussians, 10 units apart along x."""
    out = []
    for b in range(n):
        g = random_gaussians(m, seed=seed + b)
        g.means[:, 0] += 10.0 * b
        out.append((b, g))
    return out


def _matrix(values) -> np.ndarray:
    """A 3D Tiles transform (16 numbers, column-major) as a 4x4 matrix."""
    return np.asarray(values, dtype=np.float64).reshape(4, 4).T


def _tiles(node: dict, parent: np.ndarray, depth: int = 0):
    """Every tile of a tree with its matrix to the root's frame (the root's own transform left out) and
    depth."""
    m = parent @ (_matrix(node["transform"]) if "transform" in node and depth > 0 else np.eye(4))
    yield node, m, depth
    for child in node.get("children", []):
        yield from _tiles(child, m, depth + 1)


def _box_corners(box: list[float], m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The root-frame bounds of a 3D Tiles box under matrix m. -> (min, max)"""
    c, axes = np.asarray(box[:3]), np.asarray(box[3:]).reshape(3, 3)
    signs = np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)])
    corners = c + signs @ axes
    corners = corners @ m[:3, :3].T + m[:3, 3]
    return corners.min(0), corners.max(0)


# ---------------------------------------------------------------- levels


def test_levels_keep_the_most_important_and_nest():
    g = random_gaussians(1000, seed=3)
    levels = make_levels(g, (1.0, 0.25, 0.06))
    assert [lv.gaussians.count for lv in levels] == [1000, 250, 60]
    assert levels[0].gaussians.means.equal(g.means) and levels[0].geometric_error == 0.0
    errors = [lv.geometric_error for lv in levels]
    assert errors == sorted(errors) and errors[1] > 0
    rank = importance(g)
    for finer, coarser in zip(levels, levels[1:], strict=False):
        fine = {tuple(p) for p in finer.gaussians.means.tolist()}
        assert all(tuple(p) in fine for p in coarser.gaussians.means.tolist())  # nested
    kept = {tuple(p) for p in levels[2].gaussians.means.tolist()}
    mask = torch.tensor([tuple(p) in kept for p in g.means.tolist()])
    assert rank[mask].min() >= rank[~mask].max()  # the most important ones


def test_merged_levels_grow_the_kept_gaussians():
    g = random_gaussians(800, seed=4)
    pruned, merged = make_levels(g, (1.0, 0.2), merge=False), make_levels(g, (1.0, 0.2))
    a, b = pruned[1].gaussians, merged[1].gaussians
    assert a.means.equal(b.means) and a.opacities.equal(b.opacities)
    assert (b.scales >= a.scales - 1e-7).all() and (b.scales <= MAX_GROWTH * a.scales + 1e-6).all()
    assert (b.scales > a.scales * 1.01).any()
    assert importance(b).sum() > importance(a).sum()


@pytest.mark.parametrize("text", ["0.5,0.25", "1,0.5,0.6", "1,abc", "1,0", "1,0.5,0.5", ""])
def test_bad_levels_are_one_line_errors(text):
    with pytest.raises(UserError) as err:
        parse_levels(text)
    assert "--levels" in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------- the tileset


def test_tileset_tree_bounds_and_errors(tmp_path):
    blocks = blocks_on_a_row()
    summary = write_tileset(tmp_path / "t", iter(blocks), "-y", (1.0, 0.25, 0.06))
    doc = json.loads((tmp_path / "t" / "tileset.json").read_text())
    assert doc["asset"]["version"] == "1.1"
    assert doc["extensions"]["3DTILES_content_gltf"]["extensionsRequired"] == [
        "KHR_gaussian_splatting",
        "KHR_gaussian_splatting_compression_spz_2",
    ]
    assert "3DTILES_content_gltf" in doc["extensionsUsed"]
    root = doc["root"]
    assert doc["geometricError"] >= root["geometricError"] and len(root["children"]) == 3
    assert summary.gaussians == 1200
    assert doc["asset"]["extras"]["momentumgs"]["counts"] == [[400, 100, 24]] * 3
    root_lo, root_hi = _box_corners(root["boundingVolume"]["box"], np.eye(4))
    tiles = list(_tiles(root, np.eye(4)))
    assert len(tiles) == 1 + 3 * 3
    for node, m, depth in tiles:
        for child in node.get("children", []):
            assert child["geometricError"] <= node["geometricError"]
        assert node["refine"] == "REPLACE"
        if depth == 0:
            assert "content" not in node
            continue
        uri = node["content"]["uri"]
        level = int(uri.rsplit("_", 1)[1].split(".")[0])
        assert level == 3 - depth and (node["geometricError"] == 0) == (level == 0)
        lo, hi = _box_corners(node["boundingVolume"]["box"], m)
        assert (lo >= root_lo - 1e-6).all() and (hi <= root_hi + 1e-6).all()
        g = read_glb(tmp_path / "t" / uri)  # the Gaussians relative to the block's centre, world axes
        centre = TILES_FROM_WORLD.T @ m[:3, 3]
        source = blocks[int(uri.split("/")[0].split("_")[1])][1]
        assert g.count == [400, 100, 24][level]
        world = g.to("cpu")
        world.means = world.means + torch.from_numpy(centre).float()
        gap = (world.means[:, None] - source.means[None]).norm(dim=2).min(dim=1).values
        assert gap.max() < 1e-3  # SPZ's fixed point
        wlo, whi = world_bounds(world)
        tlo = np.minimum(TILES_FROM_WORLD @ wlo, TILES_FROM_WORLD @ whi)
        thi = np.maximum(TILES_FROM_WORLD @ wlo, TILES_FROM_WORLD @ whi)
        assert (tlo >= lo - 0.05).all() and (thi <= hi + 0.05).all()  # the box holds them (SPZ's rounding)
    assert not [p for p in tmp_path.iterdir() if p.name != "t"]  # no temporary folder left


def test_tileset_replaces_an_earlier_one_only_whole(tmp_path):
    out = tmp_path / "t"
    write_tileset(out, iter(blocks_on_a_row(2)), "-y")
    before = (out / "tileset.json").read_text()
    with pytest.raises(UserError, match="exists and is not empty"):
        write_tileset(out, iter(blocks_on_a_row(1)), "-y")

    def failing():
        yield from blocks_on_a_row(1)
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        write_tileset(out, failing(), "-y", force=True)
    assert (out / "tileset.json").read_text() == before and (out / "block_001").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]
    write_tileset(out, iter(blocks_on_a_row(1)), "-y", force=True)
    assert not (out / "block_001").exists()


def test_origin_and_up_axis():
    assert np.allclose(ecef(0.0, 0.0, 0.0), [WGS84_A, 0, 0])
    assert np.allclose(ecef(90.0, 0.0, 0.0), [0, 0, 6356752.314245], atol=1e-3)  # the polar radius b
    assert np.allclose(ecef(0.0, 90.0, 100.0), [0, WGS84_A + 100, 0])
    m = enu_to_ecef(0.0, 0.0, 0.0)
    assert np.allclose(m[:3, :3], [[0, 0, 1], [1, 0, 0], [0, 1, 0]])  # east = +y, north = +z, up = +x
    for up in ("-y", "+z", "+y", "-x"):
        r = root_transform(up)[:3, :3] @ TILES_FROM_WORLD
        world_up = np.zeros(3)
        world_up["xyz".index(up[1])] = 1.0 if up[0] == "+" else -1.0
        assert np.allclose(r @ world_up, [0, 0, 1]) and np.isclose(np.linalg.det(r), 1.0)
    placed = root_transform("+z", (48.8584, 2.2945, 35.0))
    assert np.allclose(placed[:3, 3], ecef(48.8584, 2.2945, 35.0))
    assert parse_origin("48.85,2.35") == (48.85, 2.35, 0.0)
    for bad in ("48.85", "91,0,0", "0,181", "a,b,c", "1,2,3,4", "nan,0"):
        with pytest.raises(UserError) as err:
            parse_origin(bad)
        assert "--origin" in str(err.value) and "\n" not in str(err.value)


@pytest.fixture
def tiny_tiles_run(tiny_run):  # noqa: F811
    """tiny_run with a 2 x 2 partition.json."""
    from momentumgs.config import load_config
    from momentumgs.partition import partition_scene, save_partition

    run, scene = tiny_run
    cfg = load_config(None, ["partition.block_dim=[2,2,1]"])
    save_partition(run / "partition.json", partition_scene(scene, cfg.partition))
    return run, scene


def test_blocks_baked_one_by_one_are_the_whole_bake(tiny_tiles_run):
    from momentumgs.model.store import load_model
    from momentumgs.partition import load_partition

    run, scene = tiny_tiles_run
    model = load_model(run / "model.ckpt")
    whole = bake(model, scene, sh_degree=1)
    parts = [g for _, g in run_blocks(model, load_partition(run / "partition.json"), scene, sh_degree=1)]
    assert len(parts) > 1 and sum(g.count for g in parts) == whole.count
    ours = torch.cat([g.means for g in parts])
    order_a, order_b = np.lexsort(whole.means.numpy().T), np.lexsort(ours.numpy().T)
    assert torch.allclose(whole.means[order_a], ours[order_b], atol=1e-5)
    colours = torch.cat([g.sh for g in parts])[order_b]
    assert torch.allclose(whole.sh[order_a], colours, atol=1e-4)


def test_cli_export_tiles(tiny_tiles_run, tmp_path, capsys):
    run, _ = tiny_tiles_run
    out = tmp_path / "tiles"
    args = ["export", str(run), "--format", "tiles", "--out", str(out), "--levels", "1,0.3"]
    assert main([*args, "--origin", "48.8584,2.2945,35", "--sh-degree", "1"]) == 0
    printed = capsys.readouterr().out
    doc = json.loads((out / "tileset.json").read_text())
    counts = doc["asset"]["extras"]["momentumgs"]["counts"]
    assert f"{sum(c[0] for c in counts)} Gaussians in {len(counts)} blocks" in printed
    assert doc["asset"]["extras"]["momentumgs"]["origin"] == [48.8584, 2.2945, 35.0]
    assert all(len(c) == 2 for c in counts) and read_glb(out / "block_000" / "level_1.glb").sh_degree == 1
    for bad, words in (
        (["--origin", "48.85"], "--origin 48.85"),
        (["--levels", "0.5"], "--levels 0.5"),
        ([], "exists and is not empty"),
        (["--refine", "2", "--force"], "--refine"),
    ):
        assert main([*args, *bad]) == 2, bad
        err = capsys.readouterr().err.strip()
        assert words in err and "\n" not in err, err


def test_cli_lod_tune_fits_only_the_coarse_levels(tiny_tiles_run, tmp_path, capsys):
    run, _ = tiny_tiles_run
    args = ["export", str(run), "--format", "tiles", "--levels", "1,0.3", "--sh-degree", "1"]
    assert main([*args, "--out", str(tmp_path / "plain")]) == 0
    assert main([*args, "--out", str(tmp_path / "tuned"), "--lod-tune", "1"]) == 0
    capsys.readouterr()

    def world_means(tiles: Path, level: int) -> torch.Tensor:
        block = json.loads((tiles / "tileset.json").read_text())["root"]["children"][0]
        centre = TILES_FROM_WORLD.T @ _matrix(block["transform"])[:3, 3]
        return read_glb(tiles / "block_000" / f"level_{level}.glb").means.double() + torch.from_numpy(centre)

    for level, same in ((0, True), (1, False)):
        a = read_glb(tmp_path / "plain" / "block_000" / f"level_{level}.glb")
        b = read_glb(tmp_path / "tuned" / "block_000" / f"level_{level}.glb")
        moved = world_means(tmp_path / "plain", level) - world_means(tmp_path / "tuned", level)
        assert moved.abs().max() < 1e-3  # the fit moves no Gaussian (SPZ's fixed point aside)
        assert a.opacities.equal(b.opacities) == same and a.sh.equal(b.sh) == same


@pytest.mark.slow
@pytest.mark.tools
def test_bench_tiles_prints_time_and_peak_rss(tmp_path):
    """tools/bench_tiles.py at a tiny size: its figures and the JSON line."""
    bench = Path(__file__).resolve().parent.parent / "tools" / "bench_tiles.py"
    done = subprocess.run(
        [sys.executable, str(bench), "--gaussians", "3000", "--blocks", "3", "--out", str(tmp_path / "t")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout.strip().splitlines()[-1])
    assert row["gaussians"] == 3000 and row["files"] == 9 and row["peak_rss_mb"] > 0 and row["seconds"] > 0
    assert (tmp_path / "t" / "tileset.json").is_file() and "peak RSS" in done.stdout


# ---------------------------------------------------------------- readers we did not write


@pytest.fixture(scope="module")
def tools() -> Path:
    return require_tools(NEEDED)


def _node(*args, timeout: float = 120) -> None:
    done = subprocess.run(
        ["node", str(TOOLS / "tiles_check.mjs"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"{args}:\n{done.stdout}\n{done.stderr}"


@pytest.mark.interop
def test_loaders_gl_reads_the_tileset(tools, tmp_path):
    write_tileset(tmp_path / "t", iter(blocks_on_a_row()), "-y", (1.0, 0.25, 0.06), origin=(48.85, 2.35, 35))
    _node("read", tmp_path / "t" / "tileset.json", tmp_path / "read.json")
    read = json.loads((tmp_path / "read.json").read_text())
    ours = json.loads((tmp_path / "t" / "tileset.json").read_text())
    assert read["type"] == "TILES3D" and read["asset"]["version"] == "1.1"
    assert read["extensions"] == ours["extensions"]
    tiles = read["tiles"]
    assert len(tiles) == 10 and tiles[0]["content"] is None
    assert np.allclose(tiles[0]["transform"], ours["root"]["transform"])
    for row in tiles[1:]:
        content = row["content"]
        level = int(content["uri"].rsplit("_", 1)[1][0])
        assert row["refine"] == "REPLACE" and row["depth"] == 3 - level
        assert content["type"] == "glTF" and content["gltfUpAxis"] == "Y"
        assert content["count"] == [400, 100, 24][level]
        assert content["primitiveExtensions"] == ["KHR_gaussian_splatting"]
        assert "KHR_gaussian_splatting:SH_DEGREE_3_COEF_6" in content["attributes"]
        assert content["extensionsRequired"] == ["KHR_gaussian_splatting_compression_spz_2"]
    errors = [row["geometricError"] for row in tiles if row["depth"] >= 1]
    assert all(e >= 0 for e in errors) and tiles[-1]["geometricError"] == 0


@pytest.mark.interop
@pytest.mark.parametrize("where", [(48.8584, 2.2945, 35.0), (-33.8568, 151.2153, 5.0), (0.0, -179.5, -20.0)])
def test_enu_frame_is_cesiums(tools, tmp_path, where):
    _node("enu", *where, tmp_path / "enu.json")
    theirs = _matrix(json.loads((tmp_path / "enu.json").read_text()))
    ours = enu_to_ecef(*where)
    assert np.allclose(ours[:3, 3], theirs[:3, 3], atol=1e-6)
    assert np.allclose(ours[:3, :3], theirs[:3, :3], atol=1e-8)


# ---------------------------------------------------------------- CesiumJS renders it


@pytest.mark.interop
@pytest.mark.browser
@needs_chromium
def test_cesium_renders_each_level_like_ours(tools, finished_run, tmp_path):
    """The demo city (the session's 4-block run) exported as tiles and placed on the globe; one test view
    rendered by CesiumJS per level and with its own LoD choice, against our CPU render of each level."""
    from cesium_tiles import our_level_render, psnr, render_levels, zoomed

    from momentumgs.config import load_config
    from momentumgs.run_setup import load_scene

    out = tmp_path / "tiles"
    assert (
        main(
            [
                "export",
                str(finished_run),
                "--format",
                "tiles",
                "--out",
                str(out),
                "--origin",
                "48.8584,2.2945,35",
            ]
        )
        == 0
    )
    scene = load_scene(load_config(finished_run / "config.yaml"))
    cam = zoomed(scene.cameras[scene.test_ids[0]], 4)
    theirs = render_levels(out, cam, tmp_path / "web", [0, 1, 2])
    ours = {k: our_level_render(out, cam, k) for k in (0, 1, 2)}
    same = [psnr(theirs[k], ours[k]) for k in (0, 1, 2)]
    to_full = [psnr(theirs[k], ours[0]) for k in (0, 1, 2)]
    print(f"Cesium vs ours per level: {same}; Cesium's level vs our full detail: {to_full}")
    assert all(v >= CESIUM_PSNR_DB for v in same), same
    assert to_full[0] > to_full[1] > to_full[2], to_full  # the levels keep their order in CesiumJS
    # the whole tileset at CesiumJS's default maximumScreenSpaceError (16 px), Cesium choosing each block's
    # level by our geometric errors: the city shows, between the coarsest level and the full detail
    chosen = psnr(theirs["all"], ours[0])
    print(f"Cesium's own choice vs our full detail: {chosen:.2f} dB")
    assert to_full[2] - 0.5 <= chosen <= to_full[0] + 0.5 and theirs["all"].mean() > 5
    # from 20 times as far, CesiumJS's own choice by our geometric errors draws coarser levels
    doc = json.loads((out / "tileset.json").read_text())
    scene_centre = TILES_FROM_WORLD.T @ np.asarray(doc["root"]["boundingVolume"]["box"][:3])
    distance = np.linalg.norm(cam.center - scene_centre)
    centre = cam.center - 19.0 * distance * cam.viewmat[2, :3]  # backwards along the optical axis
    far = np.eye(4)
    far[:3, :3], far[:3, 3] = cam.viewmat[:3, :3], -cam.viewmat[:3, :3] @ centre
    seen = render_levels(out, dataclasses.replace(cam, viewmat=far), tmp_path / "web-far", [])
    counts = doc["asset"]["extras"]["momentumgs"]["counts"]
    near, drawn = theirs["states"]["all"]["splats"], seen["states"]["all"]["splats"]
    print(f"CesiumJS draws {near} splats near, {drawn} from 20x as far (levels: {np.sum(counts, axis=0)})")
    assert drawn < near


CESIUM_PSNR_DB = 25.0  # CesiumJS 1.145's splats (a narrower kernel, tiny splats dropped) vs our rasterizer
