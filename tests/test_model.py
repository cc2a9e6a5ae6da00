"""Anchor field, decoder + momentum teacher, prefilter, densification and optimizer surgery."""

from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from momentumgs.config import load_config
from momentumgs.data.scene import Camera
from momentumgs.errors import ConfigError
from momentumgs.model import (
    AnchorField,
    DensifyOptions,
    DensifyStats,
    GaussianDecoder,
    MomentumTeacher,
    adjust_anchors,
    anchor_radii,
    choose_voxel_size,
    consistency_loss,
    decode,
    extend_params,
    gather_anchors,
    grow_anchors,
    init_anchors_from_points,
    keep_rows,
    prune_mask,
    visible_anchor_mask,
    voxelize,
)
from momentumgs.model.decoder import ConsistencyTerms, VisibleAnchors
from momentumgs.model.densify import AnchorDensifier, ScaffoldDensifier


def _field(positions, features=None, offsets=None, log_scales=None, k=4, feat_dim=8, voxel=1.0):
    positions = torch.as_tensor(positions, dtype=torch.float32)
    n = positions.shape[0]
    return AnchorField(
        positions=positions,
        features=nn.Parameter(torch.zeros(n, feat_dim) if features is None else features),
        offsets=nn.Parameter(torch.zeros(n, k, 3) if offsets is None else offsets),
        log_scales=nn.Parameter(torch.zeros(n, 6) if log_scales is None else log_scales),
        voxel_size=voxel,
    )


# --- anchors -----------------------------------------------------------------------------------


def test_voxelize_counts_and_centres_on_grid():
    g = torch.Generator().manual_seed(0)
    eps = 0.5
    cells = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 2, -1], [-3, 1, 4]])
    # 50 points per cell, jittered by less than half a voxel
    pts = cells.repeat_interleave(50, 0).float() * eps + (torch.rand(200, 3, generator=g) - 0.5) * 0.9 * eps
    centres = voxelize(pts, eps)
    assert centres.shape == (4, 3)
    idx = centres / eps
    assert torch.allclose(idx, idx.round(), atol=1e-5)  # on the grid
    assert {tuple(c) for c in idx.round().long().tolist()} == {tuple(c) for c in cells.tolist()}


def test_init_scale_is_log_rms_distance_to_3_nearest():
    g = torch.Generator().manual_seed(1)
    pts = torch.rand(300, 3, generator=g) * 4.0
    field = init_anchors_from_points(pts, voxel_size=0.05, n_offsets=5, feat_dim=6)
    x = field.positions.double()
    d2 = torch.cdist(x, x).pow(2)
    d2.fill_diagonal_(float("inf"))
    expected = torch.log(d2.topk(3, largest=False).values.mean(1).sqrt())  # brute force
    assert field.log_scales.shape == (x.shape[0], 6)
    assert torch.allclose(field.log_scales.double(), expected[:, None].expand(-1, 6), atol=1e-5)
    assert field.offsets.shape == (x.shape[0], 5, 3) and not field.offsets.any()
    assert field.features.shape == (x.shape[0], 6) and not field.features.any()
    assert not field.positions.requires_grad


def test_choose_voxel_size_is_median_point_spacing():
    grid = torch.stack(torch.meshgrid(*[torch.arange(6.0)] * 3, indexing="ij"), -1).reshape(-1, 3)
    assert choose_voxel_size(grid * 0.1) == pytest.approx(0.1, rel=1e-6)
    # an automatic voxel on a jittered grid keeps about one anchor per grid point
    g = torch.Generator().manual_seed(2)
    jittered = grid * 0.1 + (torch.rand(grid.shape, generator=g) - 0.5) * 0.02
    field = init_anchors_from_points(jittered, voxel_size=0)
    assert 0.09 < field.voxel_size < 0.11
    assert 0.8 * len(grid) < field.n_anchors <= len(grid)


def test_anchor_state_dict_round_trip():
    field = init_anchors_from_points(torch.rand(50, 3), voxel_size=0.1)
    with torch.no_grad():
        field.features.normal_()
    buf = io.BytesIO()
    torch.save(field.state_dict(), buf)
    buf.seek(0)
    back = AnchorField.from_state_dict(torch.load(buf, weights_only=True))
    for name in ("positions", "features", "offsets", "log_scales"):
        assert torch.equal(getattr(back, name), getattr(field, name))
    assert back.voxel_size == field.voxel_size
    assert isinstance(back.features, nn.Parameter)


# --- decoder -----------------------------------------------------------------------------------


def test_decoder_parameter_count():
    dec = GaussianDecoder()
    n = sum(p.numel() for p in dec.parameters())
    assert n == 3 * (35 * 32 + 32) + (32 * 10 + 10) + (32 * 30 + 30) + (32 * 70 + 70)
    assert 7000 < n < 7200  # "about 7.1k"
    with_dist = sum(p.numel() for p in GaussianDecoder(use_distance=True).parameters())
    assert with_dist == n + 3 * 32
    app = GaussianDecoder(appearance_dim=16, appearance_count=5)
    assert sum(p.numel() for p in app.parameters()) == n + 16 * 32 + 5 * 16
    gains = GaussianDecoder(appearance_dim=3, appearance_count=5, appearance_mode="exposure")
    assert sum(p.numel() for p in gains.parameters()) == n + 5 * 3  # the MLPs stay as without a table


def _manual_mlp(seq: nn.Sequential, z: torch.Tensor) -> torch.Tensor:
    w1, b1, w2, b2 = seq[0].weight, seq[0].bias, seq[2].weight, seq[2].bias
    return torch.clamp(z @ w1.T + b1, min=0) @ w2.T + b2


