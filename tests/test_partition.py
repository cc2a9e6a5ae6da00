import dataclasses
import json
import subprocess

import cv2
import numpy as np
import pytest
from helpers import cli_cmd, set_args
from scipy.spatial.transform import Rotation

from momentumgs import cli
from momentumgs.config import CenterAssign, PartitionConfig, SSIMAssign, VisibilityAssign, load_config
from momentumgs.data.colmap import load_colmap_scene
from momentumgs.data.scene import Scene
from momentumgs.errors import ConfigError, UserError
from momentumgs.partition.assign import CameraAssigner, CenterAssigner, VisibilityAssigner
from momentumgs.partition.bounds import PartitionError, contract, detect_up_axis, estimate_aabb, uncontract
from momentumgs.partition.build import partition_scene
from momentumgs.partition.grid import blocks_per_camera
from momentumgs.partition.io import load_partition, save_partition
from momentumgs.partition.points import COARSE_CELLS
from momentumgs.partition.visibility import (
    MIN_CROP,
    cell_rectangle,
    cell_rectangles,
    point_columns,
    points_in_view,
    points_seen,
)


@pytest.fixture(scope="module")
def scene(gt_test_scene):
    return load_colmap_scene(gt_test_scene, downscale=4)


@pytest.fixture(scope="module")
def part(scene):
    return partition_scene(scene, PartitionConfig(block_points="cell"))


def transformed(scene: Scene, R0: np.ndarray) -> Scene:
    """The same scene in a world frame rotated by R0 [3, 3] (new = R0 @ old)."""
    T_inv = np.eye(4)
    T_inv[:3, :3] = R0.T
    cams = [dataclasses.replace(c, viewmat=c.viewmat @ T_inv) for c in scene.cameras]
    points = (scene.points.astype(np.float64) @ R0.T).astype(np.float32)
    return Scene(cams, points, scene.point_colors, scene.train_ids, scene.test_ids, scene.root)


# --- contraction -----------------------------------------------------------------------------


def test_contraction_formula():
    aabb = np.array([-10.0, 0.0, 5.0, 30.0, 20.0, 6.0])
    rng = np.random.default_rng(0)
    inside = aabb[:3] + rng.uniform(0, 1, (500, 3)) * (aabb[3:] - aabb[:3])
    y = contract(inside, aabb)
    assert (y >= 0.25).all() and (y <= 0.75).all()
    assert np.allclose(contract(aabb[None, :3], aabb), 0.25) and np.allclose(
        contract(aabb[None, 3:], aabb), 0.75
    )
    # outside: |u|_inf = 3 on x (u = (3, 0, 0)) -> (2 - 1/3) * (1, 0, 0) / 4 + 0.5
    x = np.array([[70.0, 10.0, 5.5]])
    assert np.allclose(contract(x, aabb), [[0.5 + (2 - 1 / 3) / 4, 0.5, 0.5]])
    far = rng.normal(0, 1, (500, 3)) * 10.0 ** rng.uniform(2, 8, (500, 1))
    yf = contract(far, aabb)
    assert (yf > 0).all() and (yf < 1).all()
    assert (np.abs(yf - 0.5).max(axis=1) > 0.25).all()  # outside the AABB -> outside [0.25, 0.75]^3
    # inverse round trip, inside and outside (relative error: far points are large)
    for pts in (inside, far[np.abs(far).max(axis=1) < 1e6]):
        back = uncontract(contract(pts, aabb), aabb)
        assert np.allclose(back, pts, rtol=1e-6, atol=1e-6)


# --- up axis and scene bounds ---------------------------------------------------------------


def test_up_axis_demo_scene_is_z(scene):
    assert detect_up_axis(scene) == "+z"


@pytest.mark.parametrize(
    "R0, expected",
    [
        (np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]), "+y"),  # z -> +y
        (np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]), "-y"),  # z -> -y (COLMAP-like, y down)
        (np.array([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]]), "+x"),  # z -> +x
    ],
)
def test_up_axis_of_rotated_scene(scene, part, R0, expected):
    assert np.isclose(np.linalg.det(R0), 1)
    rotated = transformed(scene, R0)
    assert detect_up_axis(rotated) == expected
    # the partition does not depend on the frame: same blocks up to their order
    rp = partition_scene(rotated, PartitionConfig(assign=CenterAssign()))
    base = partition_scene(scene, PartitionConfig(assign=CenterAssign()))
    key = sorted((b.n_cell_points, tuple(b.camera_ids)) for b in base.blocks)
    assert sorted((b.n_cell_points, tuple(b.camera_ids)) for b in rp.blocks) == key


