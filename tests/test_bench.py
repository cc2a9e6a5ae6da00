"""tools/bench.py end to end on the small test city: every section prints its rows, phases add up to the step.

The workers section (torchrun, two processes) is left out to keep this test short; run it by hand with
`python tools/bench.py --quick --only workers`.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.tools

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_bench_prints_a_json_row_per_configuration_with_phases_adding_up(gt_test_scene):
    cmd = [sys.executable, str(ROOT / "tools" / "bench.py"), "--quick", "--only", "step,method,blocks"]
    cmd += ["--scene", str(gt_test_scene), "--downscales", "4", "--downscale", "4"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [json.loads(line[5:]) for line in proc.stdout.splitlines() if line.startswith("JSON ")]
    by_section = {s: [r for r in rows if r["section"] == s] for s in ("step", "method", "blocks")}

    assert [r["downscale"] for r in by_section["step"]] == [4]
    assert [r["variant"] for r in by_section["method"]] == ["off", "on", "overhead"]
    assert [r["blocks"] for r in by_section["blocks"]] == [1, 2]
    timed = [r for r in rows if "ms_per_step" in r]
    assert len(timed) == 5
    for r in timed:
        assert r["it_per_s"] > 0 and r["peak_rss_mb"] > 0
        assert Path(r["momentumgs"]) == ROOT / "momentumgs"
        phases = sum(v for k, v in r.items() if k.startswith("phase_ms_"))
        assert phases == pytest.approx(r["ms_per_step"], rel=0.05), r
    off, on, overhead = by_section["method"]
    assert "phase_ms_teacher_decode" in on and "phase_ms_teacher_decode" not in off
    assert overhead["weighting_measurements_per_window"] == 2
    assert by_section["blocks"][1]["spills"] > 0  # two blocks through a 4 MB budget: one waits on disk


@pytest.mark.slow
def test_scale_bench_times_every_stage_and_keeps_the_image_cache_within_its_bound(tmp_path):
    """tools/bench_scale.py at one tiny size: each stage in its own process, with its own time and peak RSS,
    and the training stage's image cache (bound 1 MB) never above the bound."""
    cmd = [sys.executable, str(ROOT / "tools" / "bench_scale.py"), "--cameras", "16"]
    cmd += ["--points-per-camera", "50", "--steps", "2", "--workdir", str(tmp_path / "work")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("JSON ")]
    (size,) = json.loads(line[5:])["sizes"]
    assert (size["cameras"], size["points"]) == (16, 800)
    assert set(size["stages"]) == {"info", "scan", "partition", "train"}
    for stage in size["stages"].values():
        assert stage["seconds"] > 0 and stage["peak_rss_mb"] > 50  # python + numpy alone are more
    train = size["stages"]["train"]
    assert train["steps"] == 2 and train["anchors"] > 0
    assert train["cache_bound_bytes"] == 1 << 20
    # 16 views of 32x24 fit in 1 MB: after reading the block's views once the cache holds each of them
    assert train["cache_peak_bytes"] == train["block_views"] * 32 * 24 * 3 > 0
    assert not (tmp_path / "work").exists()  # the scenes are removed without --keep
