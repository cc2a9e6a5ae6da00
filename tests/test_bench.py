"""tools/bench.py end to end on the small test city: every section prints its rows, phases add up to the step.

The workers section (torchrun, two processes) is left out to keep this test short; run it by hand with
`python tools/bench.py --quick --only workers`.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
