"""Training benchmark: time per phase of a step, iterations/s and peak memory of the trainers.

    python tools/bench.py                                  # all sections, cached demo city, CPU, 1 thread
    python tools/bench.py --only step --downscales 2 1 --voxel-scales 1 0.5
    python tools/bench.py --only step --baseline HEAD~3    # the same step configs on another commit too
    python tools/bench.py --only method --repeats 5
    python tools/bench.py --only blocks --block-counts 1 2 4 8 16 --ram-budget-mb 4
    python tools/bench.py --only workers                   # 1 process vs 2 torchrun processes (gloo)
    python tools/bench.py --device cuda --only step,method
    python tools/bench.py --quick --scene path/to/colmap/scene --downscales 4 --downscale 4

Sections: step (single-block trainer per downscale and voxel scale), method (Momentum-GS teacher, consistency
and weighting off vs on, one block in the multi-block trainer), blocks (n blocks on one worker through a small
RAM budget: swap cost, host RAM), workers (2 blocks on 1 worker vs 2 torchrun workers). Each configuration
runs in its own child process (`--child SPEC`; its peak RSS is its own), which builds the trainer, warms up,
then times windows of steps inside a PhaseTimer (exclusive phases that add up to the step; "other" is outside
every phase). Compared children (method off/on, current/baseline) warm up together, then time their windows
in turn, one child at a time, so that machine load affects them alike; the median window is reported.
Checkpoints and evaluation are not part of a step. Prints tables and one `JSON {...}` line per configuration.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import defaultdict
from contextlib import ExitStack, nullcontext
from pathlib import Path

import torch

TREE = os.environ.get("BENCH_MOMENTUMGS_TREE")  # a baseline child: momentumgs from that git worktree only
if TREE:  # (the editable install's finder would serve modules missing there from this checkout)
    sys.meta_path[:] = [
        f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")
    ]

import momentumgs  # noqa: E402
from momentumgs.config import load_config  # noqa: E402
from momentumgs.memory import peak_rss_mb  # noqa: E402
from momentumgs.run_setup import load_scene  # noqa: E402

try:
    from momentumgs.timing import PhaseTimer

    class Timer(PhaseTimer):
        """Also sums inclusive seconds per phase: the quality measurement's renders (phase "weighting") are
        charged to their own rasterize/decode phases, its inclusive time is the cost of the weighting."""

        def __init__(self, sync_cuda: bool):
            super().__init__(sync_cuda)
            self.inclusive, self._starts = defaultdict(float), []

        def enter(self, name: str) -> None:
            super().enter(name)
            self._starts.append(time.perf_counter())

        def leave(self) -> None:
            name, start = self._stack[-1], self._starts.pop()
            super().leave()
            if name not in self._stack:  # the outermost entry of that name
                self.inclusive[name] += time.perf_counter() - start

except ImportError:  # a baseline commit older than the phase timer: wall-clock time only
    Timer = None

ROOT = Path(__file__).resolve().parent.parent
SINGLE, MULTI = "configs/demo_single_block.yaml", "configs/demo.yaml"
BLOCK_DIMS = {1: "[1,1,1]", 2: "[2,1,1]", 4: "[2,2,1]", 8: "[4,2,1]", 16: "[4,4,1]"}
EXTRAS = ("teacher_update", "teacher_decode", "consistency", "weighting")
COUNTS = {  # option: (default, --quick default, help)
    "downscales": ([4, 2, 1], [4], "step: data.downscale values"),
    "warmup": (300, 5, "step, method: warm-up steps"),
    "steps": (100, 5, "step: timed steps"),
    "repeats": (3, 2, "method (and step with --baseline): interleaved windows per variant"),
    "method_steps": (250, 10, "method: steps per window"),
    "weighting_every": (250, 5, "method: method.weighting.every (must divide --method-steps)"),
    "block_counts": ([1, 2, 4, 8], [1, 2], f"blocks: block counts, of {sorted(BLOCK_DIMS)}"),
    "block_steps": (200, 10, "blocks: timed steps"),
    "block_warmup": (50, 5, "blocks: warm-up steps (at least one full rotation of the blocks)"),
    "slot_iterations": (20, 5, "blocks: method.slot_iterations"),
    "worker_steps": (250, 10, "workers: timed global steps of the 2-worker run (1 worker: twice as many)"),
    "worker_warmup": (100, 5, "workers: warm-up global steps of the 2-worker run (1 worker: twice as many)"),
}

# --- child: one configuration ------------------------------------------------------------------------


def build_trainer(spec: dict):
    """The trainer a spec names, from the momentumgs this process imports (a baseline worktree's, maybe)."""
    torch.set_num_threads(spec["threads"])
    cfg = load_config(Path(momentumgs.__file__).resolve().parents[1] / spec["config"], spec["overrides"])
    cfg.data.path = spec["scene"]
    scene = load_scene(cfg)
    if spec["voxel_scale"] != 1:
        from momentumgs.model.anchors import choose_voxel_size

        cfg.model.voxel_size = spec["voxel_scale"] * (cfg.model.voxel_size or choose_voxel_size(scene.points))
    from momentumgs.run_setup import start_or_resume
    from momentumgs.train.comm import init_from_env, launched_by_torchrun

    device = torch.device(spec["device"])
    comm = init_from_env(device) if launched_by_torchrun() else None
    return start_or_resume(cfg, lambda _: scene, spec["run_dir"], False, comm=comm, device=device), comm


def train_step(trainer) -> tuple[int, int, int]:
    """One global step -> (block iterations, neural Gaussians rasterized, anchors of the blocks trained)."""
    results = trainer.train_step()  # one block step per worker of this process
    held = sum(block.field.n_anchors for _, block in trainer.residency.resident_blocks())
    return len(results), sum(r.n_gaussians for r in results.values()), held


def store_stats(trainer) -> dict:
    s = trainer.residency.store.stats
    swap = s.put_seconds + s.take_seconds + s.prefetch_seconds
    return {"store_swap_s": swap, "spills": s.spills, "loads": s.loads, "take_disk_reads": s.take_disk_reads}


def reduce(comm, value: float, op: str) -> float:
    """Sum or max of a number over the torchrun processes (the number itself in a single process)."""
    if comm is None:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    (comm.sum_ if op == "sum" else comm.max_)(t)
    return float(t[0])


def time_window(trainer, steps: int, device: str, comm) -> dict:
    timer = Timer(sync_cuda=device == "cuda") if Timer else None
    sync = torch.cuda.synchronize if device == "cuda" else lambda: None
    barrier = comm.barrier if comm is not None else lambda: None
    before, iters, gaussians = store_stats(trainer), 0, 0
    barrier()
    sync()
    with timer or nullcontext():
        t0 = time.perf_counter()
        for _ in range(steps):
            n, g, held = train_step(trainer)
            iters, gaussians = iters + n, gaussians + g
        sync()
        barrier()  # the window ends when the slowest worker is done
        wall = time.perf_counter() - t0
    wall, total = reduce(comm, wall, "max"), reduce(comm, iters, "sum")
    row = {"steps": steps, "block_iterations": int(total), "seconds": wall, "it_per_s": total / wall}
    row.update(ms_per_step=1000 * wall / steps, gaussians_mean=gaussians / max(iters, 1), anchors=held)
    if timer is not None:
        row.update({f"phase_ms_{k}": 1000 * v / steps for k, v in sorted(timer.seconds.items())})
        row.update(
            {f"incl_ms_{k}": 1000 * timer.inclusive[k] / steps for k in EXTRAS if k in timer.inclusive}
        )
    after = store_stats(trainer)
    row.update({k: after[k] - before[k] for k in after})
    if after:
        row["store_swap_pct"] = 100 * row["store_swap_s"] / wall
        row["swap_pct"] = 100 * row.get("phase_ms_swap", 0.0) / row["ms_per_step"]
    row["peak_rss_mb"] = reduce(comm, peak_rss_mb(), "max")  # per process
    if device == "cuda":
        row["peak_cuda_mb"] = reduce(comm, torch.cuda.max_memory_allocated() / 2**20, "max")
    return row


def child_main(spec: dict) -> None:
    trainer, comm = build_trainer(spec)
    for _ in range(spec["warmup"]):
        train_step(trainer)
    cam = trainer.scene.cameras[trainer.scene.train_ids[0]]
    info = {**spec["label"], "resolution": f"{cam.width}x{cam.height}", "device": spec["device"]}
    info.update(threads=spec["threads"], processes=1 if comm is None else comm.world_size)
    info["momentumgs"] = str(Path(momentumgs.__file__).resolve().parent)
    files = [getattr(m, "__file__", None) for n, m in sys.modules.items() if n.startswith("momentumgs")]
    if TREE and any(f and not f.startswith(TREE) for f in files):
        raise RuntimeError(
            f"momentumgs modules from outside {TREE}: {[f for f in files if f and TREE not in f]}"
        )
    if spec["interactive"]:
        print("READY", flush=True)
    for window in range(spec["windows"]):
        if spec["interactive"] and not sys.stdin.readline():
            break
        variant = {}
        if spec.get("variants"):  # the same trainer, its method switched between windows (fair A/B)
            variant = spec["variants"][window % len(spec["variants"])]
            for key, value in variant["method"].items():  # dotted keys below method
                *sections, name = key.split(".")
                setattr(functools.reduce(getattr, sections, trainer.cfg.method), name, value)
        label = {"variant": variant["name"]} if variant else {}
        row = {**info, **label, "window": window, **time_window(trainer, spec["steps"], spec["device"], comm)}
        if spec.get("state_bytes"):  # after the timing and the RSS: this reads spilled blocks back
            from momentumgs.train.block_store import tree_nbytes

            row["spilled_mb"] = trainer.residency.store.stats.disk_bytes / 2**20
            row["block_states_mb"] = sum(tree_nbytes(s) for _, s in trainer.residency.block_states()) / 2**20
        if comm is None or comm.is_main:
            print("JSON " + json.dumps(row), flush=True)
    trainer.residency.store.close()
    if comm is not None:
        torch.distributed.destroy_process_group()


# --- parent: launching children ----------------------------------------------------------------------


def launch(spec: dict, nproc: int = 0, tree: Path | None = None) -> subprocess.Popen:
    """A child process for `spec` (under torchrun with `nproc` processes if nproc), importing from `tree`."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    if nproc:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd[1:1] = ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={port}"]
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]))
    if tree is not None:  # the child imports momentumgs from there
        env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [os.environ.get("PYTHONPATH")])])
        env["BENCH_MOMENTUMGS_TREE"] = str(tree)
    stdin = subprocess.PIPE if spec["interactive"] else subprocess.DEVNULL
    return subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.PIPE, text=True, cwd=tree or ROOT, env=env)


def expect(proc: subprocess.Popen, what: str) -> dict | None:
    """Read the child's output up to its next READY or JSON line, or to its end (other lines go to stderr)."""
    for line in proc.stdout:
        if line.startswith("JSON ") and what == "JSON":
            return json.loads(line[5:])
        if line.strip() == "READY" and what == "READY":
            return None
        sys.stderr.write("  | " + line)
    if proc.wait() != 0 or what != "end":
        raise RuntimeError(f"bench child exited with {proc.returncode} before its {what} line")
    return None


def run_children(
    specs: list[dict],
    trees: list,
    windows: int = 1,
    nproc: int = 0,
    raw: bool = False,
    together: bool = False,
) -> list[dict]:
    """Start the children (warming up together), time their windows in turn (or, with together, all at
    once); each one's median window (or, with raw, every window of every child)."""
    procs, rows = [], [[] for _ in specs]
    with ExitStack() as stack:
        for spec, tree in zip(specs, trees, strict=True):
            run_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-"))) / "run"
            spec = dict(spec, run_dir=str(run_dir), windows=windows, interactive=not nproc)
            procs.append(stack.enter_context(launch(spec, nproc, tree)))
            stack.callback(lambda p=procs[-1]: p.poll() is None and p.kill())  # on errors only
        for proc in procs if not nproc else []:
            expect(proc, "READY")
        for _ in range(windows):
            for group in [procs] if together else [[proc] for proc in procs]:
                for proc in group if not nproc else []:
                    proc.stdin.write("go\n")
                    proc.stdin.flush()
                for proc in group:
                    rows[procs.index(proc)].append(expect(proc, "JSON"))
        for proc in procs:
            if proc.stdin:
                proc.stdin.close()
            expect(proc, "end")
    return [r for out in rows for r in out] if raw else [median_window(out) for out in rows]


def median_window(rows: list[dict]) -> dict:
    ms = [r["ms_per_step"] for r in rows]
    row = dict(rows[ms.index(statistics.median_low(ms))], windows=len(rows))
    return dict(row, ms_per_step_min=min(ms), ms_per_step_max=max(ms)) if len(rows) > 1 else row


# --- sections ----------------------------------------------------------------------------------------


def spec(args, label: dict, trainer: str, overrides: str, warmup: int, steps: int) -> dict:
    overrides = f"train.device={args.device} train.threads={args.threads} train.eval_every=0 {overrides}"
    out = dict(
        label=label, trainer=trainer, config=SINGLE if trainer == "single" else MULTI, scene=args.scene
    )
    out.update(overrides=overrides.split(), voxel_scale=label.get("voxel_scale", 1), device=args.device)
    return dict(out, threads=args.threads, warmup=warmup, steps=steps)


def section_step(args, tree: Path | None) -> None:
    rows, windows = [], args.repeats if tree else 1
    for ds in args.downscales:
        for vs in args.voxel_scales:
            label = {"section": "step", "downscale": ds, "voxel_scale": vs, "code": "current"}
            over = f"data.downscale={ds} train.iterations={args.warmup + windows * args.steps + 1}"
            specs = [spec(args, label, "single", over, args.warmup, args.steps)]
            if tree:
                specs.append(dict(specs[0], label={**label, "code": f"baseline {args.baseline}"}))
            got = run_children(specs, [None, tree][: len(specs)], windows)
            if tree:
                if not got[1]["momentumgs"].startswith(str(tree)):
                    raise RuntimeError(f"the baseline child imported {got[1]['momentumgs']}, not {tree}")
                got[0]["speed_vs_baseline"] = got[1]["ms_per_step"] / got[0]["ms_per_step"]
            rows += got
    cols = "code resolution voxel_scale it_per_s ms_per_step ms_per_step_min ms_per_step_max gaussians_mean"
    report("step: single-block trainer", rows, cols + " anchors peak_rss_mb peak_cuda_mb speed_vs_baseline")


def section_method(args) -> None:
    """One trainer (one block in the multi-block trainer) whose windows alternate between the method off and
    on: both variants time the same model, so the difference is the method's cost, not a different model's
    (two separately trained models drift apart by thousands of Gaussians)."""
    steps, every = args.method_steps, args.weighting_every
    if steps % every:
        raise SystemExit("--method-steps must be a multiple of --weighting-every (amortised weighting)")
    windows = 2 * args.repeats
    over = f"partition.block_dim=[1,1,1] method.workers=1 data.downscale={args.downscale} "
    over += f"method.weighting.view_stride=5 train.iterations={args.warmup + windows * steps + 1} "
    over += f"method.weighting.every={every} method.teacher.momentum=0.9 "
    over += "method.teacher.lambda_consistency=50 "
    over += f"method.weighting.enabled=true method.weighting.source={args.weighting_source}"
    variants = [
        {"name": "off", "method": {"teacher.lambda_consistency": 0.0, "weighting.enabled": False}},
        {"name": "on", "method": {"teacher.lambda_consistency": 50.0, "weighting.enabled": True}},
    ]
    child = dict(spec(args, {"section": "method"}, "multi", over, args.warmup, steps), variants=variants)
    rows = run_children([child], [None], windows, raw=True)
    off, on = (median_window([r for r in rows if r["variant"] == v["name"]]) for v in variants)
    extras = sum(on.get(f"incl_ms_{p}", 0.0) for p in EXTRAS)  # inclusive: the measurement renders
    summary = {"section": "method", "variant": "overhead", "extras_ms_per_step": extras}
    summary["overhead_pct"] = 100 * (on["ms_per_step"] / off["ms_per_step"] - 1)
    summary["extras_pct_of_step"] = 100 * extras / on["ms_per_step"]
    summary["weighting_measurements_per_window"] = steps // every
    cols = "variant resolution it_per_s ms_per_step ms_per_step_min ms_per_step_max gaussians_mean anchors"
    cols += " peak_rss_mb peak_cuda_mb"
    report("method: Momentum-GS extras off vs on (1 block, multi-block trainer)", [off, on], cols)
    note = f"overhead (on - off) / off: {summary['overhead_pct']:+.1f} %; teacher_update + teacher_decode + "
    note += f"consistency + weighting (inclusive of its renders): {extras:.2f} ms per step = "
    note += f"{summary['extras_pct_of_step']:.1f} % of the 'on' step (the teacher's share of the backward is "
    note += f"not in it). Each {steps}-step window holds {steps // every} quality measurement(s) "
    note += f"(weighting_every={every}); 'off' measures none. One trainer, {windows} windows alternating "
    note += "off/on; median window per variant."
    print(textwrap.fill(note, 110))
    emit([summary])


def section_blocks(args) -> None:
    rows = []
    for n in args.block_counts:
        warmup = max(args.block_warmup, n * args.slot_iterations)  # every block has been through the store
        over = f"partition.block_dim={BLOCK_DIMS[n]} method.workers=1 data.downscale={args.downscale} "
        over += f"method.slot_iterations={args.slot_iterations} method.ram_budget_mb={args.ram_budget_mb} "
        over += f"train.iterations={(warmup + args.block_steps) // n + args.slot_iterations + 1}"
        s = spec(args, {"section": "blocks", "blocks": n}, "multi", over, warmup, args.block_steps)
        rows += run_children([dict(s, state_bytes=True)], [None])
    cols = "blocks it_per_s swap_pct store_swap_pct spills loads take_disk_reads spilled_mb block_states_mb"
    title = f"blocks: 1 worker, slots of {args.slot_iterations} steps, RAM budget {args.ram_budget_mb} MB"
    report(title, rows, cols + " peak_rss_mb peak_cuda_mb")


def section_workers(args) -> None:
    """2 blocks on 1 worker vs 2 torchrun workers; and, as the machine's own ceiling, the speed-up of two
    independent single-block trainers running at the same time over one running alone (no communication:
    what is lost there is lost to shared caches and memory bandwidth, not to the method)."""
    w, s = args.worker_warmup, args.worker_steps
    over = f"partition.block_dim=[2,1,1] data.downscale={args.downscale} train.iterations={w + s + 251} "
    one = spec(args, {"section": "workers", "workers": 1}, "multi", over + "method.workers=1", 2 * w, 2 * s)
    two = spec(args, {"section": "workers", "workers": 2}, "multi", over + "method.workers=2", w, s)
    rows = run_children([one], [None]) + run_children([two], [None], nproc=2)
    rows[1]["speedup"] = rows[1]["it_per_s"] / rows[0]["it_per_s"]
    solo_over = f"data.downscale={args.downscale} train.iterations={w + s + 1}"
    solo = spec(args, {"section": "workers", "workers": "1 alone"}, "single", solo_over, w, s)
    pair = [dict(solo, label={"section": "workers", "workers": f"independent {i + 1}/2"}) for i in range(2)]
    alone = run_children([solo], [None])[0]
    both = run_children(pair, [None, None], together=True)
    ceiling = {"section": "workers", "workers": "ceiling", "it_per_s": sum(r["it_per_s"] for r in both)}
    ceiling["speedup"] = ceiling["it_per_s"] / alone["it_per_s"]
    rows[1]["speedup_of_ceiling"] = rows[1]["speedup"] / ceiling["speedup"]
    rows += [alone, *both, ceiling]
    cols = "workers processes block_iterations seconds it_per_s speedup speedup_of_ceiling peak_rss_mb"
    title = "workers: 2 blocks, 1 process vs 2 torchrun processes; ceiling: 2 independent trainers at once"
    report(title, rows, cols + " peak_cuda_mb")


# --- output ------------------------------------------------------------------------------------------


def fmt(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def report(title: str, rows: list[dict], columns: str) -> None:
    cols = [c for c in columns.split() if any(c in r for r in rows)]
    widths = [max(len(c), *(len(fmt(r.get(c, "-"))) for r in rows)) for c in cols]
    print(f"\n== {title}")
    for line in [{c: c for c in cols}, *rows]:
        print("  ".join(fmt(line.get(c, "-")).rjust(w) for c, w in zip(cols, widths, strict=True)))
    phases = {k for r in rows for k in r if k.startswith("phase_ms_")}
    if phases:
        print(f"{'ms per step, row':>20}" + "".join(f"{i + 1:>10}" for i in range(len(rows))))
        for key in [*sorted(phases, key=lambda k: -max(r.get(k, 0) for r in rows)), "ms_per_step"]:
            cells = "".join(f"{fmt(r.get(key, '-')):>10}" for r in rows)
            print(f"{key.removeprefix('phase_ms_'):>20}{cells}")
    emit(rows)


def emit(rows: list[dict]) -> None:
    for r in rows:
        print("JSON " + json.dumps(r), flush=True)


def baseline_tree(stack: ExitStack, ref: str) -> Path:
    """A temporary `git worktree` of `ref`, removed when `stack` closes."""
    tree = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-baseline-"))) / "tree"
    git = ["git", "-C", str(ROOT), "worktree"]
    subprocess.run([*git, "add", "--detach", str(tree), ref], check=True, stdout=subprocess.DEVNULL)
    stack.callback(subprocess.run, [*git, "remove", "--force", str(tree)], check=False)
    return tree.resolve()


def describe_commit() -> str:
    """`git describe` of this checkout; "unknown" for a copy of the tree without git or its history."""
    try:
        git = ["git", "-C", str(ROOT), "describe", "--always", "--dirty"]
        done = subprocess.run(git, capture_output=True)
    except OSError:
        return "unknown"
    return done.stdout.decode().strip() or "unknown"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--only", default="step,method,blocks,workers", help="sections, comma-separated [all]")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1, help="torch threads per process [1]")
    p.add_argument("--scene", help="COLMAP scene folder [the cached demo city]")
    p.add_argument("--quick", action="store_true", help="tiny counts, for the tests")
    p.add_argument("--baseline", metavar="GITREF", help="step section: also time this commit's code")
    p.add_argument("--voxel-scales", type=float, nargs="+", default=[1.0], help="step: voxel size factors")
    p.add_argument("--downscale", type=int, default=2, help="method, blocks, workers: data.downscale [2]")
    p.add_argument("--weighting-source", default="views", choices=["views", "steps"], help="method [views]")
    p.add_argument("--ram-budget-mb", type=float, default=4.0, help="blocks: method.ram_budget_mb [4]")
    for name, (default, quick, text) in COUNTS.items():
        nargs = "+" if isinstance(default, list) else None
        flag, text = "--" + name.replace("_", "-"), f"{text} [{default}; quick {quick}]"
        p.add_argument(flag, type=int, nargs=nargs, help=text)
    args = p.parse_args()
    for name, (default, quick, _) in COUNTS.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else default)
    return args


def main() -> None:
    args = parse_args()
    if args.child:
        return child_main(json.loads(args.child))
    if not args.scene:
        from momentumgs.demo import cached_demo_scene

        demo = load_config(ROOT / MULTI).demo
        args.scene = str(cached_demo_scene(size=demo.size, seed=demo.seed))
    args.scene = str(Path(args.scene).resolve())
    print(f"bench {describe_commit()}: {args.scene}, device {args.device}, sections {args.only}")
    print(f"{args.threads} thread(s) per process, {os.cpu_count()} CPUs, torch {torch.__version__}")
    t0 = time.perf_counter()
    with ExitStack() as stack:
        if "step" in args.only.split(","):
            section_step(args, baseline_tree(stack, args.baseline) if args.baseline else None)
    sections = {"method": section_method, "blocks": section_blocks, "workers": section_workers}
    for name in args.only.split(","):
        if name in sections:
            sections[name](args)
    print(f"\nbench finished in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
