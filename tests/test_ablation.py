"""tools/ablation.py: the run plan (iteration budgets, settings) and, end to end on the small test city, the
per-seed runs, their summaries and paired differences, and the reuse of finished runs."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.tools

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "ablation.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("ablation_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_single_block_budgets_settings_and_seeds_of_the_plan(tmp_path):
    tool = load_tool()
    args = tool.parse_args(
        ["--block-dim", "2", "2", "1", "--workers", "2", "--iterations", "10", "--seeds", "2"]
        + ["--variants", "full", "single-total", "single-wall"]
        + ["--variant-set", "full:method.teacher.lambda_consistency=5", "--set", "method.weighting.sigma=3"]
        + ["--define", "wide:partition.block_dim=[4,1,1],method.teacher.momentum=0.5"]
    )  # fmt: skip
    runs = {(r.variant, r.seed): r.cfg for r in tool.plan_runs(args, "scene", tmp_path)}

    assert sorted(runs) == [(v, s) for v in ("full", "single-total", "single-wall", "wide") for s in (0, 1)]
    assert [runs["full", s].train.seed for s in (0, 1)] == [0, 1]
    full, total, wall, wide = (runs[v, 1] for v in ("full", "single-total", "single-wall", "wide"))
    assert full.train.iterations == 10
    assert total.train.iterations == 4 * 10  # n x it
    assert full.partition.seam_steps == 200  # the default, which the partitioned runs end with
    assert wall.train.iterations == 4 * 10 // 2 + 200  # n x it / k, then the seam refinement's steps
    assert (total.partition.block_dim, total.method.workers) == ([1, 1, 1], 1)
    assert (total.method.teacher.momentum, total.method.weighting.enabled) == (0.0, False)
    assert (total.train.densify.start_iter, total.train.densify.end_iter) == (4, 34)  # its own length
    assert (full.partition.block_dim, full.method.workers, full.method.weighting.enabled) == (
        [2, 2, 1],
        2,
        True,
    )
    assert (
        full.method.teacher.lambda_consistency == 5 and total.method.teacher.lambda_consistency == 50
    )  # full only
    assert full.method.weighting.sigma == total.method.weighting.sigma == 3  # --set: every run
    assert (wide.partition.block_dim, wide.method.teacher.momentum, wide.method.weighting.enabled) == (
        [4, 1, 1],
        0.5,
        True,
    )


def test_a_finished_run_is_reused_only_if_its_config_holds_every_setting_with_the_same_value(tmp_path):
    tool = load_tool()
    (run,) = tool.plan_runs(tool.parse_args(["--seeds", "1", "--variants", "full"]), "scene", tmp_path)
    paths = tool.RunPaths(run.dir)
    run.dir.mkdir(parents=True)
    paths.model.write_bytes(b"finished")
    written = tool.config_to_dict(run.cfg)
    paths.config.write_text(yaml.safe_dump(written))
    assert tool.reusable(run)

    written["method"]["teacher"]["momentum"] = 0.5  # trained with another setting
    paths.config.write_text(yaml.safe_dump(written))
    with pytest.raises(tool.UserError, match=r"other settings \(method\.teacher\.momentum\)"):
        tool.reusable(run)

    # written before a setting existed: loading would fill today's default, which it may not have trained with
    written["method"]["teacher"]["momentum"] = run.cfg.method.teacher.momentum
    del written["method"]["freeze_decoder_at_finish"]
    paths.config.write_text(yaml.safe_dump(written))
    with pytest.raises(
        tool.UserError,
        match=r"config.yaml: .*before these settings existed \(method\.freeze_decoder_at_finish\)",
    ):
        tool.reusable(run)
    assert paths.model.read_bytes() == b"finished"  # refused, not cleared


def test_reported_differences_include_the_teacher_and_weighting_together():
    tool = load_tool()
    pairs = tool.comparisons(["full", "shared", "independent", "wide"])
    assert pairs == [("full", "independent"), ("full", "shared"), ("wide", "full")]


def test_reported_differences_include_block_weighting_alone():
    tool = load_tool()
    pairs = tool.comparisons(["full", "momentum", "shared"])
    assert pairs == [("momentum", "shared"), ("full", "shared"), ("full", "momentum")]


def test_default_variants_are_the_method_against_what_it_replaces_and_all_names_every_one():
    tool = load_tool()
    variants = tool.known_variants(["wide:method.teacher.momentum=0.5"])
    chosen = tool.chosen_variants(tool.parse_args([]), variants)
    assert chosen == ["full", "independent", "single-wall", "wide"]
    chosen = tool.chosen_variants(tool.parse_args(["--variants", "full", "all"]), variants)
    assert chosen == ["full", "independent", "shared", "momentum", "single-total", "single-wall", "wide"]
    assert tool.parse_args(["--jobs", "3"]).jobs == 3
    assert tool.parse_args(["--threads", "64"]).jobs == 1  # never 0, however few cores


@pytest.mark.slow
def test_ablation_over_two_seeds_reports_runs_summaries_differences_and_reuses_finished_runs(
    gt_test_scene, tmp_path
):
    cmd = [sys.executable, str(TOOL), "--scene", str(gt_test_scene), "--out", str(tmp_path / "runs")]
    # downscale 4: LPIPS needs 32 pixels a side (the test city is 320x240)
    cmd += ["--iterations", "8", "--downscale", "4", "--block-dim", "2", "1", "1", "--workers", "2"]
    cmd += [
        "--seeds",
        "2",
        "--variants",
        "full",
        "single-wall",
        "--jobs",
        "1",
        "--set",
        "partition.seam_steps=3",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(line[5:]) for line in proc.stdout.splitlines() if line.startswith("JSON ")]
    runs = [r for r in records if r["kind"] == "run"]
    summaries = {r["variant"]: r for r in records if r["kind"] == "summary"}
    (difference,) = [r for r in records if r["kind"] == "difference"]

    by = {(r["variant"], r["seed"]): r for r in runs}
    assert sorted(by) == [("full", 0), ("full", 1), ("single-wall", 0), ("single-wall", 1)]
    full = by["full", 0]
    n, k, it = full["blocks"], full["workers"], full["iterations"]
    assert (n, k, it) == (2, 2, 8)
    for seed in (0, 1):
        single = by["single-wall", seed]
        assert (single["blocks"], single["workers"]) == (1, 1)
        assert single["iterations"] == n * it // k + 3 == full["global_steps"] + 3  # + the seam steps
    for r in runs:
        for key in ("psnr", "psnr_cc", "psnr_border", "psnr_interior"):
            assert math.isfinite(r[key]) and r[key] > 5, (key, r)
        assert r["train_seconds"] > 0 and 0 < r["border_pixel_fraction"] < 1
    for variant in ("full", "single-wall"):
        assert by[variant, 0]["psnr"] != by[variant, 1]["psnr"]  # the seed changes the training
        mine = [by[variant, s] for s in (0, 1)]
        for key in ("psnr", "ssim", "lpips_vgg_cc", "psnr_border", "train_seconds"):
            stats = summaries[variant][key]
            values = [r[key] for r in mine]
            assert stats["mean"] == pytest.approx(sum(values) / 2)
            assert (stats["min"], stats["max"]) == (min(values), max(values))
            assert stats["std"] == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2))
    assert (difference["a"], difference["b"], difference["seeds"]) == ("full", "single-wall", [0, 1])
    per_seed = [by["full", s]["psnr"] - by["single-wall", s]["psnr"] for s in (0, 1)]
    assert difference["psnr"]["mean"] == pytest.approx(sum(per_seed) / 2)
    assert "| variant | PSNR | SSIM | LPIPS | PSNR cc | border | interior | seconds |" in proc.stdout
    assert "| full − single-wall |" in proc.stdout

    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "4 of 4 runs reused" in again.stdout
    rerun = [json.loads(line[5:]) for line in again.stdout.splitlines() if line.startswith("JSON ")]
    assert [r["psnr"] for r in rerun if r["kind"] == "run"] == [r["psnr"] for r in runs]
