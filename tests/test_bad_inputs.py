"""Bad inputs to every command: each case runs the CLI in this process and must exit non-zero with at most
three lines on stderr and no traceback, leaving every file it was given (and every earlier output) byte for
byte as it was, and creating nothing. Then `--force`, the counterpart of the refusals of earlier output.

Shared inputs (a tiny trained and evaluated run, a small baked PLY, the test city) are made once per module;
each case builds its own bad input in its own folder and names the text its error must contain.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from helpers import MULTI, scene_loader

from momentumgs.cli import main
from momentumgs.config import load_config
from momentumgs.export import BakedGaussians, write_ply
from momentumgs.run import evaluate_run, train_run
from momentumgs.run_setup import start_or_resume

# --- shared inputs -------------------------------------------------------------------------------------


@dataclass
class World:
    scene: Path  # the test city (a COLMAP scene)
    run: Path  # a tiny trained run with eval/ written
    ply: Path  # a small baked PLY in a folder of its own (no run config beside it)


@pytest.fixture(scope="module")
def world(tmp_path_factory, gt_test_scene) -> World:
    root = tmp_path_factory.mktemp("bad_inputs")
    run = root / "run"
    # 80x60 views: evaluation's LPIPS needs at least 32 px a side
    cfg = load_config(None, [*MULTI, f"data.path={gt_test_scene}", "train.iterations=2", "data.downscale=4"])
    train_run(start_or_resume(cfg, scene_loader, run, resume=False), progress=False)
    evaluate_run(run)
    ply = root / "baked" / "small.ply"
    write_ply(ply, small_gaussians())
    return World(Path(gt_test_scene), run, ply)


def small_gaussians(m: int = 32) -> BakedGaussians:
    gen = torch.Generator().manual_seed(0)
    return BakedGaussians(
        means=torch.rand(m, 3, generator=gen) * 2 - 1,
        quats=torch.nn.functional.normalize(torch.randn(m, 4, generator=gen), dim=1),
        scales=torch.rand(m, 3, generator=gen) * 0.1 + 0.02,
        opacities=torch.rand(m, generator=gen) * 0.9 + 0.05,
        sh=torch.rand(m, 4, 3, generator=gen) - 0.5,
    )


# --- bad inputs: each builder makes one under the case's folder `t` and returns its path ----------------


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def halve(path: Path) -> Path:
    """Keep the first half of the file."""
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    return path


def a_file(w: World, t: Path) -> Path:
    return write(t / "f", "x")


def full_folder(w: World, t: Path) -> Path:
    """A folder holding a file of someone else's."""
    return write(t / "o" / "keep.txt", "x").parent


def light_run(w: World, t: Path) -> Path:
    """A copy of the trained run without its checkpoints (config, partition, model, metrics)."""
    run = t / "run"
    run.mkdir()
    for name in ("config.yaml", "partition.json", "model.ckpt", "metrics.jsonl"):
        shutil.copy2(w.run / name, run / name)
    return run


def corrupt_model_run(w: World, t: Path) -> Path:
    run = light_run(w, t)
    halve(run / "model.ckpt")
    return run


def corrupt_config_run(w: World, t: Path) -> Path:
    run = light_run(w, t)
    (run / "config.yaml").write_text("data: [unclosed\n")
    return run


def scene_gone_run(w: World, t: Path) -> Path:
    run = light_run(w, t)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["data"]["path"] = str(t / "gone")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run


def corrupt_checkpoint_run(w: World, t: Path) -> Path:
    """A copy of the run whose only checkpoint has a damaged block file."""
    run = t / "run"
    shutil.copytree(w.run, run)
    step = json.loads((run / "checkpoints" / "latest.json").read_text())["dir"]
    halve(run / "checkpoints" / step / "block_000.ckpt")
    return run


def truncated_ply(w: World, t: Path) -> Path:
    return halve(Path(shutil.copy2(w.ply, t / "truncated.ply")))


def scene_copy(w: World, t: Path, sparse: bool = True) -> Path:
    """The test city's images and, when `sparse`, its COLMAP model."""
    scene = t / "scene"
    shutil.copytree(w.scene / "images", scene / "images")
    if sparse:
        shutil.copytree(w.scene / "sparse", scene / "sparse")
    return scene


def scene_without_sparse(w: World, t: Path) -> Path:
    return scene_copy(w, t, sparse=False)


def scene_corrupt_model(w: World, t: Path) -> Path:
    scene = scene_copy(w, t)
    for f in (scene / "sparse" / "0").glob("images.*"):
        halve(f)
    return scene


