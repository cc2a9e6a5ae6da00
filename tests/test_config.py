import dataclasses
import json
import math
import subprocess
import typing

import pytest
from helpers import cli_cmd, train_cmd

from momentumgs.config import (
    MOVED,
    AnyText,
    CenterAssign,
    Config,
    Device,
    ListOf,
    OneOf,
    Range,
    SSIMAssign,
    VisibilityAssign,
    _variants,
    check_config,
    declared_check,
    dump_config,
    load_config,
)
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


def test_paper_configs_switch_the_method_to_the_papers_loss():
    """The paper's scenes train with the paper's teacher and loss (docs/method.md: the formulas are tested
    in tests/test_model.py and tests/test_weighting.py); the defaults differ only by the capped pull."""
    from pathlib import Path

    from momentumgs.model.decoder import PAPER_TERMS, ConsistencyTerms

    paper = [
        p
        for p in (Path(__file__).parent.parent / "configs").glob("*.yaml")
        if not p.stem.startswith(("demo", "paper_short"))
    ]
    assert len(paper) == 6
    for path in paper:
        cfg = load_config(path)
        mc, teacher, ex = cfg.method, cfg.method.teacher, cfg.experimental
        assert teacher.balance == 0, path  # the terms summed as they are
        assert ConsistencyTerms(ex.consistency_opacity, ex.consistency_shape) == PAPER_TERMS, path
        assert (teacher.momentum, ex.consistency_ramp, mc.weighting.enabled) == (0.9, [0.0, 0.0], True), path
        assert teacher.lambda_consistency in (50, 100), path
        # the Momentum-GS code's freeze branch never runs: its decoder learns to the end (docs/method.md)
        assert not mc.freeze_decoder_at_finish, path
    defaults = load_config(None)
    assert defaults.method.teacher.balance > 0
    ex = defaults.experimental
    assert ConsistencyTerms(ex.consistency_opacity, ex.consistency_shape) == PAPER_TERMS


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


# --- what each field allows ----------------------------------------------------------------------


def config_fields(obj=None, prefix="", setup=()):
    """(key, annotation with its declared check, the overrides that make the key exist) of every field of
    Config, through its sections. A tagged section (partition.assign) gives its `mode` with every mode as a
    choice, and the fields of each mode after an override that selects that mode."""
    obj = Config() if obj is None else obj
    hints = typing.get_type_hints(type(obj), include_extras=True)
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{prefix}{f.name}"
        variants = _variants(hints[f.name])
        if variants:
            yield f"{key}.mode", typing.Literal[tuple(variants)], setup
            for mode, section in variants.items():
                fields = config_fields(section(), f"{key}.", (*setup, f"{key}.mode={mode}"))
                yield from ((k, hint, s) for k, hint, s in fields if k != f"{key}.mode")
        elif dataclasses.is_dataclass(value):
            yield from config_fields(value, f"{key}.", setup)
        else:
            yield key, hints[f.name], setup


# a value breaking the rule of each ListOf that has one (a rule is a function: no value can be made from it)
RULE_BREAKERS = {
    "partition.aabb": [0.0, 0.0, 0.0, -1.0, 1.0, 1.0],  # min x above max x
    "experimental.consistency_ramp": [0.6, 0.2],  # the ramp ends before it starts
}


def value_type(hint):
    return typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Annotated else hint


def out_of_range(bounds: Range, tp) -> list:
    """Numbers just past each bound of `bounds` (and the non-finite ones, for floats)."""
    step = 1 if tp is int else 0.5
    values = []
    if bounds.ge is not None:
        values.append(bounds.ge - step)
    if bounds.gt is not None:
        values.append(bounds.gt)
    if bounds.le is not None:
        values.append(bounds.le + step)
    if bounds.lt is not None:
        values.append(bounds.lt)
    if tp is float:
        values += [math.inf, -math.inf, math.nan]
    return [tp(v) for v in values]


