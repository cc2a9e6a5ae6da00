"""Training curves of a run from its metrics.jsonl records, drawn with matplotlib (no display needed: the
figure renders straight to PNG bytes through the Agg canvas, without pyplot's global state)."""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# panel title, the training record's per-block key, whether its steps are noisy (drawn faint and averaged)
BLOCK_PANELS = (
    ("loss (weighted, all terms)", "loss", True),
    ("training PSNR (dB)", "psnr", True),
    ("consistency term (before lambda_c)", "consistency", True),
    ("anchors", "anchors", False),
    ("neural Gaussians of the step's view", "gaussians", True),
    ("block weight", "weight", False),
)
SMOOTHING = 5  # records in the running mean drawn over the noisy per-step values


def block_series(
    records: list[dict], key: str, x: str = "iteration"
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Block id -> (x [T], values [T]) of one per-block key of the records; x is the block's own
    `iteration` (blocks train in turns: their curves stay continuous) or the global "step"."""
    series: dict[int, tuple[list, list]] = {}
    for record in records:
        for b, block in record["blocks"].items():
            if block.get(key) is not None:
                xs, values = series.setdefault(int(b), ([], []))
                xs.append(record["step"] if x == "step" else block[x])
                values.append(float(block[key]))
    return {b: (np.asarray(s), np.asarray(v)) for b, (s, v) in sorted(series.items())}


def running_mean(values: np.ndarray, width: int) -> np.ndarray:
    """Mean over the last `width` values (fewer at the start). [T] -> [T]"""
    sums = np.cumsum(np.insert(values.astype(np.float64), 0, 0.0))  # [T + 1]
    end = np.arange(1, len(values) + 1)
    start = np.maximum(end - width, 0)
    return (sums[end] - sums[start]) / (end - start)


def step_rates(records: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(steps, global steps per second) between consecutive training records; from their wall-clock
    `seconds` where logged, else the session averages `steps_per_s`."""
    steps = np.asarray([r["step"] for r in records], dtype=np.float64)
    if records and all("seconds" in r for r in records):
        seconds = np.asarray([r["seconds"] for r in records], dtype=np.float64)
        dt, ds = np.diff(seconds), np.diff(steps)
        ok = dt > 0
        return steps[1:][ok], ds[ok] / dt[ok]
    return steps, np.asarray([r.get("steps_per_s", np.nan) for r in records], dtype=np.float64)


def training_figure(train: list[dict], evals: list[dict], colors: list[str]) -> bytes:
    """`training_panels` as PNG bytes."""
    fig = training_panels(train, evals, colors)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def training_panels(train: list[dict], evals: list[dict], colors: list[str]) -> Figure:
    """The per-block keys of BLOCK_PANELS over each block's iterations, the periodic evaluations' test PSNR
    per block (train.eval_every; a run without any has no such panel) and the global steps per second over
    the global steps. `colors`: one matplotlib colour per block."""
    fig = Figure(figsize=(15, 6.5), dpi=90, layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(2, 4).ravel())
    for ax, (title, key, noisy) in zip(axes, BLOCK_PANELS, strict=False):
        for b, (xs, values) in block_series(train, key).items():
            color = colors[b % len(colors)]
            if noisy:
                ax.plot(xs, values, color=color, alpha=0.25, linewidth=0.8)
            shown = running_mean(values, SMOOTHING) if noisy else values
            ax.plot(xs, shown, color=color, linewidth=1.5, label=f"block {b}")
        if key in ("loss", "consistency") and ax.lines:
            ax.set_yscale("symlog", linthresh=1e-6) if key == "consistency" else ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("block iteration", fontsize=9)
    if evals:
        ax = axes[6]
        for b, (xs, values) in block_series(evals, "psnr", x="step").items():
            ax.plot(xs, values, "o-", color=colors[b % len(colors)], markersize=4)
        ax.set_title("test PSNR (dB), periodic evaluation", fontsize=10)
    else:  # no periodic evaluation (train.eval_every = 0): no empty panel
        fig.delaxes(axes.pop(6))
    ax = axes[len(BLOCK_PANELS) + bool(evals)]
    steps, rates = step_rates(train)
    ax.plot(steps, rates, color="black", linewidth=1.2)
    ax.set_title("global steps per second", fontsize=10)
    for ax in axes[len(BLOCK_PANELS) :]:
        ax.set_xlabel("global step", fontsize=9)
    for ax in axes:
        ax.grid(alpha=0.3)
    handles, labels = axes[1].get_legend_handles_labels()
    if handles:
        axes[0].legend(handles, labels, fontsize=8, loc="upper right")
    return fig
