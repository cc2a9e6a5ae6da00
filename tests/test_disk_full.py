"""A disk that fills while training: one line naming the file and the cause, exit code 2, the last complete
checkpoint intact, and `train --resume` finishes the run bit-exact once space is free. Other write errors name
their file and their own fix (a removed run folder is not a full disk). The fault is injected
inside the real write path (`momentumgs.io_utils`), part-way through a file; the same check run with a
non-atomic writer fails, so it can tell."""

import builtins
import contextlib
import errno
import json
import os
from pathlib import Path

import pytest
import torch
from helpers import MULTI, block_anchors, scene_loader

from momentumgs import io_utils
from momentumgs.checkpoint import verify_checkpoint
from momentumgs.cli import main
from momentumgs.config import load_config
from momentumgs.model.store import load_model
from momentumgs.run import train_run
from momentumgs.run_setup import start_or_resume


class FullDisk:
    """`open` for momentumgs.io_utils: the `after`+1-th file opened for writing whose name contains `name`
    receives half of its bytes, then the write fails with ENOSPC."""

    def __init__(self, name: str, after: int = 0):
        self.name, self.after, self.failures = name, after, 0

    def open(self, path, mode="r", *args, **kwargs):
        f = builtins.open(path, mode, *args, **kwargs)
        if "w" in mode and self.name in Path(path).name:
            if self.after == 0:
                return _HalfWrite(f, self)
            self.after -= 1
        return f


class _HalfWrite:
    def __init__(self, f, disk: FullDisk):
        self.f, self.disk = f, disk

    def write(self, data: bytes) -> int:
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        self.disk.failures += 1
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.f.name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@contextlib.contextmanager
def non_atomic_path(target):
    """What a plain writer does: write over the target itself."""
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    yield Path(target)


ARGS = ["train.checkpoint_every=4", "train.iterations=8"]  # 16 global steps: checkpoints at 4, 8, 12, 16


def _train_args(scene, run) -> list[str]:
    args = ["train", "--processes", "1", "--no-eval", "--no-progress", "--out", str(run)]
    for item in [*MULTI, *ARGS, f"data.path={scene}"]:
        args += ["--set", item]
    return args


def _run_until_the_disk_fills(scene, run, monkeypatch, capsys) -> tuple[int, str]:
    """Train `run` through the CLI; the third write of latest.json (step 12) meets a full disk."""
    monkeypatch.setattr(io_utils, "open", FullDisk("latest.json", after=2).open, raising=False)
    code = main(_train_args(scene, run))
    monkeypatch.undo()  # space is free again
    return code, capsys.readouterr().err


def _latest_names_step_8(run: Path) -> bool:
    """latest.json still names the complete checkpoint of step 8, and every file in it is intact."""
    try:
        latest = json.loads((run / "checkpoints" / "latest.json").read_text())
    except (OSError, ValueError):
        return False
    step_dir = run / "checkpoints" / latest["dir"]
    for file in step_dir.iterdir():
        verify_checkpoint(file)
    return latest == {"step": 8, "dir": "step_00000008"} and len(list(step_dir.iterdir())) == 5