def invalid_values(key: str, hint) -> list:
    """Values the field's declared check must reject, made from the check itself."""
    check, tp = declared_check(hint), value_type(hint)
    if isinstance(check, Range):
        return out_of_range(check, tp)
    if isinstance(check, OneOf):
        return [3] if tp is bool else ["no-such-choice"]
    if isinstance(check, Device):
        return ["tpu", "cuda:", "cuda:x", "CPU", ""]
    if isinstance(check, AnyText):
        return [5]  # any string is allowed: only a value of another type is not
    if isinstance(check, ListOf):
        (item_tp,) = typing.get_args(tp)
        fine = next(v for v in (item_tp(0), item_tp(1)) if check.each.allows(v))
        longest = max(check.lengths)
        values = [[fine] * (longest + 1)] + [[bad] * longest for bad in out_of_range(check.each, item_tp)]
        if check.rule is not None:
            assert key in RULE_BREAKERS, f"{key}: add a value that breaks its rule to RULE_BREAKERS"
            values.append(RULE_BREAKERS[key])
        return values
    raise AssertionError(f"{key}: no invalid values known for its check {check!r} (teach invalid_values)")


def yaml_text(value) -> str:
    """`value` as the VALUE of a KEY=VALUE override, which loads back as this very value."""
    if isinstance(value, list):
        return "[" + ", ".join(map(yaml_text, value)) + "]"
    if isinstance(value, float) and math.isnan(value):
        return ".nan"
    if isinstance(value, float) and math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    return json.dumps(value)


FIELDS = list(config_fields())


def field_id(key: str, setup) -> str:
    return f"{key}[{setup[-1].split('=')[1]}]" if setup else key


@pytest.mark.parametrize("key, hint, setup", FIELDS, ids=[field_id(k, s) for k, _, s in FIELDS])
def test_every_field_rejects_what_it_does_not_allow(key, hint, setup):
    assert declared_check(hint) is not None, (
        f"{key} declares no allowed values: annotate it (config.py, 'what each field allows'); a field "
        "that takes any string says so with AnyText"
    )
    values = invalid_values(key, hint)
    assert values, f"{key}: its check leaves no value out"
    for value in values:
        with pytest.raises(ConfigError) as info:
            load_config(None, [*setup, f"{key}={yaml_text(value)}"])
        message = str(info.value)
        assert key in message and repr(value) in message and "expected" in message, message
        assert "\n" not in message


def field_value(cfg, key):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


CHOICES = [
    (key, choice)
    for key, hint, _ in FIELDS
    if typing.get_origin(value_type(hint)) is typing.Literal
    for choice in typing.get_args(value_type(hint))
]


@pytest.mark.parametrize("key, choice", CHOICES, ids=[f"{key}={choice}" for key, choice in CHOICES])
def test_every_choice_is_taken_as_typed(tmp_path, key, choice):
    """Each choice of each field, unquoted, through --set and in a YAML file: `off`, which YAML 1.1 reads
    as false, is the choice "off" where a field has it."""
    assert field_value(load_config(None, [f"{key}={choice}"]), key) == choice
    *sections, name = key.split(".")
    text = "".join(f"{'  ' * depth}{section}:\n" for depth, section in enumerate(sections))
    path = tmp_path / "c.yaml"
    path.write_text(text + f"{'  ' * len(sections)}{name}: {choice}\n")
    assert field_value(load_config(path), key) == choice


def test_yaml_booleans_keep_their_word():
    """A word YAML 1.1 reads as a boolean is the choice of that spelling, never another one of its meaning;
    a field without that choice names its choices, a text field takes the word, a boolean field the value."""
    from momentumgs.config import _apply, _load_yaml

    assert ("model.appearance", "off") in CHOICES

    @dataclasses.dataclass
    class Answers:
        answer: typing.Literal["no", "off", "yes"] = "yes"

    for word in ("no", "off", "yes"):
        answers = Answers()
        _apply(answers, _load_yaml(f"answer: {word}"))
        assert answers.answer == word
    with pytest.raises(ConfigError, match=r"^config key 'answer': expected one of no, off, yes, got false$"):
        _apply(Answers(), _load_yaml("answer: false"))
    with pytest.raises(ConfigError, match=r"^config key 'partition.assign': expected one of vis.*, got on$"):
        load_config(None, ["partition.assign=on"])
    cfg = load_config(None, ["data.path=yes", "model.use_distance=on", "demo.appearance=No"])
    assert (cfg.data.path, cfg.model.use_distance, cfg.demo.appearance) == ("yes", True, False)