def scene_missing_image(w: World, t: Path) -> Path:
    scene = scene_copy(w, t)
    sorted((scene / "images").iterdir())[3].unlink()
    return scene


def yaml_syntax_error(w: World, t: Path) -> Path:
    return write(t / "bad.yaml", "train: {iterations: 5\n")


def yaml_list(w: World, t: Path) -> Path:
    return write(t / "list.yaml", "- 1\n- 2\n")


def earlier_conversion(w: World, t: Path) -> Path:
    out = t / "converted"
    write(out / "converted.json", '{"format": "earlier"}')
    write(out / "train" / "images" / "a.png", b"earlier image")
    return out


def meganerf_bad_coordinates(w: World, t: Path) -> Path:
    """A Mega-NeRF layout whose coordinates.pt is not a torch file."""
    src = t / "meganerf"
    write(src / "coordinates.pt", b"not a torch file")
    for part in ("train", "val"):
        (src / part / "metadata").mkdir(parents=True)
    return src


def bad_json(w: World, t: Path) -> Path:
    return write(t / "transforms.json", "{oops")


def empty_json(w: World, t: Path) -> Path:
    return write(t / "transforms.json", "{}")


def photos(n: int) -> Callable[[World, Path], Path]:
    def make(w: World, t: Path) -> Path:
        folder = t / "photos"
        folder.mkdir()
        for src in sorted((w.scene / "images").iterdir())[:n]:
            shutil.copy2(src, folder / src.name)
        return folder

    return make


# --- the table -----------------------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    argv: str  # split on spaces; {t} the case's folder, {bad} what `make` built, {scene} {run} {ply} shared
    expect: str  # text the error line must contain
    make: Callable[[World, Path], Path] | None = None
    second: Callable[[World, Path], Path] | None = None  # a second input, {bad2}


TRAIN = "train --no-progress --scene {scene} --out {t}/r"
DEMO = "demo --no-progress --out {t}/r"