def _tiny_setup(seed=0, k=4, feat=8, n=3):
    torch.manual_seed(seed)
    dec = GaussianDecoder(feat_dim=feat, n_offsets=k, hidden_dim=16)
    with torch.no_grad():  # half the slots on, half off, whatever the input
        dec.mlp_opacity[2].bias.copy_(torch.tensor([4.0, -4.0] * (k // 2)))
        dec.mlp_opacity[2].weight.mul_(0.01)
    field = _field(
        torch.randn(n, 3),
        features=torch.randn(n, feat),
        offsets=torch.randn(n, k, 3),
        log_scales=torch.randn(n, 6) * 0.3,
        k=k,
        feat_dim=feat,
    )
    return dec, field


def test_decode_matches_hand_computation():
    k = 4
    dec, field = _tiny_setup(k=k)
    cam = torch.tensor([0.5, -2.0, 3.0])
    out = decode(dec, gather_anchors(field, torch.tensor([True, False, True])), cam)

    ids = [0, 2]
    means, quats, scales, opac, cols, keep, parent = [], [], [], [], [], [], []
    with torch.no_grad():
        for local, a in enumerate(ids):
            d = field.positions[a] - cam
            z = torch.cat([field.features[a], d / torch.sqrt((d * d).sum())])[None]
            alpha = torch.tanh(_manual_mlp(dec.mlp_opacity, z))[0]
            col = torch.sigmoid(_manual_mlp(dec.mlp_color, z))[0].view(k, 3)
            r = _manual_mlp(dec.mlp_cov, z)[0].view(k, 7)
            for j in range(k):
                keep.append(bool(alpha[j] > 0))
                if not keep[-1]:
                    continue
                q = r[j, 3:]
                means.append(field.positions[a] + field.offsets[a, j] * torch.exp(field.log_scales[a, :3]))
                quats.append(q / torch.sqrt((q * q).sum()))
                scales.append(torch.exp(field.log_scales[a, 3:]) / (1 + torch.exp(-r[j, :3])))
                opac.append(alpha[j])
                cols.append(col[j])
                parent.append(local)
    assert keep == [True, False] * k  # the bias pattern
    assert out.keep.tolist() == keep
    assert out.anchor_ids.tolist() == ids
    assert out.parent.tolist() == parent
    assert out.slot_ids.tolist() == [a * k + j for a in ids for j in range(k) if j % 2 == 0]
    for got, want in [
        (out.means, means),
        (out.quats, quats),
        (out.scales, scales),
        (out.opacities, opac),
        (out.colors, cols),
    ]:
        assert torch.allclose(got, torch.stack(want), atol=1e-6)
    assert out.raw_opacity.shape == (2, k)
    assert torch.all(out.opacities > 0)


def test_appearance_embedding_changes_colour_only():
    torch.manual_seed(0)
    dec = GaussianDecoder(feat_dim=8, n_offsets=4, hidden_dim=16, appearance_dim=3, appearance_count=2)
    with torch.no_grad():
        dec.appearance.weight.copy_(torch.tensor([[1.0, 0, 0], [0, -2.0, 5.0]]))
    _, field = _tiny_setup(k=4)
    anchors = gather_anchors(field)
    cam = torch.zeros(3)
    a, b = decode(dec, anchors, cam, appearance=0), decode(dec, anchors, cam, appearance=1)
    assert torch.equal(a.raw_opacity, b.raw_opacity) and torch.equal(a.scales, b.scales)
    assert not torch.allclose(a.colors, b.colors)
    with pytest.raises(ValueError, match="pass an appearance"):
        decode(dec, anchors, cam)


def test_exposure_rows_scale_each_colour_channel_by_the_photos_gain():
    torch.manual_seed(0)
    plain = GaussianDecoder(feat_dim=8, n_offsets=4, hidden_dim=16)
    torch.manual_seed(0)
    dec = GaussianDecoder(
        feat_dim=8,
        n_offsets=4,
        hidden_dim=16,
        appearance_dim=3,
        appearance_count=2,
        appearance_mode="exposure",
    )
    # the table draws nothing from the random stream: the MLPs start as those of a decoder without one
    assert all(
        torch.equal(a, b) for a, b in zip(plain.parameters(), list(dec.parameters())[:-1], strict=True)
    )
    log_gain = torch.tensor([0.3, -0.2, 0.0])
    with torch.no_grad():
        dec.appearance.weight[1] = log_gain
    _, field = _tiny_setup(k=4)
    anchors = gather_anchors(field)
    cam = torch.zeros(3)
    neutral, photo = decode(dec, anchors, cam, appearance=0), decode(dec, anchors, cam, appearance=1)
    assert torch.equal(neutral.colors, decode(plain, anchors, cam).colors)  # a zero row is no change
    assert torch.allclose(photo.colors, neutral.colors * torch.exp(log_gain), atol=1e-6)
    assert torch.equal(neutral.raw_opacity, photo.raw_opacity) and torch.equal(neutral.scales, photo.scales)
    with pytest.raises(ValueError, match="rows of 3 log-gains"):
        GaussianDecoder(appearance_dim=4, appearance_count=2, appearance_mode="exposure")


def test_teacher_ema_closed_form_and_m0():
    torch.manual_seed(0)
    student = GaussianDecoder(feat_dim=8, n_offsets=4, hidden_dim=16)
    teacher = MomentumTeacher(student)
    assert all(not p.requires_grad for p in teacher.module.parameters())
    theta0 = [p.detach().clone() for p in teacher.module.parameters()]
    m, history = 0.9, []
    for _ in range(3):
        with torch.no_grad():
            for p in student.parameters():
                p.add_(torch.randn_like(p))
        history.append([p.detach().clone() for p in student.parameters()])
        teacher.update(student, m)
    for i, p_t in enumerate(teacher.module.parameters()):
        # theta_3 = m^3 theta_0 + (1 - m) (m^2 s_1 + m s_2 + s_3)
        want = m**3 * theta0[i] + (1 - m) * (m**2 * history[0][i] + m * history[1][i] + history[2][i])
        assert torch.allclose(p_t, want, atol=1e-6)
        assert not torch.allclose(p_t, history[2][i])
    teacher.update(student, 0.0)
    for p_t, p_s in zip(teacher.module.parameters(), student.parameters(), strict=True):
        assert torch.equal(p_t, p_s)


def test_consistency_loss_zero_for_equal_positive_otherwise():
    dec, field = _tiny_setup()
    teacher = MomentumTeacher(dec)
    anchors, cam = gather_anchors(field), torch.tensor([0.0, 0.0, -5.0])
    s = decode(dec, anchors, cam)
    t = decode(teacher.module, anchors, cam, keep=s.keep)
    assert consistency_loss(s, t).item() == 0.0
    with torch.no_grad():
        for p in dec.parameters():
            p.add_(0.05 * torch.randn_like(p))
    s = decode(dec, anchors, cam)
    t = decode(teacher.module, anchors, cam, keep=s.keep)
    loss = consistency_loss(s, t)
    want = sum(
        ((a - b) ** 2).mean()
        for a, b in [(s.colors, t.colors), (s.quats, t.quats), (s.scales, t.scales)]
        + [(s.raw_opacity, t.raw_opacity)]
    )
    assert loss.item() > 0
    assert torch.allclose(loss, want)
    # the opacity term covers all V*K raw outputs: changing a dropped slot of the teacher counts
    dropped = int((~s.keep).nonzero()[0, 0])
    raw = t.raw_opacity.detach().clone().view(-1)
    raw[dropped] += 0.5
    t2 = dataclasses.replace(t, raw_opacity=raw.view_as(t.raw_opacity))
    extra = ((s.raw_opacity - t2.raw_opacity) ** 2).mean() - ((s.raw_opacity - t.raw_opacity) ** 2).mean()
    assert extra > 1e-3
    assert torch.allclose(consistency_loss(s, t2) - loss, extra)
    with pytest.raises(ValueError, match="keep mask"):
        consistency_loss(s, decode(teacher.module, anchors, cam, keep=~s.keep))


def _lagging_teacher():
    """The tiny setup's decoder and field, and a teacher the decoder has since moved away from."""
    dec, field = _tiny_setup()
    teacher = MomentumTeacher(dec)
    with torch.no_grad():
        for p in dec.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return dec, field, teacher


def _student_and_lagging_teacher():
    """Student Gaussians of the tiny setup and the teacher's, after the student moved away from it."""
    dec, field, teacher = _lagging_teacher()
    anchors, cam = gather_anchors(field), torch.tensor([0.0, 0.0, -5.0])
    s = decode(dec, anchors, cam)
    return s, decode(teacher.module, anchors, cam, keep=s.keep)


def test_consistency_opacity_over_kept_slots_ignores_dropped_ones():
    s, t = _student_and_lagging_teacher()
    kept = consistency_loss(s, t, ConsistencyTerms(opacity_slots="kept"))
    want = sum(
        ((a - b) ** 2).mean() for a, b in [(s.colors, t.colors), (s.quats, t.quats), (s.scales, t.scales)]
    )
    want = want + ((s.raw_opacity.view(-1)[s.keep] - t.raw_opacity.view(-1)[s.keep]) ** 2).mean()
    assert 0 < s.kept.numel() < s.keep.numel()
    assert torch.allclose(kept, want)
    # a teacher that differs only on a dropped slot changes the paper's loss, not this one
    dropped = int((~s.keep).nonzero()[0, 0])
    raw = t.raw_opacity.detach().clone().view(-1)
    raw[dropped] += 0.5
    t2 = dataclasses.replace(t, raw_opacity=raw.view_as(t.raw_opacity))
    assert torch.equal(consistency_loss(s, t2, ConsistencyTerms(opacity_slots="kept")), kept)
    with pytest.raises(ConfigError, match="experimental.consistency_opacity: expected one of all, kept"):
        load_config(None, ["experimental.consistency_opacity=some"])  # the schema checks the choice


def test_consistency_covariance_term_ignores_rotations_the_image_cannot_see():
    s, t = _student_and_lagging_teacher()
    cov = ConsistencyTerms(shape="covariance")

    def covariance(q, scales):  # R diag(s^2) R^T by hand, from the rotation matrix of the unit quaternion
        w, x, y, z = torch.nn.functional.normalize(q, dim=-1).unbind(-1)
        R = torch.stack(
            [
                1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
            ],
            dim=-1,
        ).view(-1, 3, 3)  # fmt: skip
        full = R @ torch.diag_embed(scales**2) @ R.transpose(1, 2)
        return full[:, [0, 0, 0, 1, 1, 2], [0, 1, 2, 1, 2, 2]]  # upper triangle

    want = (
        ((s.colors - t.colors) ** 2).mean()
        + ((covariance(s.quats, s.scales) - covariance(t.quats, t.scales)) ** 2).mean()
        + ((s.raw_opacity - t.raw_opacity) ** 2).mean()
    )
    assert torch.allclose(consistency_loss(s, t, cov), want)
    # a round Gaussian turned by the teacher: the paper's quaternion term sees it, the covariance term not
    round_s = dataclasses.replace(s, scales=torch.full_like(s.scales, 0.1))
    turned = dataclasses.replace(
        t,
        colors=s.colors,
        raw_opacity=s.raw_opacity,
        quats=torch.roll(s.quats, 1, dims=1),
        scales=round_s.scales,
    )
    assert consistency_loss(round_s, turned, cov).item() == pytest.approx(0.0, abs=1e-12)
    assert consistency_loss(round_s, turned).item() > 1e-3
    with pytest.raises(ConfigError, match="experimental.consistency_shape: expected one of quaternion, cov"):
        load_config(None, ["experimental.consistency_shape=euler"])  # the schema checks the choice


def test_consistency_weight_ramps_over_the_blocks_iterations():
    from momentumgs.train.losses import consistency_weight

    assert [consistency_weight(i, 1000, 50.0, [0.0, 0.0]) for i in (0, 1, 999)] == [50.0, 50.0, 50.0]
    ramp = [0.2, 0.6]  # 0 until 200, full from 600
    got = [consistency_weight(i, 1000, 10.0, ramp) for i in (0, 199, 200, 300, 500, 600, 999)]
    assert got == pytest.approx([0.0, 0.0, 0.0, 2.5, 7.5, 10.0, 10.0])


def test_consistency_gradient_reaches_anchors_through_teacher():
    dec, field, teacher = _lagging_teacher()
    cam = torch.tensor([0.0, 0.0, -5.0])
    live = gather_anchors(field)
    frozen = VisibleAnchors(
        live.ids, live.positions, live.features.detach(), live.offsets.detach(), live.log_scales.detach()
    )
    s = decode(dec, frozen, cam)  # the student side carries no gradient to the anchors
    t = decode(teacher.module, live, cam, keep=s.keep)
    consistency_loss(s, t).backward()
    assert field.features.grad is not None and field.features.grad.abs().sum() > 0
    assert field.log_scales.grad is not None and field.log_scales.grad[:, 3:].abs().sum() > 0
    assert all(p.grad is None for p in teacher.module.parameters())


def test_decode_targets_equal_the_teachers_full_decode_with_the_students_mask():
    from momentumgs.model.decoder import decode_targets

    dec, field = _tiny_setup(k=4, n=6)
    teacher = MomentumTeacher(dec)
    with torch.no_grad():
        for p in teacher.module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    cam = torch.tensor([0.3, -0.2, -5.0])
    losses, grads = [], []
    for slim in (False, True):
        field.features.grad = None
        anchors = gather_anchors(field)
        student = decode(dec, anchors, cam)
        if slim:
            target = decode_targets(teacher.module, anchors, cam, student)
        else:
            target = decode(teacher.module, anchors, cam, keep=student.keep)
        loss = consistency_loss(student, target)
        loss.backward()
        losses.append(loss.detach())
        grads.append(field.features.grad.clone())
    assert 0 < student.kept.numel() < student.keep.numel()
    assert torch.equal(losses[0], losses[1]) and losses[0] > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)


# --- prefilter ---------------------------------------------------------------------------------


def _camera(viewmat=None, w=64, h=48, f=50.0):
    K = np.array([[f, 0, 30.0], [0, f, 26.0], [0, 0, 1]])
    return Camera("x.png", K, np.eye(4) if viewmat is None else viewmat, w, h, Path("x.png"))


def test_prefilter_behind_outside_inside():
    cam = _camera()
    pts = torch.tensor(
        [
            [0.0, 0.0, 5.0],  # inside
            [0.0, 0.0, -5.0],  # behind
            [0.0, 0.0, 0.1],  # in front of the camera but before the near plane
            [10.0, 0.0, 5.0],  # u = 130 > 64
            [0.0, -6.0, 5.0],  # v = -34 < 0
            [3.6, 0.0, 5.0],  # u = 66, just right of the image
        ]
    )
    mask = visible_anchor_mask(pts, cam.viewmat, cam.K, cam.width, cam.height)
    assert mask.tolist() == [True, False, False, False, False, False]
    wide = visible_anchor_mask(pts, cam.viewmat, cam.K, cam.width, cam.height, margin=120)
    assert wide.tolist() == [True, False, False, True, True, True]


def test_prefilter_agrees_with_camera_projection():
    rng = np.random.default_rng(0)
    a = 0.4
    R = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    viewmat = np.eye(4)
    viewmat[:3, :3], viewmat[:3, 3] = R, [0.3, -0.2, 2.0]
    cam = _camera(viewmat)
    pts = rng.uniform(-6, 6, size=(2000, 3))
    uv, depth = cam.project(pts)
    want = (depth > 0.2) & (uv[:, 0] > 0) & (uv[:, 0] < 64) & (uv[:, 1] > 0) & (uv[:, 1] < 48)
    got = visible_anchor_mask(torch.tensor(pts), cam.viewmat, cam.K, 64, 48).numpy()
    assert 20 < want.sum() < 1980  # the test set has both kinds
    assert np.array_equal(got, want)


def test_prefilter_radius_keeps_anchor_whose_gaussians_reach_the_image():
    cam = _camera()
    # an anchor 10 px right of the image whose offsets reach back into it
    x = (64 + 10 - 30) / 50 * 4.0
    offsets = torch.zeros(1, 2, 3)
    offsets[0, 1, 0] = -1.0
    log_scales = torch.tensor([[0.0, 0.0, 0.0, -4.0, -4.0, -4.0]])
    pos = torch.tensor([[x, 0.0, 4.0]])
    mean_u = 50 * (x - 1.0) / 4.0 + 30  # the second neural Gaussian's mean is inside
    assert 0 < mean_u < 64
    assert not visible_anchor_mask(pos, cam.viewmat, cam.K, 64, 48)[0]
    radii = anchor_radii(offsets, log_scales)
    assert visible_anchor_mask(pos, cam.viewmat, cam.K, 64, 48, radii=radii)[0]


def test_anchor_radii_bound_the_neural_gaussians():
    g = torch.Generator().manual_seed(0)
    offsets, log_scales = torch.randn(20, 5, 3, generator=g), torch.randn(20, 6, generator=g)
    r = anchor_radii(offsets, log_scales, n_sigma=3.0)
    reach = (offsets * log_scales[:, None, :3].exp()).norm(dim=-1)  # [20, 5]
    assert torch.all(reach.max(1).values + 3 * log_scales[:, 3:].exp().max(1).values <= r + 1e-6)
    assert torch.all(reach <= r[:, None])


# --- densification -----------------------------------------------------------------------------


def test_densify_schedule_defaults():
    opt = DensifyOptions()
    assert opt.min_offset_visits == 10 and opt.min_anchor_visits == 20
    assert not opt.collects_stats(500) and opt.collects_stats(501) and not opt.collects_stats(30_000)
    assert opt.adjusts(525) and not opt.adjusts(510) and not opt.adjusts(500) and not opt.adjusts(30_000)


def test_stats_add_scales_gradient_and_counts_visits():
    dec, field = _tiny_setup(k=4)
    out = decode(dec, gather_anchors(field, torch.tensor([2, 0])), torch.zeros(3))
    m = out.means.shape[0]  # 4: slots 0 and 2 of anchors 2 and 0
    grad = torch.arange(2 * m, dtype=torch.float32).view(m, 2)
    visible = torch.tensor([True, True, False, True])
    stats = DensifyStats(field.n_anchors, 4)
    for _ in range(2):
        stats.add(out, grad, visible, width=64, height=48)
    slots = out.slot_ids.tolist()
    assert slots == [8, 10, 0, 2]
    for i, s in enumerate(slots):
        ndc = (grad[i, 0] * 32) ** 2 + (grad[i, 1] * 24) ** 2
        assert stats.grad_count[s] == (2 if visible[i] else 0)
        assert stats.grad_sum[s].item() == pytest.approx(2 * ndc.sqrt().item() if visible[i] else 0.0)
    assert stats.grad_count.sum() == 6
    assert stats.anchor_count.tolist() == [2, 0, 2]
    alpha = out.raw_opacity.detach().clamp(min=0).sum(1)
    assert torch.allclose(stats.opacity_sum[[2, 0]], 2 * alpha)
    before = stats.grad_sum.clone()
    stats.add(out, None, visible, width=64, height=48)  # no gradient: a zero-gradient visit
    assert stats.grad_count.sum() == 9 and torch.equal(stats.grad_sum, before)


def _growth_field():
    """Anchors A, B, C, D, E (voxel 1, K = 4, unit offset scale) whose slots point to chosen cells."""
    k = 4
    positions = torch.tensor([[0.0, 0, 0], [0.3, 0.2, 0], [1.0, 1, 0], [0, 0, 1], [9, 9, 9]])
    feats = torch.tensor([[1.0, -1, 0, 2], [5.0, 5, 5, 5], [0.0, 3, -2, 1], [7.0, 7, 7, 7], [8.0, 8, 8, 8]])
    target = torch.tensor(
        [
            [3.0, 0, 0],  # A -> an empty cell
            [0.0, 0, 0],  # B -> its own (occupied) cell
            [3.0, 0.2, 0],  # C -> the same empty cell as A
            [-3.0, 0, 0],  # D -> an empty cell, but too few visits
            [0.0, 5, 0],  # E -> an empty cell, but a low gradient
        ]
    )
    offsets = (target - positions)[:, None, :].expand(-1, k, -1).clone()
    return _field(positions, features=feats, offsets=offsets, k=k, feat_dim=4)


def _growth_stats(field):
    stats = DensifyStats(field.n_anchors, 4)
    stats.grad_count[:] = 20
    stats.grad_sum[:] = 20 * 0.001  # mean 0.001 >= 0.0002
    stats.grad_count[3 * 4 : 4 * 4] = 5  # D
    stats.grad_sum[3 * 4 : 4 * 4] = 5 * 0.001
    stats.grad_sum[4 * 4 :] = 20 * 0.0001  # E below threshold
    return stats


def test_grow_spawns_anchor_in_empty_cell_only():
    field = _growth_field()
    opts = DensifyOptions(levels=1, init_factor=1)
    new = grow_anchors(field, _growth_stats(field), opts, torch.Generator().manual_seed(0))
    assert new.count == 1
    assert new.positions.tolist() == [[3.0, 0.0, 0.0]]
    # the max of A's and C's features (8 coin flips at p = 1/2 each; seed 0 picks both)
    assert new.features.tolist() == [[1.0, 3.0, 0.0, 2.0]]
    assert not new.offsets.any() and new.offsets.shape == (1, 4, 3)
    assert torch.allclose(new.log_scales, torch.zeros(1, 6))  # log(cell = 1)


def test_grow_levels_use_finer_cells_and_never_duplicate():
    field = _growth_field()
    field.voxel_size = 0.25
    opts = DensifyOptions(levels=3, init_factor=16)  # cells 4, 1, 0.25
    new = grow_anchors(field, _growth_stats(field), opts, torch.Generator().manual_seed(3))
    again = grow_anchors(field, _growth_stats(field), opts, torch.Generator().manual_seed(3))
    assert new.count >= 1 and torch.equal(new.positions, again.positions)  # reproducible
    cells = new.log_scales[:, 0].exp()  # log-scale log(cell) tells each new anchor's level
    for c in (4.0, 1.0, 0.25):
        at_c = torch.isclose(cells, torch.tensor(c))
        assert torch.allclose(new.log_scales[at_c], torch.full((int(at_c.sum()), 6), math.log(c)))
        mine = torch.round(new.positions[at_c] / c)
        assert torch.allclose(new.positions[at_c] / c, mine, atol=1e-5)  # on the level's grid
        # cells that held an anchor before this level (original or coarser new ones) are skipped
        before = torch.cat([field.positions, new.positions[cells > c * 1.5]])
        hits = (torch.round(before / c)[:, None, :] == mine[None]).all(-1).sum(0)
        assert torch.all(hits == 0)
        assert torch.unique(mine, dim=0).shape[0] == mine.shape[0]
    assert (
        torch.isclose(cells, torch.tensor(4.0)).sum()
        + torch.isclose(cells, torch.tensor(1.0)).sum()
        + (torch.isclose(cells, torch.tensor(0.25)).sum())
        == new.count
    )


def test_prune_mask_low_opacity_mature_anchors():
    stats = DensifyStats(3, 4)
    stats.anchor_count[:] = torch.tensor([30.0, 30.0, 15.0])
    stats.opacity_sum[:] = torch.tensor([0.1, 1.0, 0.0])  # threshold 0.005 * 30 = 0.15
    assert prune_mask(stats, DensifyOptions()).tolist() == [True, False, False]


def test_adjust_keeps_field_stats_and_optimizer_aligned():
    field = _growth_field()
    with torch.no_grad():
        field.log_scales[:, 3:] = 0.5  # above the 0.05 clamp
    opt = torch.optim.Adam(list(field.params().values()), lr=0.01)
    for p in field.params().values():
        p.grad = torch.randn_like(p)
    opt.step()
    stats = _growth_stats(field)
    stats.anchor_count[:] = 30
    stats.opacity_sum[:] = 1.0
    stats.opacity_sum[4] = 0.0  # E is pruned
    moments_before = opt.state[field.features]["exp_avg"].clone()
    report = adjust_anchors(
        field, stats, opt, DensifyOptions(levels=1, init_factor=1), torch.Generator().manual_seed(0)
    )
    assert (report.grown, report.pruned) == (1, 1)
    assert field.n_anchors == 5 and stats.n_anchors == 5 and stats.grad_sum.shape == (20,)
    assert field.positions[-1].tolist() == [3.0, 0.0, 0.0]  # new anchor appended, E removed
    assert opt.param_groups[0]["params"][0] is field.features
    for p in field.params().values():
        st = opt.state[p]
        assert st["exp_avg"].shape == p.shape and st["exp_avg_sq"].shape == p.shape
    assert torch.equal(opt.state[field.features]["exp_avg"][:4], moments_before[:4])
    assert not opt.state[field.features]["exp_avg"][4].any()  # the new anchor's moments are zero
    assert len(opt.state) == 3
    assert field.log_scales[:, 3:].max().item() == pytest.approx(0.05)
    # eligible slots (not D's) and mature anchors were reset; D keeps its 5 visits
    assert stats.grad_count[3 * 4 : 4 * 4].tolist() == [5.0] * 4
    assert stats.grad_count[:12].sum() == 0 and stats.grad_sum[:12].sum() == 0
    assert stats.anchor_count.sum() == 0 and stats.opacity_sum.sum() == 0


# --- optimizer surgery -------------------------------------------------------------------------


def _adam_pair(rows=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    init = torch.randn(rows, 3, generator=g)
    pa, pb = nn.Parameter(init.clone()), nn.Parameter(init.clone())
    other_a, other_b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    oa = torch.optim.Adam([{"params": [other_a], "lr": 0.1}, {"params": [pa], "lr": 0.01}], eps=1e-15)
    ob = torch.optim.Adam([{"params": [other_b], "lr": 0.1}, {"params": [pb], "lr": 0.01}], eps=1e-15)
    for _ in range(3):
        grad = torch.randn(rows, 3, generator=g)
        pa.grad, pb.grad = grad.clone(), grad.clone()
        other_a.grad = other_b.grad = torch.ones(2)
        oa.step()
        ob.step()
    return pa, pb, oa, ob, g


def test_keep_rows_then_step_is_bit_exact():
    pa, pb, oa, ob, g = _adam_pair()
    mask = torch.tensor([True, False, True, True, False, True])
    pb2 = keep_rows(ob, pb, mask)
    assert ob.param_groups[1]["params"] == [pb2] and pb not in ob.state and len(ob.state) == 2
    grad = torch.randn(6, 3, generator=g)
    pa.grad, pb2.grad = grad, grad[mask].clone()
    oa.step()
    ob.step()
    assert torch.equal(pb2.detach(), pa.detach()[mask])
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(ob.state[pb2][key], oa.state[pa][key][mask])
    assert torch.equal(ob.state[pb2]["step"], oa.state[pa]["step"])


def test_extend_params_then_step_is_bit_exact_on_old_rows():
    pa, pb, oa, ob, g = _adam_pair()
    new_rows = torch.randn(2, 3, generator=g)
    pb2 = extend_params(ob, pb, new_rows)
    assert pb2.shape == (8, 3) and torch.equal(pb2.detach()[6:], new_rows)
    assert not ob.state[pb2]["exp_avg"][6:].any() and not ob.state[pb2]["exp_avg_sq"][6:].any()
    grad, grad_new = torch.randn(6, 3, generator=g), torch.randn(2, 3, generator=g)
    pa.grad, pb2.grad = grad, torch.cat([grad, grad_new])
    oa.step()
    ob.step()
    assert torch.equal(pb2.detach()[:6], pa.detach())
    assert torch.equal(ob.state[pb2]["exp_avg_sq"][:6], oa.state[pa]["exp_avg_sq"])
    assert torch.allclose(ob.state[pb2]["exp_avg"][6:], 0.1 * grad_new)  # (1 - beta1) * g from zero
    assert not torch.equal(pb2.detach()[6:], new_rows)  # the new rows are optimised too


def _adjustable_field_and_stats():
    """The growth field with statistics that make one adjustment grow an anchor and prune one."""
    field = _growth_field()
    stats = _growth_stats(field)
    stats.anchor_count[:] = 30
    stats.opacity_sum[:] = 1.0
    stats.opacity_sum[4] = 0.0
    return field, stats


def test_scaffold_densifier_adjusts_on_its_schedule_as_adjust_anchors_does():
    options = DensifyOptions(levels=1, init_factor=1)  # adjusts at multiples of 25 after 300
    field, stats = _adjustable_field_and_stats()
    densifier = ScaffoldDensifier(options, field, seed=0)
    densifier.stats = stats
    expected_field, expected_stats = _adjustable_field_and_stats()
    expected = adjust_anchors(expected_field, expected_stats, None, options, torch.Generator().manual_seed(0))

    assert densifier.after_step(510, field, None) is None and field.n_anchors == 5  # not due
    assert densifier.after_step(525, field, None) == expected
    assert torch.equal(field.positions, expected_field.positions)
    assert densifier.stats.state_dict().keys() == expected_stats.state_dict().keys()
    for name, value in densifier.stats.state_dict().items():
        assert torch.equal(value, getattr(expected_stats, name))


def test_scaffold_densifier_state_round_trips_under_the_block_checkpoint_keys():
    field, stats = _adjustable_field_and_stats()
    densifier = ScaffoldDensifier(DensifyOptions(), field, seed=5)
    densifier.stats = stats
    torch.rand(3, generator=densifier.generator)  # a used generator
    state = densifier.state_dict()
    assert state.keys() == {"densify_stats", "densify_rng"}  # the keys of block checkpoints before densifiers
    again = ScaffoldDensifier(DensifyOptions(), _growth_field(), seed=0)
    again.load_state_dict({"iteration": 7, **state})  # a block's state holds other keys too
    assert torch.equal(again.generator.get_state(), densifier.generator.get_state())
    for name, value in stats.state_dict().items():
        assert torch.equal(getattr(again.stats, name), value)


class RecordingDensifier(AnchorDensifier):
    """Records how a block calls it and changes nothing."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.loaded: dict | None = None

    def after_backward(self, iteration, gaussians, meta, width, height):
        self.calls.append(("after_backward", iteration, meta["means2d"].grad is not None, (width, height)))

    def after_step(self, iteration, field, optimizer):
        self.calls.append(("after_step", iteration, optimizer.param_groups[0]["params"][0] is field.features))
        return None

    def state_dict(self):
        return {"densify_calls": len(self.calls)}

    def load_state_dict(self, state):
        self.loaded = state


class NdcGradients(RecordingDensifier):
    """Keeps what a densifier's statistics read: each kept Gaussian's screen gradient in NDC."""

    def after_backward(self, iteration, gaussians, meta, width, height):
        grad = meta["means2d"].grad[0]  # [M, 2] pixels
        self.calls.append(grad * grad.new_tensor([width / 2.0, height / 2.0]))


def test_a_crop_trains_like_the_whole_view_where_the_rest_is_already_right():
    """A block trained on the crop of a view where its Gaussians lie gets the same anchor gradients as on the
    whole view, times the image's pixels over the crop's (the loss is a mean over the crop), and the same
    screen gradients in NDC for densification (its scale takes the crop's share), when the pixels outside
    the crop are already right (L1; SSIM's windows would see the crop's edge)."""
    import copy

    from momentumgs.config import TrainConfig
    from momentumgs.render.view import Crop, View
    from momentumgs.train.block import Block

    torch.manual_seed(0)
    points = 1.5 * (torch.rand(64, 3) - 0.5) + torch.tensor([0.4, -0.2, 3.0])  # [64, 3] a cluster
    field = init_anchors_from_points(points, voxel_size=0.1, n_offsets=4, feat_dim=8)
    decoder = GaussianDecoder(feat_dim=8, n_offsets=4, hidden_dim=16)
    K = torch.tensor([[40.0, 0, 32], [0, 40.0, 24], [0, 0, 1]])
    view = View(viewmat=torch.eye(4), K=K, center=torch.zeros(3), width=64, height=48)
    with torch.no_grad():
        from momentumgs.render.anchors import render_anchor_view

        alpha = render_anchor_view(field, decoder, view).alpha[..., 0]  # [48, 64]
    ys, xs = torch.nonzero(alpha > 0, as_tuple=True)
    crop = Crop(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1, 64, 48)
    assert 0.05 < crop.share < 0.6  # a real crop
    gt = torch.zeros(48, 64, 3)  # the background outside the crop: right there already
    gt[crop.y0 : crop.y1, crop.x0 : crop.x1] = torch.rand(crop.y1 - crop.y0, crop.x1 - crop.x0, 3)
    cfg = TrainConfig(lambda_dssim=0.0, lambda_volume=0.0)

    runs = []
    for c in (None, crop):
        f, d, densifier = copy.deepcopy(field), copy.deepcopy(decoder), NdcGradients()
        Block(f, [0], cfg, spatial_scale=1.0, seed=0, densifier=densifier).forward_backward(
            d, view, gt, crop=c
        )
        runs.append((f, d, densifier.calls[0]))
    (f_full, d_full, ndc_full), (f_crop, d_crop, ndc_crop) = runs
    for name, p_full in f_full.params().items():
        if p_full.grad is not None and p_full.grad.abs().max() > 0:
            assert torch.allclose(crop.share * f_crop.params()[name].grad, p_full.grad, rtol=1e-4, atol=1e-9)
    for p_full, p_crop in zip(d_full.parameters(), d_crop.parameters(), strict=True):
        assert torch.allclose(crop.share * p_crop.grad, p_full.grad, rtol=1e-4, atol=1e-9)
    assert ndc_full.abs().max() > 0 and torch.allclose(ndc_crop, ndc_full, rtol=1e-4, atol=1e-9)


def test_block_uses_the_injected_densifier():
    from momentumgs.config import TrainConfig
    from momentumgs.render.view import View
    from momentumgs.train.block import Block

    torch.manual_seed(0)
    points = torch.rand(64, 3) - 0.5 + torch.tensor([0.0, 0.0, 3.0])  # [64, 3] in front of the camera
    field = init_anchors_from_points(points, voxel_size=0.1, n_offsets=4, feat_dim=8)
    decoder = GaussianDecoder(feat_dim=8, n_offsets=4, hidden_dim=16)
    K = torch.tensor([[20.0, 0, 16], [0, 20.0, 12], [0, 0, 1]])
    view = View(viewmat=torch.eye(4), K=K, center=torch.zeros(3), width=32, height=24)
    densifier = RecordingDensifier()
    block = Block(field, [0], TrainConfig(), spatial_scale=1.0, seed=0, densifier=densifier)

    block.forward_backward(decoder, view, torch.full((24, 32, 3), 0.5))
    assert block.step() is None
    assert densifier.calls == [("after_backward", 1, True, (32, 24)), ("after_step", 1, True)]
    state = block.state_dict()
    assert state["densify_calls"] == 2 and "densify_stats" not in state
    block.load_state_dict(state)
    assert densifier.loaded is state

    default = Block(field, [0], TrainConfig(), spatial_scale=1.0, seed=0)
    assert isinstance(default.densifier, ScaffoldDensifier)
    assert default.state_dict().keys() == {
        "iteration",
        "spatial_scale",
        "anchors",
        "optimizer",
        "densify_stats",
        "densify_rng",
        "sampler",
    }


def test_balanced_backward_caps_the_consistency_on_each_decoder_head_and_optionally_the_anchors():
    from momentumgs.train.block import balanced_backward, decoder_heads

    dec, field, teacher = _lagging_teacher()
    cam = torch.tensor([0.0, 0.0, -5.0])

    def losses():
        anchors = gather_anchors(field)
        s = decode(dec, anchors, cam)
        t = decode(teacher.module, anchors, cam, keep=s.keep)
        image = s.colors.square().sum() + 10 * s.scales.sum() + s.opacities.sum()  # stands in for the render
        return image, 1e3 * consistency_loss(s, t)

    def grads_after(backward):
        for p in [*dec.parameters(), *field.params().values()]:
            p.grad = None
        backward()

        def grad(p):
            return torch.zeros_like(p) if p.grad is None else p.grad.clone()

        return [grad(p) for p in dec.parameters()], [grad(p) for p in field.params().values()]

    image, cons = losses()
    paper = grads_after(lambda: (image + cons).backward())
    image, cons = losses()
    only_image = grads_after(lambda: image.backward())
    image, cons = losses()
    uncapped = grads_after(lambda: balanced_backward(image, cons, dec, field, balance=1e9))
    for a, b in zip(paper[0] + paper[1], uncapped[0] + uncapped[1], strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6 * a.abs().max()), (
            (a - b).abs().max()
        )  # the paper's sum
    image, cons = losses()
    capped = grads_after(lambda: balanced_backward(image, cons, dec, field, balance=0.1))
    index = {id(p): i for i, p in enumerate(dec.parameters())}
    scaled_down = 0
    for head in decoder_heads(dec):
        rows = [index[id(p)] for p in head]
        img = torch.cat([only_image[0][i].flatten() for i in rows])
        extra = torch.cat([capped[0][i].flatten() for i in rows]) - img
        full = torch.cat([paper[0][i].flatten() for i in rows]) - img
        assert extra.norm() <= 0.1 * img.norm() * (1 + 1e-4)  # at most a tenth of the image's gradient
        scaled_down += bool(full.norm() > 0.1 * img.norm())
    assert scaled_down >= 1  # the test's consistency is strong enough to be capped somewhere
    for a, b in zip(paper[1], capped[1], strict=True):  # the anchors take the consistency as it is
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6 * a.abs().max())
    # ... or capped the same way, all their parameters as one group
    image, cons = losses()
    anchors_capped = grads_after(lambda: balanced_backward(image, cons, dec, field, 0.1, cap_anchors=True))
    img = torch.cat([g.flatten() for g in only_image[1]])
    extra = torch.cat([g.flatten() for g in anchors_capped[1]]) - img
    full = torch.cat([g.flatten() for g in paper[1]]) - img
    assert full.norm() > 0.1 * img.norm()  # strong enough to be capped
    assert torch.isclose(extra.norm(), 0.1 * img.norm(), rtol=1e-4)
    cosine = torch.dot(extra, full) / (extra.norm() * full.norm())
    assert cosine > 0.9999  # the consistency's direction, scaled down
    for a, b in zip(capped[0], anchors_capped[0], strict=True):  # the decoder as before
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    # gradients already in the decoder (another worker's) are kept and added first
    image, cons = losses()
    for p in [*dec.parameters(), *field.params().values()]:
        p.grad = None
    for p in dec.parameters():
        p.grad = torch.ones_like(p)
    balanced_backward(image, cons, dec, field, balance=0.1)
    for p, g in zip(dec.parameters(), capped[0], strict=True):
        assert torch.allclose(p.grad, 1 + g, rtol=1e-5, atol=1e-6)