def test_up_axis_unclear_asks_for_it(scene):
    rng = np.random.default_rng(1)
    cams = []
    for c in scene.cameras:  # every camera turned at random: no common up
        viewmat = c.viewmat.copy()
        viewmat[:3, :3] = Rotation.random(random_state=rng).as_matrix()
        cams.append(dataclasses.replace(c, viewmat=viewmat))
    shaken = Scene(cams, scene.points, scene.point_colors, scene.train_ids, scene.test_ids)
    with pytest.raises(PartitionError, match="partition.up_axis"):
        detect_up_axis(shaken)


def building_corners(root) -> np.ndarray:
    """World corners [8 * B, 3] of the demo city's buildings (with their roof units)."""
    boxes = json.loads((root / "ground_truth" / "city.json").read_text())["boxes"]
    corners = []
    for b in boxes:
        if b["kind"] not in ("building", "roof_unit"):
            continue
        c, h, yaw = np.array(b["center"]), np.array(b["half"]), b["yaw"]
        rot = Rotation.from_euler("z", yaw).as_matrix()
        signs = np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1])).reshape(3, -1).T  # [8, 3]
        corners.append(c + (signs * h) @ rot.T)
    return np.concatenate(corners)


def test_aabb_estimate_contains_the_buildings_and_cameras(scene, gt_test_scene):
    aabb = estimate_aabb(scene, "+z")
    corners = building_corners(gt_test_scene)
    assert len(corners) >= 8 * 8
    assert (corners >= aabb[:3] - 1e-6).all() and (corners <= aabb[3:] + 1e-6).all()
    centres = np.stack([c.center for c in scene.train_cameras])
    inside = ((centres[:, :2] >= aabb[:2]) & (centres[:, :2] <= aabb[3:5])).all(axis=1)
    assert inside.mean() >= 0.9
    assert aabb[5] < centres[:, 2].min()  # the cameras' altitude is not part of the box
    assert (aabb[3:] - aabb[:3] < 100).all()  # and it stays near the city (ground points reach 70 m)


# --- the grid --------------------------------------------------------------------------------


def test_2x2_grid_has_four_blocks_and_every_train_camera(scene, part):
    assert len(part.blocks) == 4 and part.up_axis == "+z"
    for b in part.blocks:
        assert len(b.camera_ids) > 0 and b.n_cell_points > 0
        assert set(b.camera_ids) <= set(scene.train_ids)  # test views never train
    counts = blocks_per_camera(part, len(scene.cameras))
    assert (counts[scene.train_ids] >= 1).all() and (counts[scene.test_ids] == 0).all()
    # the AABB-interior parts of the four cells tile the AABB
    w = [b for b in part.blocks if b.world_min is not None]
    assert len(w) == 4 and np.allclose(
        sum(np.prod(b.world_max - b.world_min) for b in w), np.prod(part.aabb[3:] - part.aabb[:3])
    )
    # centre mode: each train camera trains exactly the block it stands in
    centre = partition_scene(scene, PartitionConfig(assign=CenterAssign()))
    assert (blocks_per_camera(centre, len(scene.cameras))[scene.train_ids] == 1).all()
    # visibility adds views the centre rule misses (oblique cameras look across the city)
    assert sum(len(b.camera_ids) for b in part.blocks) > sum(len(b.camera_ids) for b in centre.blocks)
    for b, c in zip(part.blocks, centre.blocks, strict=True):
        assert set(c.camera_ids) <= set(b.camera_ids)


def test_block_of_points_puts_each_point_in_one_block(scene, part):
    owner = part.block_of_points(scene.points)
    assert owner.shape == (len(scene.points),) and owner.min() >= 0 and owner.max() < 4
    assert sum(b.n_cell_points for b in part.blocks) == len(scene.points)
    for b in part.blocks:
        assert (owner == b.index).sum() == b.n_cell_points
        assert set(np.flatnonzero(owner == b.index)) <= set(b.point_ids)  # its cell is in its point set
    # far-away points and points on a cell boundary still get exactly one valid block
    mid = (part.aabb[:3] + part.aabb[3:]) / 2
    extra = np.array([[1e9, 1e9, 0.0], [-1e9, 5.0, 3.0], mid, [mid[0], -1e7, mid[2]]])
    got = part.block_of_points(extra)
    assert ((got >= 0) & (got < 4)).all()
    assert got[0] == part.blocks[-1].index  # +x, +y far away: the (1, 1) border block
    assert got[2] == 3  # the centre lies on both splits: half-open cells give it to the upper ones


