"""Typed configs: dataclasses loaded from YAML, with dotted overrides (`--set train.iterations=2000`).

Every section is a plain dataclass with defaults; a YAML file sets any subset of the fields. Unknown
keys and values of the wrong type are rejected with one line naming the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from momentumgs.errors import ConfigError


@dataclass
class DataConfig:
    """Where the COLMAP scene is and how it is read."""

    path: str = ""  # scene root holding sparse/0 and images/ (or train/ and val/)
    images: str = "images"  # image folder name inside the scene root
    downscale: int = 1  # integer image downscale factor, as the paper's `-r 4`
    test_every: int = 8  # every n-th image (sorted by name) is a test view; 0 = no test views
    split_file: str = ""  # optional text file listing test image names, one per line
    image_cache_mb: int = 512  # bound on decoded images kept in RAM


@dataclass
class DemoConfig:
    """The embedded demo city (momentumgs/demo/)."""

    size: str = "demo"  # "demo" (README scene) or "test" (small scene for tests)
    seed: int = 0
    cache_dir: str = ""  # default: $MOMENTUMGS_CACHE or ~/.cache/momentumgs


@dataclass
class ModelConfig:
    """Anchor field and Gaussian decoder (docs/method.md, Representation)."""

    voxel_size: float = 0.0  # 0 = choose from the point cloud
    feat_dim: int = 32
    n_offsets: int = 10
    hidden_dim: int = 32
    use_distance: bool = False  # feed |x_v - c| to the decoder (paper yes, released code no)
    appearance_dim: int = 0  # per-image appearance embedding; 0 = off


@dataclass
class DensifyOptions:
    """Anchor growing and pruning schedule (model/densify.py). Momentum-GS defaults (Scaffold-GS defaults in
    comments). Iterations are absolute; a config for a shorter run scales them itself."""

    start_iter: int = 500  # collect statistics after this iteration  [500]
    end_iter: int = 30_000  # ... and before this one  [15000]
    after_iter: int = 300  # adjust only after this iteration (and inside the window above)  [1500]
    interval: int = 25  # adjust every `interval` iterations  [100]
    success_threshold: float = 0.8
    grad_threshold: float = 0.0002  # mean gradient norm, NDC units
    min_opacity: float = 0.005
    levels: int = 3  # update_depth
    init_factor: int = 128  # growth cell of level 0 in voxels  [16]; cells 128, 32, 8 voxels
    hierarchy_factor: int = 4  # cell shrink per level; the threshold grows by hierarchy_factor // 2
    max_log_scale: float = 0.05  # clamp on l[3:6] after pruning

    @property
    def min_offset_visits(self) -> float:
        """Slots must be visited more often than this to grow (10 with the defaults)."""
        return self.interval * self.success_threshold * 0.5

    @property
    def min_anchor_visits(self) -> float:
        """Anchors must be visited more often than this to be pruned (20 with the defaults)."""
        return self.interval * self.success_threshold

    def collects_stats(self, iteration: int) -> bool:
        return self.start_iter < iteration < self.end_iter

    def adjusts(self, iteration: int) -> bool:
        due = iteration > self.after_iter and iteration % self.interval == 0
        return due and self.collects_stats(iteration)


@dataclass
class OptimConfig:
    """Adam learning rates (docs/method.md, Representation and Training schedule; decoder rates as
    Scaffold-GS). `*_final` is reached at the end of the run along a log-linear decay; the offsets' rates are
    multiplied by the scene's spatial scale."""

    features: float = 0.0075
    offsets_init: float = 0.01
    offsets_final: float = 0.0001
    log_scales: float = 0.007
    mlp_opacity_init: float = 0.002
    mlp_opacity_final: float = 0.00002
    mlp_cov_init: float = 0.004
    mlp_cov_final: float = 0.004
    mlp_color_init: float = 0.008
    mlp_color_final: float = 0.00005
    appearance_init: float = 0.05
    appearance_final: float = 0.0005


@dataclass
class TrainConfig:
    """Optimisation of each block (docs/method.md, Loss and Densification)."""

    iterations: int = 30_000
    seed: int = 0
    device: str = "auto"  # auto (cuda when available), cpu, cuda, cuda:1, ...
    threads: int = 0  # torch CPU threads; 0 = torch's default
    lambda_dssim: float = 0.2
    lambda_volume: float = 0.01
    eval_every: int = 1000  # test-view evaluation period (iterations); 0 = only at the end
    eval_views: int = 0  # periodic evaluation on at most this many test views; 0 = all
    checkpoint_every: int = 1000
    log_every: int = 10
    lr: OptimConfig = field(default_factory=OptimConfig)
    densify: DensifyOptions = field(default_factory=DensifyOptions)


