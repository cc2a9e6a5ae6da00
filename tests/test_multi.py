"""Momentum-GS across blocks: k workers in k processes equal their emulation in one process, idle blocks swap
to RAM/disk without changing the result, a multi-block run resumes bit-exactly, the merge keeps each block's
own cell, and the momentum teacher is what its formula says."""

import json
import os
import shutil
import subprocess

import pytest
import torch
from helpers import (
    MULTI,
    block_anchors,
    kill_once_written,
    one_thread_env,
    scene_loader,
    set_args,
    train_cmd,
)

from momentumgs.checkpoint import load_checkpoint
from momentumgs.config import load_config
from momentumgs.errors import UserError
from momentumgs.merge import merge_blocks, owner_of
from momentumgs.model.anchors import AnchorField
from momentumgs.model.decoder import (
    GaussianDecoder,
    MomentumTeacher,
    consistency_loss,
    decode,
    gather_anchors,
)
from momentumgs.model.store import load_model
from momentumgs.run import train_run
from momentumgs.run_launch import default_processes, train_in_processes, training_processes
from momentumgs.run_setup import start_or_resume
from momentumgs.train.metrics_log import read_metrics


def _assert_same_tensors(a: dict, b: dict, atol: float):
    assert a.keys() == b.keys()
    for key in a:
        if torch.is_tensor(a[key]) and a[key].is_floating_point():
            assert a[key].shape == b[key].shape, key
            assert torch.allclose(a[key], b[key], rtol=0, atol=atol), (key, (a[key] - b[key]).abs().max())


def _assert_same_blocks_and_decoder(run_a, run_b):
    """Two runs' block anchors and shared decoders are bit-identical."""
    for a, b in zip(block_anchors(run_a), block_anchors(run_b), strict=True):
        for key in a:
            if torch.is_tensor(a[key]):
                assert torch.equal(a[key], b[key]), key
    da = load_model(run_a / "model.ckpt").decoder.state_dict()
    db = load_model(run_b / "model.ckpt").decoder.state_dict()
    assert all(torch.equal(da[k], db[k]) for k in da)


@pytest.mark.slow
def test_two_gloo_processes_equal_the_one_process_emulation(gt_test_scene, tmp_path):
    env = one_thread_env()
    # with the per-photo exposure table on: its rows are trained by whichever worker's block holds the
    # photo, and the all-reduce keeps the table equal across processes
    args = set_args([*MULTI, f"data.path={gt_test_scene}", "model.appearance=exposure"])
    dist_run, local_run = tmp_path / "dist", tmp_path / "local"
    if (os.cpu_count() or 1) < 2:
        pytest.skip("`momentumgs train` starts one process per worker only with a core for each")
    # `momentumgs train` with 2 workers on a CPU with 2 cores: two processes under torchrun by default
    subprocess.run(train_cmd(*args, "--out", str(dist_run), processes=None), check=True, env=env, timeout=600)
    assert (next((dist_run / "checkpoints").glob("step_*")) / "shared_rank1.ckpt").is_file()  # 2 processes
    subprocess.run(train_cmd(*args, "--out", str(local_run)), check=True, env=env, timeout=600)

    # Tolerance: the decoder gradient of a step is the sum of two workers' gradients, added in the same
    # order by autograd (emulation) and gloo's all-reduce (two processes), so the runs agree bit for bit
    # on this machine; 1e-6 leaves room for a reduction order that differs on other gloo builds.
    atol = 1e-6
    for a, b in zip(block_anchors(dist_run), block_anchors(local_run), strict=True):
        _assert_same_tensors(a, b, atol)
    dist_model, local_model = load_model(dist_run / "model.ckpt"), load_model(local_run / "model.ckpt")
    _assert_same_tensors(dist_model.decoder.state_dict(), local_model.decoder.state_dict(), atol)
    # each process holds a teacher replica: both equal the emulation's teacher
    step_dir = next((local_run / "checkpoints").glob("step_*"))
    local_teacher = load_checkpoint(step_dir / "shared_rank0.ckpt")["decoders"][0]["teacher"]
    dist_dir = next((dist_run / "checkpoints").glob("step_*"))
    for rank in (0, 1):
        teacher = load_checkpoint(dist_dir / f"shared_rank{rank}.ckpt")["decoders"][0]["teacher"]
        _assert_same_tensors(teacher, local_teacher, atol)
    assert dist_model.field.n_anchors == local_model.field.n_anchors > 0
    # every process's blocks are logged, as in the emulation (not only the main process's)
    dist_log, local_log = (read_metrics(run / "metrics.jsonl", kind="train") for run in (dist_run, local_run))
    assert len(dist_log) == len(local_log) > 0
    for d, loc in zip(dist_log, local_log, strict=True):
        assert d["blocks"].keys() == loc["blocks"].keys() and len(d["blocks"]) == 2
        for b, record in d["blocks"].items():
            assert record["iteration"] == loc["blocks"][b]["iteration"]
            assert record["psnr"] == pytest.approx(loc["blocks"][b]["psnr"], abs=1e-4)
    # and the viewer's per-block table of the 2-process run shows every block (not only the main one's)
    from momentumgs_viewer.run_info import load_run_info

    rows = load_run_info(dist_run, dist_model.info).block_metrics
    assert [r["block"] for r in rows] == [0, 1, 2, 3]
    assert all(r["train_psnr"] is not None and r["weight"] is not None for r in rows)


