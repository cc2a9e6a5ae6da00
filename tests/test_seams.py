"""Seam refinement after the merge (momentumgs/train/seams.py): which anchors count as near a border, that
only they move (the decoder stays as trained) and that they fit the photos better, and that a finished
multi-block run's model.ckpt is the plain merge of its blocks with exactly those anchors refined."""

import numpy as np
import pytest
import torch
from helpers import scene_loader
from test_merge import two_block_partition

from momentumgs.checkpoint import load_checkpoint
from momentumgs.merge import merge_blocks, owner_of
from momentumgs.model.anchors import AnchorField
from momentumgs.model.store import load_model
from momentumgs.partition import load_partition
from momentumgs.render.anchors import render_anchor_view
from momentumgs.render.view import camera_view
from momentumgs.run_setup import run_config
from momentumgs.train.losses import photometric_loss
from momentumgs.train.measure import gt_image, spatial_scale
from momentumgs.train.paths import RunPaths
from momentumgs.train.seams import band_width, refine_seams, seam_anchors


def point_field(xs: list[float], slot_mask: torch.Tensor | None = None) -> AnchorField:
    """One anchor per x (y = z = 0.5), one slot each, the slot's centre at the anchor."""
    n = len(xs)
    positions = torch.tensor([[x, 0.5, 0.5] for x in xs])
    return AnchorField(
        positions=positions,
        features=torch.nn.Parameter(torch.zeros(n, 4)),
        offsets=torch.nn.Parameter(torch.zeros(n, 1, 3)),
        log_scales=torch.nn.Parameter(torch.zeros(n, 6)),
        voxel_size=0.1,
        slot_mask=slot_mask,
    )


def test_seam_anchors_are_those_with_a_kept_gaussian_within_the_band_of_another_cell():
    part = two_block_partition()  # cells x < 0 and x >= 0 of [-1, 1]^3: 1 wide along x, 2 along y
    width = band_width(part, 0.1)
    assert width == pytest.approx(0.1)  # the smaller ground extent (x) of a cell
    xs = [-0.9, -0.15, -0.05, 0.05, 0.09, 0.2, 0.95, -0.05]
    mask = torch.ones(len(xs), 1, dtype=torch.bool)
    mask[-1] = False  # a slot the merge dropped draws nothing: its anchor is no seam anchor
    near = seam_anchors(point_field(xs, mask), part, width)
    assert near.tolist() == [False, False, True, True, True, False, False, False]
    # the outer faces of the AABB are no border: points beyond them belong to the edge cells
    assert not seam_anchors(point_field([-0.99, 0.99, -0.2]), part, width).any()


@pytest.fixture(scope="module")
def merged(finished_run):
    cfg = run_config(finished_run)
    scene = scene_loader(cfg)
    model = load_model(RunPaths(finished_run).model)
    partition = load_partition(RunPaths(finished_run).partition)
    views = {i: camera_view(scene.cameras[i], "cpu", i) for i in scene.train_ids}
    return cfg, scene, model, partition, views


def mean_loss(model, scene, views, ids, lambda_dssim) -> float:
    with torch.no_grad():
        losses = [
            photometric_loss(render_anchor_view(model.field, model.decoder, views[i]).image,
                             gt_image(scene, i, "cpu"), lambda_dssim).loss
            for i in ids
        ]  # fmt: skip
    return float(torch.stack(losses).mean())


@pytest.mark.slow
def test_refinement_moves_only_the_seam_anchors_and_fits_their_views_better(merged):
    cfg, scene, model, partition, views = merged
    width = band_width(partition, cfg.partition.seam_band)
    movable = seam_anchors(model.field, partition, width)
    assert 0 < int(movable.sum()) < model.field.n_anchors
    before = {k: v.detach().clone() for k, v in model.field.params().items()}
    decoder_before = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    loss_before = mean_loss(model, scene, views, scene.train_ids, cfg.train.lambda_dssim)

    owner_before = owner_of(model.field.slot_means(), partition)  # [N, K]
    mask_before = model.field.slot_mask.clone()
    report = refine_seams(
        model.field, model.decoder, scene, views, partition, cfg.train,
        spatial_scale(scene, scene.train_ids), steps=40, band=cfg.partition.seam_band, seed=0,
    )  # fmt: skip

    assert report.steps == 40 and report.seam_anchors == int(movable.sum()) and report.views > 0
    for name, old in before.items():
        new = model.field.params()[name].detach()
        assert torch.equal(new[~movable], old[~movable]), name  # the rest of each block stays as trained
        assert not torch.equal(new[movable], old[movable]), name
        assert not model.field.params()[name].requires_grad  # handed back as a rendered model's
    # cut again: a kept slot stays kept unless its centre left its block's cell
    block = torch.where(mask_before, owner_before, -1).max(dim=1).values  # [N]
    owner_after = owner_of(model.field.slot_means(), partition)
    assert torch.equal(model.field.slot_mask, mask_before & (owner_after == block[:, None]))
    assert report.dropped_slots == int((mask_before & ~model.field.slot_mask).sum())
    for name, old in decoder_before.items():
        assert torch.equal(model.decoder.state_dict()[name], old), name
    loss_after = mean_loss(model, scene, views, scene.train_ids, cfg.train.lambda_dssim)
    assert loss_after < loss_before - 1e-3, (loss_before, loss_after)


