"""The training paths beyond the rasterizer on CUDA, against the same computation on the CPU: the SSIM camera
assigner, `balanced_backward` inside a block's step, and the seam refinement. On CUDA, gsplat renders; on the
CPU, our rasterizer (tests/test_render.py holds the two to the same images and gradients), so each test
asserts that what the path decides or learns agrees, not bit for bit, and that it does what it is for.

Marked `cuda`: deselected by default (pyproject's addopts); `python -m pytest -m cuda` runs them on a GPU,
as `tools/gpu_check.py` does. Each comparison is a function of the device, so that it reads the same for
both sides.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from momentumgs.config import PartitionConfig, TrainConfig
from momentumgs.data.colmap import load_colmap_scene
from momentumgs.model.anchors import AnchorField, init_anchors_from_points
from momentumgs.model.decoder import GaussianDecoder, MomentumTeacher
from momentumgs.model.store import AnchorModel, DecoderSpec, save_model
from momentumgs.partition import partition_scene
from momentumgs.render.view import View, camera_view
from momentumgs.train.block import Block, decoder_heads
from momentumgs.train.losses import photometric_loss
from momentumgs.train.measure import gt_image, spatial_scale
from momentumgs.train.seams import band_width, refine_seams, seam_anchors

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a - b| / |b| over all entries (b the CPU's)."""
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


@pytest.fixture(scope="module")
def scene(gt_test_scene):
    return load_colmap_scene(gt_test_scene, downscale=4)  # 80x60 views


@pytest.fixture(scope="module")
def coarse_model(scene, tmp_path_factory):
    """A stand-in coarse model of the whole scene: anchors from its points, a seeded untrained decoder."""
    torch.manual_seed(0)
    spec = DecoderSpec()
    path = tmp_path_factory.mktemp("coarse") / "model.ckpt"
    save_model(path, AnchorModel(init_anchors_from_points(scene.points), spec.build(), spec, {}))
    return path


# --- the SSIM camera assigner ---------------------------------------------------------------------------


SSIM_THRESHOLD = 0.02
SSIM_ATOL = 5e-3  # 1 - SSIM; cuDNN may blur the moments in TF32 on the GPU


def ssim_assignment(scene, coarse_model, device: str) -> tuple[np.ndarray, list[list[int]]]:
    """The assigner's 1 - SSIM per (train view, block) and the cameras it gives each of 2 blocks."""
    from momentumgs.partition import ssim as partition_ssim

    measured = []
    real = partition_ssim.ssim_losses

    def keep(*args, **kwargs):
        measured.append(real(*args, **kwargs))
        return measured[-1]

    cfg = PartitionConfig(
        block_dim=[2, 1, 1], assign="ssim", coarse_model=str(coarse_model), ssim_threshold=SSIM_THRESHOLD
    )
    part = partition_scene(scene, PartitionConfig(block_dim=[2, 1, 1], assign="center"))
    views = dataclasses.replace(scene, train_ids=scene.train_ids[:8])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(partition_ssim, "ssim_losses", keep)
        cameras = partition_ssim.make_assigner(cfg, device).assign(views, part)
    return measured[0], [c.tolist() for c in cameras]


def test_ssim_assigner_on_cuda_measures_and_assigns_as_on_the_cpu(scene, coarse_model):
    cpu_losses, cpu_cameras = ssim_assignment(scene, coarse_model, "cpu")
    gpu_losses, gpu_cameras = ssim_assignment(scene, coarse_model, "cuda")
    assert gpu_losses.shape == cpu_losses.shape == (8, 2) and np.isfinite(gpu_losses).all()
    assert (cpu_losses > SSIM_THRESHOLD).any()  # some block matters to some view: a decision to compare
    np.testing.assert_allclose(gpu_losses, cpu_losses, rtol=0, atol=SSIM_ATOL)
    # the same views are blocked out (a view no block's anchors reach stays 0 on both)
    assert np.array_equal(gpu_losses == 0, cpu_losses == 0)
    if (np.abs(cpu_losses - SSIM_THRESHOLD) > SSIM_ATOL).all():  # no decision within the tolerance
        assert gpu_cameras == cpu_cameras


