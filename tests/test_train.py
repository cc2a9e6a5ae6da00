"""Training one block over the whole scene (n = k = 1 of the one trainer) on the CPU: it learns, it runs the
method's code path, it resumes bit-exactly after SIGKILL, and it guards its files."""

import json
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import ONE_BLOCK, kill_once_written, one_thread_env, scene_loader, set_args, train_cmd

from momentumgs.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from momentumgs.config import load_config
from momentumgs.errors import UserError
from momentumgs.model.store import load_model
from momentumgs.run import train_run
from momentumgs.run_setup import start_or_resume
from momentumgs.train.metrics_log import read_metrics


def _anchor_count(trainer) -> int:
    (_, field), *_ = trainer.residency.block_fields()
    return field.n_anchors


@pytest.mark.slow
def test_training_raises_test_psnr(gt_test_scene, tmp_path):
    cfg = load_config(None, [*ONE_BLOCK, f"data.path={gt_test_scene}", "train.iterations=250"])
    trainer = start_or_resume(cfg, scene_loader, tmp_path / "run", resume=False)
    assert len(trainer.partition.blocks) == 1
    assert len(trainer.partition.blocks[0].camera_ids) == len(trainer.scene.train_ids)  # every train view
    before = trainer.evaluate_blocks()
    assert before["split"] == "test" and before["views"] == len(trainer.scene.test_ids)
    n_before = _anchor_count(trainer)
    train_run(trainer, progress=False)
    after = trainer.evaluate_blocks()
    assert after["psnr"] > before["psnr"] + 5.0, (before, after)
    assert after["psnr"] > 20.0, after
    # densification ran: growing or pruning changed the anchor count, and the model file is complete
    assert _anchor_count(trainer) != n_before
    model = load_model(tmp_path / "run" / "model.ckpt")
    (_, field), *_ = trainer.residency.block_fields()
    assert model.field.n_anchors == field.n_anchors
    assert torch.equal(model.field.features, field.features.detach())


@pytest.mark.slow
def test_one_block_runs_the_method(gt_test_scene, tmp_path):
    """A 1x1x1 grid is not a separate trainer: the momentum teacher and its consistency loss act on it, and
    `method.*` keys are honoured (here: no teacher when momentum is 0)."""
    base = [*ONE_BLOCK, f"data.path={gt_test_scene}", "train.iterations=30", "train.log_every=10"]
    trainer = start_or_resume(load_config(None, base), scene_loader, tmp_path / "with", resume=False)
    train_run(trainer, progress=False)
    teacher = trainer.decoders.states[0].teacher
    assert teacher is not None
    student = dict(trainer.decoder.named_parameters())
    assert any(
        not torch.equal(p, student[n]) for n, p in teacher.module.named_parameters()
    )  # an EMA, not a copy
    records = read_metrics(tmp_path / "with" / "metrics.jsonl", kind="train")
    assert [r["step"] for r in records] == [10, 20, 30]
    assert all(r["blocks"]["0"]["consistency"] > 0 and r["blocks"]["0"]["weight"] == 1.0 for r in records)

    off = load_config(None, [*base, "method.teacher.momentum=0"])
    plain = start_or_resume(off, scene_loader, tmp_path / "without", resume=False)
    train_run(plain, progress=False)
    assert plain.decoders.states[0].teacher is None
    records = read_metrics(tmp_path / "without" / "metrics.jsonl", kind="train")
    assert all(r["blocks"]["0"]["consistency"] == 0 for r in records)


@pytest.mark.slow
def test_eval_every_logs_test_metrics(gt_test_scene, tmp_path):
    over = [
        *ONE_BLOCK,
        f"data.path={gt_test_scene}",
        "train.iterations=20",
        "train.eval_every=10",
        "train.eval_views=2",
    ]
    trainer = start_or_resume(load_config(None, over), scene_loader, tmp_path / "run", resume=False)
    train_run(trainer, progress=False)
    evals = read_metrics(tmp_path / "run" / "metrics.jsonl", kind="eval")
    assert [r["step"] for r in evals] == [10]  # the last step is left to the final evaluation
    assert evals[0]["split"] == "test" and evals[0]["views"] == 2 and evals[0]["blocks"]["0"]["views"] == 2
    assert 5.0 < evals[0]["psnr"] < 60.0


def _run_args(scene, iterations):
    # 5 neural Gaussians per anchor (10 by default): a resume is exact whatever K is, at half the cost
    return set_args(
        [
            *ONE_BLOCK,
            f"data.path={scene}",
            f"train.iterations={iterations}",
            "train.checkpoint_every=10",
            "model.n_offsets=5",
        ]
    )


def _model_state(run: Path) -> dict:
    return load_checkpoint(run / "model.ckpt")


