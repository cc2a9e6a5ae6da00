"""Training one block on the CPU: it learns, it resumes bit-exactly after SIGKILL, and it guards its files."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from momentumgs.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from momentumgs.config import load_config
from momentumgs.data.colmap import load_colmap_scene
from momentumgs.errors import UserError
from momentumgs.model.store import load_model
from momentumgs.train.trainer import start_or_resume

# 64x48 views (the 256x192 test city downscaled by 4), densification early and often.
SMALL = [
    "partition.block_dim=[1,1,1]",  # one block over the whole scene: the single-block trainer
    "data.downscale=4",
    "train.threads=1",
    "train.device=cpu",
    "train.eval_every=0",
    "train.log_every=5",
    "train.densify.start_iter=10",
    "train.densify.after_iter=10",
    "train.densify.interval=10",
    "train.densify.end_iter=1000",
]


def _scene_loader(cfg):
    return load_colmap_scene(cfg.data.path, downscale=cfg.data.downscale, test_every=cfg.data.test_every)


def test_training_raises_test_psnr(gt_test_scene, tmp_path):
    cfg = load_config(None, [*SMALL, f"data.path={gt_test_scene}", "train.iterations=250"])
    trainer = start_or_resume(cfg, _scene_loader, tmp_path / "run", resume=False)
    before = trainer.quick_eval()["test_psnr"]
    n_before = trainer.block.field.n_anchors
    trainer.run(progress=False)
    after = trainer.quick_eval()["test_psnr"]
    assert after > before + 5.0, (before, after)
    assert after > 20.0, after
    # densification ran: growing or pruning changed the anchor count, and the model file is complete
    assert trainer.block.field.n_anchors != n_before
    model = load_model(tmp_path / "run" / "model.ckpt")
    assert model.field.n_anchors == trainer.block.field.n_anchors
    assert torch.equal(model.field.features, trainer.block.field.features.detach())


def _train_cmd(*args):
    return [sys.executable, "-m", "momentumgs.cli", "train", "--no-progress", "--no-eval", *args]


def _run_args(scene, iterations):
    args = []
    for item in [*SMALL, f"data.path={scene}", f"train.iterations={iterations}", "train.checkpoint_every=10"]:
        args += ["--set", item]
    return args


def _model_state(run: Path) -> dict:
    return load_checkpoint(run / "model.ckpt")


def test_killed_run_resumes_bit_identically(gt_test_scene, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    iterations = 70
    unbroken = tmp_path / "unbroken"
    subprocess.run(
        _train_cmd(*_run_args(gt_test_scene, iterations), "--out", str(unbroken)), check=True, env=env
    )

    broken = tmp_path / "broken"
    proc = subprocess.Popen(
        _train_cmd(*_run_args(gt_test_scene, iterations), "--out", str(broken)),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpt = broken / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # let it run on past the checkpoint before the kill
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (broken / "model.ckpt").exists()
    killed_at = load_checkpoint(ckpt)["block"]["iteration"]
    assert 0 < killed_at < iterations

    subprocess.run(_train_cmd("--resume", str(broken)), check=True, env=env)
    a, b = _model_state(unbroken), _model_state(broken)
    for name in ("features", "offsets", "log_scales", "positions"):
        assert torch.equal(a["anchors"][name], b["anchors"][name]), name
    for name, value in a["decoder"].items():
        assert torch.equal(value, b["decoder"][name]), name
    # the metrics log holds each iteration once (lines past the checkpoint were dropped on resume)
    lines = (broken / "metrics.jsonl").read_text().splitlines()
    its = [int(line.split('"iteration": ')[1].split(",")[0].rstrip("}")) for line in lines]
    assert its == sorted(set(its))


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot serialise")


def test_corrupt_checkpoint_is_refused_and_left_alone(gt_test_scene, tmp_path):
    cfg = load_config(None, [*SMALL, f"data.path={gt_test_scene}", "train.iterations=20"])
    run = tmp_path / "run"
    trainer = start_or_resume(cfg, _scene_loader, run, resume=False)
    trainer.run(progress=False, stop_after=10)
    trainer.save_checkpoint()
    ckpt = run / "checkpoints" / "last.ckpt"
    good = ckpt.read_bytes()

    ckpt.write_bytes(good[: len(good) - 100])
    with pytest.raises(CheckpointError, match="truncated"):
        start_or_resume(None, _scene_loader, run, resume=True)
    assert ckpt.read_bytes() == good[: len(good) - 100]  # the loader never rewrites what it refused

    # a failed save (here: unserialisable state) leaves the previous good checkpoint intact
    ckpt.write_bytes(good)
    with pytest.raises(RuntimeError, match="cannot serialise"):
        save_checkpoint(ckpt, {"bad": _Unpicklable()})
    assert ckpt.read_bytes() == good
    resumed = start_or_resume(None, _scene_loader, run, resume=True)
    assert resumed.block.iteration == 10


def test_new_run_refuses_a_non_empty_folder(gt_test_scene, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "precious.txt").write_text("keep me")
    cfg = load_config(None, [*SMALL, f"data.path={gt_test_scene}"])
    with pytest.raises(UserError, match="not empty"):
        start_or_resume(cfg, _scene_loader, run, resume=False)
    with pytest.raises(UserError, match="no checkpoint to resume"):
        start_or_resume(None, _scene_loader, run, resume=True)
    assert [p.name for p in run.iterdir()] == ["precious.txt"]
