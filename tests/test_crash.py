"""Crashes of a multi-block run: SIGKILL inside a checkpoint write or a densification (one process, two
processes) resumes bit-exactly from the latest checkpoint; a worker process that dies stops the others within
seconds with one line; a resume in another process count is refused in one line; two torchrun agents (two
machines on one) train what one process emulates. The full campaign is tools/crash_campaign.py."""

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import one_thread_env, set_args, train_cmd

from momentumgs.config import load_config
from momentumgs.errors import UserError
from momentumgs.run_launch import training_processes
from momentumgs.run_setup import start_or_resume
from momentumgs.train.checkpoints import checkpoint_processes

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import crash_campaign as campaign  # noqa: E402

QUICK = (
    campaign.QUICK
)  # 4 blocks on 2 workers, 24 global steps, a checkpoint every 4, every idle block spilled
TOTAL = 24
pytestmark = pytest.mark.slow


def _two_cores():
    import os

    if (os.cpu_count() or 1) < 2:
        pytest.skip("two worker processes need two cores")


def _args(scene, run) -> list[str]:
    return [*set_args([*QUICK, f"data.path={scene}"]), "--out", str(run)]


@pytest.fixture(scope="module")
def unbroken(gt_test_scene, tmp_path_factory):
    """The run trained without a break in one process (every worker emulated)."""
    run = tmp_path_factory.mktemp("unbroken") / "run"
    subprocess.run(train_cmd(*_args(gt_test_scene, run)), check=True, env=one_thread_env(), timeout=600)
    return run


def _kill_at(scene, tmp_path, processes: int, target: str) -> tuple[Path, dict]:
    """Start the run, SIGKILL its whole process tree at the crash point `target` -> (run, the hit)."""
    run, crash_dir = tmp_path / "run", tmp_path / "crash"
    cmd = campaign.train_command("--no-eval", *_args(scene, run), processes=processes)
    got = campaign.run_until(cmd, campaign.hooked_env(crash_dir, target), crash_dir, timeout_s=600)
    assert got.killed, f"the run ended before its kill: {got.stderr[-2000:]}"
    assert not (run / "model.ckpt").exists()
    return run, json.loads((crash_dir / "hit.json").read_text())


def _resume(run: Path, expected_step: int) -> None:
    """`momentumgs train --resume RUN` (its default process count) finishes from `expected_step`."""
    done = subprocess.run(
        train_cmd("--resume", run, processes=None),
        capture_output=True,
        text=True,
        env=one_thread_env(),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming at step {expected_step} of {TOTAL} " in done.stdout  # not silently restarted from 0


@pytest.mark.parametrize(
    "processes, target, point, step",
    [
        (1, "checkpoint:7:0", "checkpoint", 8),  # step 8's folder half written: block 0 and 1 of 4
        (2, "densify:2:1", "densify", 7),  # rank 1 grew its block's anchors at step 7, not yet saved
    ],
)
def test_killed_run_resumes_bit_exactly(gt_test_scene, tmp_path, unbroken, processes, target, point, step):
    if processes > 1:
        _two_cores()
    run, hit = _kill_at(gt_test_scene, tmp_path, processes, target)
    assert (hit["point"], hit["step"]) == (point, step)
    assert campaign.latest_step(run) == 4  # step 8's checkpoint never completed
    assert checkpoint_processes(run) == processes
    _resume(run, 4)
    assert campaign.differences(run, unbroken) == []


def test_dead_worker_stops_the_others_in_seconds_with_one_line(gt_test_scene, tmp_path, unbroken):
    """Rank 1 dies (SIGKILL) while writing its part of the step-8 checkpoint; rank 0 waits for it at the
    checkpoint's barrier. The run stops at once, one line names the lost rank and the resume command."""
    _two_cores()
    run, crash_dir = tmp_path / "run", tmp_path / "crash"
    crash_dir.mkdir()
    cmd = campaign.train_command("--no-eval", *_args(gt_test_scene, run), processes=2)
    # rank 1 writes blocks 1, 3 and shared_rank1 of step 4, then the first file of step 8
    env = campaign.hooked_env(crash_dir, "checkpoint:4:1")
    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    hit = crash_dir / "hit.json"
    deadline = time.time() + 600
    while not hit.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert hit.exists(), f"rank 1 never reached the crash point: {proc.communicate()[1][-3000:]}"
    record = json.loads(hit.read_text())
    assert (record["rank"], record["step"]) == (1, 8)
    import os

    os.kill(record["pid"], signal.SIGKILL)
    killed = time.time()
    out, err = proc.communicate(timeout=120)
    stop_s = time.time() - killed
    print(f"the run stopped {stop_s:.1f} s after its rank 1 died")
    assert proc.returncode != 0
    assert stop_s < 30
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [
        f"momentumgs: error: {run}: lost worker process rank 1 of 2 (killed by SIGKILL); the others stopped; "
        f"resume from step 4 with `momentumgs train --resume {run}`"
    ]
    _resume(run, 4)
    assert campaign.differences(run, unbroken) == []


def test_resume_with_another_process_count_is_refused_in_one_line(gt_test_scene, tmp_path):
    """A checkpoint holds each process's own state: a resume uses the count that wrote it (the default) and
    refuses another, in one line, in the CLI, in a torchrun job's worker and in code."""
    cfg = load_config(None, [*QUICK, f"data.path={gt_test_scene}"])
    run = tmp_path / "run"
    trainer = start_or_resume(cfg, campaign_scene_loader, run, resume=False)
    trainer.run(progress=False, stop_after=4)
    trainer.save_checkpoint()
    del trainer
    assert training_processes(cfg, None, live_view=False, resume_dir=run) == 1  # not the 2 of this machine
    refused = subprocess.run(
        train_cmd("--resume", run, processes=2),
        capture_output=True,
        text=True,
        env=one_thread_env(),
        timeout=300,
    )
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"momentumgs: error: --processes 2: the checkpoint of {run} was written by 1 process; resume it in 1 "
        f"(`momentumgs train --resume {run}` does)"
    ]
    # a checkpoint of 2 processes (one shared state each) asked to resume in 1
    step_dir = run / "checkpoints" / "step_00000004"
    (step_dir / "shared_rank1.ckpt").write_bytes((step_dir / "shared_rank0.ckpt").read_bytes())
    with pytest.raises(UserError, match=r"--processes 1: the checkpoint of .* was written by 2 processes"):
        training_processes(cfg, 1, live_view=False, resume_dir=run)
    with pytest.raises(UserError, match=r"1 process: the checkpoint of .* was written by 2 processes"):
        start_or_resume(None, campaign_scene_loader, run, resume=True)


