import math

import pytest
import torch

from momentumgs.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from momentumgs.train.schedule import ExpSchedule


def _state():
    g = torch.Generator().manual_seed(3)
    return {
        "iteration": 17,
        "params": {"features": torch.randn(5, 4, generator=g)},
        "rng": g.get_state(),
        "names": ["a", "b"],
    }


def test_round_trip_is_exact(tmp_path):
    path = tmp_path / "ckpt.pt"
    state = _state()
    save_checkpoint(path, state)
    loaded = load_checkpoint(path)
    assert loaded["iteration"] == 17 and loaded["names"] == ["a", "b"]
    assert torch.equal(loaded["params"]["features"], state["params"]["features"])
    assert torch.equal(loaded["rng"], state["rng"])
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp file left behind


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b[: len(b) // 2], "truncated"),
        (lambda b: b[:-10] + bytes(x ^ 0xFF for x in b[-10:]), "checksum mismatch"),
        (lambda b: b"PK" + b[2:], "bad magic"),
        (lambda b: b"", "bad magic"),
    ],
)
def test_damaged_checkpoint_is_a_clear_error(tmp_path, damage, message):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, _state())
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    """A write that dies halfway through the file (the disk fills) leaves the previous checkpoint as it was,
    and no partial file behind."""
    from momentumgs import io_utils

    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, _state())
    before = path.read_bytes()

    class HalfWrite:
        def __init__(self, file):
            self.file = file

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, data):
            self.file.write(data[: len(data) // 2])
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(io_utils, "open", lambda *a, **k: HalfWrite(open(*a, **k)), raising=False)
    new = _state()
    new["iteration"] = 18
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, new)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no partial file left behind


def test_exp_schedule_endpoints_and_log_linearity():
    s = ExpSchedule(0.01, 1e-4, 1000)
    assert s(0) == pytest.approx(0.01)
    assert s(1000) == pytest.approx(1e-4)
    assert s(5000) == pytest.approx(1e-4)  # held after max_steps
    assert math.log(s(500)) == pytest.approx(0.5 * (math.log(0.01) + math.log(1e-4)))
    delayed = ExpSchedule(0.01, 1e-4, 1000, delay_steps=100, delay_mult=0.01)
    assert delayed(0) == pytest.approx(1e-4)
    assert delayed(100) == pytest.approx(s(100))
    assert ExpSchedule(0.004, 0.004, 1000)(300) == 0.004


def test_atomic_files_get_the_usual_permissions(tmp_path):
    import os

    from momentumgs.io_utils import write_text_atomic

    path = tmp_path / "f.txt"
    write_text_atomic(path, "x")
    mask = os.umask(0)
    os.umask(mask)
    assert (path.stat().st_mode & 0o777) == 0o666 & ~mask