# --- balanced_backward in a block's step ----------------------------------------------------------------


BALANCE = 0.1


def balanced_step(device: str, lambda_consistency: float) -> dict[str, torch.Tensor]:
    """One Block.forward_backward on a seeded setup (anchors in front of a 48x36 camera, a decoder and a
    teacher it moved away from), the consistency capped at BALANCE on each head and on the anchors.
    -> the gradients by parameter name ("decoder.*", "anchors.*"), on the CPU"""
    torch.manual_seed(0)
    points = torch.rand(400, 3) - 0.5 + torch.tensor([0.0, 0.0, 3.0])  # [400, 3]
    field = init_anchors_from_points(points, voxel_size=0.08, n_offsets=4, feat_dim=8).to(device)
    decoder = GaussianDecoder(feat_dim=8, n_offsets=4, hidden_dim=16)
    teacher = MomentumTeacher(decoder)
    with torch.no_grad():
        for p in decoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    decoder.to(device)
    teacher.module.to(device)
    gt = torch.rand(36, 48, 3).to(device)
    K = torch.tensor([[40.0, 0, 24], [0, 40.0, 18], [0, 0, 1]], device=device)
    view = View(torch.eye(4, device=device), K, torch.zeros(3, device=device), 48, 36, index=0)
    block = Block(field, [0], TrainConfig(), spatial_scale=1.0, seed=0)
    result = block.forward_backward(
        decoder, view, gt, teacher=teacher.module, lambda_consistency=lambda_consistency, balance=BALANCE,
        cap_anchors=True,
    )  # fmt: skip
    assert result.finite and result.n_gaussians > 100
    params = {f"decoder.{n}": p for n, p in decoder.named_parameters()}
    params |= {f"anchors.{n}": p for n, p in field.params().items()}
    return {n: (torch.zeros_like(p) if p.grad is None else p.grad).detach().cpu() for n, p in params.items()}


def head_names(decoder: GaussianDecoder) -> list[list[str]]:
    names = {id(p): f"decoder.{n}" for n, p in decoder.named_parameters()}
    return [[names[id(p)] for p in head] for head in decoder_heads(decoder)]


