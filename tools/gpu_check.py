"""The GPU checks in one command: build gsplat's CUDA kernels, then run every check that needs a GPU, each in
its own process with its own time limit, and write one JSON summary.

    python tools/gpu_check.py                       # all checks; summary in $OUT (if set) or ./gpu_check_out
    python tools/gpu_check.py --dry-run             # list the checks, their commands and limits; run nothing
    python tools/gpu_check.py --out DIR --budget 600 --only gsplat_build,cpu_vs_gsplat

The checks, in order (docs/gpu.md says what each asserts):

    gsplat_build       the packages are there; gsplat's kernels build (timed) and render a test Gaussian
    cpu_vs_gsplat      our CPU rasterizer against gsplat's CUDA one: images, radii, gradients
    balanced_backward  a block's step with the capped consistency on CUDA: caps, and the CPU's gradients
    ssim_assigner      the SSIM camera assigner on CUDA: the CPU's 1 - SSIM and cameras
    seam_refinement    the seam refinement on CUDA: only seam anchors move, as on the CPU; the fit improves
    pytest_cuda        every other test marked `cuda` (together with the four above: `pytest -m cuda`)
    demo_scene         the small demo city with its exact poses (CPU, seconds; no SfM)
    train_method       a short multi-block run of configs/demo.yaml on CUDA, the method on; PSNR rises
    train_exposure     the same with --set model.appearance=exposure
    bench              tools/bench.py --device cuda --only step,method on the small city

A check whose prerequisite did not pass is skipped; so is every check once less of the time budget (--budget,
8 minutes by default, the build included) is left than the check is worth starting with; a check never runs
past the budget. The summary (gpu_check.json) is rewritten after each check, so that a run cut short still
leaves the checks done; gpu_check.log beside it holds every check's whole output. Exit code 0 when no check
failed or timed out (skipped checks are listed, not failures), 1 otherwise.

The project need not be installed: the checks import it from this checkout (PYTHONPATH). Besides torch with
CUDA, nvcc and pytest they need gsplat, pycolmap and plyfile; on a machine without a package index these can
be installed from wheels first (`pip install --no-index --no-deps --target DIR WHEELS`, DIR on PYTHONPATH).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SUMMARY_NAME, LOG_NAME = "gpu_check.json", "gpu_check.log"
DEFAULT_BUDGET_S = 480.0
TAIL_CHARS = 4000  # of each check's output, in the summary (the log holds all of it)
CLI = "import sys; from momentumgs.cli import main; sys.exit(main())"  # `momentumgs` without an install
# The modules the checks import (the import name; pip's name differs for some).
MODULES = "torch gsplat pycolmap plyfile numpy scipy skimage cv2 yaml PIL pytest".split()

# Inspect a finished check: (its output, its exit code) -> (key figures, the problem or None when it passed).
Inspect = Callable[[str, int], tuple[dict, str | None]]


def exit_zero(output: str, returncode: int) -> tuple[dict, str | None]:
    return {}, None if returncode == 0 else f"exit code {returncode}"


@dataclass(frozen=True)
class Check:
    name: str
    argv: tuple[str, ...]
    timeout_s: float
    what: str  # what it asserts, one line
    needs: tuple[str, ...] = ()  # checks that must have passed before this one runs
    min_s: float = 20.0  # skipped when less of the budget is left
    inspect: Inspect = exit_zero


@dataclass
class Result:
    name: str
    status: str  # passed, failed, timed_out, skipped
    seconds: float = 0.0
    returncode: int | None = None
    command: str = ""
    timeout_s: float = 0.0
    reason: str = ""  # why it failed or was skipped
    figures: dict = field(default_factory=dict)
    output_tail: str = ""


# --- what each check's output says -----------------------------------------------------------------------


def json_rows(output: str) -> list[dict]:
    """The `JSON {...}` lines a command printed (tools/bench.py's rows, the build probe's facts)."""
    rows = []
    for line in output.splitlines():
        if line.startswith("JSON "):
            try:
                rows.append(json.loads(line[5:]))
            except json.JSONDecodeError:
                continue
    return rows


PYTEST_COUNT = re.compile(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)\b")


def pytest_counts(output: str) -> dict[str, int]:
    """The counts of pytest's last summary line ("2 passed, 1 skipped, 3 deselected in 4.5s")."""
    for line in reversed(output.splitlines()):
        found = PYTEST_COUNT.findall(line)
        if found and re.search(r" in [\d.]+s", line):
            return {kind.rstrip("s") if kind.startswith("error") else kind: int(n) for n, kind in found}
    return {}