CASES = [
    # demo: every check before the demo city is built
    Case("demo-log-every-0", f"{DEMO} --set train.log_every=0", "train.log_every"),
    Case("demo-processes-0", f"{DEMO} --processes 0", "--processes 0"),
    Case("demo-out-under-file", "demo --out {bad}/run --processes 1", "is a file", a_file),
    Case("demo-unknown-key", f"{DEMO} --set demo.colour=red", "demo.colour"),
    Case("demo-device-tpu", f"{DEMO} --set train.device=tpu", "train.device"),
    Case("demo-yaml-syntax", f"{DEMO} -c {{bad}}", "not valid YAML", yaml_syntax_error),
    # train
    Case("train-log-every-0", f"{TRAIN} --set train.log_every=0", "train.log_every"),
    Case("train-workers-0", f"{TRAIN} --set method.workers=0", "method.workers"),
    Case("train-device-tpu", f"{TRAIN} --set train.device=tpu", "train.device"),
    Case("train-iterations-negative", f"{TRAIN} --set train.iterations=-5", "train.iterations"),
    Case("train-unknown-key", f"{TRAIN} --set train.nope=1", "train.nope"),
    Case("train-set-without-value", f"{TRAIN} --set train.iterations", "KEY=VALUE"),
    Case("train-block-dim-short", f"{TRAIN} --set partition.block_dim=[2,2]", "partition.block_dim"),
    Case("train-yaml-syntax", f"{TRAIN} -c {{bad}}", "not valid YAML", yaml_syntax_error),
    Case("train-yaml-not-mapping", f"{TRAIN} -c {{bad}}", "expected a mapping", yaml_list),
    Case("train-config-missing", f"{TRAIN} -c {{t}}/none.yaml", "not found"),
    Case("train-processes-0", f"{TRAIN} --processes 0", "--processes 0"),
    Case("train-view-processes-2", f"{TRAIN} --view --processes 2", "--view"),
    Case("train-view-port", f"{TRAIN} --view --view-port 70000", "--view-port"),
    Case(
        "train-more-workers-than-blocks", f"{TRAIN} --processes 1 --set method.workers=5", "method.workers=5"
    ),
    Case("train-out-under-file", "train --scene {scene} --out {bad}/run", "is a file", a_file),
    Case("train-out-not-empty", "train --scene {scene} --out {bad}", "not empty", full_folder),
    Case("train-missing-scene", "train --scene {t}/nowhere --out {t}/r", "does not exist"),
    # two workers: on a machine with two cores this would start two processes
    Case(
        "train-missing-scene-2-workers",
        "train --scene {t}/no --out {t}/r --set method.workers=2",
        "not exist",
    ),
    Case(
        "train-scene-without-sparse",
        "train --scene {bad} --out {t}/r",
        "no COLMAP model",
        scene_without_sparse,
    ),
    Case("train-scene-missing-image", "train --scene {bad} --out {t}/r", "missing", scene_missing_image),
    Case("train-no-scene", "train --out {t}/r", "data.path"),
    Case("train-resume-not-a-run", "train --resume {bad}", "not a run folder", full_folder),
    Case(
        "train-resume-corrupt",
        "train --resume {bad} --processes 1",
        "no intact checkpoint",
        corrupt_checkpoint_run,
    ),
    # view: every check before the server starts
    Case("view-missing", "view {t}/nothing", "not a run folder"),
    Case("view-truncated-ply", "view {bad}", "not a readable PLY file", truncated_ply),
    Case("view-folder-not-a-run", "view {bad}", "no trained model", full_folder),
    Case("view-corrupt-model", "view {bad}", "truncated checkpoint", corrupt_model_run),
    Case("view-port-too-large", "view {ply} --port 70000", "--port"),
    Case("view-port-negative", "view {ply} --port -1", "--port"),
    Case("view-host-not-here", "view {ply} --host 192.0.2.1", "--host"),
    Case("view-max-res-0", "view {ply} --max-res 0", "--max-res"),
    # eval
    Case("eval-missing-run", "eval {t}/nothing", "no such run folder"),
    Case("eval-file-not-a-run", "eval {bad}", "no such run folder", a_file),
    Case("eval-corrupt-model", "eval {bad}", "truncated checkpoint", corrupt_model_run),
    Case("eval-earlier-result", "eval {run}", "--force replaces it"),
    Case("eval-scene-gone", "eval {bad}", "scene folder does not exist", scene_gone_run),
    Case("eval-corrupt-config", "eval {bad}", "not valid YAML", corrupt_config_run),
    Case("eval-reference-missing", "eval {run} --force --reference {t}/nowhere", "--reference"),
    Case("eval-unknown-appearance", "eval {run} --appearance sideways", "sideways"),
    # demo-scene
    Case("demo-scene-out-is-file", "demo-scene {bad}", "not a demo scene", a_file),
    Case("demo-scene-out-not-empty", "demo-scene {bad} --no-sfm", "not a demo scene", full_folder),
    Case("demo-scene-bad-size", "demo-scene {t}/o --size huge", "huge"),
    Case("demo-scene-over-earlier", "demo-scene {scene} --size test --no-sfm", "--force replaces"),
    # info
    Case("info-missing-scene", "info {t}/nowhere", "does not exist"),
    Case("info-scene-is-file", "info {bad}", "does not exist", a_file),
    Case("info-no-sparse", "info {bad}", "no COLMAP model", scene_without_sparse),
    Case("info-corrupt-model", "info {bad}", "images.bin", scene_corrupt_model),
    Case("info-missing-image", "info {bad}", "missing", scene_missing_image),
    Case("info-downscale-0", "info {scene} --set data.downscale=0", "data.downscale"),
    # partition
    Case("partition-missing-scene", "partition {t}/nowhere", "does not exist"),
    Case("partition-out-exists", "partition {scene} --out {bad}", "--force replaces it", a_file),
    Case("partition-preview-exists", "partition {scene} --preview {bad}", "--force replaces it", a_file),
    Case("partition-preview-not-an-image", "partition {scene} --preview {t}/p.txt", "use .png"),
    Case("partition-out-under-file", "partition {scene} --out {bad}/p.json", "is a file", a_file),
    Case("partition-preview-under-file", "partition {scene} --preview {bad}/p.png", "is a file", a_file),
    Case("scan-json-under-file", "prepare scan {scene} --json {bad}/s.json", "is a file", a_file),
    Case("partition-block-dim-0", "partition {scene} --set partition.block_dim=[0,1,1]", "block_dim"),
    # export
    Case("export-missing-run", "export {t}/nothing", "no such run folder"),
    Case("export-not-a-run", "export {bad}", "not a run folder", full_folder),
    Case("export-corrupt-model", "export {bad}", "truncated checkpoint", corrupt_model_run),
    Case("export-out-exists", "export {run} --out {bad}", "--force replaces it", a_file),
    Case("export-out-under-file", "export {run} --out {bad}/m.ply", "is a file", a_file),
    Case(
        "export-appearance-without-embedding", "export {run} --appearance 0000.png", "no per-photo appearance"
    ),
    # render
    Case("render-truncated-ply", "render {bad} --view 0 --scene {scene} --out {t}/o", "PLY", truncated_ply),
    Case("render-ply-without-cameras", "render {ply} --view 0 --out {t}/o", "--scene"),
    Case("render-view-too-large", "render {run} --view 999 --out {t}/o", "--view 999"),
    Case("render-view-negative", "render {run} --view -1 --out {t}/o", "--view -1"),
    Case("render-out-not-empty", "render {run} --view 0 --out {bad}", "--force writes over", full_folder),
    Case("render-out-is-file", "render {run} --view 0 --out {bad}", "not a folder", a_file),
    Case(
        "render-corrupt-model", "render {bad} --view 0 --out {t}/o", "truncated checkpoint", corrupt_model_run
    ),
    Case(
        "render-scene-without-sparse",
        "render {run} --view 0 --scene {bad} --out {t}/o",
        "no COLMAP model",
        scene_without_sparse,
    ),
    # report
    Case("report-missing-run", "report {t}/nothing", "no such run folder"),
    Case("report-corrupt-model", "report {bad}", "truncated checkpoint", corrupt_model_run),
    Case("report-out-is-file", "report {run} --out {bad}", "not a folder", a_file),
    Case("report-out-not-a-report", "report {run} --out {bad}", "not a momentumgs report", full_folder),
    # prepare
    Case("colmap-missing-photos", "prepare colmap {t}/nowhere {t}/o", "does not exist"),
    Case("colmap-one-photo", "prepare colmap {bad} {t}/o", "at least 2", photos(1)),
    Case("colmap-out-not-empty", "prepare colmap {bad} {bad2}", "not empty", photos(2), full_folder),
    Case("meganerf-missing-source", "prepare meganerf {t}/nowhere {t}/o", "does not exist"),
    Case(
        "meganerf-bad-coordinates", "prepare meganerf {bad} {t}/o", "coordinates.pt", meganerf_bad_coordinates
    ),
    Case(
        "meganerf-earlier-conversion",
        "prepare meganerf {bad} {bad2}",
        "--force replaces it",
        meganerf_bad_coordinates,
        earlier_conversion,
    ),
    Case(
        "meganerf-out-not-a-conversion",
        "prepare meganerf {bad} {bad2} --force",
        "not a converted scene",
        meganerf_bad_coordinates,
        full_folder,
    ),
    Case("matrixcity-missing", "prepare matrixcity {t}/nowhere.json {t}/o", "no such file"),
    Case("matrixcity-bad-json", "prepare matrixcity {bad} {t}/o", "not a readable JSON file", bad_json),
    Case(
        "matrixcity-earlier-conversion",
        "prepare matrixcity {bad} {bad2}",
        "--force replaces it",
        empty_json,
        earlier_conversion,
    ),
    Case("matrixcity-scale-0", "prepare matrixcity {bad} {t}/o --scale 0", "--scale", empty_json),
    Case("scan-missing-scene", "prepare scan {t}/nowhere", "does not exist"),
    Case("scan-no-sparse", "prepare scan {bad}", "no COLMAP model", scene_without_sparse),
    Case("scan-json-exists", "prepare scan {scene} --json {bad}", "--force replaces it", a_file),
    Case("scan-unknown-key", "prepare scan {scene} --set model.nope=1", "model.nope"),
    Case("downsample-missing-scene", "prepare downsample {t}/nowhere --factor 2", "does not exist"),
]


