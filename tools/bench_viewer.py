"""How much a watched live viewer slows training (`momentumgs train --view`), and its frame latency.

Trains the demo config's blocks for a few slots in one process, alternating runs without and with the
viewer's snapshot hook attached; with it, a render worker stands in for a connected browser (it renders the
first training camera at the preview resolution after every snapshot, as the viewer does for each client).
Prints steps/s (wall) and the training thread's CPU seconds per step for both, and the render latency.

    python tools/bench_viewer.py --scene SCENE [--steps 60] [--rounds 2] [--interval 3] [--max-res 320]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from momentumgs_viewer import ModelHolder, TrainingSnapshots
from momentumgs_viewer.camera import ClientCamera, client_view, scene_camera_pose
from momentumgs_viewer.models import render_rgb8
from momentumgs_viewer.worker import LatestRenderWorker

from momentumgs.config import load_config
from momentumgs.run_setup import load_scene, start_or_resume

ROOT = Path(__file__).resolve().parent.parent


def train_steps(trainer, steps: int, hook) -> tuple[float, float]:
    """-> (steps per second, training-thread CPU seconds per step)."""
    wall, cpu = time.perf_counter(), time.thread_time()
    trainer.run(progress=False, stop_after=steps, on_step=hook)
    return steps / (time.perf_counter() - wall), (time.thread_time() - cpu) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scene", required=True)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--interval", type=float, default=3.0)
    p.add_argument("--max-res", type=int, default=320)
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(ROOT / "configs" / "demo.yaml", [f"data.path={args.scene}", "train.checkpoint_every=0"])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = start_or_resume(cfg, load_scene, Path(tmp) / "run", resume=False)
        pose = scene_camera_pose(trainer.scene.train_cameras[0])
        camera = ClientCamera(tuple(pose.position), tuple(pose.wxyz), pose.fov, pose.aspect)
        holder = ModelHolder()
        latencies: list[float] = []

        def render(cam, res):
            t0 = time.perf_counter()
            image = render_rgb8(holder.get(), client_view(cam, res))
            latencies.append(time.perf_counter() - t0)
            return image

        worker = LatestRenderWorker(render, lambda image, still: None, lambda: (args.max_res, args.max_res))
        holder.on_change(lambda: worker.request(camera, refine=False))
        hook = TrainingSnapshots(holder, args.interval)
        train_steps(trainer, 10, None)  # warm-up
        results: dict[str, list[tuple[float, float]]] = {"without viewer": [], "with viewer": []}
        for _ in range(args.rounds):
            results["without viewer"].append(train_steps(trainer, args.steps, None))
            results["with viewer"].append(train_steps(trainer, args.steps, hook))
        worker.stop()
    for name, runs in results.items():
        rate = statistics.mean(r for r, _ in runs)
        cpu = statistics.mean(c for _, c in runs)
        print(f"{name:15s} {rate:6.2f} steps/s  {cpu * 1000:7.1f} ms training-thread CPU per step  {runs}")
    print(
        f"snapshots {hook.snapshots}, {hook.seconds / max(hook.snapshots, 1) * 1000:.1f} ms each on the "
        f"training thread; renders {len(latencies)} at {args.max_res} px, median "
        f"{statistics.median(latencies) * 1000 if latencies else float('nan'):.0f} ms"
    )


if __name__ == "__main__":
    main()