@pytest.mark.slow
def test_tiny_ram_budget_spills_and_trains_the_same(gt_test_scene, tmp_path):
    results = {}
    for name, budget in (("ram", "4096"), ("disk", "0.01")):
        cfg = load_config(None, [*MULTI, f"data.path={gt_test_scene}", f"method.ram_budget_mb={budget}"])
        trainer = start_or_resume(cfg, scene_loader, tmp_path / name, resume=False)
        stats = trainer.residency.store.stats
        train_run(trainer, progress=False)
        results[name] = (block_anchors(tmp_path / name), stats)
    assert results["disk"][1].spills > 0 and results["disk"][1].loads > 0
    assert results["ram"][1].spills == 0
    for a, b in zip(results["ram"][0], results["disk"][0], strict=True):
        for key in a:
            if torch.is_tensor(a[key]):
                assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_multi_block_run_resumes_bit_exactly(gt_test_scene, tmp_path, capsys):
    # with the per-image appearance embedding on: its table and optimizer state resume too
    settings = [*MULTI, f"data.path={gt_test_scene}", "model.appearance=embedding", "model.appearance_dim=4"]
    cfg = load_config(None, settings)
    unbroken = start_or_resume(cfg, scene_loader, tmp_path / "a", resume=False)
    train_run(unbroken, progress=False)

    cfg = load_config(None, settings)
    first = start_or_resume(cfg, scene_loader, tmp_path / "b", resume=False)
    first.run(progress=False, stop_after=6)
    first.save_checkpoint()
    first.run(progress=False, stop_after=4)  # mid-slot, after densification and a weighting measurement
    first.save_checkpoint()
    assert any(q.measured for q in first.weighting.qualities)
    del first
    steps = sorted(p.name for p in (tmp_path / "b" / "checkpoints").glob("step_*"))
    assert steps == ["step_00000006", "step_00000010"]  # the previous complete checkpoint is kept
    shutil.copytree(tmp_path / "b", tmp_path / "c")
    torch.manual_seed(12345)  # a different process state: the checkpoint must restore everything
    resumed = start_or_resume(None, scene_loader, tmp_path / "b", resume=True)
    assert resumed.global_step == 10
    train_run(resumed, progress=False)
    _assert_same_blocks_and_decoder(tmp_path / "a", tmp_path / "b")
    steps = sorted(p.name for p in (tmp_path / "b" / "checkpoints").glob("step_*"))
    assert steps == ["step_00000010", "step_00000024"]  # two kept, the oldest removed

    # a damaged latest checkpoint: the resume warns and falls back to the previous one, still bit-exact
    damaged = tmp_path / "c" / "checkpoints" / "step_00000010" / "block_002.ckpt"
    data = bytearray(damaged.read_bytes())
    data[-100] ^= 0xFF
    damaged.write_bytes(bytes(data))
    resumed = start_or_resume(None, scene_loader, tmp_path / "c", resume=True)
    assert resumed.global_step == 6
    assert capsys.readouterr().err.count("checksum mismatch") == 1
    train_run(resumed, progress=False)
    _assert_same_blocks_and_decoder(tmp_path / "a", tmp_path / "c")


