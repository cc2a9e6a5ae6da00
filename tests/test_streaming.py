"""Streaming the browser's splats: which level of each chunk a camera gets (viewer/streaming.py), and the
chunks cut from baked Gaussians (viewer/chunks.py)."""

import numpy as np
import pytest
import torch
from momentumgs_viewer.chunks import grid_cells, make_chunks
from momentumgs_viewer.streaming import NOT_SHOWN, ChunkLevels, select_levels, selected_count

from momentumgs.export.gaussians import BakedGaussians


def row_of_chunks(n: int = 10, size: float = 10.0) -> ChunkLevels:
    """n chunks of 1000 / 250 / 60 splats in a row along x, `size` apart; errors 0 / 1 / 4."""
    lo = np.array([[i * size, 0.0, 0.0] for i in range(n)])
    return ChunkLevels(
        counts=np.tile([1000, 250, 60], (n, 1)),
        errors=np.tile([0.0, 1.0, 4.0], (n, 1)),
        lo=lo,
        hi=lo + size,
    )


def test_the_budget_is_never_exceeded():
    chunks = row_of_chunks()
    for budget in (0, 59, 60, 500, 601, 1234, 3000, 9999):
        for x in (-50.0, 0.0, 33.0, 95.0, 300.0):
            levels = select_levels(chunks, (x, 5.0, 5.0), budget)
            assert selected_count(chunks, levels) <= budget


def test_a_budget_above_the_model_gives_full_detail_everywhere():
    chunks = row_of_chunks()
    levels = select_levels(chunks, (0.0, 5.0, 5.0), chunks.total)
    assert (levels == 0).all()
    assert selected_count(chunks, levels) == chunks.total


def test_nearer_chunks_get_finer_levels():
    chunks = row_of_chunks()
    levels = select_levels(chunks, (-5.0, 5.0, 5.0), 3000)  # left of chunk 0
    assert levels[0] == 0 and levels[-1] == 2
    assert (np.diff(levels) >= 0).all(), levels  # never finer farther away


def test_moving_the_camera_changes_the_choice():
    chunks = row_of_chunks()
    left = select_levels(chunks, (-5.0, 5.0, 5.0), 3000)
    right = select_levels(chunks, (105.0, 5.0, 5.0), 3000)
    assert (left != right).any()
    assert (right == left[::-1]).all()  # the row seen from its other end


def test_chunks_behind_the_camera_come_after_those_in_front():
    chunks = row_of_chunks()
    middle = (50.0, 5.0, 5.0)  # between chunk 4 and 5
    looking_right = select_levels(chunks, middle, 3000, forward=(1.0, 0.0, 0.0))
    looking_left = select_levels(chunks, middle, 3000, forward=(-1.0, 0.0, 0.0))
    assert looking_right[6] < looking_right[3] and looking_left[3] < looking_left[6]


def test_a_budget_below_the_coarsest_levels_leaves_out_the_farthest_chunks():
    chunks = row_of_chunks()
    levels = select_levels(chunks, (-5.0, 5.0, 5.0), 200)  # 3 coarse chunks of 60
    assert list(levels[:3]) == [2, 2, 2] and (levels[3:] == NOT_SHOWN).all()


def test_the_selection_is_deterministic_with_equal_chunks():
    chunks = row_of_chunks()
    a = select_levels(chunks, (50.0, 5.0, 5.0), 1777)
    b = select_levels(chunks, (50.0, 5.0, 5.0), 1777)
    assert (a == b).all()


def test_grid_cells_split_the_ground_plan():
    rng = np.random.default_rng(0)
    means = rng.uniform(0, 1, (4000, 3)) * np.array([100.0, 1.0, 50.0])
    cells = grid_cells(means, target=1000)  # 2 x 2
    assert len(np.unique(cells)) == 4
    assert len(np.unique(grid_cells(means, target=10_000))) == 1


def test_chunks_of_baked_gaussians_keep_every_gaussian_at_full_detail():
    gen = torch.Generator().manual_seed(0)
    n = 3000
    g = BakedGaussians(
        means=torch.rand(n, 3, generator=gen) * torch.tensor([40.0, 1.0, 40.0]),
        quats=torch.nn.functional.normalize(torch.randn(n, 4, generator=gen), dim=1),
        scales=torch.rand(n, 3, generator=gen) * 0.3 + 0.01,
        opacities=torch.rand(n, generator=gen),
        sh=torch.randn(n, 1, 3, generator=gen),
        info={},
    )
    chunks = make_chunks(g, target=800)
    levels = chunks.levels
    assert levels.n_chunks == 4 and levels.total == n
    assert (np.diff(levels.counts, axis=1) <= 0).all() and (np.diff(levels.errors, axis=1) >= 0).all()
    assert (levels.errors[:, 0] == 0).all()
    for c in range(levels.n_chunks):
        for level in range(levels.counts.shape[1]):
            assert len(chunks.arrays(c, level)["centers"]) == levels.counts[c, level]
    assert (levels.lo <= levels.hi).all()


def test_view_takes_a_splat_budget():
    from momentumgs.cli import _view_options, build_parser
    from momentumgs.errors import UserError

    def options(*extra):
        return _view_options(build_parser().parse_args(["view", "run", "--port", "0", *extra]), "cpu")

    assert options().splat_budget == 1_000_000
    assert options("--splats", "--splat-budget", "5000").splat_budget == 5000
    with pytest.raises(UserError, match="--splat-budget 0"):
        options("--splat-budget", "0")


def test_a_moving_camera_chooses_again_only_after_a_real_move_or_turn():
    from momentumgs_viewer.streaming import moved_enough

    ahead = np.array([0.0, 0.0, 1.0])
    start = (np.zeros(3), ahead)
    assert moved_enough(None, start, 100.0)
    assert not moved_enough(start, (np.array([1.0, 0.0, 0.0]), ahead), 100.0)  # 1 % of the extent
    assert moved_enough(start, (np.array([3.0, 0.0, 0.0]), ahead), 100.0)
    turned = np.array([np.sin(np.radians(20)), 0.0, np.cos(np.radians(20))])
    assert moved_enough(start, (np.zeros(3), turned), 100.0)
    assert not moved_enough(start, (np.zeros(3), np.array([0.05, 0.0, 1.0])), 100.0)
