"""Momentum-GS ablation over seeds: each variant trained with several seeds on one scene, its mean ± spread,
and the paired differences between variants, so that a gap can be told from seed noise.

    python tools/ablation.py                        # full, independent, single-wall x 3 seeds (~57 min)
    python tools/ablation.py --out runs/ablation    # keep the runs; the same command again continues
    python tools/ablation.py --variants all         # every variant x 3 seeds (~1 h 50 min on 2 cores)
    python tools/ablation.py --variants full shared --out runs/teacher   # the teacher and weighting's worth
    python tools/ablation.py --variants full single-wall --seeds 5 \
        --variant-set full:method.teacher.momentum=0.99
    python tools/ablation.py --variants full --define coverage:partition.block_points=coverage
    python tools/ablation.py --scene path/to/scene --block-dim 2 4 1 --workers 2 --iterations 2000

Defaults are the demo's (configs/demo.yaml): the cached demo city at downscale 2, 2x2x1 blocks, 2 workers,
1000 iterations per block, 3 seeds (train.seed = 0, 1, 2; the scene and its partition stay the same).

Variants (the default: full, independent and single-wall, the method against what it replaces; `all`:
every built-in one. The paper's ablation on Building: 8 independent blocks 23.23, + momentum 23.56,
+ weighting 23.65 PSNR), on the `--block-dim` partition with `--workers` workers unless they say otherwise:
    independent   one decoder per block, no teacher, no weighting
    shared        one shared decoder (gradients averaged over the workers), no teacher, no weighting
    momentum      shared decoder + momentum teacher (m = 0.9) and consistency loss
    full          shared decoder + momentum teacher + block weighting (the method)
    single-total  one block over the whole scene (1x1x1, one worker), plain (no teacher, no weighting), for
                  the partitioned runs' total iterations: n blocks x iterations per block
    single-wall   the same single block for the partitioned runs' global steps: a worker trains its blocks one
                  after another, so k workers take ceil(n / k) x iterations steps (n x iterations / k when k
                  divides n), plus the seam refinement's steps after the merge (partition.seam_steps, each
                  a step on the whole scene). Equal steps are equal wall time when the k workers run in
                  parallel processes (`--worker-processes`, or torchrun), not when one process emulates them
    NAME          a `--define NAME:key=value,...` variant: full's settings plus these (run besides --variants)
Each run's densification window, slot length and weighting period are scaled to its own iteration count
(at 1000 iterations exactly the demo's). `--variant-set NAME:key=value,...` adds settings to one variant,
after its own; `--set key=value` applies to every run before the variants' settings.

Partitioned runs are merged by the config's `partition.merge` (by neural Gaussian by default);
`tools/merge_rules.py RUN...` compares the merge rules on runs this tool kept, without training again.

Reported per run and per variant (mean, sample std, min..max over the seeds): PSNR / SSIM / LPIPS (VGG) on
the test views, raw and colour-corrected, the PSNR of the pixels near block borders ("border", the seams) and
of the rest ("interior"), and the training seconds (loading and partitioning the scene included). Border
pixels lie within `--seam-radius` of a pixel owned by another block, a pixel's block found by back-projecting
the rendered depth of the first partitioned variant's first run into its partition; the same masks serve
every run, the single-block ones included (no partitioned variant: no seam values). Then the paired
differences (per seed, then mean ± std over the seeds): full - independent, momentum - shared,
full - shared, full - momentum, full - single-wall, full - single-total and each defined variant - full.
Output: one `JSON {...}` line per run, per variant and per difference, then two Markdown tables.

Time (measured on a 2-core CPU with the defaults' two runs at once, one process and one thread each): a
partitioned demo run (4 blocks x 1000 iterations, 2000 global steps emulated in one process) takes 10-16 min;
its blocks start from what their cameras see, and each drone view sees about half the city, so a block is
nearly as heavy as the whole scene and a whole-scene iteration costs about 1.1 times a block's: single-wall
(2000 iterations) about half a partitioned run, single-total (4000) about one. The defaults (6 partitioned
runs and 3 single-wall ones, `--jobs` = the CPU cores) took 57 min end to end on a 2-core machine
(timed: 1 min 40 s of it building the demo city into an empty cache, 55 min training and the report);
`--variants all` (12 partitioned, 6 single) twice that, about 1 h 50 min (not timed end to end). The
longest runs start first, so that the jobs end close together. At 3x the iterations a partitioned run
takes about 40 min of one core.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from momentumgs.config import Config, config_to_dict, load_config
from momentumgs.errors import UserError
from momentumgs.eval.measure import evaluate
from momentumgs.model.store import load_model
from momentumgs.partition import Partition, load_partition
from momentumgs.render.anchors import model_gaussians, render_model_view
from momentumgs.render.rasterize import rasterize
from momentumgs.render.view import View, camera_view
from momentumgs.run import train_run as train_in_this_process
from momentumgs.run_launch import train_in_processes
from momentumgs.run_setup import load_scene, start_or_resume
from momentumgs.train.paths import RunPaths
from momentumgs.train.slots import SlotSchedule

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Variant:
    name: str
    settings: tuple[str, ...]
    # its iterations: "per-block" (--iterations), "total" (n x it), "wall" (the partitioned global steps)
    budget: str = "per-block"


ONE_BLOCK = ("partition.block_dim=[1,1,1]", "method.workers=1")
PLAIN = ("experimental.shared_decoder=true", "method.teacher.momentum=0", "method.weighting.enabled=false")
FULL = ("experimental.shared_decoder=true", "method.teacher.momentum=0.9", "method.weighting.enabled=true")
BUILTIN = {
    v.name: v
    for v in (
        Variant(
            "independent",
            (
                "experimental.shared_decoder=false",
                "method.teacher.momentum=0",
                "method.weighting.enabled=false",
            ),
        ),
        Variant("shared", PLAIN),
        Variant(
            "momentum",
            (
                "experimental.shared_decoder=true",
                "method.teacher.momentum=0.9",
                "method.weighting.enabled=false",
            ),
        ),
        Variant("full", FULL),
        Variant("single-total", ONE_BLOCK + PLAIN, budget="total"),
        Variant("single-wall", ONE_BLOCK + PLAIN, budget="wall"),
    )
}
# the method against what it replaces: separate blocks, and one block for the same wall time (`all`: BUILTIN)
DEFAULT_VARIANTS = ["full", "independent", "single-wall"]
# (a, b): the differences a - b that the table reports, when both ran
COMPARISONS = [
    ("full", "independent"),
    ("momentum", "shared"),
    ("full", "shared"),  # the teacher and weighting together
    ("full", "momentum"),  # block weighting alone
    ("full", "single-wall"),
    ("full", "single-total"),
]
# per-variant columns: key, table heading, cell format
COLUMNS = [
    ("psnr", "PSNR", ".2f"),
    ("ssim", "SSIM", ".4f"),
    ("lpips_vgg", "LPIPS", ".4f"),
    ("psnr_cc", "PSNR cc", ".2f"),
    ("psnr_border", "border", ".2f"),
    ("psnr_interior", "interior", ".2f"),
    ("train_seconds", "seconds", ".0f"),
]
SUMMARY_KEYS = [*(c[0] for c in COLUMNS[:4]), "ssim_cc", "lpips_vgg_cc", *(c[0] for c in COLUMNS[4:])]
# a run's test-view metrics, in its folder, so that a reused run is not evaluated again
METRICS_FILE = "ablation_metrics.json"
SECONDS_FILE = "train_seconds.txt"


@dataclass(frozen=True)
class Run:
    variant: str
    seed: int
    cfg: Config
    dir: Path

    @property
    def label(self) -> str:
        return f"{self.variant} seed {self.seed}"


# --- the plan: variants, their settings, the runs -----------------------------------------------------------

# settings are separated by the commas that start a new `key=`, so that values may hold commas ([2,2,1])
SETTING_SEPARATOR = re.compile(r",(?=\s*[A-Za-z_][\w.]*\s*=)")
VARIANT_NAME = re.compile(r"[A-Za-z0-9_][\w-]*")


def parse_named_settings(text: str, flag: str) -> tuple[str, list[str]]:
    """'NAME:key=value,key=value' -> (NAME, ['key=value', 'key=value'])."""
    name, sep, rest = text.partition(":")
    settings = [s.strip() for s in SETTING_SEPARATOR.split(rest) if s.strip()]
    if not sep or not VARIANT_NAME.fullmatch(name) or not settings or not all("=" in s for s in settings):
        raise UserError(f"{flag} {text!r}: expected NAME:key=value[,key=value...]")
    return name, settings


def known_variants(defines: list[str]) -> dict[str, Variant]:
    """The built-in variants and the `--define` ones (full's settings plus their own)."""
    variants = dict(BUILTIN)
    for text in defines:
        name, settings = parse_named_settings(text, "--define")
        if name in variants:
            raise UserError(f"--define {name}: a variant of that name exists already")
        variants[name] = Variant(name, (*FULL, *settings))
    return variants


def chosen_variants(args, variants: dict[str, Variant]) -> list[str]:
    """--variants in their order, then the defined variants not named there."""
    named = [m for n in args.variants for m in (BUILTIN if n == "all" else [n])]
    unknown = [n for n in named if n not in variants]
    if unknown:
        raise UserError(f"--variants: unknown {unknown}; known: {list(variants)}")
    defined = [n for n in variants if n not in BUILTIN and n not in named]
    return list(dict.fromkeys([*named, *defined]))


def extra_settings(args, variants: dict[str, Variant]) -> dict[str, list[str]]:
    """--variant-set settings by variant."""
    extra: dict[str, list[str]] = {}
    for text in args.variant_sets:
        name, settings = parse_named_settings(text, "--variant-set")
        if name not in variants:
            raise UserError(f"--variant-set {name}: no such variant; known: {list(variants)}")
        extra.setdefault(name, []).extend(settings)
    return extra


def variant_iterations(
    variant: Variant, per_block: int, n_blocks: int, workers: int, seam_steps: int = 0
) -> int:
    if variant.budget == "total":
        return n_blocks * per_block
    if variant.budget == "wall":  # the slot schedule's global steps: the busiest worker's blocks in a row,
        # then the seam refinement's steps, each a step on the whole merged scene as one block's is
        return SlotSchedule(n_blocks, workers, per_block, per_block).total_steps + seam_steps
    return per_block


def schedule_settings(iterations: int) -> list[str]:
    """Densification and the block clocks scaled to a run of `iterations` (the demo's at 1000)."""
    tenth, quarter = max(iterations // 10, 1), max(iterations // 4, 1)
    return [
        f"train.iterations={iterations}",
        f"train.densify.start_iter={tenth}",
        f"train.densify.after_iter={tenth}",
        f"train.densify.end_iter={int(iterations * 0.85)}",
        f"method.slot_iterations={quarter}",
        f"method.weighting.every={quarter}",
    ]


def run_settings(args, scene_path: str, variant: Variant, extra: list[str], seed: int) -> list[str]:
    """Every override of one run, later ones winning: the tool's, --set, the variant's, --variant-set, the
    seed (so --set cannot undo a variant, and the seed is always the tool's)."""
    n_blocks = math.prod(args.block_dim)
    # the partitioned runs' seam steps, which a wall-time budget also buys (read only for that budget)
    seam_steps = 0
    if variant.budget == "wall" and n_blocks > 1:
        seam_steps = load_config(args.config, list(args.overrides)).partition.seam_steps
    iterations = variant_iterations(variant, args.iterations, n_blocks, args.workers, seam_steps)
    return [
        f"data.path={scene_path}",
        f"data.downscale={args.downscale}",
        f"partition.block_dim=[{','.join(map(str, args.block_dim))}]",
        f"method.workers={args.workers}",
        "train.device=cpu",
        f"train.threads={args.threads}",
        "train.eval_every=0",
        "train.checkpoint_every=0",
        *schedule_settings(iterations),
        *args.overrides,
        *variant.settings,
        *extra,
        f"train.seed={seed}",
    ]


def plan_runs(args, scene_path: str, out_root: Path) -> list[Run]:
    """Every (variant, seed) run with its config, in report order; bad settings fail here, before training."""
    variants = known_variants(args.defines)
    extra = extra_settings(args, variants)
    if args.workers > math.prod(args.block_dim):
        raise UserError(f"--workers {args.workers}: more than the {math.prod(args.block_dim)} blocks")
    runs = []
    for name in chosen_variants(args, variants):
        for seed in range(args.seeds):
            settings = run_settings(args, scene_path, variants[name], extra.get(name, []), seed)
            cfg = load_config(args.config, settings)
            runs.append(Run(name, seed, cfg, out_root / name / f"seed-{seed}"))
    return runs


# --- training -----------------------------------------------------------------------------------------------


def flat_keys(d: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    out = {}
    for k, v in d.items():
        out.update(flat_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def config_differences(a: Config, b: Config) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    fa, fb = flat_keys(config_to_dict(a)), flat_keys(config_to_dict(b))
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))


def keys_not_written(path: Path, cfg: Config) -> list[str]:
    """Settings of `cfg` that the config file at `path` does not hold: it was written by an older version,
    before they existed. Loading fills them with today's defaults, which need not be what that run trained
    with (a new setting's default may change the method), so such a run is not comparable."""
    written = flat_keys(yaml.safe_load(path.read_text()) or {})
    return sorted(k for k in flat_keys(config_to_dict(cfg)) if k not in written)


def reusable(run: Run) -> bool:
    """Whether `run.dir` holds this run finished (model.ckpt). An unfinished one is cleared: the tool writes
    no checkpoints along the way (they would cost time and leave the seconds partial), so it starts again."""
    paths = RunPaths(run.dir)
    if paths.model.is_file():
        written = load_config(paths.config)  # a clear error for a file that is not a valid config
        missing = keys_not_written(paths.config, run.cfg)
        if missing:
            raise UserError(
                f"{paths.config}: a finished run written before these settings existed "
                f"({', '.join(missing)}); unknown how it trained for them: move it or choose another --out"
            )
        differing = config_differences(written, run.cfg)
        if differing:
            raise UserError(f"{run.dir}: a finished run with other settings ({', '.join(differing)})")
        return True
    if run.dir.exists():
        if any(run.dir.iterdir()) and not paths.config.is_file():
            raise UserError(f"{run.dir}: not empty and not a run folder; choose another --out")
        shutil.rmtree(run.dir)
    return False


def train_run(run: Run, worker_processes: bool, progress: bool) -> None:
    """Train one run in this process (workers emulated) or in one process per worker; write its seconds."""
    t0 = time.perf_counter()
    if worker_processes and run.cfg.method.workers > 1:
        train_in_processes(run.cfg, run.dir, run.cfg.method.workers, progress)
    else:
        train_in_this_process(start_or_resume(run.cfg, load_scene, run.dir, resume=False), progress=progress)
    (run.dir / SECONDS_FILE).write_text(f"{time.perf_counter() - t0}\n")


def eval_metrics(run: Run) -> dict[str, float]:
    """evaluate()'s means on the test views (psnr, ssim, lpips_vgg, ..., *_cc), kept in the run folder."""
    path = run.dir / METRICS_FILE
    if path.is_file():
        return json.loads(path.read_text())
    scene = load_scene(run.cfg)
    model = load_model(RunPaths(run.dir).model)
    means = evaluate(model_renderer(model, scene), scene, scene.test_ids).means
    path.write_text(json.dumps(means))
    return means


def train_and_measure(run: Run, worker_processes: bool, progress: bool) -> None:
    train_run(run, worker_processes, progress)
    eval_metrics(run)  # here, so that --jobs evaluates in parallel too


def train_in_children(args, runs: list[Run], out_root: Path) -> None:
    """Train `runs`, `args.jobs` at a time, each in its own process that repeats our arguments."""
    pending, running = list(runs), {}
    while pending or running:
        while pending and len(running) < args.jobs:
            run = pending.pop(0)
            # the child repeats our arguments; the ones appended last win
            cmd = [sys.executable, __file__, *sys.argv[1:], "--out", str(out_root)]
            cmd += ["--train-run", f"{run.variant}:{run.seed}"]
            running[subprocess.Popen(cmd)] = run
            print(f"training {run.label} -> {run.dir}", flush=True)
        time.sleep(1)
        for proc in [p for p in running if p.poll() is not None]:
            run = running.pop(proc)
            if proc.returncode != 0:
                for other in running:
                    other.terminate()
                raise UserError(f"training {run.label} failed (exit {proc.returncode})")
            print(f"finished {run.label}", flush=True)


def block_iterations(run: Run) -> int:
    """The run's training work: iterations of all its blocks."""
    return math.prod(run.cfg.partition.block_dim) * run.cfg.train.iterations


def train_missing(args, runs: list[Run], out_root: Path) -> None:
    """Train the runs that `--out` does not hold finished yet."""
    # longest first, so that the last runs of --jobs end together
    todo = sorted((r for r in runs if not reusable(r)), key=block_iterations, reverse=True)
    print(f"{len(runs) - len(todo)} of {len(runs)} runs reused from {out_root}", flush=True)
    if args.jobs > 1:
        train_in_children(args, todo, out_root)
        return
    for run in todo:
        print(f"training {run.label} -> {run.dir}", flush=True)
        train_and_measure(run, args.worker_processes, progress=True)


def train_seconds(run: Run) -> float:
    path = run.dir / SECONDS_FILE
    return float(path.read_text()) if path.is_file() else float("nan")


# --- rendering and the seam masks ---------------------------------------------------------------------------


def eval_views(scene) -> dict[int, View]:
    return {i: camera_view(scene.cameras[i], "cpu", i) for i in scene.test_ids}


def model_renderer(model, scene):
    """render_fn(index) for evaluate(): the model seen from the scene camera `index`."""
    return lambda i: render_model_view(model, camera_view(scene.cameras[i], "cpu", i))


def expected_depth(model, view: View) -> tuple[np.ndarray, np.ndarray]:
    """Expected camera z and alpha at each pixel, the Gaussians as render_model_view draws them. -> [H, W],
    [H, W]"""
    means, quats, scales, opacities, colors = model_gaussians(model, view)
    out, alpha, _ = rasterize(
        means, quats, scales, opacities, colors[None], view.viewmat[None], view.K[None],
        view.width, view.height, render_mode="RGB+ED",
    )  # fmt: skip
    return out[0, ..., 3].double().numpy(), alpha[0, ..., 0].double().numpy()


def block_id_map(model, view: View, partition: Partition, min_alpha: float = 0.5) -> np.ndarray:
    """The block owning the surface seen at each pixel (-1 where the model is mostly transparent). [H, W]"""
    depth, alpha = expected_depth(model, view)
    v, u = np.mgrid[0 : view.height, 0 : view.width] + 0.5
    K, viewmat = view.K.double().numpy(), view.viewmat.double().numpy()
    cam = np.stack([(u - K[0, 2]) / K[0, 0] * depth, (v - K[1, 2]) / K[1, 1] * depth, depth], -1)  # [H, W, 3]
    world = (cam.reshape(-1, 3) - viewmat[:3, 3]) @ viewmat[:3, :3]  # R^T (x - t)
    ids = partition.block_of_points(world).reshape(depth.shape)
    ids[alpha < min_alpha] = -1
    return ids


def border_mask(ids: np.ndarray, radius: int) -> np.ndarray:
    """Pixels within `radius` of a pixel of another block (ignoring transparent ones). [H, W] bool"""
    t = torch.from_numpy(ids).double()[None, None]
    big = torch.where(t < 0, torch.full_like(t, 1e9), t)
    small = torch.where(t < 0, torch.full_like(t, -1e9), t)
    k = 2 * radius + 1
    hi = F.max_pool2d(small, k, stride=1, padding=radius)
    lo = -F.max_pool2d(-big, k, stride=1, padding=radius)
    return ((hi != lo) & (t >= 0))[0, 0].numpy()


def masked_psnr(image: torch.Tensor, gt: torch.Tensor, mask: np.ndarray) -> float:
    if mask.shape != tuple(image.shape[:2]) or not mask.any():
        return float("nan")
    err = (image.clamp(0, 1) - gt).square().mean(-1).numpy()[mask]
    return float(-10 * np.log10(err.mean()))


def block_count(run: Run) -> int:
    return len(load_partition(RunPaths(run.dir).partition).blocks)


@torch.no_grad()
def seam_masks(runs: list[Run], radius: int) -> dict[int, np.ndarray] | None:
    """Border pixels of each test view from the first partitioned run (None when every run is one block)."""
    source = next((r for r in runs if block_count(r) > 1), None)
    if source is None:
        return None
    scene = load_scene(source.cfg)
    model = load_model(RunPaths(source.dir).model)
    partition = load_partition(RunPaths(source.dir).partition)
    print(f"seam masks from {source.label}", flush=True)
    return {i: border_mask(block_id_map(model, v, partition), radius) for i, v in eval_views(scene).items()}


@torch.no_grad()
def seam_psnrs(run: Run, masks: dict[int, np.ndarray] | None) -> dict[str, float]:
    """PSNR of the run's test renders on the border pixels and on the others."""
    if masks is None:
        return {"psnr_border": float("nan"), "psnr_interior": float("nan"), "border_pixel_fraction": 0.0}
    scene = load_scene(run.cfg)
    model = load_model(RunPaths(run.dir).model)
    border, interior = [], []
    for i, view in eval_views(scene).items():
        image = render_model_view(model, view)
        gt = torch.from_numpy(scene.load_image(i)).float() / 255
        border.append(masked_psnr(image, gt, masks[i]))
        interior.append(masked_psnr(image, gt, ~masks[i]))
    return {
        "psnr_border": nan_mean(border),
        "psnr_interior": nan_mean(interior),
        "border_pixel_fraction": float(np.mean([m.mean() for m in masks.values()])),
    }


# --- results ------------------------------------------------------------------------------------------------


def nan_mean(values) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def run_row(run: Run, masks: dict[int, np.ndarray] | None) -> dict:
    n, k, it = block_count(run), run.cfg.method.workers, run.cfg.train.iterations
    return {
        "kind": "run",
        "variant": run.variant,
        "seed": run.seed,
        "blocks": n,
        "workers": k,
        "iterations": it,  # per block
        "global_steps": SlotSchedule(n, k, it, it).total_steps,
        "train_seconds": train_seconds(run),
        **eval_metrics(run),
        **seam_psnrs(run, masks),
        "run_dir": str(run.dir),
    }


def spread(values: list[float]) -> dict:
    """Mean, sample std (None with fewer than two values), min and max of the finite values."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else None
    return {
        "mean": float(np.mean(finite)),
        "std": std,
        "min": min(finite),
        "max": max(finite),
        "n": len(finite),
    }


def variant_summary(name: str, rows: list[dict]) -> dict:
    mine = [r for r in rows if r["variant"] == name]
    summary = {"kind": "summary", "variant": name, "runs": len(mine), "seeds": [r["seed"] for r in mine]}
    return summary | {key: spread([r[key] for r in mine]) for key in SUMMARY_KEYS}


def paired_difference(a: str, b: str, rows: list[dict]) -> dict:
    """a - b per seed (the seeds both ran), then its spread over the seeds."""
    by_seed = {(r["variant"], r["seed"]): r for r in rows}
    seeds = sorted(s for v, s in by_seed if v == a and (b, s) in by_seed)
    diff = {"kind": "difference", "a": a, "b": b, "seeds": seeds}
    return diff | {
        key: spread([by_seed[a, s][key] - by_seed[b, s][key] for s in seeds]) for key in SUMMARY_KEYS
    }


def comparisons(variants: list[str]) -> list[tuple[str, str]]:
    """The reported differences among the variants that ran: the method's steps, then each defined variant
    against full."""
    pairs = COMPARISONS + [(v, "full") for v in variants if v not in BUILTIN]
    return [(a, b) for a, b in pairs if a in variants and b in variants]


def json_line(record: dict) -> str:
    """One `JSON {...}` line; NaN becomes null (strict JSON)."""

    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    return "JSON " + json.dumps(clean(record))


def cell(stats: dict, fmt: str, signed: bool = False) -> str:
    if stats["mean"] is None:
        return "-"
    mean = format(stats["mean"], ("+" if signed else "") + fmt)
    return mean if stats["std"] is None else f"{mean} ± {format(stats['std'], fmt)}"


def markdown_table(first: str, rows: list[tuple[str, dict]], signed: bool) -> list[str]:
    lines = [f"| {first} | " + " | ".join(c[1] for c in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for label, record in rows:
        lines.append(f"| {label} | " + " | ".join(cell(record[k], f, signed) for k, _, f in COLUMNS) + " |")
    return lines


def report(args, scene_path: str, runs: list[Run], out_root: Path) -> None:
    masks = seam_masks(runs, args.seam_radius)
    rows = []
    for run in runs:
        rows.append(run_row(run, masks))
        print(json_line(rows[-1]), flush=True)
    variants = list(dict.fromkeys(r.variant for r in runs))
    summaries = [variant_summary(v, rows) for v in variants]
    differences = [paired_difference(a, b, rows) for a, b in comparisons(variants)]
    for record in summaries + differences:
        print(json_line(record), flush=True)

    n, k = math.prod(args.block_dim), args.workers
    print(f"\nscene {scene_path}: {n} blocks on {k} workers, {args.iterations} iterations per block,")
    print(f"downscale {args.downscale}, seeds 0..{args.seeds - 1}; runs in {out_root}")
    print("\nmean ± sample std over the seeds\n")
    print("\n".join(markdown_table("variant", [(s["variant"], s) for s in summaries], False)))
    if differences:
        labelled = [(f"{d['a']} − {d['b']}", d) for d in differences]
        print("\npaired by seed: mean ± sample std of the per-seed differences\n")
        print("\n".join(markdown_table("difference", labelled, True)))


# --- command line -------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--scene", help="COLMAP scene (default: the cached demo city)")
    parser.add_argument("--block-dim", type=int, nargs=3, default=[2, 2, 1], metavar="N",
                        help="blocks per axis of the partitioned variants")  # fmt: skip
    parser.add_argument("--workers", type=int, default=2, help="k, of the partitioned variants")
    parser.add_argument("--iterations", type=int, default=1000, help="iterations per block")
    parser.add_argument("--downscale", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=3, help="train.seed = 0 .. N-1 for every variant")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=DEFAULT_VARIANTS,
        help=f"of {list(BUILTIN)}, `all` of them, and the --define ones [{' '.join(DEFAULT_VARIANTS)}]",
    )
    parser.add_argument(
        "--define", dest="defines", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]",
        help="a variant NAME: full's settings plus these; it runs besides --variants (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--variant-set", dest="variant_sets", action="append", default=[], metavar="NAME:KEY=VALUE[,...]",
        help="more settings for variant NAME only (repeatable)",
    )  # fmt: skip
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for every run, before the variants' own")  # fmt: skip
    parser.add_argument("--seam-radius", type=int, default=3, help="pixels counted as near a block border")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per training process")
    parser.add_argument(
        "--out",
        help="keep the runs here, one folder per variant and seed (default: a temporary folder). A run "
        "that this folder holds finished (model.ckpt) with the same settings is reused, not trained again, "
        "so an interrupted ablation continues where it stopped; an unfinished one is trained from the "
        "start. A finished run with other settings, or whose config.yaml lacks a setting (written by an "
        "older version), is refused",
    )
    parser.add_argument(
        "--jobs", type=int, help="runs trained at once [the CPU cores / (--threads x processes per run)]"
    )
    parser.add_argument(
        "--worker-processes", action="store_true",
        help="train a partitioned run's k workers in k processes (torchrun) instead of emulating them in one",
    )  # fmt: skip
    parser.add_argument("--train-run", help=argparse.SUPPRESS)  # internal: VARIANT:SEED, for --jobs
    args = parser.parse_args(argv)
    if args.jobs is None:
        processes_per_run = args.workers if args.worker_processes else 1
        args.jobs = max(1, len(os.sched_getaffinity(0)) // (max(1, args.threads) * processes_per_run))
    if args.seeds < 1 or args.jobs < 1 or args.iterations < 1:
        parser.error("--seeds, --jobs and --iterations must be at least 1")
    return args


def scene_path_of(args) -> str:
    if args.scene:
        return str(Path(args.scene).resolve())
    from momentumgs.demo import cached_demo_scene

    return str(cached_demo_scene(size="demo", seed=0))


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    scene_path = scene_path_of(args)
    out_root = Path(args.out).resolve() if args.out else Path(tempfile.mkdtemp(prefix="momentumgs-ablation-"))
    runs = plan_runs(args, scene_path, out_root)
    if args.train_run:  # a child of train_in_children: the parent checked the folder
        train_and_measure(next(r for r in runs if f"{r.variant}:{r.seed}" == args.train_run),
                          args.worker_processes, progress=args.jobs == 1)  # fmt: skip
        return
    train_missing(args, runs, out_root)
    report(args, scene_path, runs, out_root)


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:
        raise SystemExit(f"ablation: {exc}") from None
