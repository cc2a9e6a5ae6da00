"""Train one block on the demo city and report speed, memory and test metrics at several iteration counts.

    python tools/bench_train.py                 # demo city, configs/demo_single_block.yaml, CPU, 1 thread
    python tools/bench_train.py --iterations 250 500 1000 2000 --set data.downscale=1
    python tools/bench_train.py --scene path/to/colmap/scene --device cuda

Prints a table and one JSON line per evaluated iteration count. LPIPS is the official [-1, 1] input.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from momentumgs.config import load_config
from momentumgs.eval.measure import evaluate
from momentumgs.memory import peak_rss_mb
from momentumgs.render.anchors import render_anchor_view
from momentumgs.run_setup import load_scene, start_or_resume

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo_single_block.yaml"))
    parser.add_argument("--scene", help="COLMAP scene (default: the cached demo city)")
    parser.add_argument("--iterations", type=int, nargs="+", default=[250, 500, 1000, 2000])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    counts = sorted(args.iterations)
    cfg = load_config(
        args.config,
        [*args.overrides, f"train.iterations={counts[-1]}", f"train.device={args.device}"]
        + ["train.eval_every=0"],
    )
    if args.scene:
        cfg.data.path = args.scene
    else:
        from momentumgs.demo import cached_demo_scene

        cfg.data.path = str(cached_demo_scene(size=cfg.demo.size, seed=cfg.demo.seed))

    with tempfile.TemporaryDirectory() as tmp:
        trainer = start_or_resume(cfg, load_scene, Path(tmp) / "run", resume=False)
        if len(trainer.partition.blocks) != 1:
            raise SystemExit(
                f"{args.config}: tools/bench_train.py trains one block (partition.block_dim [1,1,1])"
            )

        def field():
            ((_, anchors),) = trainer.residency.block_fields()
            return anchors

        scene = trainer.scene
        w, h = scene.cameras[0].width, scene.cameras[0].height
        print(
            f"scene {cfg.data.path}: {len(scene.train_ids)} train / {len(scene.test_ids)} test views at "
            f"{w}x{h}, {field().n_anchors} initial anchors, device {trainer.device}, "
            f"{args.threads} thread(s)"
        )
        header = (
            f"{'iter':>6} {'train s':>8} {'it/s':>6} {'anchors':>8} {'RSS MB':>7} "
            f"{'PSNR':>6} {'SSIM':>6} {'LPIPSv':>6} {'LPIPSa':>6} {'PSNRcc':>6} {'FPS':>6}"
        )
        print(header)
        train_seconds, done = 0.0, 0
        for count in counts:
            t0 = time.perf_counter()
            trainer.run(progress=False, stop_after=count - done)
            train_seconds += time.perf_counter() - t0
            done = trainer.global_step

            def render(index, trainer=trainer):
                return render_anchor_view(field(), trainer.decoder, trainer.views[index]).image

            result = evaluate(render, scene, scene.test_ids, device=trainer.device)
            m = result.means
            row = {
                "iteration": done,
                "train_seconds": train_seconds,
                "it_per_s": done / train_seconds,
                "anchors": field().n_anchors,
                "peak_rss_mb": peak_rss_mb(),
                "fps": result.fps,
                "resolution": f"{w}x{h}",
                "device": str(trainer.device),
                "threads": args.threads,
                **{f"test_{k}": v for k, v in m.items()},
            }
            print(
                f"{done:>6} {train_seconds:>8.1f} {row['it_per_s']:>6.2f} {row['anchors']:>8} "
                f"{row['peak_rss_mb']:>7.0f} {m['psnr']:>6.2f} {m['ssim']:>6.3f} {m['lpips_vgg']:>6.3f} "
                f"{m['lpips_alex']:>6.3f} {m['psnr_cc']:>6.2f} {result.fps:>6.1f}"
            )
            print("JSON " + json.dumps(row))


if __name__ == "__main__":
    main()