def pytest_inspector(at_least: int) -> Inspect:
    """Passed when pytest ran at least `at_least` tests (0: none at all will do) and every one passed: a test
    that skips on the GPU machine checked nothing. (A test may run once per parameter, e.g. per CPU
    compositor, so the count is a floor.)"""

    def inspect(output: str, returncode: int) -> tuple[dict, str | None]:
        counts = pytest_counts(output)
        if at_least == 0 and returncode == 5:  # pytest: no test collected (or every one deselected)
            return counts, None
        problems = [f"{counts[k]} {k}" for k in ("failed", "error", "skipped") if counts.get(k)]
        if returncode != 0:
            problems.insert(0, f"exit code {returncode}")
        if problems:
            return counts, "; ".join(problems)
        if counts.get("passed", 0) < at_least:
            return counts, f"{counts.get('passed', 0)} passed, expected at least {at_least}"
        return counts, None

    return inspect


def probe_inspector(output: str, returncode: int) -> tuple[dict, str | None]:
    rows = json_rows(output)
    figures = rows[-1] if rows else {}
    if returncode == 0:
        return figures, None
    return figures, figures.get("problem") or f"exit code {returncode}"


def scene_inspector(scene: Path) -> Inspect:
    def inspect(output: str, returncode: int) -> tuple[dict, str | None]:
        if returncode != 0:
            return {}, f"exit code {returncode}"
        images = len(list((scene / "images").glob("*")))
        if not (scene / "sparse" / "0").is_dir() or images == 0:
            return {}, f"{scene}: no COLMAP model or no images"
        return {"images": images}, None

    return inspect


def train_inspector(run: Path) -> Inspect:
    """Passed when the run ended with a model and its test PSNR (else its training PSNR) rose."""

    def inspect(output: str, returncode: int) -> tuple[dict, str | None]:
        figures = train_figures(run / "metrics.jsonl")
        if returncode != 0:
            return figures, f"exit code {returncode}"
        if not (run / "model.ckpt").is_file():
            return figures, "no model.ckpt written"
        series = figures.get("eval_psnr") or [figures.get("train_psnr_first"), figures.get("train_psnr_last")]
        if len(series) < 2 or any(v is None or v != v or abs(v) == float("inf") for v in series):
            return figures, f"PSNR missing or not finite: {series}"
        if series[-1] <= series[0]:
            return figures, f"PSNR did not rise: {series}"
        return figures, None

    return inspect


def train_figures(metrics: Path) -> dict:
    """First and last training PSNR (mean over the blocks logged), every test PSNR, speed and size."""
    records = []
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short
    train = [r for r in records if r.get("kind") == "train" and r.get("blocks")]
    evals = [r for r in records if r.get("kind") == "eval"]
    figures: dict[str, Any] = {
        "eval_psnr": [r["psnr"] for r in evals],
        "eval_step": [r["step"] for r in evals],
    }
    if train:

        def mean_psnr(record: dict) -> float:
            values = [b["psnr"] for b in record["blocks"].values()]
            return sum(values) / len(values)

        last = train[-1]
        figures |= {
            "steps": last["step"],
            "train_psnr_first": mean_psnr(train[0]),
            "train_psnr_last": mean_psnr(last),
            "steps_per_s": last.get("steps_per_s"),
            "train_seconds": last.get("seconds"),
            "anchors": sum(b.get("anchors", 0) for b in last["blocks"].values()),
        }
    return figures


def bench_inspector(output: str, returncode: int) -> tuple[dict, str | None]:
    rows = json_rows(output)
    if returncode != 0:
        return {"rows": rows}, f"exit code {returncode}"
    return {"rows": rows}, None if rows else "no JSON rows printed"


# --- the checks ----------------------------------------------------------------------------------------

RENDER_TEST = "tests/test_render.py::test_cpu_matches_gsplat_cuda"
PARITY = "tests/test_cuda_parity.py::"
BALANCED_TEST = PARITY + "test_balanced_backward_on_cuda_caps_the_consistency_and_matches_the_cpu"
SSIM_TEST = PARITY + "test_ssim_assigner_on_cuda_measures_and_assigns_as_on_the_cpu"
SEAM_TEST = PARITY + "test_seam_refinement_on_cuda_moves_the_seam_anchors_as_on_the_cpu_and_fits_better"
OWN_CHECK_TESTS = (RENDER_TEST, BALANCED_TEST, SSIM_TEST, SEAM_TEST)

