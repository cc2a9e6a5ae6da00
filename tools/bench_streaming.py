"""The viewer's streamed browser splats (viewer/streaming.py) on a model far above the budget, in Chromium.

A synthetic city: one block of --per-block Gaussians (tools/bench_tiles.py's generator: a ground layer and
taller clutter in a 100-unit cell, y down is up), cut into chunks with levels (viewer/chunks.py), replicated
over a grid of --blocks cells (the copies share the base block's arrays: memory stays that of one block).
For each budget, `momentumgs view --splats` of it is opened in headless Chromium (software WebGL,
tests/browser.py); the camera is put above one corner of the city looking across it, then above the
opposite corner, then dragged back in 20 steps over 5 s. Reported at each: splats shown and sent (in all,
and for the move), the server's selection time, and the browser's frame time: requestAnimationFrame
intervals measured by page script while the viewer is made to draw every frame (viser draws on demand).
Then one JSON line.

    python tools/bench_streaming.py [--blocks 50] [--per-block 100000] [--budgets 1000000,250000]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import viser.transforms as vtf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tests"))

from bench_tiles import synthetic_block  # noqa: E402
from browser import Chromium, wait_for  # noqa: E402
from momentumgs_viewer import ModelHolder, RunInfo, Viewer, ViewerOptions  # noqa: E402
from momentumgs_viewer.app import vtf_forward  # noqa: E402
from momentumgs_viewer.camera import CameraPose, move_client_to  # noqa: E402
from momentumgs_viewer.chunks import BakedChunks, chunk_target, make_chunks  # noqa: E402
from momentumgs_viewer.streaming import ChunkLevels, select_levels  # noqa: E402

from momentumgs.memory import peak_rss_mb  # noqa: E402

CELL = 100.0  # bench_tiles' block size
UP = np.array([0.0, -1.0, 0.0])

# page script: have viser draw every frame (it draws on demand) and record requestAnimationFrame intervals
FRAME_TIMER = """
(() => {
  window.__frames = [];
  let last = performance.now();
  const tick = (t) => {
    window.__frames.push(t - last);
    last = t;
    if (window.__viserMutable && window.__viserMutable.requestRender) window.__viserMutable.requestRender();
    if (!window.__stopFrames) requestAnimationFrame(tick);
  };
  window.__stopFrames = false;
  requestAnimationFrame(tick);
  return !!(window.__viserMutable && window.__viserMutable.requestRender);
})()
"""


class ReplicatedChunks:
    """The chunks of one block, copied to the cells of a grid: chunk b * K + k is the base's chunk k in
    cell b."""

    def __init__(self, base: BakedChunks, offsets: np.ndarray):
        self.base, self.offsets = base, offsets
        b = base.levels
        k, n = b.n_chunks, len(offsets)
        shift = np.repeat(offsets, k, axis=0)
        self.levels = ChunkLevels(
            np.tile(b.counts, (n, 1)), np.tile(b.errors, (n, 1)), np.tile(b.lo, (n, 1)) + shift,
            np.tile(b.hi, (n, 1)) + shift,
        )  # fmt: skip

    def arrays(self, chunk: int, level: int) -> dict[str, np.ndarray]:
        cell, k = divmod(chunk, self.base.levels.n_chunks)
        arrays = dict(self.base.arrays(k, level))
        arrays["centers"] = arrays["centers"] + self.offsets[cell].astype(np.float32)
        return arrays


def look_from(position, target) -> CameraPose:
    forward = np.asarray(target, float) - position
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, UP)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    wxyz = vtf.SO3.from_matrix(np.stack([right, down, forward], axis=1)).wxyz
    return CameraPose(np.asarray(position, float), wxyz, 0.9, 1280 / 800)


def settle(session, quiet_s: float = 2.0, limit_s: float = 300.0) -> None:
    """Wait until the tab's streamer has sent nothing for `quiet_s`."""
    deadline = time.monotonic() + limit_s
    last, since = session.splats_sent, time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if session.splats_sent != last:
            last, since = session.splats_sent, time.monotonic()
        elif time.monotonic() - since > quiet_s and session.stream_levels is not None:
            return
    raise AssertionError("the stream did not settle")


def frame_times(browser: Chromium, seconds: float) -> dict:
    forced = browser.evaluate(FRAME_TIMER)
    time.sleep(seconds)
    frames = browser.evaluate("window.__stopFrames = true; window.__frames")[1:]
    frames = frames or [float("nan")]
    return {
        "frame_ms_median": round(statistics.median(frames), 1),
        "frame_ms_p90": round(float(np.percentile(frames, 90)), 1),
        "frames": len(frames),
        "draw_forced": forced,
    }


