"""A GPU whose gsplat kernels cannot be built: train, demo and view stop at once with one line naming the
cause and the fix; render (always on the CPU) is unaffected. Simulated on a CPU machine: torch is told
CUDA is there, and gsplat's backend import fails as it does without nvcc."""

from __future__ import annotations

import pytest
import torch
import yaml

from momentumgs.cli import EXIT_USER_ERROR, main
from momentumgs.render import backend


def _failed_build():
    """What importing gsplat.cuda._backend raises when CUDA_HOME is unset (as seen with gsplat 1.5.3,
    torch 2.13): the build's OSError, re-raised by gsplat as an ImportError of the missing .so."""
    try:
        raise OSError("CUDA_HOME environment variable is not set. Please set it to your CUDA install root.")
    except OSError:
        raise ImportError(
            "/root/.cache/torch_extensions/py311_cu128/gsplat_cuda/gsplat_cuda.so: cannot open shared object "
            "file: No such file or directory"
        ) from None


def _no_toolkit():
    return None  # gsplat's `_C` when it finds no CUDA toolkit


@pytest.fixture(params=[_failed_build, _no_toolkit], ids=["failed-build", "no-toolkit"])
def broken_gpu(request, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(backend, "load_gsplat_backend", request.param)
    backend.gsplat_problem.cache_clear()
    yield request.param
    backend.gsplat_problem.cache_clear()


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.out + captured.err
    return lines[0]


def _assert_names_cause_and_fix(line: str, cause: str, cpu_option: str) -> None:
    assert line.startswith("momentumgs: error: gsplat cannot render on cuda: ")
    assert cause in line
    assert "install the CUDA toolkit (nvcc) and set CUDA_HOME" in line and f"pass {cpu_option}" in line


def _cause(broken) -> str:
    return "CUDA_HOME environment variable is not set" if broken is _failed_build else "no CUDA toolkit"


def test_train_and_demo_stop_before_loading_the_scene(broken_gpu, tmp_path, capsys):
    scene = tmp_path / "no_scene"  # the check comes first: this missing scene is not reached
    assert main(["train", "--scene", str(scene), "--out", str(tmp_path / "run")]) == EXIT_USER_ERROR
    _assert_names_cause_and_fix(_one_error_line(capsys), _cause(broken_gpu), "--set train.device=cpu")
    assert main(["demo", "--out", str(tmp_path / "demo")]) == EXIT_USER_ERROR
    _assert_names_cause_and_fix(_one_error_line(capsys), _cause(broken_gpu), "--set train.device=cpu")
    assert not (tmp_path / "run").exists() and not (tmp_path / "demo").exists()

    # the fix the line names goes past the check (to the missing scene)
    cpu = ["train", "--scene", str(scene), "--out", str(tmp_path / "run"), "--set", "train.device=cpu"]
    assert main(cpu) == EXIT_USER_ERROR
    assert "no_scene" in _one_error_line(capsys)


def test_view_stops_with_the_fix_and_runs_on_the_cpu_when_told(broken_gpu, tmp_path, capsys):
    missing = str(tmp_path / "no_run")
    assert main(["view", missing]) == EXIT_USER_ERROR
    _assert_names_cause_and_fix(_one_error_line(capsys), _cause(broken_gpu), "--device cpu")
    assert main(["view", missing, "--device", "cpu"]) == EXIT_USER_ERROR
    assert "no_run: not a run folder" in _one_error_line(capsys)
    assert main(["view", missing, "--device", "gpu"]) == EXIT_USER_ERROR
    assert "--device gpu: must be auto, cpu, cuda or cuda:N" in _one_error_line(capsys)


def test_a_failed_test_render_is_one_line(monkeypatch):
    """A backend that loads but cannot run here (e.g. built for another GPU) is caught by the test render."""
    monkeypatch.setattr(backend, "load_gsplat_backend", lambda: object())

    def no_kernel_image(device):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device\nmore")

    monkeypatch.setattr(backend, "_render_one_gaussian", no_kernel_image)
    backend.gsplat_problem.cache_clear()
    try:
        problem = backend.gsplat_problem("cuda")
    finally:
        backend.gsplat_problem.cache_clear()
    assert problem == "a test render failed (RuntimeError: CUDA error: no kernel image is available for " + (
        "execution on the device)"
    )


def test_render_runs_on_the_cpu_whatever_the_gpu(broken_gpu, gt_test_scene, tmp_path, monkeypatch):
    import gsplat

    from momentumgs.model.anchors import init_anchors_from_points
    from momentumgs.model.store import AnchorModel, DecoderSpec, save_model

    def no_gsplat(*args, **kwargs):
        raise AssertionError("render called gsplat")

    monkeypatch.setattr(gsplat, "rasterization", no_gsplat)
    field = init_anchors_from_points(torch.rand(50, 3) * 2 - 1, voxel_size=0.25, n_offsets=4, feat_dim=8)
    spec = DecoderSpec(feat_dim=8, n_offsets=4, hidden_dim=16)
    run = tmp_path / "run"
    run.mkdir()
    save_model(run / "model.ckpt", AnchorModel(field, spec.build().requires_grad_(False), spec, {}))
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"path": str(gt_test_scene)}}))
    assert main(["render", str(run), "--view", "0", "--out", str(tmp_path / "png")]) == 0
    assert len(list((tmp_path / "png").glob("*.png"))) == 1


