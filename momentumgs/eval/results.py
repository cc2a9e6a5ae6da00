"""The result of an evaluation (`eval/measure.py`) and its files: `<stem>_per_image.csv` and `<stem>.json`."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from momentumgs.io_utils import write_text_atomic

# Column order of the per-image table; "_cc" = after the per-image colour correction.
METRIC_NAMES = (
    "psnr",
    "ssim",
    "lpips_vgg",
    "lpips_alex",
    "psnr_cc",
    "ssim_cc",
    "lpips_vgg_cc",
    "lpips_alex_cc",
)


@dataclass
class EvalResult:
    names: list[str]  # image names, one per row
    per_image: dict[str, list[float]]  # metric -> one value per image
    render_seconds: list[float]  # wall time of each render (metrics excluded)
    peak_rss_mb: float
    peak_cuda_mb: float | None
    extra: dict = field(default_factory=dict)

    @property
    def means(self) -> dict[str, float]:
        return {k: float(np.mean(v)) for k, v in self.per_image.items() if v}

    @property
    def fps(self) -> float:
        # The first render pays for warm-up (allocations, kernel builds): leave it out when others exist.
        times = self.render_seconds[1:] or self.render_seconds
        return float(len(times) / max(sum(times), 1e-12))

    def summary(self) -> dict:
        return {
            "views": len(self.names),
            "means": self.means,
            "fps": self.fps,
            "peak_rss_mb": self.peak_rss_mb,
            "peak_cuda_mb": self.peak_cuda_mb,
            "lpips_input": "official [-1, 1] (normalize=True)",
            **self.extra,
        }

    def format(self) -> str:
        m = self.means
        lines = [
            f"{len(self.names)} test views, {self.fps:.1f} FPS, peak RSS {self.peak_rss_mb:.0f} MB"
            + (f", peak CUDA {self.peak_cuda_mb:.0f} MB" if self.peak_cuda_mb is not None else ""),
            f"  raw:              PSNR {m['psnr']:.2f}  SSIM {m['ssim']:.4f}  "
            f"LPIPS-VGG {m['lpips_vgg']:.4f}  LPIPS-Alex {m['lpips_alex']:.4f}",
            f"  colour-corrected: PSNR {m['psnr_cc']:.2f}  SSIM {m['ssim_cc']:.4f}  "
            f"LPIPS-VGG {m['lpips_vgg_cc']:.4f}  LPIPS-Alex {m['lpips_alex_cc']:.4f}",
        ]
        return "\n".join(lines)


def write_eval(result: EvalResult, out_dir: str | Path, stem: str = "eval") -> tuple[Path, Path]:
    """Write `<stem>_per_image.csv` and `<stem>.json` (means, FPS, memory, per-image rows) atomically."""
    out_dir = Path(out_dir)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["image", *METRIC_NAMES, "render_seconds"])
    for row, name in enumerate(result.names):
        values = [f"{result.per_image[k][row]:.6f}" for k in METRIC_NAMES]
        writer.writerow([name, *values, f"{result.render_seconds[row]:.6f}"])
    csv_path, json_path = out_dir / f"{stem}_per_image.csv", out_dir / f"{stem}.json"
    write_text_atomic(csv_path, buffer.getvalue())
    payload = {
        **result.summary(),
        "per_image": {"image": result.names, **result.per_image},
        "render_seconds": result.render_seconds,
    }
    write_text_atomic(json_path, json.dumps(payload, indent=1))
    return csv_path, json_path


def read_eval(json_path: str | Path) -> EvalResult | None:
    """The EvalResult that `write_eval` wrote to `json_path`; None when the file is missing or was written
    without what an EvalResult holds (an older version)."""
    try:
        payload = json.loads(Path(json_path).read_text())
        rows = dict(payload["per_image"])
        names = rows.pop("image")
        return EvalResult(
            names=names,
            per_image={k: rows[k] for k in METRIC_NAMES},
            render_seconds=payload["render_seconds"],
            peak_rss_mb=payload["peak_rss_mb"],
            peak_cuda_mb=payload["peak_cuda_mb"],
            extra={k: v for k, v in payload.items() if k not in ("per_image", "render_seconds")},
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