def run_budget(source, base, budget: int, settle_s: float, measure_s: float, extent: np.ndarray) -> dict:
    viewer = Viewer(
        ModelHolder(base),
        RunInfo(up=UP),
        ViewerOptions(port=0, verbose=False, splats=True, splat_budget=budget),
        chunks=source,
    )
    for group in viewer.groups.values():
        group.visible = False
    browser = Chromium(viewer.url, Path(tempfile.mkdtemp(prefix="bench_streaming_")) / "profile")
    result: dict = {"budget": budget}
    try:
        wait_for(lambda: viewer.sessions, 60, "the page to connect")
        session = next(iter(viewer.sessions.values()))
        wait_for(lambda: session.camera is not None, 60, "the page's camera")
        height = 0.15 * float(extent.max())
        stops = {
            "corner": look_from([-5.0, -height, -5.0], [extent[0] / 2, 0.0, extent[2] / 2]),
            "opposite corner": look_from(
                [extent[0] + 5.0, -height, extent[2] + 5.0], [extent[0] / 2, 0.0, extent[2] / 2]
            ),
        }
        for name, pose in stops.items():
            before = session.splats_sent
            t0 = time.perf_counter()
            move_client_to(session.client, pose, UP, 0.25 * float(extent.max()))
            wait_for(
                lambda p=pose: np.allclose(session.camera.position, p.position, atol=1.0),
                300,  # a page busy drawing a large budget in software GL reports it late
                "the camera",
            )
            settle(session)
            sent_s = time.perf_counter() - t0
            time.sleep(settle_s)  # the browser sorts and uploads what came
            timings = [time.perf_counter()]
            for _ in range(20):
                select_levels(source.levels, pose.position, budget, vtf_forward(pose.wxyz))
                timings.append(time.perf_counter())
            result[name] = {
                "shown": session.splats_shown,
                "sent_for_move": session.splats_sent - before,
                "sent_total": session.splats_sent,
                "send_s": round(sent_s, 1),
                "select_ms": round(1000 * float(np.median(np.diff(timings))), 2),
                **frame_times(browser, measure_s),
            }
            print(f"budget {budget:,} {name}: {result[name]}", flush=True)
        # a drag back across the city: 20 camera steps 0.25 s apart, frames timed meanwhile
        start, end = stops["opposite corner"].position, stops["corner"].position
        before = session.splats_sent
        forced = browser.evaluate(FRAME_TIMER)
        for t in np.linspace(0.0, 1.0, 20):
            pose = look_from(start + t * (end - start), [extent[0] / 2, 0.0, extent[2] / 2])
            move_client_to(session.client, pose, UP, 0.25 * float(extent.max()))
            time.sleep(0.25)
        frames = browser.evaluate("window.__stopFrames = true; window.__frames")[1:] or [float("nan")]
        result["drag"] = {
            "sent_during": session.splats_sent - before,
            "frame_ms_median": round(statistics.median(frames), 1),
            "frames": len(frames),
            "draw_forced": forced,
        }
        settle(session)
        result["drag"]["sent_with_rest"] = session.splats_sent - before
        result["drag"]["shown"] = session.splats_shown
        print(f"budget {budget:,} drag: {result['drag']}", flush=True)
        errors = [e for e in browser.console_errors if "favicon" not in e]
        result["console_errors"] = errors[:3]
    finally:
        browser.close()
        viewer.stop()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blocks", type=int, default=50)
    p.add_argument("--per-block", type=int, default=100_000)
    p.add_argument("--budgets", default="1000000,250000")
    p.add_argument("--settle", type=float, default=10.0, help="seconds for the browser after the last send")
    p.add_argument("--measure", type=float, default=8.0, help="seconds of frame timing")
    args = p.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    t0 = time.perf_counter()
    block = synthetic_block(0, args.per_block, 1).with_sh_degree(0)
    base = make_chunks(block, target=chunk_target(max(budgets)))
    grid = math.ceil(math.sqrt(args.blocks))
    offsets = np.array([[i * CELL, 0.0, j * CELL] for i, j in (divmod(b, grid) for b in range(args.blocks))])
    source = ReplicatedChunks(base, offsets)
    extent = np.array([grid * CELL, 30.0, math.ceil(args.blocks / grid) * CELL])
    prep_s = time.perf_counter() - t0
    total = source.levels.total
    print(
        f"model {total:,} Gaussians: {args.blocks} copies of a {args.per_block:,}-Gaussian block on a "
        f"{grid}-wide grid, {source.levels.n_chunks} chunks x {source.levels.counts.shape[1]} levels "
        f"(levels made in {prep_s:.1f} s)",
        flush=True,
    )
    results = [run_budget(source, block, b, args.settle, args.measure, extent) for b in budgets]
    row = {
        "gaussians": total,
        "chunks": source.levels.n_chunks,
        "levels_s": round(prep_s, 1),
        "peak_rss_mb": round(peak_rss_mb()),
        "results": results,
    }
    print(json.dumps(row))


if __name__ == "__main__":
    main()
