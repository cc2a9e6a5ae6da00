"""Per-block figures of a run: views, anchors, the last training PSNR and weight from metrics.jsonl, and the
test PSNR of the views whose camera stands in the block's cell (from the run's evaluation)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from momentumgs.data.scene import Scene
from momentumgs.partition import Partition
from momentumgs.train.metrics_log import read_metrics


def last_train_records(metrics_path: Path) -> dict[int, dict]:
    """Block id -> its last logged training record in metrics.jsonl."""
    records: dict[int, dict] = {}
    for record in read_metrics(metrics_path, kind="train"):
        for b, block in record["blocks"].items():
            records[int(b)] = block
    return records


def psnr_by_block(
    names: list[str], psnrs: list[float], scene: Scene, partition: Partition
) -> dict[int, float]:
    """Mean PSNR of the named views per block whose cell holds the view's camera centre."""
    camera_of = {c.name: c for c in scene.cameras}
    pairs = [(camera_of[n], float(p)) for n, p in zip(names, psnrs, strict=True) if n in camera_of]
    if not pairs:
        return {}
    owners = partition.block_of_points(np.stack([c.center for c, _ in pairs]))
    values: dict[int, list[float]] = {}
    for owner, (_, p) in zip(owners, pairs, strict=True):
        values.setdefault(int(owner), []).append(p)
    return {b: float(np.mean(v)) for b, v in values.items()}


def test_psnr_by_block(eval_path: Path, scene: Scene, partition: Partition) -> dict[int, float]:
    """`psnr_by_block` of the per-image table of an eval JSON (empty when there is none)."""
    if not eval_path.is_file():
        return {}
    per_image = json.loads(eval_path.read_text()).get("per_image", {})
    return psnr_by_block(per_image.get("image", []), per_image.get("psnr", []), scene, partition)


def block_metric_rows(
    run_dir: Path,
    scene: Scene | None,
    partition: Partition,
    model_info: dict,
    test_psnr: dict[int, float] | None = None,
) -> list[dict]:
    """One row per block: block, views, anchors, train_psnr, weight, test_psnr (None where unknown).
    `test_psnr` overrides the figures read from the run's eval/eval_test.json."""
    train = last_train_records(run_dir / "metrics.jsonl")
    if test_psnr is None:
        test_psnr = test_psnr_by_block(run_dir / "eval" / "eval_test.json", scene, partition) if scene else {}
    anchors = model_info.get("anchors_per_block") or []
    rows = []
    for b in partition.blocks:
        record = train.get(b.index, {})
        rows.append(
            {
                "block": b.index,
                "views": len(b.camera_ids),
                "anchors": anchors[b.index] if b.index < len(anchors) else None,
                "train_psnr": record.get("psnr"),
                "weight": record.get("weight"),
                "test_psnr": test_psnr.get(b.index),
            }
        )
    return rows


COLUMNS = (  # key, heading, format
    ("block", "block", "d"),
    ("views", "views", "d"),
    ("anchors", "anchors", "d"),
    ("train_psnr", "train PSNR", ".2f"),
    ("test_psnr", "test PSNR", ".2f"),
    ("weight", "weight", ".3f"),
)


def cell_text(value, spec: str) -> str:
    """A table cell: the formatted value, or an en dash where it is unknown."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(value, spec)


def metrics_markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(h for _, h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(cell_text(r[k], spec) for k, _, spec in COLUMNS) + " |")
    return "\n".join(lines)