@pytest.mark.slow
def test_merge_keeps_each_blocks_own_cell(gt_test_scene, tmp_path):
    # the merge alone (the seam refinement after it is tests/test_seams.py's)
    over = [*MULTI, f"data.path={gt_test_scene}", "train.iterations=2", "partition.seam_steps=0"]
    trainer = start_or_resume(load_config(None, over), scene_loader, tmp_path / "run", resume=False)
    train_run(trainer, progress=False)
    field = load_model(tmp_path / "run" / "model.ckpt").field
    counts = load_model(tmp_path / "run" / "model.ckpt").info["anchors_per_block"]
    assert sum(counts) == field.n_anchors
    # the merged anchors come block after block; each keeps the slots whose Gaussians lie in its own cell
    source = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))  # [N]
    slot_owner = owner_of(field.slot_means(), trainer.partition)  # [N, K]
    assert torch.equal(field.slot_mask, slot_owner == source[:, None])
    # the blocks overlapped (margins, coverage): merging dropped the slots outside each cell
    blocks = [AnchorField.from_state_dict(a) for a in block_anchors(tmp_path / "run")]
    assert sum(f.n_anchors * f.n_offsets for f in blocks) > int(field.slot_mask.sum())
    # by anchor (the Momentum-GS code's rule): the anchors inside each cell, all their slots
    by_anchor, counts = merge_blocks(dict(enumerate(blocks)), trainer.partition, "anchors")
    assert by_anchor.slot_mask is None
    source = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    assert torch.equal(owner_of(by_anchor.positions, trainer.partition), source)


def test_more_workers_than_blocks_is_a_clear_error(gt_test_scene, tmp_path):
    cfg = load_config(None, [*MULTI, f"data.path={gt_test_scene}", "method.workers=5"])
    with pytest.raises(UserError, match="method.workers=5 is more than the 4 blocks"):
        start_or_resume(cfg, scene_loader, tmp_path / "run", resume=False)


def test_teacher_is_the_ema_of_the_student_and_m0_copies_it():
    torch.manual_seed(0)
    student = GaussianDecoder()
    teacher = MomentumTeacher(student)
    start = {k: v.clone() for k, v in teacher.state_dict().items()}
    history = []
    for _ in range(3):  # the student moves, the teacher follows: t_n = m^n t_0 + sum (1-m) m^(n-i) s_i
        with torch.no_grad():
            for p in student.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        history.append({k: v.clone() for k, v in student.state_dict().items()})
        teacher.update(student, 0.9)
    for key, value in teacher.state_dict().items():
        closed = 0.9**3 * start[key] + sum(0.1 * 0.9 ** (2 - i) * s[key] for i, s in enumerate(history))
        assert torch.allclose(value, closed, atol=1e-6)

    # m = 0: the teacher becomes the student, so the consistency target equals the student's output
    teacher.update(student, 0.0)
    from momentumgs.model.anchors import init_anchors_from_points

    field = init_anchors_from_points(torch.rand(200, 3) * 4, voxel_size=0.5)
    with torch.no_grad():
        field.features.normal_()
    anchors = gather_anchors(field)
    center = torch.tensor([2.0, 2.0, -6.0])
    mine = decode(student, anchors, center)
    target = decode(teacher.module, anchors, center, keep=mine.keep)
    assert torch.equal(mine.colors, target.colors) and torch.equal(mine.scales, target.scales)
    assert float(consistency_loss(mine, target).detach()) == 0.0