def _assert_same_model(run_a: Path, run_b: Path) -> None:
    """The two runs' merged anchors and decoders are bit-identical."""
    a, b = _model_state(run_a), _model_state(run_b)
    for name in ("features", "offsets", "log_scales", "positions"):
        assert torch.equal(a["anchors"][name], b["anchors"][name]), name
    for name, value in a["decoder"].items():
        assert torch.equal(value, b["decoder"][name]), name


@pytest.mark.slow
def test_killed_run_resumes_bit_identically(gt_test_scene, tmp_path):
    env = one_thread_env()
    iterations = 70
    unbroken = tmp_path / "unbroken"
    subprocess.run(
        train_cmd(*_run_args(gt_test_scene, iterations), "--out", str(unbroken)), check=True, env=env
    )

    def start(run: Path) -> subprocess.Popen:
        command = train_cmd(*_run_args(gt_test_scene, iterations), "--out", str(run))
        return subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )

    broken = tmp_path / "broken"
    proc = start(broken)
    ckpt = broken / "checkpoints" / "latest.json"
    kill_once_written(proc, ckpt, settle_s=0.3)  # let it run on past the checkpoint before the kill
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (broken / "model.ckpt").exists()
    killed_at = json.loads(ckpt.read_text())["step"]
    assert 0 < killed_at < iterations

    resumed = subprocess.run(
        train_cmd("--resume", str(broken)), check=True, env=env, capture_output=True, text=True
    )
    assert f"resuming at step {killed_at} " in resumed.stdout  # not silently restarted from 0
    _assert_same_model(unbroken, broken)
    # the metrics log holds each iteration once (lines past the checkpoint were dropped on resume)
    steps = [r["step"] for r in read_metrics(broken / "metrics.jsonl")]
    assert steps == sorted(set(steps)) and steps[-1] == iterations

    # SIGTERM: a checkpoint at the next step boundary, one line, exit code 128 + 15; the resume is exact
    stopped = tmp_path / "stopped"
    proc = start(stopped)
    kill_once_written(proc, stopped / "checkpoints" / "latest.json", settle_s=0.3, signum=signal.SIGTERM)
    err = proc.stderr.read()
    assert proc.returncode == 128 + signal.SIGTERM, err
    stopped_at = json.loads((stopped / "checkpoints" / "latest.json").read_text())["step"]
    assert err.strip().splitlines() == [
        f"momentumgs: {stopped}: stopped by SIGTERM at step {stopped_at} of {iterations}; checkpoint saved, "
        f"resume with `momentumgs train --resume {stopped}`"
    ]
    resumed = subprocess.run(
        train_cmd("--resume", str(stopped)), check=True, env=env, capture_output=True, text=True
    )
    assert f"resuming at step {stopped_at} " in resumed.stdout
    _assert_same_model(unbroken, stopped)


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot serialise")


@pytest.mark.slow
def test_corrupt_checkpoint_is_refused_and_left_alone(gt_test_scene, tmp_path):
    cfg = load_config(None, [*ONE_BLOCK, f"data.path={gt_test_scene}", "train.iterations=20"])
    run = tmp_path / "run"
    trainer = start_or_resume(cfg, scene_loader, run, resume=False)
    trainer.run(progress=False, stop_after=10)
    trainer.save_checkpoint()
    ckpt = run / "checkpoints" / "step_00000010" / "block_000.ckpt"
    good = ckpt.read_bytes()

    ckpt.write_bytes(good[: len(good) - 100])
    with pytest.raises(CheckpointError, match="truncated"):
        start_or_resume(None, scene_loader, run, resume=True)
    assert ckpt.read_bytes() == good[: len(good) - 100]  # the loader never rewrites what it refused

    # a failed save (here: unserialisable state) leaves the previous good checkpoint intact
    ckpt.write_bytes(good)
    with pytest.raises(RuntimeError, match="cannot serialise"):
        save_checkpoint(ckpt, {"bad": _Unpicklable()})
    assert ckpt.read_bytes() == good
    resumed = start_or_resume(None, scene_loader, run, resume=True)
    assert resumed.global_step == 10 and resumed.schedule.done_iterations == [10]


def test_new_run_refuses_a_non_empty_folder(gt_test_scene, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "precious.txt").write_text("keep me")
    cfg = load_config(None, [*ONE_BLOCK, f"data.path={gt_test_scene}"])
    with pytest.raises(UserError, match="not empty"):
        start_or_resume(cfg, scene_loader, run, resume=False)
    with pytest.raises(UserError, match="no checkpoint to resume"):
        start_or_resume(None, scene_loader, run, resume=True)
    assert [p.name for p in run.iterdir()] == ["precious.txt"]
