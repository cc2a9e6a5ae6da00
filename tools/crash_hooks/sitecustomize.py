"""Named crash points for tools/crash_campaign.py, loaded into every Python process of a training run.

This folder goes on PYTHONPATH of the run the campaign starts (never of a user's run), so Python imports
this file at start-up in the `momentumgs train` process, the torchrun agent and each worker. It does nothing
unless MOMENTUMGS_CRASH_DIR is set. Then, right after one of the modules below is imported, it wraps the
functions where a crash is interesting; each call of a wrapped function is a *hit* of its point, appended to
DIR/trace-PID.jsonl as {"point", "n", "step", "rank", "detail", "t"}. With MOMENTUMGS_CRASH_AT=POINT:N:RANK
the N-th hit of POINT in the process of that rank writes DIR/hit.json and then sleeps, so that the
campaign's SIGKILL lands while the process is inside that point.

Points: checkpoint (after one file of a step folder is written, before the others and latest.json),
spill_write / prefetch (the block store's I/O thread about to write / read a block's spill file), densify
(anchors grown and pruned in memory, not yet saved), merge (the final block files written, model.ckpt not
yet), eval_blocks (the periodic evaluation, one block rendered), eval_final (the final evaluation, one view
measured).
"""

from __future__ import annotations

import functools
import importlib.abc
import json
import os
import sys
import threading
import time
from pathlib import Path

CRASH_DIR = os.environ.get("MOMENTUMGS_CRASH_DIR")
_counts: dict[str, int] = {}
_lock = threading.Lock()
_step = [None]  # global steps completed in this process (None before training)
_evaluating = [False]  # inside Trainer.evaluate_blocks


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _target() -> tuple[str, int, int] | None:
    spec = os.environ.get("MOMENTUMGS_CRASH_AT")
    if not spec:
        return None
    point, n, rank = spec.split(":")
    return point, int(n), int(rank)


def hit(point: str, detail: str = "") -> None:
    """Record a hit of `point`; pause for ever when it is the targeted one."""
    with _lock:
        n = _counts[point] = _counts.get(point, 0) + 1
        record = {
            "point": point,
            "n": n,
            "step": _step[0],
            "rank": _rank(),
            "detail": detail,
            "t": time.time(),
        }
        if "RANK" not in os.environ and _step[0] is None and point == "eval_final":
            record["parent"] = True  # `momentumgs train` evaluates after its torchrun workers finished
        Path(CRASH_DIR).mkdir(parents=True, exist_ok=True)
        with open(Path(CRASH_DIR) / f"trace-{os.getpid()}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
    if _target() == (point, n, _rank()):
        tmp = Path(CRASH_DIR) / f".hit-{os.getpid()}.json"
        tmp.write_text(json.dumps({**record, "pid": os.getpid()}))
        os.replace(tmp, Path(CRASH_DIR) / "hit.json")
        while True:  # the campaign kills this process here
            time.sleep(60)


def _after(fn, point: str, detail=lambda *a, **k: "", when=lambda *a, **k: True):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        out = fn(*args, **kwargs)
        if when(*args, **kwargs):
            hit(point, detail(*args, **kwargs))
        return out

    return wrapper


def _before(fn, point: str, detail=lambda *a, **k: "", when=lambda *a, **k: True):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if when(*args, **kwargs):
            hit(point, detail(*args, **kwargs))
        return fn(*args, **kwargs)

    return wrapper


def _in_step_dir(path, *_, **__) -> bool:
    return Path(path).parent.name.startswith("step_")


def _patch_checkpoint(module) -> None:
    real = module.save_checkpoint

    @functools.wraps(real)
    def save_checkpoint(path, state, *args, **kwargs):
        real(path, state, *args, **kwargs)
        if _in_step_dir(path):
            hit("checkpoint", f"{Path(path).parent.name}/{Path(path).name}")

    module.save_checkpoint = save_checkpoint


def _patch_spill(module) -> None:
    module.write_spill = _before(module.write_spill, "spill_write", lambda p, *_: Path(p).name)
    module.read_spill = _before(module.read_spill, "prefetch", lambda p, *_: Path(p).name)


def _patch_densify(module) -> None:
    module.adjust_anchors = _after(module.adjust_anchors, "densify")


def _patch_merge(module) -> None:
    module.final_model = _before(module.final_model, "merge")


def _patch_measure(module) -> None:
    # view_metrics also measures block quality for the weighting: count only the evaluation's calls
    module.view_metrics = _after(module.view_metrics, "eval_blocks", when=lambda *a, **k: _evaluating[0])


def _patch_eval(module) -> None:
    module.image_metrics = _after(module.image_metrics, "eval_final")


def _patch_trainer(module) -> None:
    real = module.Trainer.train_step

    @functools.wraps(real)
    def train_step(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        _step[0] = self.global_step
        return out

    real_load = module.Trainer.load_checkpoint

    @functools.wraps(real_load)
    def load_checkpoint(self, *args, **kwargs):
        out = real_load(self, *args, **kwargs)
        _step[0] = self.global_step
        return out

    real_eval = module.Trainer.evaluate_blocks

    @functools.wraps(real_eval)
    def evaluate_blocks(self, *args, **kwargs):
        _evaluating[0] = True
        try:
            return real_eval(self, *args, **kwargs)
        finally:
            _evaluating[0] = False

    module.Trainer.train_step = train_step
    module.Trainer.evaluate_blocks = evaluate_blocks
    module.Trainer.load_checkpoint = load_checkpoint


# modules are patched right after they run, before anyone binds their names (`from x import f`)
PATCHES = {
    "momentumgs.checkpoint": _patch_checkpoint,
    "momentumgs.train.spill_file": _patch_spill,
    "momentumgs.model.densify": _patch_densify,
    "momentumgs.train.assemble": _patch_merge,
    "momentumgs.train.measure": _patch_measure,
    "momentumgs.eval.measure": _patch_eval,
    "momentumgs.train.trainer": _patch_trainer,
}


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in PATCHES:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        real_exec = spec.loader.exec_module

        def exec_module(module):
            real_exec(module)
            PATCHES[name](module)

        spec.loader.exec_module = exec_module
        return spec


if CRASH_DIR:
    sys.meta_path.insert(0, _PatchAfterImport())