@pytest.mark.slow
def test_independent_decoders_ablation_trains_and_renders(gt_test_scene, tmp_path):
    from momentumgs.render.anchors import render_model_view

    independent = "experimental.shared_decoder=false"
    cfg = load_config(None, [*MULTI, f"data.path={gt_test_scene}", "train.iterations=4", independent])
    trainer = start_or_resume(cfg, scene_loader, tmp_path / "run", resume=False)
    train_run(trainer, progress=False)
    model = load_model(tmp_path / "run" / "model.ckpt")
    assert model.block_decoders is not None and len(model.block_decoders) == 4
    # each block's decoder learnt from its own block only: all four differ
    weights = [d.mlp_color[2].weight for d in model.block_decoders]
    assert all(not torch.equal(weights[i], weights[j]) for i in range(4) for j in range(i + 1, 4))
    view = trainer.views[trainer.scene.test_ids[0]]
    image = render_model_view(model, view)
    assert image.shape == (view.height, view.width, 3) and float(image.std()) > 0.01
    # the same model with its block decoders dropped renders differently: the per-block path is used
    shared_only = render_model_view(type(model)(model.field, model.decoder, model.spec, {}), view)
    assert not torch.allclose(image, shared_only)


@pytest.mark.slow
def test_killed_multi_block_run_resumes_from_the_cli_bit_exactly(gt_test_scene, tmp_path):
    """SIGKILL a 4-block run after its first complete checkpoint, resume it with `train --resume`, and get
    the blocks and decoder of an unbroken run."""
    import signal

    env = one_thread_env()
    items = [i for i in MULTI if not i.startswith(("train.iterations", "train.checkpoint_every"))]
    args = set_args([*items, f"data.path={gt_test_scene}", "train.iterations=24", "train.checkpoint_every=6"])
    subprocess.run(train_cmd(*args, "--out", str(tmp_path / "a")), check=True, env=env, timeout=600)

    run = tmp_path / "b"
    proc = subprocess.Popen(
        train_cmd(*args, "--out", str(run)), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    latest = run / "checkpoints" / "latest.json"
    kill_once_written(proc, latest, settle_s=0.5)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (run / "model.ckpt").exists()
    assert 0 < json.loads(latest.read_text())["step"] < 48  # 4 blocks x 24 iterations on 2 workers

    subprocess.run(train_cmd("--resume", str(run)), check=True, env=env, timeout=600)
    _assert_same_blocks_and_decoder(tmp_path / "a", run)


@pytest.mark.slow
def test_weighting_off_measures_nothing_and_the_teacher_decodes_appearance(gt_test_scene, tmp_path):
    """With method.weighting.enabled=false no block quality is measured (nothing uses it); with an appearance
    embedding the teacher decodes with the view's embedding slot as the student does."""
    over = [*MULTI, f"data.path={gt_test_scene}", "method.weighting.enabled=false"]
    over += ["model.appearance=exposure"]
    trainer = start_or_resume(load_config(None, over), scene_loader, tmp_path / "run", resume=False)
    train_run(trainer, progress=False)
    assert not any(q.measured for q in trainer.weighting.qualities)
    assert trainer.decoder.appearance is not None
    log = read_metrics(tmp_path / "run" / "metrics.jsonl", kind="train")
    assert any(b["consistency"] > 0 for record in log for b in record["blocks"].values())


@pytest.mark.slow
@pytest.mark.parametrize("source", ["steps", "views"])
def test_block_quality_sources(gt_test_scene, tmp_path, monkeypatch, source):
    """'steps' takes the block quality from the training steps' own renders (no rendering), 'views' renders
    the block's views; both measure every block and turn the qualities into weights."""
    import momentumgs.train.weighting as weighting_module

    renders = []
    real = weighting_module.view_quality
    monkeypatch.setattr(weighting_module, "view_quality", lambda *a: renders.append(1) or real(*a))
    over = [*MULTI, f"data.path={gt_test_scene}", f"method.weighting.source={source}"]
    trainer = start_or_resume(load_config(None, over), scene_loader, tmp_path / "run", resume=False)
    train_run(trainer, progress=False)
    qualities = trainer.weighting.qualities
    assert all(q.measured and 5.0 < q.psnr < 60.0 and 0.0 < q.ssim <= 1.0 for q in qualities)
    assert (len(renders) > 0) == (source == "views")
    assert len(set(trainer.weighting.weights)) > 1 and min(trainer.weighting.weights) >= 1.0


def test_unknown_weighting_source_is_a_clear_error(gt_test_scene, tmp_path):
    over = [*MULTI, f"data.path={gt_test_scene}", "method.weighting.source=psnr"]
    with pytest.raises(UserError, match="method.weighting.source: expected one of steps, views, got 'psnr'"):
        load_config(None, over)
    cfg = load_config(None, over[:-1])
    cfg.method.weighting.source = "psnr"  # a config built in code, past the loader's check
    with pytest.raises(UserError, match="method.weighting.source: expected one of steps, views, got 'psnr'"):
        start_or_resume(cfg, scene_loader, tmp_path / "run", resume=False)


def test_resume_in_processes_runs_the_resume_command(monkeypatch, tmp_path):
    """`train --resume RUN` in several processes hands the run and its overrides to each torchrun worker."""
    launched = []

    class FakePopen:
        def __init__(self, cmd, **kwargs):
            launched.append(cmd)

        def wait(self):
            return 0

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    run = tmp_path / "run"
    train_in_processes(None, run, 2, progress=False, resume=True, overrides=["train.iterations=9"])
    (cmd,) = launched
    assert "--nproc_per_node=2" in cmd
    train_args = cmd[cmd.index("train") :]
    assert train_args == [
        "train", "--no-eval", "--resume", str(run), "--set", "train.iterations=9", "--no-progress"
    ]  # fmt: skip
    monkeypatch.setenv("WORLD_SIZE", "2")  # inside the torchrun job each worker trains its own part
    cfg = load_config(None, ["method.workers=2", "partition.block_dim=[2,2,1]", "train.device=cpu"])
    assert training_processes(cfg, None, live_view=False) == 1


def test_a_worker_error_is_not_a_lost_worker(tmp_path, monkeypatch):
    """A worker that stopped on its error left it for the launcher, which prints the first one (by time);
    torchrun then stopped the other worker with SIGTERM, which is no lost worker."""
    import signal

    from momentumgs.cli import _error
    from momentumgs.run_launch import failure_text
    from momentumgs.train.launch import ERRORS_ENV, first_worker_error

    errors = tmp_path / "errors"
    errors.mkdir()
    monkeypatch.setenv(ERRORS_ENV, str(errors))
    sigterm = signal.getsignal(signal.SIGTERM)  # a worker that left its error lets SIGTERM end it
    try:
        for rank, message, ns in ((1, "disk full here", 1), (0, "and there", 2)):
            monkeypatch.setenv("RANK", str(rank))
            _error(message)
            os.utime(errors / f"rank{rank}.txt", ns=(ns, ns))
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    assert first_worker_error(errors) == "disk full here"

    failures = {"0": {"exitcode": 2, "signal": None}, "1": {"exitcode": -15, "signal": "SIGTERM"}}
    text = failure_text(tmp_path, 2, 1, failures)
    assert text == f"{tmp_path}: training in 2 processes stopped on a worker's error (above)"
    failures = {"0": {"exitcode": 3, "signal": None}, "1": {"exitcode": -9, "signal": "SIGKILL"}}
    assert "lost worker process rank 1 of 2 (killed by SIGKILL)" in failure_text(tmp_path, 2, 1, failures)


def test_one_process_per_worker_on_a_cpu_with_the_cores(monkeypatch):
    cfg = load_config(None, ["method.workers=2", "partition.block_dim=[2,2,1]", "train.device=cpu"])
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert default_processes(cfg, None) == 2
    assert default_processes(cfg, 1) == 1  # asked for
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert default_processes(cfg, None) == 1  # no core for the second worker
    one_worker = load_config(None, ["method.workers=1", "partition.block_dim=[2,2,1]", "train.device=cpu"])
    assert default_processes(one_worker, None) == 1
    with pytest.raises(UserError, match="--processes 0"):
        default_processes(cfg, 0)
    assert training_processes(cfg, None, live_view=True) == 1  # the live viewer needs every block here
    with pytest.raises(UserError, match="--processes 2: the live viewer"):
        training_processes(cfg, 2, live_view=True)


@pytest.mark.slow
def test_eval_every_and_one_metrics_schema_in_multi_block_runs(gt_test_scene, tmp_path):
    """`train.eval_every` evaluates every block on the test views in its cell, gathered over all blocks;
    the records have the schema of a one-block run (read by the same reader)."""
    over = [*MULTI, f"data.path={gt_test_scene}", "train.eval_every=8"]
    trainer = start_or_resume(load_config(None, over), scene_loader, tmp_path / "run", resume=False)
    train_run(trainer, progress=False)
    evals = read_metrics(tmp_path / "run" / "metrics.jsonl", kind="eval")
    assert [r["step"] for r in evals] == [8, 16]  # 24 global steps: the last is the final evaluation's
    n_test = len(trainer.scene.test_ids)
    for record in evals:
        assert record["split"] == "test" and record["views"] == n_test
        assert sum(b["views"] for b in record["blocks"].values()) == n_test
        assert 5.0 < record["psnr"] < 60.0
    train = read_metrics(tmp_path / "run" / "metrics.jsonl", kind="train")
    assert [r["step"] for r in train] == list(range(4, 25, 4))
    keys = {"iteration", "loss", "l1", "ssim", "psnr", "consistency", "anchors", "gaussians", "weight"}
    assert all(set(b) == keys for r in train for b in r["blocks"].values())
    # both workers' blocks are in every record (2 workers: two blocks train at each step)
    assert all(len(r["blocks"]) == 2 for r in train)


def test_time_estimate_prints_once_after_the_timed_steps(capsys):
    from types import SimpleNamespace

    from momentumgs.run_console import TimeEstimate, duration_text

    trainer = SimpleNamespace(global_step=0, schedule=SimpleNamespace(total_steps=1000))
    estimate = TimeEstimate(steps=3)
    for step in range(1, 8):
        trainer.global_step = step
        estimate(trainer)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1  # printed once, after the first step and 3 timed ones
    assert "timed 3 steps" in lines[0] and "remaining 996 of 1000 steps" in lines[0]
    assert [duration_text(s) for s in (12, 270, 7200)] == ["12 s", "4.5 min", "2.0 h"]


def test_blocks_train_on_the_crops_of_their_cells_and_one_block_on_whole_views(
    gt_test_scene, tmp_path, monkeypatch
):
    """With experimental.crop_views each block's steps render the crop of its view where its cell lies
    (`partition.cell_rectangles`); experimental.crop_views=false (the default) and a 1x1x1 grid train on whole
    views."""
    from momentumgs.partition import cell_rectangles
    from momentumgs.train.block import Block

    seen = []
    real = Block.forward_backward

    def recording(self, decoder, view, gt, **kw):
        seen.append((view.index, kw.get("crop")))
        return real(self, decoder, view, gt, **kw)

    over = [*MULTI, f"data.path={gt_test_scene}", "train.iterations=4", "experimental.crop_views=true"]
    trainer = start_or_resume(load_config(None, over), scene_loader, tmp_path / "a", resume=False)
    rects = cell_rectangles(trainer.scene, trainer.partition, trainer.cfg.experimental.crop_pad)
    cropped = 0
    for b, crops in enumerate(trainer.crops):
        assert set(crops) <= set(rects[b]) and set(rects[b]) == set(trainer.partition.blocks[b].camera_ids)
        for i, crop in crops.items():
            assert (crop.x0, crop.y0, crop.x1, crop.y1) == rects[b][i] and crop.share < 1.0
        cropped += len(crops)
    assert cropped > 0
    monkeypatch.setattr(Block, "forward_backward", recording)
    trainer.train_step()
    assert len(seen) == 2 and all(
        crop is trainer.crops[b].get(index) for (index, crop), b in zip(seen, (0, 1), strict=True)
    )
    assert any(crop is not None for _, crop in seen)

    for extra in (["experimental.crop_views=false"], ["partition.block_dim=[1,1,1]", "method.workers=1"]):
        cfg = load_config(None, [*over, *extra])
        whole = start_or_resume(cfg, scene_loader, tmp_path / extra[0].split("=")[0], resume=False)
        assert all(crops == {} for crops in whole.crops)


@pytest.mark.slow
def test_a_frozen_decoder_stops_learning_once_the_first_block_finishes(gt_test_scene, tmp_path):
    """With method.freeze_decoder_at_finish (the default) the shared decoder and its teacher change at every
    step until a block has all its iterations, and never after; the blocks still training go on learning
    their anchors, without the consistency term (a teacher that no longer moves has nothing to add)."""
    over = [*MULTI, f"data.path={gt_test_scene}"]
    assert load_config(None, over).method.freeze_decoder_at_finish  # the default
    trainer = start_or_resume(load_config(None, over), scene_loader, tmp_path / "run", resume=False)
    learnt, frozen_steps, before = [], 0, {}
    while not trainer.schedule.finished:
        frozen = trainer.schedule.any_finished
        assert trainer.decoders.frozen == frozen
        decoder = {k: v.clone() for k, v in trainer.decoder.state_dict().items()}
        teacher = [p.clone() for p in trainer.decoders.states[0].teacher.module.parameters()]
        results = trainer.train_step()
        moved = any(not torch.equal(v, trainer.decoder.state_dict()[k]) for k, v in decoder.items())
        now = trainer.decoders.states[0].teacher.module.parameters()
        teacher_moved = any(not torch.equal(a, b) for a, b in zip(teacher, now, strict=True))
        assert moved == teacher_moved == (not frozen)
        resident = trainer.residency.resident_blocks()
        features = {b: block.field.features.detach().clone() for b, block in resident}
        if frozen:
            frozen_steps += 1
            assert all(r.consistency == 0.0 for r in results.values())
            if frozen_steps > 1:  # the same blocks as one step before: their anchors still learn
                assert all(not torch.equal(before[b], features[b]) for b in results)
        else:
            learnt.append(any(r.consistency > 0 for r in results.values()))
        before = features
    # 4 blocks of 12 iterations on 2 workers in slots of 4: the first two finish at global step 20 of 24
    assert frozen_steps == 4 and len(learnt) == 20 and all(learnt[1:])

    # with a per-photo appearance table the table still learns while the MLPs are frozen
    with_table = load_config(None, [*over, "model.appearance=exposure"])
    trainer = start_or_resume(with_table, scene_loader, tmp_path / "table", resume=False)
    trainer.schedule.done_iterations[0] = trainer.schedule.iterations
    decoder = {k: v.clone() for k, v in trainer.decoder.state_dict().items()}
    trainer.train_step()
    moved = {k for k, v in decoder.items() if not torch.equal(v, trainer.decoder.state_dict()[k])}
    assert moved == {"appearance.weight"}

    # independent blocks have a decoder each, which nobody else moves: nothing to freeze; and the switch off
    for extra, name in (
        ("experimental.shared_decoder=false", "independent"),
        ("method.freeze_decoder_at_finish=false", "off"),
    ):
        trainer = start_or_resume(
            load_config(None, [*over, extra]), scene_loader, tmp_path / name, resume=False
        )
        trainer.schedule.done_iterations[0] = trainer.schedule.iterations
        assert trainer.schedule.any_finished and not trainer.decoders.frozen, name
