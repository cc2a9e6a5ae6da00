"""The phase timer: exclusive nesting, thread scoping, and the phases a real training step reports."""

import threading
import time

import pytest
import torch
from helpers import scene_loader

from momentumgs.config import load_config
from momentumgs.run_setup import start_or_resume
from momentumgs.timing import PhaseTimer, phase


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_nested_phases_are_charged_exclusively_and_add_up_to_the_wall_time():
    t0 = time.perf_counter()
    with PhaseTimer() as timer:
        with phase("outer"):
            _busy(0.02)
            with phase("inner"):
                _busy(0.03)
            _busy(0.01)
        _busy(0.005)
    wall = time.perf_counter() - t0
    assert timer.seconds["inner"] == pytest.approx(0.03, abs=0.01)
    assert timer.seconds["outer"] == pytest.approx(0.03, abs=0.01)
    assert timer.seconds["other"] == pytest.approx(0.005, abs=0.01)
    assert timer.total() == pytest.approx(wall, abs=0.002)
    assert timer.calls == {"outer": 1, "inner": 1}


def test_phase_is_a_noop_without_a_timer_and_on_other_threads():
    with phase("nothing"):  # no timer: nothing to record, nothing raised
        pass
    with PhaseTimer() as timer:
        worker = threading.Thread(target=lambda: [phase("elsewhere").__enter__() for _ in range(3)])
        worker.start()
        worker.join()
        with phase("here"):
            pass
    assert "elsewhere" not in timer.calls
    assert timer.calls == {"here": 1}
    with pytest.raises(RuntimeError, match="already active"):
        with PhaseTimer(), PhaseTimer():
            pass


def test_a_training_step_reports_its_phases(gt_test_scene, tmp_path):
    torch.set_num_threads(1)
    cfg = load_config(
        None,
        [
            "partition.block_dim=[1,1,1]",
            "data.downscale=4",
            "train.device=cpu",
            "train.eval_every=0",
            f"data.path={gt_test_scene}",
            "train.iterations=20",
        ],
    )
    trainer = start_or_resume(cfg, scene_loader, tmp_path / "run", resume=False)
    trainer.train_step()  # warm-up
    t0 = time.perf_counter()
    with PhaseTimer() as timer:
        for _ in range(3):
            trainer.train_step()
    wall = time.perf_counter() - t0
    for name in ("data", "prefilter", "decode", "rasterize", "loss", "backward", "optimizer"):
        assert timer.calls[name] >= 3, name
        assert timer.seconds[name] > 0, name
    # the CPU rasterizer's hand-written backward runs inside loss.backward() and is charged separately
    assert timer.calls["rasterize_backward"] == 3
    assert timer.total() == pytest.approx(wall, rel=0.05)
    assert timer.seconds["other"] < 0.1 * wall
