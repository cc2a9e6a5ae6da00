"""Crash campaign: SIGKILL a multi-block run at chosen moments, resume it, compare it with an unbroken run.

A small 4-block run (2x2 blocks, 2 workers, the test city) is started with `momentumgs train`, in one process
(the emulation) or in two (torchrun), and killed with SIGKILL (the whole process tree, like a crash of the
machine) at a moment inside one of: a checkpoint write, a block spill or prefetch (a tiny RAM budget makes
the block store spill every idle block), a densification, the final merge, the periodic or the final
evaluation, or a random wall-clock moment. The moments are named points (tools/crash_hooks: the process
pauses there and is killed while paused). Each killed run is resumed with `momentumgs train --resume RUN`
(again if the campaign kills the resume too); every resume must say it resumed from the step of the run's
latest checkpoint. The finished run must equal the unbroken one tensor by tensor: every block's anchors,
the shared decoder, the momentum teacher (and the final evaluation's figures).

    python tools/crash_campaign.py --trials 10 --processes 1,2

prints a table (trial, processes, kill moments, resumed-from steps, bit-exact) and a final JSON line; the exit
status is 1 when any trial differs. `--cross` adds the runs resumed with another process count.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
HOOKS = Path(__file__).resolve().parent / "crash_hooks"

# 4 blocks (2x2) on 2 workers, 12 iterations per block = 24 global steps; a checkpoint every 4 steps,
# densification every 4 iterations of a block, a periodic evaluation every 8 steps, a RAM budget that
# spills every idle block, 4 seam-refinement steps after the merge. 80x60 views: the final evaluation's
# LPIPS needs 32 pixels a side.
RUN = [
    "data.downscale=4",
    "train.threads=1",
    "train.device=cpu",
    "train.eval_every=8",
    "train.log_every=4",
    "train.iterations=12",
    "train.checkpoint_every=4",
    "train.densify.start_iter=2",
    "train.densify.after_iter=2",
    "train.densify.interval=4",
    "train.densify.end_iter=1000",
    "partition.block_dim=[2,2,1]",
    "method.workers=2",
    "method.slot_iterations=4",
    "method.weighting.every=4",
    "method.weighting.view_stride=4",
    "method.checksum_every=4",
    "method.ram_budget_mb=0.01",
    "partition.seam_steps=4",
]
# the small version for the tests: 40x30 views, no evaluation at all
QUICK = [*RUN, "data.downscale=8", "train.eval_every=0"]

POINTS = ["checkpoint", "spill_write", "prefetch", "densify", "merge", "eval_blocks", "eval_final", "random"]
FIRST_CHECKPOINT = 4  # a kill before the first complete checkpoint leaves nothing to resume
RESUMED = re.compile(r"resuming at step (\d+) of (\d+)")


# --- processes --------------------------------------------------------------------------------------------


def train_command(*args, processes: int | None) -> list[str]:
    chosen = [] if processes is None else ["--processes", str(processes)]
    return [sys.executable, "-m", "momentumgs.cli", "train", "--no-progress", *chosen, *map(str, args)]


def hooked_env(crash_dir: Path, target: str | None) -> dict[str, str]:
    """The environment of a campaign run: one thread, the crash points loaded, `target` armed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MOMENTUMGS_CRASH_DIR": str(crash_dir)}
    env["PYTHONPATH"] = os.pathsep.join([str(HOOKS), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("MOMENTUMGS_CRASH_AT", None)
    if target:
        env["MOMENTUMGS_CRASH_AT"] = target
    return env


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants (torchrun starts its workers in sessions of their own, so killing the
    process group would leave them running)."""
    children = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children[ppid].append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL `proc` and every process under it (all stopped first: none reacts to another's death)."""
    pids = process_tree(proc.pid)
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
    proc.wait()


@dataclass
class Outcome:
    killed: bool
    moment: str  # where the kill landed ("" when the run ended by itself)
    returncode: int | None
    stdout: str
    stderr: str


def run_until(cmd, env, crash_dir: Path, delay_s: float | None = None, timeout_s: float = 900) -> Outcome:
    """Run `cmd`; kill its process tree once the armed point is hit (crash_dir/hit.json) or after
    `delay_s`, else let it finish."""
    crash_dir.mkdir(parents=True, exist_ok=True)
    hit = crash_dir / "hit.json"
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, cwd=ROOT, start_new_session=True)
        start = time.time()
        killed, moment = False, ""
        while proc.poll() is None:
            waited = time.time() - start
            if hit.exists() or (delay_s is not None and waited > delay_s) or waited > timeout_s:
                time.sleep(random.uniform(0.0, 0.2))  # the paused thread stays; the others run on a little
                kill_tree(proc)
                killed = True
                moment = hit_moment(hit) if hit.exists() else last_moment(crash_dir, waited)
                break
            time.sleep(0.02)
        out.seek(0), err.seek(0)
        return Outcome(killed, moment, proc.returncode, out.read(), err.read())


def hit_moment(path: Path) -> str:
    record = json.loads(path.read_text())
    return describe(record)


def describe(record: dict) -> str:
    if record.get("parent"):
        step = "after training (the process that started torchrun)"
    else:
        step = "before training" if record["step"] is None else f"step {record['step']}"
    detail = f" {record['detail']}" if record.get("detail") else ""
    return f"{record['point']} #{record['n']} rank {record['rank']} @ {step}{detail}"


def trace(crash_dir: Path) -> list[dict]:
    records = []
    for path in crash_dir.glob("trace-*.jsonl"):
        records += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return records


def last_moment(crash_dir: Path, waited: float) -> str:
    records = trace(crash_dir)
    steps = [r["step"] for r in records if r["step"] is not None]
    last = f"step {max(steps)}" if steps else "before the first step"
    return f"random {waited:.1f} s, after {last}"


# --- the run's state --------------------------------------------------------------------------------------


def latest_step(run: Path) -> int | None:
    try:
        return int(json.loads((run / "checkpoints" / "latest.json").read_text())["step"])
    except (OSError, ValueError, KeyError):
        return None


def final_tensors(run: Path) -> dict[str, torch.Tensor]:
    """Every block's final anchors and the merged model's tensors (anchors, decoder), by name."""
    from momentumgs.checkpoint import load_checkpoint

    out = {}
    for path in sorted((run / "blocks").glob("block_*.ckpt")):
        for key, value in load_checkpoint(path)["anchors"].items():
            if torch.is_tensor(value):
                out[f"{path.stem}/{key}"] = value
    stack = [("model", load_checkpoint(run / "model.ckpt"))]
    while stack:
        name, node = stack.pop()
        if isinstance(node, dict):
            stack += [(f"{name}/{k}", v) for k, v in node.items()]
        elif torch.is_tensor(node):
            out[name] = node
    return out


def replica_tensors(run: Path) -> list[dict[str, torch.Tensor]]:
    """Each process's student decoder and momentum teacher in the run's last checkpoint (rank order)."""
    from momentumgs.checkpoint import load_checkpoint

    step_dir = run / "checkpoints" / json.loads((run / "checkpoints" / "latest.json").read_text())["dir"]
    replicas = []
    for rank in range(len(list(step_dir.glob("shared_rank*.ckpt")))):
        out = {}
        for i, state in enumerate(load_checkpoint(step_dir / f"shared_rank{rank}.ckpt")["decoders"]):
            for part in ("decoder", "teacher"):
                for key, value in (state.get(part) or {}).items():
                    if torch.is_tensor(value):
                        out[f"decoder{i}/{part}/{key}"] = value
        replicas.append(out)
    return replicas


def differing_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    same_shape = [k for k in sorted(set(a) & set(b)) if a[k].shape == b[k].shape]
    diff = sorted(set(a) ^ set(b)) + [k for k in sorted(set(a) & set(b)) if a[k].shape != b[k].shape]
    return diff + [k for k in same_shape if not torch.equal(a[k], b[k])]


def differences(run: Path, reference: Path) -> list[str]:
    """What differs between `run` and `reference` (empty: bit-exact): tensor names, each process's teacher
    and decoder replica against the reference's first, the final evaluation's figures."""
    if not (run / "model.ckpt").is_file():
        return ["model.ckpt missing"]
    diff = differing_tensors(final_tensors(run), final_tensors(reference))
    teacher = replica_tensors(reference)[0]
    for rank, replica in enumerate(replica_tensors(run)):
        diff += [f"shared_rank{rank}/{k}" for k in differing_tensors(replica, teacher)]
    if not any("/teacher/" in k for k in teacher):
        diff.append("the reference has no teacher")
    ra, rb = run / "eval" / "eval_test.json", reference / "eval" / "eval_test.json"
    if rb.is_file():  # the final evaluation (killed or not) measured the same model
        ja, jb = (json.loads(p.read_text()) if p.is_file() else {} for p in (ra, rb))
        if ja.get("means") != jb["means"] or ja.get("iteration") != jb["iteration"]:
            diff.append("eval/eval_test.json")
    return diff


# --- trials -----------------------------------------------------------------------------------------------


@dataclass
class Trial:
    number: int
    processes: int
    moments: list[str] = field(default_factory=list)
    resumed_from: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def exact(self) -> bool:
        return not self.problems


def choose_target(rng: random.Random, point: str, calibration: list[dict]) -> str | None:
    """POINT:N:RANK for a hit of `point` after the first complete checkpoint (None: no such hit)."""
    hits = [
        r
        for r in calibration
        if r["point"] == point
        and (r["step"] is None if r.get("parent") else r["step"] is not None and r["step"] > FIRST_CHECKPOINT)
    ]
    if point == "checkpoint":  # the first step folder is not yet complete when it is written
        hits = [r for r in hits if not r["detail"].startswith(f"step_{FIRST_CHECKPOINT:08d}")]
    if not hits:
        return None
    chosen = rng.choice(hits)
    return f"{point}:{chosen['n']}:{chosen['rank']}"


def resume_and_check(
    trial: Trial, run: Path, work: Path, rng: random.Random, processes_arg, rekill: bool, eval_args=()
):
    """Resume `run` until it finishes (killing the first resume again when `rekill`), checking the step
    each resume starts from."""
    for attempt in range(1, 4):
        expected = latest_step(run)
        target = None
        if rekill and attempt == 1:
            point = rng.choice(["checkpoint", "densify", "spill_write"])
            target = f"{point}:{rng.randint(1, 3)}:{rng.randrange(trial.processes)}"
        crash_dir = work / f"resume-{attempt}"
        cmd = train_command(*eval_args, "--resume", run, processes=processes_arg)
        got = run_until(cmd, hooked_env(crash_dir, target), crash_dir)
        match = RESUMED.search(got.stdout)
        resumed = int(match.group(1)) if match else None
        trial.resumed_from.append(resumed if resumed is not None else -1)
        if resumed != expected:
            trial.problems.append(
                f"resume {attempt}: resumed from {resumed}, the latest checkpoint is {expected}"
            )
        if got.killed:
            trial.moments.append(f"resume: {got.moment}")
            continue
        if got.returncode != 0:
            trial.problems.append(
                f"resume {attempt} failed (exit {got.returncode}): {got.stderr.strip()[-300:]}"
            )
        return
    trial.problems.append("not finished after 3 resumes")


def crash_trial(trial: Trial, scene: Path, overrides, work: Path, rng, point: str, calibration, eval_args):
    run = work / "run"
    crash_dir = work / "crash"
    args = [*eval_args, *set_args([*overrides, f"data.path={scene}"]), "--out", run]
    delay = None
    target = None
    if point == "random":  # between the end of the first checkpoint and the end of the run, as calibrated
        start, end = calibration_window(calibration)
        delay = rng.uniform(start, end)
    else:
        target = choose_target(rng, point, calibration)
        if target is None:
            trial.problems.append(f"no hit of {point} in the calibration run")
            return
    got = run_until(
        train_command(*args, processes=trial.processes), hooked_env(crash_dir, target), crash_dir, delay
    )
    if not got.killed and point == "random" and got.returncode == 0:  # calibrated under another load
        trial.moments.append(f"none: the run finished before the random kill at {delay:.1f} s")
        return
    if not got.killed:
        trial.problems.append(f"the run ended before the kill (exit {got.returncode})")
        return
    trial.moments.append(got.moment)
    if latest_step(run) is None:  # a random kill before the first checkpoint: nothing to resume
        trial.moments[-1] += " (no checkpoint yet: started again)"
        shutil.rmtree(run)
        got = run_until(
            train_command(*args, processes=trial.processes), hooked_env(crash_dir, None), crash_dir
        )
        return
    resume_and_check(trial, run, work, rng, None, rng.random() < 0.3, eval_args)


def calibration_window(calibration: list[dict]) -> tuple[float, float]:
    """Seconds from the start of the calibration run to the first hit past the first checkpoint, and to
    its last hit."""
    t0 = calibration[0]["start"]
    after = [r["t"] for r in calibration if r["step"] is not None and r["step"] > FIRST_CHECKPOINT]
    return after[0] - t0, calibration[-1]["t"] - t0


def set_args(items) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def cross_trial(trial: Trial, scene, overrides, work: Path, rng, calibration, eval_args, other: int):
    """Kill a run started with `trial.processes` processes, resume it with `--processes other`: it must
    either finish bit-exactly or be refused in one line (then the plain resume must finish it)."""
    run = work / "run"
    crash_dir = work / "crash"
    target = choose_target(rng, "checkpoint", calibration)
    args = [*eval_args, *set_args([*overrides, f"data.path={scene}"]), "--out", run]
    got = run_until(train_command(*args, processes=trial.processes), hooked_env(crash_dir, target), crash_dir)
    trial.moments.append(got.moment)
    crash_dir = work / "other"
    cmd = train_command(*eval_args, "--resume", run, processes=other)
    got = run_until(cmd, hooked_env(crash_dir, None), crash_dir)
    err = got.stderr.strip().splitlines()
    if got.returncode != 0:
        if len(err) != 1 or "Traceback" in got.stderr:
            trial.problems.append(f"--processes {other} failed without one clear line: {len(err)} lines")
        trial.moments.append(f"--processes {other} refused: {err[-1] if err else ''}")
        resume_and_check(trial, run, work, rng, None, False, eval_args)
    else:
        trial.moments.append(f"--processes {other} resumed")
        match = RESUMED.search(got.stdout)
        trial.resumed_from.append(int(match.group(1)) if match else -1)


# --- the campaign -----------------------------------------------------------------------------------------


def calibrate(scene, overrides, work: Path, processes: int, eval_args) -> tuple[Path, list[dict]]:
    """An unbroken run with every crash point traced: the reference and the hits to choose kills from."""
    run, crash_dir = work / "run", work / "crash"
    args = [*eval_args, *set_args([*overrides, f"data.path={scene}"]), "--out", run]
    start = time.time()
    got = run_until(train_command(*args, processes=processes), hooked_env(crash_dir, None), crash_dir)
    if got.returncode != 0:
        sys.exit(f"crash_campaign: the unbroken {processes}-process run failed:\n{got.stderr[-2000:]}")
    records = sorted(trace(crash_dir), key=lambda r: r["t"])
    records[0]["start"] = start
    return run, records


def campaign(args) -> list[Trial]:
    scene = Path(args.scene) if args.scene else demo_scene()
    overrides = QUICK if args.quick else RUN
    eval_args = ["--no-eval"] if args.quick else []
    work = Path(args.work or tempfile.mkdtemp(prefix="crash-campaign-")).resolve()
    rng = random.Random(args.seed)
    processes = [int(p) for p in args.processes.split(",")]
    trials, number = [], 0
    reference = None
    for p in processes:
        run, calibration = calibrate(scene, overrides, work / f"unbroken-{p}p", p, eval_args)
        if reference is None:
            reference = run
        elif differences(run, reference):
            print(f"the unbroken {p}-process run differs from the {processes[0]}-process one")
            trials.append(Trial(0, p, ["unbroken"], [], ["differs from the unbroken reference"]))
        chosen = args.points.split(",") if args.points else POINTS
        points = [chosen[i % len(chosen)] for i in range(args.trials)]
        if args.quick:
            points = [q for q in points if q not in ("eval_blocks", "eval_final")] or ["checkpoint"]
        rng.shuffle(points)
        for point in points[: args.trials]:
            number += 1
            trial, t0 = Trial(number, p), time.time()
            crash_trial(
                trial, scene, overrides, work / f"trial-{number:02d}", rng, point, calibration, eval_args
            )
            finish_trial(trial, work / f"trial-{number:02d}" / "run", reference, t0, trials)
        if args.cross:
            for other in processes:
                if other == p:
                    continue
                number += 1
                trial, t0 = Trial(number, p), time.time()
                cross_trial(
                    trial, scene, overrides, work / f"trial-{number:02d}", rng, calibration, eval_args, other
                )
                finish_trial(trial, work / f"trial-{number:02d}" / "run", reference, t0, trials)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return trials


def demo_scene() -> Path:
    from momentumgs.demo import cached_demo_scene

    return Path(cached_demo_scene(size="test", seed=0, sfm=False, log=lambda _: None))


HEADER = f"{'trial':>5}  {'proc':>4}  {'kill moments':<72}  {'resumed from':<13}  {'bit-exact':<9}  {'s':>5}"


def finish_trial(trial: Trial, run: Path, reference: Path, t0: float, trials: list[Trial]) -> None:
    """Compare a trial's finished run with the unbroken one (unless it already failed), time it, print its
    row and keep it."""
    if not trial.problems:
        trial.problems += differences(run, reference)
    trial.seconds = time.time() - t0
    print_row(trial)
    trials.append(trial)


def print_row(trial: Trial) -> None:
    moments = "; ".join(trial.moments) or "-"
    resumed = ",".join(map(str, trial.resumed_from)) or "-"
    exact = "yes" if trial.exact else "NO"
    print(
        f"{trial.number:>5}  {trial.processes:>4}  {moments:<72}  {resumed:<13}  {exact:<9}  "
        f"{trial.seconds:5.0f}"
    )
    for problem in trial.problems:
        print(f"{'':>13}! {problem}")
    sys.stdout.flush()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=10, help="kills per process count (default 10)")
    parser.add_argument("--processes", default="1,2", help="process counts to train with (default 1,2)")
    parser.add_argument("--seed", type=int, default=0, help="chooses the kill moments")
    parser.add_argument("--scene", help="a COLMAP scene (default: the small demo city, built once)")
    parser.add_argument("--work", help="folder for the runs (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the runs")
    parser.add_argument("--cross", action="store_true", help="also resume with another process count")
    parser.add_argument("--points", help=f"kill only at these points (default all: {','.join(POINTS)})")
    parser.add_argument("--quick", action="store_true", help="40x30 views, no evaluation (for the tests)")
    args = parser.parse_args(argv)
    start = time.time()
    print(HEADER)
    trials = campaign(args)
    differing = [t.number for t in trials if not t.exact]
    summary = {
        "trials": len(trials),
        "bit_exact": sum(t.exact for t in trials),
        "differing": differing,
        "processes": args.processes,
        "seed": args.seed,
        "seconds": round(time.time() - start, 1),
        "moments": {t.number: t.moments for t in trials},
    }
    print(json.dumps(summary))
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