# The short training runs: configs/demo.yaml (2x2 blocks, 2 workers in one process, teacher, consistency,
# weighting, seam refinement) on the small city at 160x120, its schedules scaled to 400 iterations a block.
TRAIN_OVERRIDES = (
    "train.device=cuda",
    "train.iterations=400",
    "train.eval_every=200",
    "train.checkpoint_every=0",
    "method.slot_iterations=100",
    "method.weighting.every=100",
    "train.densify.start_iter=50",
    "train.densify.after_iter=50",
    "train.densify.end_iter=350",
)
BENCH_ARGS = (
    "--device", "cuda", "--only", "step,method", "--downscales", "2", "1", "--downscale", "1",
    "--warmup", "50", "--steps", "50", "--repeats", "2", "--method-steps", "100", "--weighting-every", "50",
)  # fmt: skip


def cuda_test_files(root: Path = ROOT) -> list[str]:
    """The test files that mark tests `cuda`. pytest collects only these: the others hold no GPU test and
    import packages a GPU machine's image may lack (the viewer's viser)."""
    marked = re.compile(r"pytest\.mark\.cuda\b")
    return sorted(
        str(p.relative_to(root)) for p in (root / "tests").glob("test_*.py") if marked.search(p.read_text())
    )


def pytest_argv(*args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "pytest", "-m", "cuda", "-p", "no:cacheprovider", "-q", *args)


def plan(work: Path, root: Path = ROOT) -> list[Check]:
    """The checks in the order they run; `work` holds the scene and the runs they write."""
    py = sys.executable
    scene = work / "scene"
    build = ("gsplat_build",)
    deselect = [arg for test in OWN_CHECK_TESTS for arg in ("--deselect", test)]

    def train(name: str, extra: tuple[str, ...], what: str) -> Check:
        run = work / name
        argv = [py, "-c", CLI, "train", "-c", str(root / "configs" / "demo.yaml"), "--scene", str(scene)]
        argv += ["--out", str(run), "--no-eval", "--no-progress", "--processes", "1"]
        for override in TRAIN_OVERRIDES + extra:
            argv += ["--set", override]
        return Check(name, tuple(argv), 180, what, ("gsplat_build", "demo_scene"), 40, train_inspector(run))

    return [
        Check(
            "gsplat_build", (py, str(Path(__file__).resolve()), "--probe"), 360,
            "torch sees a GPU, the packages import, gsplat's kernels build (timed), a test Gaussian renders",
            min_s=60, inspect=probe_inspector,
        ),
        Check(
            "cpu_vs_gsplat", pytest_argv(RENDER_TEST), 90,
            "our CPU rasterizer and gsplat on CUDA, same inputs: images, alphas, radii, 2D means, gradients",
            build, inspect=pytest_inspector(1),
        ),
        Check(
            "balanced_backward", pytest_argv(BALANCED_TEST), 90,
            "a block's step on CUDA with the consistency capped per head and on the anchors: the caps hold, "
            "the gradients are the CPU's", build, inspect=pytest_inspector(1),
        ),
        Check(
            "ssim_assigner", pytest_argv(SSIM_TEST), 120,
            "the SSIM camera assigner on CUDA: 1 - SSIM per (view, block) and the cameras as on the CPU",
            build, inspect=pytest_inspector(1),
        ),
        Check(
            "seam_refinement", pytest_argv(SEAM_TEST), 150,
            "the seam refinement on CUDA: only the seam anchors move, as on the CPU; the decoder stays; the "
            "loss falls", build, inspect=pytest_inspector(1),
        ),
        Check(
            "pytest_cuda", pytest_argv(*cuda_test_files(root), *deselect), 150,
            "every other test marked cuda passes (none may skip)", build, inspect=pytest_inspector(0),
        ),
        Check(
            "demo_scene", (py, "-c", CLI, "demo-scene", str(scene), "--size", "test", "--no-sfm"), 90,
            "the small demo city (24 views, 320x240) with its exact poses and points, on the CPU",
            inspect=scene_inspector(scene),
        ),
        train(
            "train_method", (),
            "configs/demo.yaml on CUDA (2x2 blocks, 2 workers, teacher, consistency, weighting, seams), 400 "
            "iterations a block at 160x120: exit 0, model.ckpt, test PSNR rises",
        ),
        train(
            "train_exposure", ("model.appearance=exposure",),
            "the same with a per-photo exposure gain (model.appearance=exposure)",
        ),
        Check(
            "bench", (py, str(root / "tools" / "bench.py"), "--scene", str(scene), *BENCH_ARGS), 240,
            "tools/bench.py --device cuda --only step,method on the small city: step phases, method overhead",
            ("gsplat_build", "demo_scene"), 60, bench_inspector,
        ),
    ]  # fmt: skip


