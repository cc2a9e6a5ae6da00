import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(items):
    """The interop and browser tests start node or chromium: they count as slow (`-m "not slow"`)."""
    for item in items:
        if item.get_closest_marker("interop") or item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Tests share one demo-scene cache per session, never the user's own cache folder."""
    cache = tmp_path_factory.getbasetemp() / "momentumgs-cache"
    monkeypatch.setenv("MOMENTUMGS_CACHE", str(cache))


@pytest.fixture(scope="session")
def gt_test_scene(tmp_path_factory):
    """The small demo city with its exact (ground-truth) COLMAP model: no SfM, built once per session."""
    from momentumgs.demo import cached_demo_scene

    cache = tmp_path_factory.getbasetemp() / "momentumgs-cache"
    return cached_demo_scene(size="test", seed=0, cache_dir=cache, sfm=False, log=lambda _: None)


@pytest.fixture(scope="session")
def finished_run(gt_test_scene, tmp_path_factory):
    """A 4-block run on 2 workers trained to the end (model.ckpt) and evaluated, with a periodic
    evaluation in its log; 80x60 views (LPIPS needs 32 pixels a side). For the report and the viewer."""
    from helpers import MULTI, scene_loader

    from momentumgs.config import load_config
    from momentumgs.run import evaluate_run, train_run
    from momentumgs.run_setup import start_or_resume

    run = tmp_path_factory.mktemp("finished") / "run"
    over = [*MULTI, "data.downscale=4", f"data.path={gt_test_scene}", "train.eval_every=12"]
    train_run(start_or_resume(load_config(None, over), scene_loader, run, resume=False), progress=False)
    evaluate_run(run)
    return run