def test_a_torchrun_worker_tests_its_own_gpu(broken_gpu, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert main(["train", "--scene", str(tmp_path / "s"), "--out", str(tmp_path / "run")]) == EXIT_USER_ERROR
    assert "gsplat cannot render on cuda:1: " in _one_error_line(capsys)


@pytest.mark.skipif(torch.version.cuda is not None, reason="a CUDA build of torch could really build gsplat")
def test_the_real_gsplat_import_fails_as_one_line(tmp_path, monkeypatch, capsys):
    """No simulated backend: gsplat's own import, on a CPU build of torch told CUDA is there, fails (no
    toolkit, or a build that cannot link) and the command says so in one line."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    # gsplat clears its build folder: one of the test's own, not the user's
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "torch_extensions"))
    backend.gsplat_problem.cache_clear()
    try:
        rc = main(["train", "--scene", str(tmp_path / "s"), "--out", str(tmp_path / "run")])
    finally:
        backend.gsplat_problem.cache_clear()
    line = _one_error_line(capsys)
    assert rc == EXIT_USER_ERROR and line.startswith("momentumgs: error: gsplat cannot render on cuda: ")
    assert "or pass --set train.device=cpu (slow)" in line


def _tiny_run(run, scene) -> None:
    """A run folder with a small untrained model whose config names `scene`."""
    from momentumgs.model.anchors import init_anchors_from_points
    from momentumgs.model.store import AnchorModel, DecoderSpec, save_model

    field = init_anchors_from_points(torch.rand(50, 3) * 2 - 1, voxel_size=0.25, n_offsets=4, feat_dim=8)
    spec = DecoderSpec(feat_dim=8, n_offsets=4, hidden_dim=16)
    run.mkdir()
    save_model(run / "model.ckpt", AnchorModel(field, spec.build().requires_grad_(False), spec, {}))
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"path": str(scene)}}))


def test_eval_report_and_an_ssim_partition_stop_before_loading_the_scene(broken_gpu, tmp_path, capsys):
    """eval and report render on the run's train.device, partition's SSIM assigner on train.device: each
    tests it first; the fix the line names (--device cpu, --set train.device=cpu) goes past the check."""
    scene, run = tmp_path / "no_scene", tmp_path / "run"
    _tiny_run(run, scene)
    for command in (["eval", str(run)], ["report", str(run)]):
        assert main(command) == EXIT_USER_ERROR
        _assert_names_cause_and_fix(_one_error_line(capsys), _cause(broken_gpu), "--device cpu")
        assert main([*command, "--device", "cpu"]) == EXIT_USER_ERROR
        assert "no_scene" in _one_error_line(capsys)
        assert main([*command, "--device", "gpu"]) == EXIT_USER_ERROR
        assert "--device gpu: must be auto, cpu, cuda or cuda:N" in _one_error_line(capsys)
    partition = ["partition", str(scene), "--set", "partition.assign.mode=ssim"]
    assert main(partition) == EXIT_USER_ERROR
    _assert_names_cause_and_fix(_one_error_line(capsys), _cause(broken_gpu), "--set train.device=cpu")
    assert main([*partition, "--set", "train.device=cpu"]) == EXIT_USER_ERROR
    assert "no_scene" in _one_error_line(capsys)
    assert main(["partition", str(scene)]) == EXIT_USER_ERROR  # the visibility assigner renders nothing
    assert "no_scene" in _one_error_line(capsys)
    assert not (run / "eval").exists() and not (run / "report").exists()