def test_margin_gives_overlapping_point_sets(scene, part):
    ids = [set(b.point_ids) for b in part.blocks]
    assert len(ids[0] & ids[1]) > 0 and len(ids[0] & ids[2]) > 0  # neighbours share their margin
    assert sum(len(s) for s in ids) > len(scene.points)
    tight = partition_scene(scene, PartitionConfig(margin=0.0, assign=CenterAssign(), block_points="cell"))
    sizes = [len(b.point_ids) for b in tight.blocks]
    assert sizes == [b.n_cell_points for b in tight.blocks]  # no margin: just the cell
    assert all(len(a) > t for a, t in zip(ids, sizes, strict=True))


def test_block_points_cell_coverage_all(scene, part):
    """coverage = the cell (+ margin) and every point one of the block's cameras sees; all = the cloud."""
    cover = partition_scene(scene, PartitionConfig(block_points="coverage"))
    whole = partition_scene(scene, PartitionConfig(block_points="all"))
    assert cover.block_points == "coverage" and part.block_points == "cell"
    for cell_b, cover_b, whole_b in zip(part.blocks, cover.blocks, whole.blocks, strict=True):
        assert np.array_equal(cell_b.camera_ids, cover_b.camera_ids)  # the cameras do not change
        assert np.array_equal(whole_b.point_ids, np.arange(len(scene.points)))
        cell_ids, cover_ids = set(cell_b.point_ids), set(cover_b.point_ids)
        assert cell_ids < cover_ids  # strictly more: the views see beyond the cell
        # every added point projects into one of the block's cameras, in front of it
        added = np.array(sorted(cover_ids - cell_ids))
        seen = np.zeros(len(added), dtype=bool)
        for cam_id in cover_b.camera_ids:
            uv, depth = scene.cameras[cam_id].project(scene.points[added])
            w, h = scene.cameras[cam_id].width, scene.cameras[cam_id].height
            seen |= (depth > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
        assert seen.all()
        # and what no camera of the block sees is left out
        assert len(cover_ids) < len(scene.points) or len(cover_b.camera_ids) == len(scene.train_ids)


def coarse_cubes(y: np.ndarray, cell_size: np.ndarray) -> set[tuple]:
    """The cubes of coarse's grid that contracted points y [F, 3] fall in."""
    return {tuple(c) for c in np.floor(y / (cell_size / COARSE_CELLS)).astype(np.int64)}


def test_block_points_coarse_is_the_cell_and_coverage_on_a_coarse_grid(scene, part):
    """coarse = the cell (+ margin) and, of coverage's points beyond it, one per coarse cube, every cube
    that coverage reaches kept: fewer than coverage, never a point coverage lacks."""
    cover = partition_scene(scene, PartitionConfig(block_points="coverage"))
    coarse = partition_scene(scene, PartitionConfig(block_points="coarse"))
    assert coarse.block_points == "coarse"
    y = contract(scene.points, coarse.aabb)  # [P, 3]
    for cell_b, cover_b, coarse_b in zip(part.blocks, cover.blocks, coarse.blocks, strict=True):
        assert np.array_equal(cover_b.camera_ids, coarse_b.camera_ids)
        cell_ids, cover_ids = set(cell_b.point_ids), set(cover_b.point_ids)
        coarse_ids = set(coarse_b.point_ids)
        assert cell_ids < coarse_ids < cover_ids  # all of cell's and more, strictly fewer than coverage's
        # beyond the cell + margin: one point per coarse cube, and every cube coverage reaches keeps one
        size = coarse_b.cell_max - coarse_b.cell_min
        far_coarse = np.array(sorted(coarse_ids - cell_ids), dtype=np.int64)
        far_cover = np.array(sorted(cover_ids - cell_ids), dtype=np.int64)
        assert len(coarse_cubes(y[far_coarse], size)) == len(far_coarse) < len(far_cover)
        assert coarse_cubes(y[far_coarse], size) == coarse_cubes(y[far_cover], size)


@pytest.mark.parametrize("axes", [(0, 1, 2), (2, 0, 1)])  # up z; the same scene with y up (x, z ground)
def test_points_seen_through_the_column_index_equal_projecting_the_whole_cloud(scene, axes):
    """The index only skips columns that no camera ray can reach: far outliers, points behind and beside
    the cameras included, every camera sees exactly the points a projection of the whole cloud finds."""
    R0 = np.eye(3)[list(axes)]  # new axis i = old axis axes[i]
    moved = transformed(scene, R0)
    rng = np.random.default_rng(0)
    far = rng.normal(0, 1, (300, 3)) * np.ptp(moved.points, axis=0) * 20  # [300, 3] around, above, below
    moved.points = np.concatenate([moved.points, far.astype(np.float32)])
    ground = tuple(i for i in range(3) if i != int(np.argmax(np.abs(R0[:, 2]))))  # the world z's new axis
    columns = point_columns(moved.points, ground)
    assert len(columns.lo) > 1  # the cloud is indexed, not one column
    for cam_id in range(len(moved.cameras)):
        expected = np.flatnonzero(points_in_view(moved, cam_id, moved.points))
        assert np.array_equal(np.sort(points_seen(moved, cam_id, columns)), expected)


def test_cell_rectangles_hold_the_cells_points_and_little_else(scene, part):
    """Each block's rectangle in each of its views holds every point of its own cell that the view shows
    (with the pad), lies in the image, and is far smaller than the image where the cell is a corner of
    it; together the blocks' rectangles cover nearly all of each view (what no block trains stays
    untrained)."""
    rects = cell_rectangles(scene, part, pad=0.05)
    owner = part.block_of_points(scene.points)
    covered = {}
    for b, block_rects in zip(part.blocks, rects, strict=True):
        assert sorted(block_rects) == sorted(int(i) for i in b.camera_ids)
        cell = scene.points[owner == b.index]
        for cam_id, (x0, y0, x1, y1) in block_rects.items():
            cam = scene.cameras[cam_id]
            assert 0 <= x0 < x1 <= cam.width and 0 <= y0 < y1 <= cam.height
            assert x1 - x0 >= MIN_CROP and y1 - y0 >= MIN_CROP
            uv, depth = cam.project(cell)
            inside = (depth > 1e-6) & (uv >= 0).all(1) & (uv < [cam.width, cam.height]).all(1)
            lo, hi = uv[inside].min(0), uv[inside].max(0)  # [2]
            assert (lo >= [x0, y0]).all() and (hi <= [x1, y1]).all()
            pad = 0.05 * np.array([cam.width, cam.height])
            least = (x1 - x0 == MIN_CROP) | (y1 - y0 == MIN_CROP)
            assert least or ((lo - pad - 1 <= [x0, y0]).all() and (hi + pad + 1 >= [x1, y1]).all())
            mask = covered.setdefault(cam_id, np.zeros((cam.height, cam.width), bool))
            mask[y0:y1, x0:x1] = True
    shares = [
        (x1 - x0) * (y1 - y0) / (scene.cameras[c].width * scene.cameras[c].height)
        for r in rects
        for c, (x0, y0, x1, y1) in r.items()
    ]
    assert np.mean(shares) < 0.8  # a quarter of the city is far less than the whole view
    assert np.mean([m.mean() for m in covered.values()]) > 0.95


def test_cell_rectangle_without_cell_points_is_the_whole_image_and_never_below_the_least_size(scene):
    cam = scene.cameras[0]
    assert cell_rectangle(cam, scene.points[:0], 0.05) == (0, 0, cam.width, cam.height)
    behind = cam.center[None] - 10.0 * (cam.viewmat[2, :3] @ np.eye(3))[None]  # a point behind the camera
    assert cell_rectangle(cam, behind, 0.05) == (0, 0, cam.width, cam.height)
    # one point seen: a rectangle of the least size around it, inside the image
    seen = cam.center + 5.0 * (np.linalg.inv(cam.K) @ [3.5, 2.5, 1.0]) @ cam.viewmat[:3, :3]
    assert cell_rectangle(cam, seen[None], 0.0) == (3, 2, 3 + MIN_CROP, 2 + MIN_CROP)
    # near the far corner it slides back inside the image, keeping its size
    seen = (
        cam.center
        + 5.0 * (np.linalg.inv(cam.K) @ [cam.width - 1.5, cam.height - 0.5, 1.0]) @ cam.viewmat[:3, :3]
    )
    assert cell_rectangle(cam, seen[None], 0.0) == (
        cam.width - MIN_CROP,
        cam.height - MIN_CROP,
        cam.width,
        cam.height,
    )


def test_block_points_round_trip_and_bad_value(tmp_path, scene):
    cover = partition_scene(scene, PartitionConfig(block_points="coverage"))
    save_partition(tmp_path / "p.json", cover)
    loaded = load_partition(tmp_path / "p.json")
    assert loaded.block_points == "coverage"
    assert all(
        np.array_equal(a.point_ids, b.point_ids) for a, b in zip(cover.blocks, loaded.blocks, strict=True)
    )
    expected = "partition.block_points: expected one of cell, coverage, coarse, all"
    with pytest.raises(ConfigError, match=expected):
        partition_scene(scene, PartitionConfig(block_points="everything"))


def test_save_load_round_trip(tmp_path, part):
    path = tmp_path / "sub" / "partition.json"
    save_partition(path, part)
    back = load_partition(path)
    assert back.up_axis == part.up_axis and back.block_dim == part.block_dim and back.assign == part.assign
    assert np.array_equal(back.aabb, part.aabb) and back.camera_names == part.camera_names
    for a, b in zip(part.blocks, back.blocks, strict=True):
        assert np.array_equal(a.point_ids, b.point_ids) and np.array_equal(a.camera_ids, b.camera_ids)
        assert np.array_equal(a.cell_min, b.cell_min) and np.array_equal(a.world_max, b.world_max)
        assert a.grid_index == b.grid_index and a.n_cell_points == b.n_cell_points
    points = np.random.default_rng(0).normal(0, 40, (100, 3))
    assert np.array_equal(back.block_of_points(points), part.block_of_points(points))
    assert [p.name for p in tmp_path.joinpath("sub").iterdir()] == ["partition.json"]  # no temp file left
    # a damaged file: one line naming it
    data = json.loads(path.read_text())
    data["blocks"][1]["num_point_ids"] += 1
    path.write_text(json.dumps(data))
    with pytest.raises(PartitionError, match="partition.json: malformed"):
        load_partition(path)
    path.write_text("{not json")
    with pytest.raises(PartitionError, match="not a readable partition file"):
        load_partition(path)


# --- bad inputs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(aabb=[0, 0, 0, 1, 1]), r"partition.aabb: expected \[\] or 6 numbers"),
        (dict(aabb=[-40, -40, 0, 40, -50, 15]), r"partition.aabb: .*each min below its max, got"),
        (
            dict(aabb=[-40, -40, 0, 0, 0, 15]),
            r"partition.aabb: 1[0-9] of 21 train camera centres lie outside",
        ),
        (dict(block_dim=[2, 2]), "partition.block_dim: expected 3 integers >= 1"),
        (dict(block_dim=[2, 0, 1]), "partition.block_dim"),
        (
            dict(block_dim=[4, 2, 1], assign=CenterAssign()),
            r"block 0 \(grid \[0, 0, 0\]\) is empty: 0 cameras, \d+ points",
        ),
        (dict(block_dim=[1, 1, 4]), r"block 0 \(grid \[0, 0, 0\]\) is empty: \d+ cameras, 0 points"),
        (
            dict(assign="nearest"),
            "partition.assign: expected a section, one of VisibilityAssign, CenterAssign",
        ),
        (
            dict(assign=SSIMAssign(threshold=3.0)),
            r"partition.assign.threshold: expected a number in \(0, 2\)",
        ),
        (dict(up_axis="w"), "partition.up_axis: expected one of auto"),
        (dict(margin=1.5), "partition.margin"),
    ],
)
def test_bad_inputs_give_one_line_errors(scene, change, message):
    """A bad value is the schema's error (config.check_config, also for a config built in code); a scene the
    values cannot split is the partition's."""
    with pytest.raises(UserError, match=message) as info:
        partition_scene(scene, PartitionConfig(**change))
    assert "\n" not in str(info.value)


