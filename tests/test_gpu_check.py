"""tools/gpu_check.py on the CPU: its dry run lists every GPU check and runs nothing; its runner records
passed, failed, timed-out and skipped checks in the JSON summary (fake checks, plain Python commands); the
pytest node ids it runs name tests that exist."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.tools

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "gpu_check.py"
CHECKS = [
    "gsplat_build",
    "cpu_vs_gsplat",
    "balanced_backward",
    "ssim_assigner",
    "seam_refinement",
    "pytest_cuda",
    "demo_scene",
    "train_method",
    "train_exposure",
    "bench",
]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_check", None)


def test_dry_run_lists_every_check_with_its_command_and_runs_nothing(tmp_path):
    out = tmp_path / "out"
    env = {"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "env_out")}
    proc = subprocess.run(
        [sys.executable, str(TOOL), "--dry-run", "--out", str(out)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    listed = re.findall(r"^\s*\d+\. (\w+) \(limit \d+ s", proc.stdout, flags=re.MULTILINE)
    assert listed == CHECKS
    assert f"write {out / 'gpu_check.json'}" in proc.stdout
    commands = [line.strip()[2:] for line in proc.stdout.splitlines() if line.strip().startswith("$ ")]
    assert len(commands) == len(CHECKS)
    assert "-m pytest -m cuda" in commands[1] and "train.device=cuda" in commands[7]
    assert "--set model.appearance=exposure" in commands[8] and "--set model.appearance" not in commands[7]
    assert "--device cuda --only step,method" in commands[9]
    # nothing ran: no output folder (neither --out nor $OUT), no work folder, nothing in the cwd
    assert not out.exists() and not (tmp_path / "env_out").exists() and list(tmp_path.iterdir()) == []
    assert not (Path(tempfile.gettempdir()) / "gpu_check-WORK").exists()


def test_runner_records_passed_failed_timed_out_and_skipped_checks(gpu_check, tmp_path):
    py = sys.executable
    Check = gpu_check.Check
    checks = [
        Check("ok", (py, "-c", "print('JSON {\"x\": 1}')"), 30, "passes", inspect=gpu_check.probe_inspector),
        Check("boom", (py, "-c", "import sys; print('broken'); sys.exit(3)"), 30, "fails"),
        # a child that starts a grandchild and hangs: both go at the limit
        Check(
            "hang",
            (
                py,
                "-c",
                "import subprocess, sys, time; print('started', flush=True); "
                "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)",
            ),
            1.5,
            "hangs",
        ),  # fmt: skip
        Check("after_boom", (py, "-c", "pass"), 30, "needs boom", needs=("boom",)),
        Check("too_long", (py, "-c", "pass"), 30, "worth starting with an hour only", min_s=3600),
    ]
    messages = []
    summary = gpu_check.run_checks(
        checks, tmp_path / "out", 120, gpu_check.child_env(tmp_path), messages.append
    )

    written = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert written == json.loads(json.dumps(summary, default=str))
    by_name = {c["name"]: c for c in written["checks"]}
    assert [c["name"] for c in written["checks"]] == [c.name for c in checks]
    assert {n: c["status"] for n, c in by_name.items()} == {
        "ok": "passed",
        "boom": "failed",
        "hang": "timed_out",
        "after_boom": "skipped",
        "too_long": "skipped",
    }
    assert by_name["ok"]["figures"] == {"x": 1} and by_name["ok"]["returncode"] == 0
    assert by_name["boom"]["returncode"] == 3 and by_name["boom"]["reason"] == "exit code 3"
    assert by_name["boom"]["output_tail"] == "broken\n"
    assert by_name["hang"]["output_tail"] == "started\n" and by_name["hang"]["seconds"] < 15
    assert by_name["after_boom"]["reason"] == "needs boom (failed)"
    assert by_name["too_long"]["reason"].startswith("time budget spent")
    assert gpu_check.failed(written)
    log = (tmp_path / "out" / "gpu_check.log").read_text()
    assert "===== boom:" in log and "broken" in log and "started" in log
    table = gpu_check.table(written)
    assert re.search(r"^hang\s+timed_out\s+\d+\.\d\s+still running after 2 s", table, flags=re.MULTILINE)


def test_the_budget_cuts_a_check_short_and_skips_the_rest(gpu_check, tmp_path):
    py = sys.executable
    sleep = (py, "-c", "import time; time.sleep(30)")
    checks = [
        gpu_check.Check("slow", sleep, 60, "", min_s=0.5),
        gpu_check.Check("next", sleep, 60, "", min_s=0.5),
    ]
    summary = gpu_check.run_checks(checks, tmp_path, 2.0, gpu_check.child_env(tmp_path), lambda _: None)
    slow, following = summary["checks"]
    assert slow["status"] == "timed_out" and slow["reason"].endswith("(the end of the time budget)")
    assert following["status"] == "skipped" and "time budget spent" in following["reason"]


def test_pytest_and_training_outputs_are_read(gpu_check, tmp_path):
    inspect = gpu_check.pytest_inspector(1)
    assert inspect("...\n2 passed, 3 deselected in 4.51s\n", 0) == ({"passed": 2, "deselected": 3}, None)
    assert inspect("1 skipped in 0.1s", 0)[1] == "1 skipped"  # a GPU test that skipped checked nothing
    assert inspect("1 failed, 1 passed in 2.0s", 1)[1] == "exit code 1; 1 failed"
    assert gpu_check.pytest_inspector(0)("no tests ran in 0.1s", 5)[1] is None

    run = tmp_path / "run"
    run.mkdir()
    records = [
        {"kind": "train", "step": 10, "seconds": 1.0, "blocks": {"0": {"psnr": 12.0, "anchors": 5}}},
        {"kind": "eval", "step": 20, "psnr": 15.0},
        {"kind": "train", "step": 40, "steps_per_s": 9.0, "blocks": {"0": {"psnr": 20.0, "anchors": 7}}},
        {"kind": "eval", "step": 40, "psnr": 19.0},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"cut sh')
    inspect = gpu_check.train_inspector(run)
    assert inspect("", 0)[1] == "no model.ckpt written"
    (run / "model.ckpt").write_bytes(b"")
    figures, problem = inspect("", 0)
    assert problem is None and figures["eval_psnr"] == [15.0, 19.0] and figures["train_psnr_last"] == 20.0
    assert figures["steps"] == 40 and figures["anchors"] == 7
    (run / "metrics.jsonl").write_text(
        json.dumps(records[1]) + "\n" + json.dumps({**records[3], "psnr": 14.0})
    )
    assert inspect("", 0)[1] == "PSNR did not rise: [15.0, 14.0]"


def test_the_pytest_checks_name_tests_that_exist(gpu_check):
    """A renamed GPU test would make its check fail on the GPU machine only: caught here."""
    for node in gpu_check.OWN_CHECK_TESTS:
        path, name = node.split("::")
        assert re.search(rf"^def {name}\(", (ROOT / path).read_text(), flags=re.MULTILINE), node
    files = gpu_check.cuda_test_files()
    assert {"tests/test_render.py", "tests/test_cuda_parity.py"} <= set(files)
    assert "tests/test_gpu_check.py" not in files