# --- running them ----------------------------------------------------------------------------------------


def child_env(work: Path, root: Path = ROOT) -> dict[str, str]:
    env = dict(os.environ)
    # this checkout's momentumgs, installed or not
    env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"  # a check cut off at its limit still shows what it printed last
    env.setdefault(
        "MAX_JOBS", str(os.cpu_count() or 1)
    )  # gsplat's build: every core (gsplat's own default: 10)
    env["MOMENTUMGS_CACHE"] = str(work / "cache")  # nothing read from or written to the user's cache
    return env


def run_one(check: Check, timeout_s: float, env: dict[str, str], log) -> Result:
    """Run `check` in its own process group, killed with everything it started after `timeout_s`."""
    result = Result(check.name, "failed", command=shlex.join(check.argv), timeout_s=round(timeout_s, 1))
    log.write(f"\n===== {check.name}: {result.command}\n")
    log.flush()
    lines: list[str] = []
    t0 = time.perf_counter()
    try:
        proc = subprocess.Popen(
            check.argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True,
        )  # fmt: skip
    except OSError as exc:
        result.reason = f"could not start: {exc}"
        return result
    reader = threading.Thread(target=_collect, args=(proc.stdout, lines, log), daemon=True)
    reader.start()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        cut = " (the end of the time budget)" if timeout_s < check.timeout_s else ""
        result.status, result.reason = "timed_out", f"still running after {timeout_s:.0f} s{cut}"
    reader.join(timeout=10)
    result.seconds = round(time.perf_counter() - t0, 1)
    result.returncode = proc.returncode
    output = "".join(lines)
    result.output_tail = output[-TAIL_CHARS:]
    try:
        result.figures, problem = check.inspect(output, proc.returncode)
    except Exception as exc:  # a figure that cannot be read fails the check, not the run
        result.figures, problem = {}, f"its output could not be read: {type(exc).__name__}: {exc}"
    if result.status != "timed_out":
        result.status, result.reason = ("passed", "") if problem is None else ("failed", problem)
    return result


def _collect(stream, lines: list[str], log) -> None:
    for line in stream:
        lines.append(line)
        log.write(line)
    log.flush()


def _kill_group(proc: subprocess.Popen) -> None:
    """The check's process and every process it started (they share its new session's group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_checks(
    checks: Sequence[Check], out: Path, budget_s: float, env: dict[str, str], say=print
) -> dict[str, Any]:
    """Run `checks` in order within `budget_s` seconds; write and return the summary."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    summary: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "budget_s": budget_s,
        "python": sys.executable,
        "checks": [],
    }
    status: dict[str, str] = {}
    with open(out / LOG_NAME, "w") as log:
        for i, check in enumerate(checks):
            left = budget_s - (time.time() - started)
            unmet = [n for n in check.needs if n in status and status[n] != "passed"]
            if unmet:
                result = skipped(check, "needs " + ", ".join(f"{n} ({status[n]})" for n in unmet))
            elif left < check.min_s:
                result = skipped(
                    check, f"time budget spent ({max(left, 0):.0f} s left, needs {check.min_s:.0f})"
                )
            else:
                say(f"[{i + 1}/{len(checks)}] {check.name} (limit {min(check.timeout_s, left):.0f} s) ...")
                result = run_one(check, min(check.timeout_s, left), env, log)
            status[check.name] = result.status
            summary["checks"].append(result.__dict__)
            summary["seconds"] = round(time.time() - started, 1)
            write_summary(out, summary)
            say(f"  {result.name}: {result.status} in {result.seconds:.1f} s {result.reason}".rstrip())
    return summary