def test_defaults_and_boundary_values_are_allowed():
    check_config(Config())
    allowed = [
        "train.eval_every=0",
        "train.checkpoint_every=0",
        "train.threads=0",
        "method.checksum_every=0",
        "method.teacher.momentum=0",
        "method.teacher.momentum=1",
        "method.ram_budget_mb=0",
        "experimental.consistency_ramp=[0.25, 0.25]",
        "partition.margin=0",
        "partition.assign.threshold=1",
        "partition.aabb=[]",
        "partition.aabb=[-1, -2, 0, 1, 2, 3]",
        "partition.up_axis=-y",
        "partition.up_axis=+z",
        "model.voxel_size=0",
        "data.test_every=0",
        "train.device=cuda:1",
        "train.device=cpu",
        "train.densify.max_log_scale=-2.5",
    ]
    for item in allowed:
        load_config(None, [item])


def test_demo_sizes_are_those_the_demo_builds():
    from momentumgs.demo.build import SCENES

    hints = {key: hint for key, hint, _ in config_fields()}
    assert typing.get_args(hints["demo.size"]) == SCENES["city"].sizes


# --- the layout: tagged sections, keys that moved ------------------------------------------------------


def test_a_tagged_section_takes_its_mode_then_that_modes_options(tmp_path):
    """partition.assign is one of three sections told apart by `mode`: a mode alone is short for the mapping,
    a new mode starts from its own defaults, an option of another mode is refused naming the mode."""
    assert load_config(None, ["partition.assign=center"]).partition.assign == CenterAssign()
    cfg = load_config(None, ["partition.assign.mode=ssim", "partition.assign.coarse_model=m.ckpt"])
    assert cfg.partition.assign == SSIMAssign(threshold=0.05, coarse_model="m.ckpt")
    assert load_config(None, ["partition.assign.threshold=0.5"]).partition.assign == VisibilityAssign(0.5)
    path = tmp_path / "c.yaml"
    path.write_text("partition:\n  assign:\n    threshold: 0.03\n    coarse_model: m.ckpt\n    mode: ssim\n")
    assert load_config(path).partition.assign == SSIMAssign(threshold=0.03, coarse_model="m.ckpt")
    assert load_config(path, ["partition.assign.mode=ssim"]).partition.assign.threshold == 0.03  # kept
    with pytest.raises(
        ConfigError, match=r"^unknown config key 'partition.assign.coarse_model' \(not an option"
    ):
        load_config(None, ["partition.assign.coarse_model=m.ckpt"])  # visibility has none
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize("old, new", list(MOVED.items()))
def test_a_key_that_moved_names_its_new_place(tmp_path, old, new):
    """An earlier version's key, in a file or in --set, is one line naming the new key, never ignored."""
    new_key, *mode = new.replace("(with ", "").rstrip(")").split()  # [partition.assign.mode:, ssim]
    setup = [f"{mode[0].rstrip(':')}={mode[1]}"] if mode else []
    value = yaml_text(field_value(load_config(None, setup), new_key))  # the new key's default
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"{old}={value}"])
    assert str(info.value) == f"config key '{old}' is now '{new}'"
    section, name = old.split(".")
    path = tmp_path / "old.yaml"
    path.write_text(f"{section}:\n  {name}: {value}\n")
    with pytest.raises(ConfigError, match=f"^{path}: config key '{old}' is now"):
        load_config(path)


def test_bad_value_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  log_every: 0\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: train\.log_every: expected an integer >= 1, got 0$"):
        load_config(path)


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, message",
    [
        ("train.log_every=0", "train.log_every: expected an integer >= 1, got 0"),
        ("method.workers=0", "method.workers: expected an integer >= 1, got 0"),
        ("train.device=tpu", "train.device: expected auto, cpu, cuda or cuda:N, got 'tpu'"),
        ("train.iterations=-5", "train.iterations: expected an integer >= 1, got -5"),
    ],
)
def test_cli_bad_value_is_one_line_and_makes_no_run(tmp_path, override, message):
    run = tmp_path / "run"
    proc = subprocess.run(
        train_cmd("--scene", tmp_path / "scene", "--out", run, "--set", override),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"momentumgs: error: {message}"
    assert not run.exists()


@pytest.mark.slow
def test_cli_run_folder_under_a_file_is_one_line(tmp_path):
    file = tmp_path / "notes.txt"
    file.write_bytes(b"not a folder\n")
    run = file / "run"
    proc = subprocess.run(
        train_cmd("--scene", tmp_path / "scene", "--out", run), capture_output=True, text=True
    )
    assert proc.returncode == 2, proc.stderr
    assert (
        proc.stderr.strip()
        == f"momentumgs: error: {run}: cannot be the run folder, {file} is a file; "
        + ("choose another with --out")
    )
    assert file.read_bytes() == b"not a folder\n"