@pytest.mark.slow
def test_zero_steps_leave_the_model_as_merged_and_a_merge_by_anchor_keeps_its_slots(merged):
    cfg, scene, model, partition, views = merged
    before = {k: v.detach().clone() for k, v in model.field.params().items()}
    mask = model.field.slot_mask.clone()
    report = refine_seams(model.field, model.decoder, scene, views, partition, cfg.train, 1.0, 0, 0.1, 0)
    assert report.steps == 0
    assert all(torch.equal(model.field.params()[k].detach(), v) for k, v in before.items())
    # merged by anchor, every slot of a kept anchor stays wherever its centre goes
    model.field.slot_mask = None
    report = refine_seams(
        model.field, model.decoder, scene, views, partition, cfg.train, 1.0, 3, 0.1, 0, rule="anchors"
    )
    assert report.steps == 3 and report.dropped_slots == 0 and model.field.slot_mask is None
    model.field.slot_mask = mask


@pytest.mark.slow
def test_a_finished_run_writes_its_blocks_merged_with_the_seam_anchors_refined(finished_run):
    cfg = run_config(finished_run)
    partition = load_partition(RunPaths(finished_run).partition)
    model = load_model(RunPaths(finished_run).model)
    info = model.info["seams"]
    assert info["steps"] == cfg.partition.seam_steps > 0 and info["seam_anchors"] > 0

    paths = RunPaths(finished_run)
    blocks = {
        b: AnchorField.from_state_dict(load_checkpoint(paths.block_file(b))["anchors"])
        for b in range(len(partition.blocks))
    }
    plain, _ = merge_blocks(blocks, partition, cfg.partition.merge)
    movable = seam_anchors(plain, partition, band_width(partition, cfg.partition.seam_band))
    assert int(movable.sum()) == info["seam_anchors"]
    assert torch.equal(model.field.positions, plain.positions)
    assert not (model.field.slot_mask & ~plain.slot_mask).any()  # the refinement turns no slot on
    # the merge's cut still holds: every kept Gaussian centre lies in its own block's cell
    source = torch.repeat_interleave(torch.arange(len(blocks)), torch.tensor(model.info["anchors_per_block"]))
    owner = owner_of(model.field.slot_means(), partition)  # [N, K]
    assert not (model.field.slot_mask & (owner != source[:, None])).any()
    assert info["dropped_slots"] == int((plain.slot_mask & ~model.field.slot_mask).sum())
    changed = np.zeros(plain.n_anchors, dtype=bool)
    for name, param in plain.params().items():
        new = model.field.params()[name].detach()
        assert torch.equal(new[~movable], param.detach()[~movable]), name
        changed |= (new != param.detach()).reshape(plain.n_anchors, -1).any(dim=1).numpy()
    assert changed[movable.numpy()].any()
    # and it is what refine_seams makes of the plain merge with the run's settings and seed, bit for bit
    scene = scene_loader(cfg)
    views = {i: camera_view(scene.cameras[i], "cpu", i) for i in scene.train_ids}
    pc = cfg.partition
    scale = spatial_scale(scene, scene.train_ids)
    refine_seams(
        plain, model.decoder, scene, views, partition, cfg.train, scale, pc.seam_steps, pc.seam_band,
        cfg.train.seed,
    )  # fmt: skip
    assert torch.equal(model.field.slot_mask, plain.slot_mask)
    for name, param in plain.params().items():
        assert torch.equal(model.field.params()[name], param), name