def test_resume_before_the_first_checkpoint_says_to_start_again(tmp_path):
    """A run killed before its first checkpoint left its config and partition only: the resume says so."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("")
    done = subprocess.run(train_cmd("--resume", run), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"momentumgs: error: {run}: no checkpoint to resume (expected {run}/checkpoints/latest.json); "
        "the run stopped before its first checkpoint: start it again in an empty folder"
    ]


def campaign_scene_loader(cfg):
    from helpers import scene_loader

    return scene_loader(cfg)


def _readme_multi_node_command() -> str:
    text = (ROOT / "README.md").read_text()
    (line,) = [line for line in text.splitlines() if line.startswith("torchrun --nnodes")]
    return line.split("   #")[0].strip()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_machines_simulated_on_one_train_what_one_process_emulates(gt_test_scene, tmp_path, unbroken):
    """The README's multi-node line, run twice on this machine (node ranks 0 and 1, one worker each, c10d
    rendezvous on localhost), writes the same run folder (the shared-filesystem assumption) and trains the
    model of the one-process emulation, tensor for tensor."""
    _two_cores()
    command = _readme_multi_node_command()
    assert re.search(r"--nnodes=2 --node-rank=0 --nproc-per-node=1 --rdzv-backend=c10d", command)
    run, port = tmp_path / "run", _free_port()
    command = (
        command.replace("torchrun ", f"{sys.executable} -m torch.distributed.run ")
        .replace("host0:29400", f"localhost:{port}")
        .replace("--scene scene/", f"--scene {gt_test_scene}")
        .replace("--out shared/runs/my_scene", f"--out {run}")
        .replace(" -c configs/demo.yaml", "")  # the test's small settings instead
    )
    agents = []
    for node in (0, 1):
        argv = command.replace("--node-rank=0", f"--node-rank={node}").split()
        argv += ["--no-progress", "--no-eval", *set_args(QUICK)]
        agents.append(
            subprocess.Popen(argv, env=one_thread_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        )
    outputs = [agent.communicate(timeout=600)[0].decode() for agent in agents]
    for agent, output in zip(agents, outputs, strict=True):
        assert agent.returncode == 0, output[-3000:]
    assert checkpoint_processes(run) == 2  # two processes, one per "machine"
    assert campaign.differences(run, unbroken) == []