def joint(grads: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    return torch.cat([grads[n].flatten() for n in names])


def test_balanced_backward_on_cuda_caps_the_consistency_and_matches_the_cpu():
    image_only = balanced_step("cuda", lambda_consistency=0.0)
    capped = balanced_step("cuda", lambda_consistency=50.0)
    cpu = balanced_step("cpu", lambda_consistency=50.0)
    groups = [*head_names(GaussianDecoder(feat_dim=8, n_offsets=4, hidden_dim=16))]
    groups.append([n for n in capped if n.startswith("anchors.")])
    at_cap = 0
    for names in groups:
        image, with_cons = joint(image_only, names), joint(capped, names)
        assert torch.isfinite(with_cons).all()
        extra = with_cons - image  # the consistency's part, after the cap
        assert extra.norm() <= BALANCE * image.norm() * (1 + 1e-3), names
        at_cap += bool(torch.isclose(extra.norm(), BALANCE * image.norm(), rtol=1e-3))
        # gsplat against our rasterizer: the same gradients within the rasterizer's own tolerance
        assert relative(with_cons, joint(cpu, names)) < 2e-2, names
    assert at_cap >= 1  # the consistency was strong enough to be capped somewhere


# --- the seam refinement --------------------------------------------------------------------------------


SEAM_STEPS = 30


def seam_model(scene) -> tuple[AnchorField, GaussianDecoder]:
    """A stand-in merged model (anchors from the scene's points, a seeded decoder), on the CPU."""
    torch.manual_seed(0)
    field = init_anchors_from_points(scene.points, n_offsets=4, feat_dim=16)
    return field, GaussianDecoder(feat_dim=16, n_offsets=4, hidden_dim=16)


def mean_loss(field, decoder, scene, views: dict[int, View], ids, device: str) -> float:
    from momentumgs.render.anchors import render_anchor_view

    with torch.no_grad():
        losses = [
            photometric_loss(
                render_anchor_view(field, decoder, views[i]).image, gt_image(scene, i, device), 0.2
            ).loss
            for i in ids
        ]
    return float(torch.stack(losses).mean())


def refined(scene, device: str) -> dict:
    """The stand-in model refined for SEAM_STEPS steps across the border of a 2x1 partition on `device`."""
    field, decoder = seam_model(scene)
    field, decoder = field.to(device), decoder.to(device)
    part = partition_scene(scene, PartitionConfig(block_dim=[2, 1, 1], assign="center"))
    views = {i: camera_view(scene.cameras[i], device, i) for i in scene.train_ids}
    movable = seam_anchors(field, part, band_width(part, 0.1))
    before = {n: p.detach().clone() for n, p in field.params().items()}
    decoder_before = {n: v.clone() for n, v in decoder.state_dict().items()}
    loss_before = mean_loss(field, decoder, scene, views, scene.train_ids[::3], device)
    cfg = TrainConfig()
    report = refine_seams(
        field, decoder, scene, views, part, cfg, spatial_scale(scene, scene.train_ids), SEAM_STEPS, 0.1, 0
    )
    return {
        "report": report,
        "movable": movable.cpu(),
        "before": {n: v.cpu() for n, v in before.items()},
        "after": {n: p.detach().cpu() for n, p in field.params().items()},
        "decoder_kept": all(torch.equal(decoder.state_dict()[n], v) for n, v in decoder_before.items()),
        "loss_before": loss_before,
        "loss_after": mean_loss(field, decoder, scene, views, scene.train_ids[::3], device),
        "slot_mask": field.slot_mask.cpu(),
    }


def test_seam_refinement_on_cuda_moves_the_seam_anchors_as_on_the_cpu_and_fits_better(scene):
    gpu, cpu = refined(scene, "cuda"), refined(scene, "cpu")
    report = gpu["report"]
    assert dataclasses.replace(report, dropped_slots=0) == dataclasses.replace(cpu["report"], dropped_slots=0)
    assert report.steps == SEAM_STEPS and 0 < report.seam_anchors < report.anchors and report.views > 0
    assert torch.equal(gpu["movable"], cpu["movable"])
    movable = gpu["movable"]
    for name, old in gpu["before"].items():
        new = gpu["after"][name]
        assert torch.isfinite(new).all()
        assert torch.equal(new[~movable], old[~movable]), name  # only the seam anchors move
        # the same fit as on the CPU: Adam's steps point the same way (an entry whose gradient is about
        # zero may step either way on either side, so not entry by entry) and are about as long
        step_gpu, step_cpu = (new - old)[movable].flatten(), (cpu["after"][name] - old)[movable].flatten()
        cosine = torch.dot(step_gpu, step_cpu) / (step_gpu.norm() * step_cpu.norm())
        assert cosine > 0.9 and 0.8 < float(step_gpu.norm() / step_cpu.norm()) < 1.25, (name, cosine)
    assert gpu["decoder_kept"]
    gain_gpu, gain_cpu = (r["loss_before"] - r["loss_after"] for r in (gpu, cpu))
    assert gain_cpu > 1e-3 and abs(gain_gpu - gain_cpu) < 0.25 * gain_cpu, (gain_gpu, gain_cpu)
    # the merge's cut made again: (nearly) the same slots kept
    assert (gpu["slot_mask"] != cpu["slot_mask"]).float().mean() < 1e-3
