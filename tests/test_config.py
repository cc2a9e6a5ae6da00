import subprocess

import pytest
from helpers import cli_cmd

from momentumgs.config import Config, dump_config, load_config
from momentumgs.errors import ConfigError


def test_defaults_then_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  iterations: 500\n  lambda_dssim: 0.3\ndata:\n  downscale: 2\n")
    cfg = load_config(path, ["train.iterations=2000", "model.use_distance=true", "output=runs/x"])
    assert cfg.train.iterations == 2000  # the override wins over the file
    assert cfg.train.lambda_dssim == 0.3
    assert cfg.data.downscale == 2
    assert cfg.model.use_distance is True
    assert cfg.output == "runs/x"
    assert cfg.train.seed == Config().train.seed  # untouched keys keep their defaults


def test_int_is_accepted_for_float():
    cfg = load_config(None, ["train.lambda_volume=1"])
    assert isinstance(cfg.train.lambda_volume, float) and cfg.train.lambda_volume == 1.0


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.iteratons=5", "train.iteratons"),
        ("trian.iterations=5", "trian"),
        ("train.iterations=abc", "train.iterations"),
        ("train.iterations=1.5", "train.iterations"),
        ("model.use_distance=3", "model.use_distance"),
        ("train=5", "train"),
    ],
)
def test_bad_override_names_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert f"'{key}'" in message and "\n" not in message


def test_bad_yaml_file_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  iterations: many\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: config key 'train\.iterations': expected int"):
        load_config(path)
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_dump_round_trips(tmp_path):
    cfg = load_config(None, ["train.iterations=123", "data.path=/some/where"])
    path = tmp_path / "dump.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


def test_shipped_configs_load():
    from pathlib import Path

    configs = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
    assert configs, "configs/ holds no YAML file"
    for path in configs:
        load_config(path)


@pytest.mark.slow
def test_cli_reports_bad_key_in_one_line():
    proc = subprocess.run(
        cli_cmd("demo", "--set", "train.nope=1"),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "unknown config key 'train.nope'" in proc.stderr
    assert "Traceback" not in proc.stderr