# --- the check -----------------------------------------------------------------------------------------


def tree_hashes(*roots: Path) -> dict[str, str]:
    """sha256 of every file under `roots`, "folder" for each folder, by path."""
    return {
        str(path): "folder" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        for root in roots
        for path in sorted(root.rglob("*"))
    }


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """main(argv) -> (exit code, stderr); argparse's exit counts as a code."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def test_the_table_covers_every_command():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)
    commands = {
        " ".join(c.argv.split()[:2]) if c.argv.startswith("prepare") else c.argv.split()[0] for c in CASES
    }
    parser_commands = {"demo", "train", "view", "eval", "demo-scene", "info", "partition", "export", "render"}
    parser_commands |= {"report", *(f"prepare {p}" for p in ("colmap", "meganerf", "matrixcity", "scan"))}
    assert parser_commands <= commands


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(case, world, tmp_path, capsys):
    values = {"t": tmp_path, "scene": world.scene, "run": world.run, "ply": world.ply}
    for key, make in (("bad", case.make), ("bad2", case.second)):
        if make is not None:
            values[key] = make(world, tmp_path)
    argv = [arg.format(**values) for arg in case.argv.split()]
    watched = (tmp_path, world.run, world.scene, world.ply.parent)
    before = tree_hashes(*watched)

    code, err = run_cli(argv, capsys)

    assert code not in (0, None), f"succeeded: {argv}"
    assert "Traceback" not in err and 1 <= len(err.strip().splitlines()) <= 3, err
    assert case.expect in err, err
    after = tree_hashes(*watched)
    assert {path: after.get(path) for path in before} == before, "an input or earlier output changed"
    assert set(after) == set(before), f"created {sorted(set(after) - set(before))}"


# --- --force: earlier output is replaced when asked ----------------------------------------------------


def test_force_replaces_earlier_outputs(world, tmp_path, capsys):
    run = light_run(world, tmp_path)
    earlier = write(run / "eval" / "eval_test.json", "earlier")
    assert run_cli(["eval", str(run)], capsys)[0] == 2 and earlier.read_text() == "earlier"
    assert run_cli(["eval", str(run), "--force"], capsys)[0] == 0
    assert json.loads(earlier.read_text())["means"]["psnr"] > 0

    json_out, png = write(tmp_path / "p.json", "earlier"), write(tmp_path / "p.png", "earlier")
    args = ["partition", str(world.scene), "--out", str(json_out), "--preview", str(png), "--force"]
    assert run_cli(args, capsys)[0] == 0
    assert "blocks" in json.loads(json_out.read_text()) and png.read_bytes()[1:4] == b"PNG"

    scan = write(tmp_path / "s.json", "earlier")
    assert run_cli(["prepare", "scan", str(world.scene), "--json", str(scan), "--force"], capsys)[0] == 0
    assert json.loads(scan.read_text())["images"] == 24

    renders = tmp_path / "renders"
    keep = write(renders / "notes.txt", "mine")
    png = write(renders / "0000.png", "earlier")
    assert run_cli(["render", str(run), "--view", "0", "--out", str(renders), "--force"], capsys)[0] == 0
    assert png.read_bytes()[1:4] == b"PNG" and keep.read_text() == "mine"


def test_export_force_replaces_the_file(world, tmp_path, capsys):
    out = write(tmp_path / "m.splat", "earlier")
    args = ["export", str(world.run), "--out", str(out), "--sh-degree", "0"]
    assert run_cli(args, capsys)[0] == 2 and out.read_text() == "earlier"
    assert run_cli([*args, "--force"], capsys)[0] == 0
    assert out.stat().st_size % 32 == 0 and out.stat().st_size > 32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.splat"]  # no temporary file left


@pytest.mark.slow
def test_a_two_process_resume_of_corrupt_checkpoints_is_one_line(world, tmp_path):
    """A resume in two processes checks the checkpoint before it starts them: one line, none of theirs."""
    import subprocess

    from helpers import cli_cmd, one_thread_env

    from momentumgs.train.checkpoints import checkpoint_processes

    run = Path(shutil.copytree(world.run, tmp_path / "run"))
    (step_dir,) = (run / "checkpoints").glob("step_*")
    shutil.copy2(step_dir / "shared_rank0.ckpt", step_dir / "shared_rank1.ckpt")  # as two processes write
    for file in step_dir.iterdir():
        halve(file)
    assert checkpoint_processes(run) == 2  # the resume's default: two processes
    proc = subprocess.run(
        cli_cmd("train", "--resume", run, "--no-progress"),
        capture_output=True,
        text=True,
        env=one_thread_env(),
        timeout=300,
    )
    assert proc.returncode == 2
    lines = (proc.stdout + proc.stderr).splitlines()
    assert len(lines) == 1, proc.stdout + proc.stderr
    assert lines[0].startswith(f"momentumgs: error: {run}: no intact checkpoint to resume ({step_dir}/")
    assert lines[0].endswith("start the run again in an empty folder")


@pytest.mark.slow
def test_a_failing_two_process_run_prints_its_error_once(world, tmp_path):
    """Both workers meet the same error (a checkpoint that is intact but not a run's, which only loading it
    tells): the run prints it once, in one line, without torchrun's OMP_NUM_THREADS banner."""
    import os
    import subprocess

    from helpers import cli_cmd

    from momentumgs.checkpoint import save_checkpoint

    run = Path(shutil.copytree(world.run, tmp_path / "run"))
    (step_dir,) = (run / "checkpoints").glob("step_*")
    for rank in (0, 1):  # as two processes write
        save_checkpoint(step_dir / f"shared_rank{rank}.ckpt", {"format": "something else"})
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # as a user's shell has it
    command = cli_cmd("train", "--resume", run, "--no-progress")
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [f"momentumgs: error: {step_dir}: not a momentumgs run checkpoint"]
