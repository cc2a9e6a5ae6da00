"""The merge of trained blocks (momentumgs/merge.py): by neural Gaussian (the default) every slot whose centre
lies in a block's cell is kept exactly once, and nothing decodes a masked slot (render, bake, densify, files);
by anchor, the anchors in each cell with all their slots."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_export import ring_cameras, tiny_model

from momentumgs.config import load_config
from momentumgs.errors import ConfigError
from momentumgs.export.bake import bake
from momentumgs.merge import merge_blocks, owner_of
from momentumgs.model.anchors import AnchorField
from momentumgs.model.decoder import decode, gather_anchors
from momentumgs.model.densify import add_anchors, remove_anchors
from momentumgs.model.store import AnchorModel, load_model, save_model
from momentumgs.partition import Block, Partition


def two_block_partition() -> Partition:
    """Two cells side by side along x, split at x = 0 (the AABB's middle)."""
    blocks = []
    for b in range(2):
        lo, hi = np.array([0.5 * b, 0, 0]), np.array([0.5 * (b + 1), 1, 1])
        none = np.zeros(0, np.int64)
        blocks.append(Block(b, (b, 0, 0), lo, hi, None, None, none, none, 0))
    return Partition(np.array([-1.0, -1, -1, 1, 1, 1]), "+z", (2, 1, 1), 0.1, "center", blocks)


def block_fields(seed: int = 0) -> dict[int, AnchorField]:
    """Two overlapping blocks' fields (x in [-1, 0.3] and [-0.3, 1]) with offsets that cross the border."""
    fields = {}
    for b, shift in enumerate((-0.35, 0.35)):
        field = tiny_model(seed + b).field
        with torch.no_grad():
            field.positions = field.positions * torch.tensor([0.65, 1, 1]) + torch.tensor([shift, 0, 0])
        fields[b] = field
    return fields


def test_merging_by_gaussian_keeps_every_slot_inside_its_cell_once():
    part, fields = two_block_partition(), block_fields()
    merged, counts = merge_blocks(fields, part, "gaussians")
    assert sum(counts) == merged.n_anchors and merged.slot_mask is not None
    source = torch.repeat_interleave(torch.arange(2), torch.tensor(counts))  # [N] block of each merged anchor
    owner = owner_of(merged.slot_means(), part)  # [N, K]
    assert torch.equal(merged.slot_mask, owner == source[:, None])
    assert merged.slot_mask.any(dim=1).all()  # no anchor without a slot
    for b, field in fields.items():  # each block's in-cell slots, all of them and no other
        in_cell = owner_of(field.slot_means(), part) == b
        assert int(merged.slot_mask[source == b].sum()) == int(in_cell.sum())
    # the slots cross the border: some kept anchors lie outside their block's cell, some are cut
    assert (owner_of(merged.positions, part) != source).any()
    assert not merged.slot_mask.all()


def test_merging_by_anchor_keeps_the_anchors_in_each_cell():
    part, fields = two_block_partition(), block_fields()
    merged, counts = merge_blocks(fields, part, "anchors")
    source = torch.repeat_interleave(torch.arange(2), torch.tensor(counts))
    assert merged.slot_mask is None
    assert torch.equal(owner_of(merged.positions, part), source)
    assert sum(counts) < sum(f.n_anchors for f in fields.values())
    with pytest.raises(ConfigError, match="partition.merge: expected one of gaussians, anchors"):
        load_config(None, ["partition.merge=voxels"])  # the schema checks the rule


def test_decode_never_keeps_a_masked_slot():
    model = tiny_model()
    field = model.field
    full = decode(model.decoder, gather_anchors(field), torch.tensor([3.0, 0, 1]))
    gen = torch.Generator().manual_seed(2)
    field.slot_mask = torch.rand(field.offsets.shape[:2], generator=gen) < 0.5
    masked = decode(model.decoder, gather_anchors(field), torch.tensor([3.0, 0, 1]))
    assert torch.equal(masked.keep, full.keep & field.slot_mask.reshape(-1))
    assert 0 < masked.means.shape[0] < full.means.shape[0]
    kept_in_full = torch.isin(full.kept, masked.kept)
    assert torch.equal(full.colors[kept_in_full], masked.colors)
    # a subset of the anchors gathers the matching rows of the mask
    ids = torch.tensor([4, 0, 7])
    assert torch.equal(gather_anchors(field, ids).slot_mask, field.slot_mask[ids])


def test_bake_drops_masked_slots():
    model, cams = tiny_model(), ring_cameras()
    before = bake(model, cams, sh_degree=0, n_directions=0)
    model.field.slot_mask = torch.zeros(model.field.offsets.shape[:2], dtype=torch.bool)
    model.field.slot_mask[::2] = True  # every other anchor keeps its slots
    after = bake(model, cams, sh_degree=0, n_directions=0)
    slot_means = model.field.slot_means()  # [N, K, 3]
    source = (after.means[:, None, None] == slot_means[None]).all(-1)  # [M, N, K]
    assert source.any(dim=(1, 2)).all()  # every baked Gaussian is a slot
    assert model.field.slot_mask[source.any(dim=0)].all()  # and an allowed one
    assert 0 < after.count < before.count


def test_slot_mask_survives_files_and_anchor_growth(tmp_path):
    part, fields = two_block_partition(), block_fields()
    merged, _ = merge_blocks(fields, part)
    model = tiny_model()
    save_model(tmp_path / "m.ckpt", AnchorModel(merged, model.decoder, model.spec, {}))
    loaded = load_model(tmp_path / "m.ckpt").field
    assert torch.equal(loaded.slot_mask, merged.slot_mask)
    bad = merged.state_dict()
    bad["slot_mask"] = bad["slot_mask"][:, :2]
    with pytest.raises(ValueError, match="'slot_mask'"):
        AnchorField.from_state_dict(bad)

    # growing and pruning keep the mask row-aligned with the anchors; new anchors decode every slot
    grown = block_fields(5)[0]
    n, k = loaded.n_anchors, loaded.n_offsets
    add_anchors(loaded, grown, None)
    assert loaded.slot_mask.shape == (n + grown.n_anchors, k) and loaded.slot_mask[n:].all()
    keep = torch.arange(loaded.n_anchors) % 3 != 0
    expected = loaded.slot_mask[keep]
    remove_anchors(loaded, keep, None)
    assert torch.equal(loaded.slot_mask, expected)


@pytest.mark.slow
@pytest.mark.tools
def test_merge_rules_tool_measures_both_rules_on_the_runs_own_blocks(finished_run):
    """tools/merge_rules.py re-merges a finished run: its default rule reproduces the run's own model and
    evaluation; the other rule is measured on the same blocks."""
    tool = Path(__file__).resolve().parent.parent / "tools" / "merge_rules.py"
    proc = subprocess.run(
        [sys.executable, str(tool), str(finished_run)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(line[5:]) for line in proc.stdout.splitlines() if line.startswith("JSON ")]
    runs = {r["rule"]: r for r in records if r["kind"] == "run"}
    assert sorted(runs) == ["anchors", "gaussians"]
    own = load_model(finished_run / "model.ckpt").field
    evaluated = json.loads((finished_run / "eval" / "eval_test.json").read_text())
    assert runs["gaussians"]["anchors"] == own.n_anchors
    assert runs["gaussians"]["slots"] == int(own.slot_mask.sum())
    assert runs["gaussians"]["psnr"] == pytest.approx(evaluated["means"]["psnr"], abs=1e-4)
    assert runs["anchors"]["slots"] == runs["anchors"]["anchors"] * own.n_offsets  # no mask
    for r in runs.values():
        assert all(math.isfinite(r[k]) and r[k] > 5 for k in ("psnr", "psnr_border", "psnr_interior"))
    (difference,) = [r for r in records if r["kind"] == "difference"]
    assert difference["psnr"]["mean"] == pytest.approx(runs["gaussians"]["psnr"] - runs["anchors"]["psnr"])
    assert "| gaussians − anchors |" in proc.stdout