@pytest.mark.slow
def test_a_full_disk_stops_training_with_one_line_and_resume_finishes_bit_exact(
    gt_test_scene, tmp_path, monkeypatch, capsys
):
    run = tmp_path / "run"
    code, err = _run_until_the_disk_fills(gt_test_scene, run, monkeypatch, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert "latest.json" in lines[0] and "No space left on device" in lines[0]
    assert "step_00000008" in lines[0] and f"--resume {run}" in lines[0]
    assert _latest_names_step_8(run)

    torch.manual_seed(1)  # another process state: the resume must restore everything
    assert main(["train", "--resume", str(run), "--processes", "1", "--no-eval", "--no-progress"]) == 0
    assert "resuming at step 8 of 16" in capsys.readouterr().out

    cfg = load_config(None, [*MULTI, *ARGS, f"data.path={gt_test_scene}"])
    train_run(start_or_resume(cfg, scene_loader, tmp_path / "unbroken", resume=False), progress=False)
    for a, b in zip(block_anchors(tmp_path / "unbroken"), block_anchors(run), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a if torch.is_tensor(a[k]))
    da, db = (load_model(r / "model.ckpt").decoder.state_dict() for r in (tmp_path / "unbroken", run))
    assert all(torch.equal(da[k], db[k]) for k in da)


@pytest.mark.slow
def test_the_check_fails_with_a_non_atomic_writer(gt_test_scene, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(io_utils, "atomic_path", non_atomic_path)
    code, err = _run_until_the_disk_fills(gt_test_scene, tmp_path / "run", monkeypatch, capsys)
    assert code == 2 and "latest.json: No space left on device" in err
    assert not _latest_names_step_8(tmp_path / "run")  # half a latest.json: the check sees it


class _FailingWrite:
    """A file opened for appending whose write fails with `errno` and, like a real failed write, names no
    file."""

    def __init__(self, path, mode="r", *args, **kwargs):
        self.errno = _FailingWrite.errno

    def write(self, data: str) -> int:
        raise OSError(self.errno, os.strerror(self.errno))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


@pytest.fixture
def small_trainer(gt_test_scene, tmp_path):
    cfg = load_config(None, [*MULTI, "train.checkpoint_every=4", f"data.path={gt_test_scene}"])
    trainer = start_or_resume(cfg, scene_loader, tmp_path / "run", resume=False)
    trainer.run(progress=False, stop_after=4)  # the checkpoint of step 4
    return trainer


@pytest.mark.slow
def test_a_write_error_names_its_file_and_the_fix_that_fits_it(small_trainer, monkeypatch):
    """Only a full disk (or quota) asks for free space; every line names the file that failed."""
    from momentumgs.errors import UserError
    from momentumgs.train import metrics_log

    run = small_trainer.paths.root
    monkeypatch.setattr(metrics_log, "open", _FailingWrite, raising=False)
    fixes = {
        errno.ENOSPC: "free space on its disk",
        errno.EDQUOT: "free space on its disk",
        errno.EACCES: "make it writable",
        errno.EIO: "fix the cause",
    }
    for number, fix in fixes.items():
        _FailingWrite.errno = number
        with pytest.raises(UserError) as info:
            small_trainer.run(progress=False, stop_after=4)
        step = small_trainer.global_step
        assert str(info.value) == (
            f"{run / 'metrics.jsonl'}: {os.strerror(number)}; training stopped at step {step}, the last "
            f"complete checkpoint (step_00000004) is intact; {fix} and resume with "
            f"`momentumgs train --resume {run}`"
        )


@pytest.mark.slow
def test_a_run_folder_removed_while_training_is_not_a_full_disk(small_trainer):
    import shutil

    from momentumgs.errors import UserError

    run = small_trainer.paths.root
    shutil.rmtree(run)
    with pytest.raises(UserError) as info:
        small_trainer.run(progress=False, stop_after=4)
    assert str(info.value) == (
        f"{run / 'metrics.jsonl'}: No such file or directory; training stopped at step 8: the run folder "
        f"{run} was removed (its config.yaml is gone), nothing is left to resume; train the run again"
    )


FULL_DISK_IN_RANK_1 = '''
"""Loaded at start-up by the processes of the test's run: in the worker of rank 1, the checkpoint files it
writes from the `after`+1-th on meet a full disk (a failed write names no file)."""
import errno
import os

if os.environ.get("RANK") == "1":
    import builtins

    from momentumgs import io_utils

    written = [0]

    class _Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def _open(path, mode="r", *args, **kwargs):
        f = builtins.open(path, mode, *args, **kwargs)
        if "w" in mode and ".ckpt." in os.path.basename(str(path)):
            written[0] += 1
            if written[0] > AFTER:
                return _Full(f)
        return f

    io_utils.open = _open
'''


@pytest.mark.slow
def test_a_full_disk_in_one_of_two_processes_is_one_line_with_the_path(gt_test_scene, tmp_path):
    """Rank 1's disk fills while it writes its part of the step-8 checkpoint: the run prints rank 1's line
    (the file, the cause, free space and resume), once; not "lost worker process rank 1 (SIGTERM)"."""
    import subprocess
    import sys

    from helpers import one_thread_env

    if (os.cpu_count() or 1) < 2:
        pytest.skip("two worker processes need two cores")
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    # rank 1 writes blocks 1 and 3 and its shared state at each checkpoint: the 4th file is step 8's first
    (hooks / "sitecustomize.py").write_text(FULL_DISK_IN_RANK_1.replace("AFTER", "3"))
    env = one_thread_env()
    env["PYTHONPATH"] = os.pathsep.join([str(hooks), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    run = tmp_path / "run"
    args = _train_args(gt_test_scene, run)
    args[args.index("--processes") + 1] = "2"
    proc = subprocess.run(
        [sys.executable, "-m", "momentumgs.cli", *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.splitlines() == [
        f"momentumgs: error: {run}/checkpoints/step_00000008/block_001.ckpt: No space left on device; "
        "training stopped at step 8, the last complete checkpoint (step_00000004) is intact; free space on "
        f"its disk and resume with `momentumgs train --resume {run}`"
    ]