def test_cli_error_is_one_line(gt_test_scene, capsys):
    rc = cli.main(
        [
            "partition",
            str(gt_test_scene),
            *set_args(["partition.block_dim=[4,2,1]", "partition.assign=center"]),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("momentumgs: error: partition: block 0") and "\n" not in err


@pytest.fixture(scope="module")
def coarse_model(scene, tmp_path_factory):
    """A stand-in coarse model: anchors from the SfM points, a seeded untrained decoder. -> its path"""
    torch = pytest.importorskip("torch")
    from momentumgs.model.anchors import init_anchors_from_points
    from momentumgs.model.store import AnchorModel, DecoderSpec, save_model

    torch.manual_seed(0)
    spec = DecoderSpec()
    path = tmp_path_factory.mktemp("coarse") / "model.ckpt"
    save_model(path, AnchorModel(init_anchors_from_points(scene.points), spec.build(), spec, {}))
    return path


@pytest.mark.slow
def test_ssim_assignment_with_a_coarse_model(scene, coarse_model, monkeypatch):
    """The paper's rule on a stand-in coarse model: views whose render changes when a block is removed train
    it, on top of the views standing in it."""
    from momentumgs.partition import ssim as partition_ssim

    measured = []  # the losses partition_scene acts on, kept to check its decisions against
    real = partition_ssim.ssim_losses
    monkeypatch.setattr(
        partition_ssim, "ssim_losses", lambda *a, **k: measured.append(real(*a, **k)) or measured[0]
    )
    cfg = PartitionConfig(
        block_dim=[2, 1, 1], assign=SSIMAssign(threshold=0.05, coarse_model=str(coarse_model))
    )
    part = partition_scene(scene, cfg, partition_ssim.make_assigner(cfg, "cpu"))
    centre = partition_scene(scene, PartitionConfig(block_dim=[2, 1, 1], assign=CenterAssign()))
    (losses,) = measured  # [T, B]
    assert losses.shape == (len(scene.train_ids), 2) and (losses >= 0).all()
    for b, c in zip(part.blocks, centre.blocks, strict=True):
        seen = {scene.train_ids[i] for i in np.flatnonzero(losses[:, b.index] > 0.05)}
        assert set(b.camera_ids) == set(c.camera_ids) | seen
    assert sum(len(b.camera_ids) for b in part.blocks) > sum(len(b.camera_ids) for b in centre.blocks)
    assert part.assign == "ssim"


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_ssim_assigner_loads_and_renders_on_its_device(scene, coarse_model, monkeypatch, device):
    torch = pytest.importorskip("torch")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from momentumgs.partition import ssim as partition_ssim

    loaded_on, rendered_on = [], []  # the device asked of load_model; the devices of each render's inputs
    real_load, real_render = partition_ssim.load_model, partition_ssim.render_anchor_view

    def load(path, dev):
        loaded_on.append(dev)
        return real_load(path, dev)

    def render(field, decoder, view, **kwargs):
        rendered_on.extend(
            {field.positions.device.type, view.viewmat.device.type, kwargs["visible"].device.type}
        )
        return real_render(field, decoder, view, **kwargs)

    monkeypatch.setattr(partition_ssim, "load_model", load)
    monkeypatch.setattr(partition_ssim, "render_anchor_view", render)
    cfg = PartitionConfig(block_dim=[2, 1, 1], assign=SSIMAssign(coarse_model=str(coarse_model)))
    assigner = partition_ssim.make_assigner(cfg, device)
    part = partition_scene(scene, PartitionConfig(block_dim=[2, 1, 1], assign=CenterAssign()))
    two_views = dataclasses.replace(scene, train_ids=scene.train_ids[:2])  # two views keep the test cheap
    cameras = assigner.assign(two_views, part)
    assert loaded_on == [device] and rendered_on and set(rendered_on) == {device}
    assert len(cameras) == 2 and all(c.dtype == np.int64 for c in cameras)


def test_partition_uses_the_injected_assigner(scene):
    """Any CameraAssigner decides the cameras; the partition records its name."""

    class EveryCamera(CameraAssigner):
        name = "every-camera"

        def assign(self, scene, part):
            return [np.array(scene.train_ids, dtype=np.int64) for _ in part.blocks]

    # the cell's points, so that only the cameras can differ between the two
    cfg = PartitionConfig(block_dim=[2, 1, 1], assign=CenterAssign(), block_points="cell")
    part = partition_scene(scene, cfg, EveryCamera())
    centre = partition_scene(scene, cfg)
    assert part.assign == "every-camera" and centre.assign == "center"
    assert all(b.camera_ids.tolist() == sorted(scene.train_ids) for b in part.blocks)
    assert [b.point_ids.tolist() for b in part.blocks] == [b.point_ids.tolist() for b in centre.blocks]


def test_ssim_needs_an_injected_assigner(scene, tmp_path):
    cfg = PartitionConfig(assign=SSIMAssign(coarse_model=str(tmp_path / "model.ckpt")))
    with pytest.raises(
        PartitionError, match="partition.assign.mode ssim renders a coarse model: pass"
    ) as info:
        partition_scene(scene, cfg)
    assert "\n" not in str(info.value)


def test_make_assigner_builds_the_configured_rule():
    from momentumgs.partition.ssim import SSIMAssigner, make_assigner

    assert make_assigner(load_config(None, ["partition.assign=center"]).partition, "cpu") == CenterAssigner()
    visibility = make_assigner(load_config(None, ["partition.assign.threshold=0.5"]).partition, "cpu")
    assert visibility == VisibilityAssigner(0.5)
    ssim = load_config(
        None, ["partition.assign={mode: ssim, coarse_model: m.ckpt, threshold: 0.1}"]
    ).partition
    assert make_assigner(ssim, "cuda:1") == SSIMAssigner("m.ckpt", 0.1, "cuda:1")
    # a config built in code gets the schema's check
    with pytest.raises(ConfigError, match=r"partition.assign.threshold: expected a number in \(0, 1\]"):
        make_assigner(PartitionConfig(assign=VisibilityAssign(threshold=0.0)), "cpu")
    with pytest.raises(ConfigError, match="partition.assign: expected a section"):
        make_assigner(PartitionConfig(assign="nearest"), "cpu")
    with pytest.raises(
        PartitionError, match="partition.assign.mode ssim needs partition.assign.coarse_model"
    ) as info:
        make_assigner(PartitionConfig(assign=SSIMAssign()), "cpu")
    assert "\n" not in str(info.value)


def test_training_start_warns_about_blocks_with_few_views(gt_test_scene, tmp_path, capsys):
    """partition.min_views is checked where it matters: when a new run starts, one line per block."""
    from helpers import MULTI, scene_loader

    from momentumgs.run_setup import start_or_resume

    cfg = load_config(None, [*MULTI, f"data.path={gt_test_scene}", "partition.min_views=1000"])
    trainer = start_or_resume(cfg, scene_loader, tmp_path / "run", resume=False)
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        f"momentumgs: warning: block {b.index} is trained by only {len(b.camera_ids)} views "
        "(partition.min_views 1000)"
        for b in trainer.partition.blocks
    ]
    trainer.residency.close()
    cfg.partition.min_views = 0
    start_or_resume(cfg, scene_loader, tmp_path / "quiet", resume=False).residency.close()
    assert capsys.readouterr().err == ""


def test_the_scan_estimates_an_ssim_partition_by_its_cells(scene):
    """`prepare scan` has no coarse model to render: it splits the points as the centre rule would (the
    point split does not depend on the cameras' rule) instead of giving up on blocks."""
    from momentumgs.prepare.scan import _blocks

    warnings = []
    ssim = load_config(None, ["partition.assign={mode: ssim, coarse_model: m.ckpt}", "data.downscale=4"])
    ids = _blocks(scene, ssim, warnings)
    centre = partition_scene(scene, PartitionConfig(assign=CenterAssign()))
    assert warnings == [] and [i.tolist() for i in ids] == [b.point_ids.tolist() for b in centre.blocks]


# --- CLI -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_prints_counts_and_writes_preview(gt_test_scene, tmp_path, scene, part):
    out, png = tmp_path / "p.json", tmp_path / "p.png"
    sets = set_args(["data.downscale=4", "partition.min_views=19", "partition.block_points=cell"])
    cmd = cli_cmd("partition", gt_test_scene, *sets, "--out", out, "--preview", png, "--lines")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [(int(r[0]), int(r[2]), int(r[3]), int(r[4])) for r in rows] == [
        (b.index, len(b.camera_ids), b.n_cell_points, len(b.point_ids)) for b in part.blocks
    ]
    few = [b.index for b in part.blocks if len(b.camera_ids) < 19]
    assert few and all(f"warning: block {i} is trained by only" in proc.stderr for i in few)
    assert load_partition(out).blocks[2].n_cell_points == part.blocks[2].n_cell_points
    img = cv2.imread(str(png))
    assert img is not None and 600 <= max(img.shape[:2]) <= 900
    assert img.std() > 20  # not blank
    colours = np.unique(img.reshape(-1, 3), axis=0)
    assert len(colours) > 50