def skipped(check: Check, reason: str) -> Result:
    return Result(
        check.name, "skipped", command=shlex.join(check.argv), timeout_s=check.timeout_s, reason=reason
    )


def write_summary(out: Path, summary: dict) -> None:
    tmp = out / (SUMMARY_NAME + ".tmp")
    tmp.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    tmp.replace(out / SUMMARY_NAME)  # a run killed mid-write leaves the previous summary whole


def table(summary: dict) -> str:
    rows = [("check", "status", "seconds", "reason")]
    rows += [(c["name"], c["status"], f"{c['seconds']:.1f}", c["reason"][:80]) for c in summary["checks"]]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join([*(r[i].ljust(widths[i]) for i in range(3)), r[3]]).rstrip() for r in rows)


def failed(summary: dict) -> bool:
    return any(c["status"] in ("failed", "timed_out") for c in summary["checks"])


# --- the build probe (runs as the first check's own process) ---------------------------------------------


def probe() -> int:
    """Print one `JSON` line of facts (versions, GPU, missing modules, build seconds, the problem if any);
    exit 1 unless gsplat's kernels built and rendered a test Gaussian."""
    import importlib.util
    import platform

    facts: dict[str, Any] = {"python": platform.python_version(), "cpus": os.cpu_count()}
    facts["missing"] = [m for m in MODULES if importlib.util.find_spec(m) is None]
    problem = None
    if "torch" not in facts["missing"]:
        import torch

        facts |= {"torch": torch.__version__, "torch_cuda": torch.version.cuda}
        if torch.cuda.is_available():
            facts |= {
                "gpu": torch.cuda.get_device_name(0),
                "capability": list(torch.cuda.get_device_capability(0)),
            }
        else:
            problem = "torch sees no CUDA device"
    if facts["missing"]:
        problem = "missing Python modules: " + ", ".join(facts["missing"])
    if problem is None:
        from momentumgs.render.backend import gsplat_problem

        t0 = time.perf_counter()
        problem = gsplat_problem("cuda")  # builds the kernels on first use, then renders one Gaussian
        facts["build_and_test_render_s"] = round(time.perf_counter() - t0, 1)
    facts["problem"] = problem
    print("JSON " + json.dumps(facts), flush=True)
    return 0 if problem is None else 1


# --- command line -------------------------------------------------------------------------------------------


def default_out() -> Path:
    return Path(os.environ["OUT"]) if os.environ.get("OUT") else Path("gpu_check_out")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--out", type=Path, help="folder of gpu_check.json and gpu_check.log [$OUT or ./gpu_check_out]"
    )
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for all checks [480]")
    p.add_argument("--only", help="comma-separated check names (their prerequisites are not added)")
    p.add_argument("--dry-run", action="store_true", help="list the checks and their commands; run nothing")
    p.add_argument("--work", type=Path, help="folder for the scene and runs [a new temporary one, removed]")
    p.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)  # the first check's process
    return p.parse_args(argv)


def select(checks: list[Check], only: str | None) -> list[Check]:
    if not only:
        return checks
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = sorted(set(names) - {c.name for c in checks})
    if unknown:
        raise SystemExit(f"gpu_check: unknown check(s) {', '.join(unknown)}; see --dry-run")
    return [c for c in checks if c.name in names]


def print_plan(checks: list[Check], out: Path, budget_s: float) -> None:
    print(f"gpu_check would run {len(checks)} checks within {budget_s:.0f} s and write {out / SUMMARY_NAME}:")
    for i, c in enumerate(checks):
        needs = f", after {', '.join(c.needs)}" if c.needs else ""
        print(f"\n{i + 1:2d}. {c.name} (limit {c.timeout_s:.0f} s{needs})\n    {c.what}")
        print(f"    $ {shlex.join(c.argv)}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.probe:
        return probe()
    out = args.out or default_out()
    if args.dry_run:
        checks = select(plan(args.work or Path(tempfile.gettempdir()) / "gpu_check-WORK"), args.only)
        print_plan(checks, out, args.budget)
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        summary = run_checks(select(plan(work), args.only), out, args.budget, child_env(work))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print("\n" + table(summary))
    print(f"\nsummary: {out / SUMMARY_NAME}; every output: {out / LOG_NAME}")
    return 1 if failed(summary) else 0


if __name__ == "__main__":
    sys.exit(main())
