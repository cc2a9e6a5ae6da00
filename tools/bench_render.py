"""Time the CPU rasterizers (forward, forward + backward) on random scenes; one torch thread by default.

    python tools/bench_render.py                 # the standard table: compiled (numba) against torch
    python tools/bench_render.py --only 160x120/20000 --threads 2 --backends numba
    python tools/bench_render.py --clock cpu     # CPU seconds of this process: steadier on a busy machine

Each configuration and back end (`MOMENTUMGS_RASTERIZER`: numba, the compiled default, or torch, the
reference) runs in its own process so that its peak memory (max RSS) is its own. Prints a table with the
speed-up of the first back end over the second and one JSON line per configuration and back end.
"""

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

CONFIGS = ["64x64/5000", "128x128/20000", "160x120/20000", "320x240/50000"]
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def make_scene(width, height, n, sigma_px, seed=0):
    """N Gaussians in a slab 3..6 units in front of one camera, about sigma_px pixels wide on screen."""
    import torch

    g = torch.Generator().manual_seed(seed)
    f = 1.1 * width
    z = 3.0 + 3.0 * torch.rand(n, generator=g)
    x = (torch.rand(n, generator=g) - 0.5) * 1.1 * width / f * z
    y = (torch.rand(n, generator=g) - 0.5) * 1.1 * height / f * z
    means = torch.stack([x, y, z], -1)
    # log-normal sizes around sigma_px pixels, anisotropic
    scales = sigma_px * z[:, None] / f * torch.exp(0.4 * torch.randn(n, 3, generator=g))
    quats = torch.randn(n, 4, generator=g)
    opacities = 0.1 + 0.8 * torch.rand(n, generator=g)
    colors = torch.rand(1, n, 3, generator=g)
    viewmats = torch.eye(4)[None]
    Ks = torch.tensor([[[f, 0.0, 0.47 * width], [0.0, f, 0.52 * height], [0.0, 0.0, 1.0]]])
    return means, quats, scales, opacities, colors, viewmats, Ks


def run_one(config, sigma_px, repeats, clock=time.perf_counter):
    import torch

    from momentumgs.render import rasterize
    from momentumgs.render.cpu import find_pairs

    size, n = config.split("/")
    width, height = (int(v) for v in size.split("x"))
    n = int(n)
    means, quats, scales, opacities, colors, viewmats, Ks = make_scene(width, height, n, sigma_px)
    params = [t.requires_grad_(True) for t in (means, quats, scales, opacities, colors)]

    def forward():
        return rasterize(*params, viewmats, Ks, width, height)

    def forward_backward():
        img, alpha, meta = forward()
        (img.sum() + alpha.sum()).backward()
        for p in params:
            p.grad = None
        return meta

    def best_of(fn):  # the machine may be shared: the fastest run is the least disturbed one
        times = []
        for _ in range(repeats):
            t0 = clock()
            fn()
            times.append(clock() - t0)
        return min(times)

    meta = forward_backward()  # warm-up
    with torch.no_grad():
        img, alpha, meta = forward()
        fwd_nograd = best_of(forward)
    fwd_bwd = best_of(forward_backward)

    radii = meta["radii"][0].float()
    visible = (radii > 0).all(-1)
    m = meta
    pairs = find_pairs(
        m["means2d"].detach(), m["conics"], m["opacities"], m["depths"], m["radii"], width, height
    )
    return {
        "backend": os.environ.get("MOMENTUMGS_RASTERIZER", "default"),
        "config": config,
        "sigma_px": sigma_px,
        "width": width,
        "height": height,
        "gaussians": n,
        "threads": torch.get_num_threads(),
        "visible": int(visible.sum()),
        "median_radius_px": float(radii[visible].mean(-1).median()) if visible.any() else 0.0,
        "pairs_composited": int((pairs.raw_alpha > 0).sum()),
        "mean_alpha": float(alpha.mean()),
        "forward_nograd_ms": round(fwd_nograd * 1e3, 1),
        "forward_backward_ms": round(fwd_bwd * 1e3, 1),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0),
    }


def run_child(config: str, sigma_px: str, backend: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", config, "--threads", str(args.threads)]
    cmd += ["--sigma-px", sigma_px, "--repeats", str(args.repeats), "--clock", args.clock]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MOMENTUMGS_RASTERIZER=backend)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        print(out.stderr, file=sys.stderr)
        raise SystemExit(f"{config} ({backend}) failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--only", action="append", help="WxH/N, repeatable (default: the standard table)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sigma-px", default="0.7,1.5", help="screen sigmas in pixels, comma-separated")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backends", default="numba,torch", help="CPU compositors, comma-separated")
    parser.add_argument(
        "--clock",
        choices=CLOCKS,
        default="wall",
        help="wall: elapsed seconds; cpu: this process's CPU seconds (all its threads), which other "
        "processes on a shared machine disturb far less",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        import torch

        torch.set_num_threads(args.threads)
        row = run_one(args.child, float(args.sigma_px), args.repeats, CLOCKS[args.clock])
        print(json.dumps({**row, "clock": args.clock}))
        return

    backends = args.backends.split(",")
    rows = []
    for sigma_px in args.sigma_px.split(","):
        for config in args.only or CONFIGS:
            for backend in backends:
                rows.append(run_child(config, sigma_px, backend, args))

    columns = (
        "backend",
        "config",
        "sigma px",
        "visible",
        "radius",
        "pairs",
        "fwd ms",
        "fwd+bwd ms",
        "RSS MB",
    )
    print(" ".join(f"{c:>12}" for c in columns), " speed-up" if len(backends) > 1 else "")
    for i, r in enumerate(rows):
        values = (
            r["backend"],
            r["config"],
            r["sigma_px"],
            r["visible"],
            r["median_radius_px"],
            r["pairs_composited"],
            r["forward_nograd_ms"],
            r["forward_backward_ms"],
            r["max_rss_mb"],
        )
        first = rows[i - i % len(backends)]  # the first back end of this configuration
        ratio = f"{r['forward_backward_ms'] / first['forward_backward_ms']:9.1f}x" if r is not first else ""
        print(" ".join(f"{v:>12}" for v in values), ratio)
    for r in rows:
        print(json.dumps(r))
    if any(math.isnan(r["mean_alpha"]) for r in rows):
        raise SystemExit("NaN in a render")


if __name__ == "__main__":
    main()
