"""metrics.jsonl: the run's training and evaluation records, one JSON object per line.

Two kinds (docs/formats.md, metrics.jsonl), both keyed by the global step:
    {"kind": "train", "step": S, "steps_per_s", "seconds", "peak_rss_mb", "skipped", "swap_seconds",
     "blocks": {"<id>": {"iteration", "loss", "l1", "ssim", "psnr", "consistency", "anchors", "gaussians",
                         "weight"}}}
    {"kind": "eval", "step": S, "split", "psnr", "ssim", "views",
     "blocks": {"<id>": {"psnr", "ssim", "views"}}}
A run of one block on one worker writes the same records with the single block "0".
"""

from __future__ import annotations

import json
from pathlib import Path

from momentumgs.errors import with_path
from momentumgs.io_utils import write_text_atomic

KINDS = ("train", "eval")


class MetricsLog:
    """Append-only JSON lines; on resume, lines past the checkpoint's step are dropped."""

    def __init__(self, path: Path):
        self.path = path

    def truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = [record for record in read_metrics(self.path) if record["step"] <= step]
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict) -> None:
        assert record.get("kind") in KINDS and "step" in record, record
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as exc:  # a failed write names no file
            named = with_path(exc, self.path)
            if named is exc:
                raise
            raise named from exc


def read_metrics(path: str | Path, kind: str | None = None) -> list[dict]:
    """The records of a metrics.jsonl (of `kind` only when given); a line cut short by a crash is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if (
            isinstance(record, dict)
            and record.get("kind") in KINDS
            and (kind is None or record["kind"] == kind)
        ):
            records.append(record)
    return records