@dataclass
class PartitionConfig:
    """Scene partitioning into blocks (docs/method.md, Partitioning and merging; momentumgs/partition.py)."""

    aabb: list[float] = field(default_factory=list)  # [] = estimate; else min x, y, z, then max x, y, z
    # cells per axis in (horizontal 1, horizontal 2, up) order: the ground axes are the world axes other than
    # up, in world order (up z -> x, y; up y -> x, z). The paper's 2x1x4 on y-up scenes is [2, 4, 1] here.
    block_dim: list[int] = field(default_factory=lambda: [2, 2, 1])
    up_axis: str = "auto"  # auto (from the cameras) | x | y | z | -x | -y | -z
    assign: str = "visibility"  # visibility | center | ssim: which cameras train a block besides those in it
    visibility_threshold: float = 0.25  # fraction of a block's points a camera must see (in image, in front)
    coarse_model: str = ""  # assign ssim: a trained model.ckpt of the whole scene (same world frame)
    ssim_threshold: float = 0.05  # assign ssim: 1 - SSIM drop when the block is removed (paper 0.03..0.05)
    margin: float = 0.1  # fraction of the cell size added around a block for its points and visibility test
    # the SfM points each block starts from: cell (its cell + margin), coverage (also every point its cameras
    # see), all (the whole cloud); anchors outside the cell are dropped at the merge
    block_points: str = "cell"
    min_views: int = 5  # warn about blocks trained by fewer views


@dataclass
class MethodConfig:
    """Momentum-GS across blocks (docs/method.md: Momentum teacher, Block weighting, Training schedule).
    The switches double as the ablation's."""

    workers: int = 1  # k worker slots (<= blocks); with torchrun the world size sets it
    slot_iterations: int = 500  # a worker switches to its next block after this many steps
    momentum: float = 0.9  # teacher EMA m; 0 disables the teacher and the consistency loss
    lambda_consistency: float = 50.0
    # lambda_consistency ramps linearly from 0 to its value between these fractions of a block's iterations
    # ([0, 0]: from the first iteration, as the paper)
    consistency_ramp: list[float] = field(default_factory=lambda: [0.0, 0.0])
    # the opacity term over "all" V*K slots (the paper) or only the "kept" ones (alpha > 0 in the student)
    consistency_opacity: str = "all"
    weighting: bool = True  # reconstruction-guided block weighting
    weighting_sigma: float = 10.0
    weighting_every: int = 1000  # measure a block's PSNR/SSIM every this many of its iterations
    # "views" (the paper's; docs/method.md, Block weighting): render every `weighting_view_stride`-th of its
    # training views then;
    # "steps": the mean over those iterations of the block's own training renders (free, an approximation)
    weighting_source: str = "views"
    weighting_view_stride: int = 10
    shared_decoder: bool = True  # false: one decoder per block (the paper's "independent blocks" ablation)
    ram_budget_mb: float = 4096.0  # idle blocks kept in host RAM up to this, spilled to disk beyond
    checksum_every: int = 100  # compare the decoder replicas across workers every this many steps


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    output: str = "runs/demo"


# --- loading -----------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotated type `tp`; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"config key '{key}': expected {tp}, got {type(value).__name__} {value!r}")
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {type(value).__name__} {value!r}")
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return origin(items)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"config key '{key}': expected true/false, got {type(value).__name__} {value!r}")
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"config key '{key}': expected int, got bool {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(
            f"config key '{key}': expected {_type_name(tp)}, got {type(value).__name__} {value!r}"
        )
    return value


def _apply(obj: Any, data: dict, prefix: str = "") -> None:
    """Set the fields of dataclass `obj` from the nested dict `data`, checking keys and types."""
    if not isinstance(data, dict):
        where = prefix.rstrip(".") or "top level"
        raise ConfigError(f"config key '{where}': expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in names:
            raise ConfigError(f"unknown config key '{key}'")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            _apply(current, value, key + ".")
        else:
            setattr(obj, name, _coerce(value, hints[name], key))


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.iterations=2000' -> (['train', 'iterations'], 2000). Values are parsed as YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"--set '{text}': expected KEY=VALUE, e.g. train.iterations=2000")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set '{text}': empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _nest(path: list[str], value: Any) -> dict:
    out: Any = value
    for part in reversed(path):
        out = {part: out}
    return out


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Defaults, then the YAML file at `path` (if any), then each `KEY=VALUE` override in order."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path}: not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            line = getattr(getattr(exc, "problem_mark", None), "line", None)
            where = f" (line {line + 1})" if line is not None else ""
            raise ConfigError(f"config file {path}: not valid YAML{where}") from exc
        try:
            _apply(cfg, data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    for text in overrides:
        keys, value = parse_override(text)
        _apply(cfg, _nest(keys, value))
    return cfg


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def dump_config(cfg: Any) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
