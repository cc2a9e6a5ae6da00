"""Typed configs: dataclasses loaded from YAML, with dotted overrides (`--set train.iterations=2000`).

Every section is a plain dataclass with defaults; a YAML file sets any subset of the fields. Unknown
keys and values of the wrong type are rejected with one line naming the key. Every field also declares the
values it allows (a range, a set of choices, a list length; "what each field allows" below), checked when
the config loads, so that a bad value stops the command in one line instead of deep inside training. Code
that builds a config itself gets the same check from `check_config`, which the library's entry points call.

The layout, for users first:
    data, demo, model, train (with train.lr, train.densify), partition, method: what a user sets;
    partition.assign: a section tagged by its `mode` (visibility, center or ssim), each mode with its own
        options: `assign: {mode: ssim, threshold: 0.03, coarse_model: m.ckpt}`; `assign: center` is short
        for `{mode: center}`;
    method.teacher (momentum, lambda_consistency, balance) and method.weighting (enabled, sigma, every,
        source, view_stride, smoothing): the two parts of Momentum-GS across blocks;
    experimental: the switches of experiments and ablations (tools/ablation.py), which a user has no reason
        to change.
A key of an earlier layout (`method.momentum`, `partition.ssim_threshold`, ...) is refused with one line
naming its new place (`MOVED`).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from momentumgs.errors import ConfigError

# --- what each field allows ----------------------------------------------------------------------------
#
# Each field states its allowed values in its annotation, and `check_config` checks them all at load:
#   Annotated[int, Range(ge=1)]           a finite number within bounds (ge >=, gt >, le <=, lt <)
#   Literal["a", "b"]                     one of these strings (`off`, which YAML reads as false, too)
#   bool                                  true or false (the type says it all)
#   Annotated[str, Device()]              auto, cpu, cuda or cuda:N
#   Annotated[list[int], ListOf(...)]     a list of set lengths, each item within a Range, maybe a rule
#   Annotated[str, AnyText()]             any string (paths, names): said explicitly, so none is forgotten
# A field without one fails tests/test_config.py, which makes an invalid value of every field from these.


@dataclass(frozen=True)
class Range:
    """A finite number within the given bounds; None leaves that bound out."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def allows(self, value: float) -> bool:
        return (
            (isinstance(value, int) or math.isfinite(value))
            and (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )

    def bounds(self) -> str:
        """'>= 1', '> 0', 'in [0, 1)', ... ('' without bounds)."""
        low = [(op, b) for op, b in ((">=", self.ge), (">", self.gt)) if b is not None]
        high = [(op, b) for op, b in (("<=", self.le), ("<", self.lt)) if b is not None]
        if low and high:
            (low_op, low_b), (high_op, high_b) = low[0], high[0]
            opening, closing = "[" if low_op == ">=" else "(", "]" if high_op == "<=" else ")"
            return f"in {opening}{low_b:g}, {high_b:g}{closing}"
        return " ".join(f"{op} {b:g}" for op, b in low + high)

    def describe(self, tp: Any) -> str:
        if not self.bounds():
            return "a finite integer" if tp is int else "a finite number"
        return f"{'an integer' if tp is int else 'a number'} {self.bounds()}"


@dataclass(frozen=True)
class ListOf:
    """A list of one of `lengths` items, each within `each`, and, when given, obeying `rule` (which
    `rule_text` states)."""

    lengths: tuple[int, ...]
    each: Range
    rule: Callable[[list], bool] | None = None
    rule_text: str = ""

    def allows(self, value: list) -> bool:
        return (
            len(value) in self.lengths
            and all(self.each.allows(v) for v in value)
            and (self.rule is None or self.rule(value))
        )

    def describe(self, tp: Any) -> str:
        (item_tp,) = typing.get_args(tp)
        counts = " or ".join("[]" if n == 0 else str(n) for n in self.lengths)
        text = f"{counts} {'integers' if item_tp is int else 'numbers'} {self.each.bounds()}".rstrip()
        return f"{text}, {self.rule_text}" if self.rule_text else text


@dataclass(frozen=True)
class Device:
    """A device name `run.resolve_device` understands (whether CUDA is there is checked when it is used)."""

    def allows(self, value: str) -> bool:
        return re.fullmatch(r"auto|cpu|cuda(:\d+)?", value) is not None

    def describe(self, tp: Any) -> str:
        return "auto, cpu, cuda or cuda:N"


@dataclass(frozen=True)
class AnyText:
    """Any string: a path or a name, checked where it is used (a missing file is reported there)."""

    def allows(self, value: str) -> bool:
        return True

    def describe(self, tp: Any) -> str:
        return "a string"


@dataclass(frozen=True)
class OneOf:
    """One of `choices`: what a Literal (or a bool) annotation declares."""

    choices: tuple

    def allows(self, value: Any) -> bool:
        return value in self.choices

    def describe(self, tp: Any) -> str:
        return "one of " + ", ".join(str(c) for c in self.choices)


Check = Range | ListOf | Device | AnyText | OneOf

# the common cases, named
Count = Annotated[int, Range(ge=1)]  # counts, sizes and intervals
CountOrZero = Annotated[int, Range(ge=0)]  # 0 means off, all or automatic, as the field's comment says
Seed = Annotated[int, Range(ge=0)]  # numpy's generators take no negative seed
Iteration = Annotated[int, Range(ge=0)]  # an iteration number
# learning rates (their log-linear decay needs both ends above 0) and scales
Positive = Annotated[float, Range(gt=0)]
NonNegative = Annotated[float, Range(ge=0)]  # weights and sizes; 0 means off (or automatic), as commented
Fraction = Annotated[float, Range(ge=0, le=1)]
Text = Annotated[str, AnyText()]


# choices that code outside this module also needs (`typing.get_args(MergeRule)` where it needs a tuple)
AssignMode = Literal["visibility", "center", "ssim"]
BlockPoints = Literal["cell", "coverage", "coarse", "all"]
MergeRule = Literal["gaussians", "anchors"]
OpacitySlots = Literal["all", "kept"]
ConsistencyShape = Literal["quaternion", "covariance"]
WeightingSource = Literal["steps", "views"]
Smoothing = Literal["ema", "latest"]


def _mins_below_maxes(box: list[float]) -> bool:
    half = len(box) // 2
    return all(box[i] < box[i + half] for i in range(half))


def _non_decreasing(values: list[float]) -> bool:
    return all(a <= b for a, b in zip(values, values[1:], strict=False))


@dataclass
class DataConfig:
    """Where the COLMAP scene is and how it is read."""

    path: Text = ""  # scene root holding sparse/0 and images/ (or train/ and val/)
    images: Text = "images"  # image folder name inside the scene root
    downscale: Count = 1  # integer image downscale factor, as the paper's `-r 4`
    test_every: CountOrZero = 8  # every n-th image (sorted by name) is a test view; 0 = no test views
    split_file: Text = ""  # optional text file listing test image names, one per line
    image_cache_mb: CountOrZero = 512  # bound on decoded images kept in RAM; 0 = none (decoded at each use)


@dataclass
class DemoConfig:
    """The embedded demo city (momentumgs/demo/)."""

    size: Literal["demo", "test"] = "demo"  # "demo" (README scene) or "test" (small scene for tests)
    seed: Seed = 0
    cache_dir: Text = ""  # default: $MOMENTUMGS_CACHE or ~/.cache/momentumgs
    appearance: bool = False  # photos whose exposure, white balance and sun change (demo/appearance.py)


@dataclass
class ModelConfig:
    """Anchor field and Gaussian decoder (docs/method.md, Representation)."""

    voxel_size: NonNegative = 0.0  # 0 = choose from the point cloud
    feat_dim: Count = 32
    n_offsets: Count = 10
    hidden_dim: Count = 32
    use_distance: bool = False  # feed |x_v - c| to the decoder (paper yes, released code no)
    # per-photo appearance (docs/method.md, Appearance): off; exposure (a gain per photo and channel, for
    # exposure and white balance); embedding (Scaffold-GS's embedding of appearance_dim into the colour MLP)
    appearance: Literal["off", "exposure", "embedding"] = "off"
    appearance_dim: Count = 32  # size of an "embedding" row


@dataclass
class DensifyOptions:
    """Anchor growing and pruning schedule (model/densify.py). Momentum-GS defaults (Scaffold-GS defaults in
    comments). Iterations are absolute; a config for a shorter run scales them itself."""

    start_iter: Iteration = 500  # collect statistics after this iteration  [500]
    end_iter: Iteration = 30_000  # ... and before this one  [15000]
    after_iter: Iteration = 300  # adjust only after this iteration (and inside the window above)  [1500]
    interval: Count = 25  # adjust every `interval` iterations  [100]
    success_threshold: Fraction = 0.8
    grad_threshold: NonNegative = 0.0002  # mean gradient norm, NDC units
    min_opacity: Fraction = 0.005
    levels: CountOrZero = 3  # update_depth; 0 = no growing (pruning only)
    init_factor: Count = 128  # growth cell of level 0 in voxels  [16]; cells 128, 32, 8 voxels
    # cell shrink per level; the threshold grows by hierarchy_factor // 2 (so 1 would neither shrink the cell
    # nor keep a threshold on the finer levels)
    hierarchy_factor: Annotated[int, Range(ge=2)] = 4
    max_log_scale: Annotated[float, Range()] = 0.05  # clamp on l[3:6] after pruning

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

    features: Positive = 0.0075
    offsets_init: Positive = 0.01
    offsets_final: Positive = 0.0001
    log_scales: Positive = 0.007
    mlp_opacity_init: Positive = 0.002
    mlp_opacity_final: Positive = 0.00002
    mlp_cov_init: Positive = 0.004
    mlp_cov_final: Positive = 0.004
    mlp_color_init: Positive = 0.008
    mlp_color_final: Positive = 0.00005
    appearance_init: Positive = 0.05  # the "embedding" rows (Adam)
    appearance_final: Positive = 0.0005
    # The "exposure" rows: steps in proportion to the gradient (Adam with eps 1, far above the rows'
    # gradients), so that a photo's gain moves as far as its evidence pushes it (optimizers.py).
    exposure_init: Positive = 0.5
    exposure_final: Positive = 0.05


@dataclass
class TrainConfig:
    """Optimisation of each block (docs/method.md, Loss and Densification)."""

    iterations: Count = 30_000
    seed: Seed = 0
    device: Annotated[str, Device()] = "auto"  # auto (cuda when available), cpu, cuda, cuda:1, ...
    threads: CountOrZero = 0  # torch CPU threads; 0 = torch's default
    lambda_dssim: Fraction = 0.2
    lambda_volume: NonNegative = 0.01
    eval_every: CountOrZero = 1000  # test-view evaluation period (iterations); 0 = only at the end
    eval_views: CountOrZero = 0  # periodic evaluation on at most this many test views; 0 = all
    checkpoint_every: CountOrZero = 1000  # checkpoint period (global steps); 0 = only the last, at the end
    log_every: Count = 10  # training-record period (global steps); the last step is always recorded
    # k processes: how long a collective waits for a worker that stopped answering (its machine vanished)
    # before the others stop; a worker that dies is noticed at once. Must exceed the longest time one
    # process works alone between collectives (a checkpoint of its blocks, an evaluation).
    collective_timeout_s: Positive = 600.0
    # every learning rate reaches its final value at this fraction of its span (a block's iterations; the
    # decoder's, `decoder_lr_clock`) and holds it after; 1 = decays over the whole span, 0.5 = the Momentum-GS
    # code (max_steps 30 000 of 60 000; docs/method.md, Official recipe)
    lr_hold_after: Annotated[float, Range(gt=0, le=1)] = 1.0
    # the decoder's schedule runs over the global steps of the whole run (run) or follows the iteration of the
    # block it is trained by (block, as the Momentum-GS code: it restarts with each block's turns)
    decoder_lr_clock: Literal["run", "block"] = "run"
    # the offsets' rates are multiplied by 1.1 x the spread of the training cameras: of the whole scene
    # (scene), or of the block's own training views (block, as the Momentum-GS code)
    spatial_lr_scale: Literal["scene", "block"] = "scene"
    lr: OptimConfig = field(default_factory=OptimConfig)
    densify: DensifyOptions = field(default_factory=DensifyOptions)


@dataclass
class VisibilityAssign:
    """assign mode visibility: a camera trains its own block and every block of which at least `threshold` of
    the points (cell plus margin) project into its image, in front of it (partition/assign.py)."""

    mode: Literal["visibility"] = field(default="visibility", kw_only=True)  # the tag: which section this is
    threshold: Annotated[float, Range(gt=0, le=1)] = 0.25  # fraction of the block's points the camera sees


@dataclass
class CenterAssign:
    """assign mode center: a camera trains only the block its centre lies in."""

    mode: Literal["center"] = field(default="center", kw_only=True)  # the tag: which section this is


@dataclass
class SSIMAssign:
    """assign mode ssim, the paper's: a camera also trains every block whose removal from a coarse model of
    the whole scene changes its render by 1 - SSIM > `threshold` (partition/ssim.py)."""

    mode: Literal["ssim"] = field(default="ssim", kw_only=True)  # the tag: which section this is
    threshold: Annotated[float, Range(gt=0, lt=2)] = 0.05  # the paper uses 0.03 .. 0.05
    coarse_model: Text = ""  # a trained model.ckpt of the whole scene (same world frame); needed


# Which cameras train a block besides those in it: one of these, told apart by `mode` (a tagged section:
# `assign: {mode: ssim, threshold: 0.03, coarse_model: m.ckpt}`; `assign: center` is short for
# `{mode: center}`; a new mode starts from that mode's defaults).
AssignConfig = VisibilityAssign | CenterAssign | SSIMAssign


@dataclass
class PartitionConfig:
    """Scene partitioning into blocks (docs/method.md, Partitioning and merging; momentumgs/partition/)."""

    # [] = estimate; else min x, y, z, then max x, y, z
    aabb: Annotated[list[float], ListOf((0, 6), Range(), _mins_below_maxes, "each min below its max")] = (
        field(default_factory=list)
    )
    # cells per axis in (horizontal 1, horizontal 2, up) order: the ground axes are the world axes other than
    # up, in world order (up z -> x, y; up y -> x, z). The paper's 2x1x4 on y-up scenes is [2, 4, 1] here.
    block_dim: Annotated[list[int], ListOf((3,), Range(ge=1))] = field(default_factory=lambda: [2, 2, 1])
    # auto: from the cameras (partition files write +z, -y, ...)
    up_axis: Literal["auto", "x", "y", "z", "+x", "+y", "+z", "-x", "-y", "-z"] = "auto"
    assign: AssignConfig = field(default_factory=VisibilityAssign)
    # fraction of the cell size added around a block for its points and visibility test
    margin: Annotated[float, Range(ge=0, lt=1)] = 0.1
    # the SfM points each block starts from: cell (its cell + margin), coverage (also every point its cameras
    # see, so that a block can explain its views), coarse (cell, and the rest of coverage on a coarse grid:
    # a block's anchors grow with its cell, not with its views' reach), all (the whole cloud, as the
    # Momentum-GS code); anchors outside the cell are dropped at the merge (docs/method.md)
    block_points: BlockPoints = "coarse"
    # what the merged model keeps of each block: the neural Gaussians whose centres lie in its cell
    # (gaussians), or the anchors that do, with all their Gaussians (anchors, as the Momentum-GS code);
    # docs/method.md, Partitioning and merging
    merge: MergeRule = "gaussians"
    # after the merge, steps fitting the anchors near block borders to the training photos with the decoder
    # fixed (momentumgs/train/seams.py; docs/method.md, Partitioning and merging); 0 = none (the paper)
    seam_steps: CountOrZero = 200
    # the anchors that move: those with a kept Gaussian within this fraction of the AABB's extent per cell
    # (the smaller ground axis's) of another block's cell
    seam_band: Annotated[float, Range(gt=0, le=1)] = 0.1
    # warn when a scene is partitioned and when training starts about blocks trained by fewer views; 0: never
    min_views: CountOrZero = 5


@dataclass
class TeacherConfig:
    """The momentum teacher and its consistency loss (docs/method.md, Momentum teacher)."""

    momentum: Fraction = 0.9  # teacher EMA m; 0 disables the teacher and the consistency loss
    lambda_consistency: NonNegative = 50.0  # 0 disables the consistency loss (and the teacher)
    # > 0: on each decoder head and on the block's anchors the consistency gradient is scaled down to at most
    # this times the image's gradient norm (docs/method.md, Momentum teacher); 0 adds the terms as they are
    # (the paper)
    balance: NonNegative = 0.01


@dataclass
class WeightingConfig:
    """Reconstruction-guided block weighting (docs/method.md, Block weighting)."""

    enabled: bool = True
    sigma: Positive = 10.0
    every: Count = 1000  # measure a block's PSNR/SSIM every this many of its iterations
    # views (the paper's): render every `view_stride`-th of its training views then; steps: the mean over
    # those iterations of the block's own training renders (free, an approximation)
    source: WeightingSource = "views"
    view_stride: Count = 10
    # a block's quality: an EMA over its measurements, q <- 0.9 q + 0.1 measured (ema), or its latest
    # measurement (latest: the Momentum-GS code, whose EMA steps every iteration toward the latest measurement
    # and so reaches it within a few dozen iterations; docs/method.md, Block weighting)
    smoothing: Smoothing = "ema"


@dataclass
class MethodConfig:
    """Momentum-GS across blocks (docs/method.md: Momentum teacher, Block weighting, Training schedule)."""

    workers: Count = 1  # k worker slots (<= blocks); with torchrun the world size sets it
    slot_iterations: Count = 500  # a worker switches to its next block after this many steps
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    weighting: WeightingConfig = field(default_factory=WeightingConfig)
    # the shared decoder's Adam moments: one state (shared), or one per slot index, the position j of the
    # block being trained in its worker's rotation (per_slot: the Momentum-GS code keeps the MLPs' moments in
    # each block's optimizer; docs/method.md, Training schedule)
    decoder_optimizer: Literal["shared", "per_slot"] = "shared"
    # true: once the first block has all its iterations the shared decoder (and its teacher) stops learning,
    # so that the blocks still training fit their anchors to the decoder the merged model keeps and no
    # finished block waits while the decoder moves on (ours: the Momentum-GS code has a freeze branch that
    # never runs; docs/method.md, Training schedule). false: it learns to the last step (the Momentum-GS code)
    freeze_decoder_at_finish: bool = True
    # idle blocks kept in host RAM up to this, spilled to disk beyond (0: every idle block on disk)
    ram_budget_mb: NonNegative = 4096.0
    checksum_every: CountOrZero = 100  # compare the decoder replicas across workers this often; 0 = never


@dataclass
class ExperimentalConfig:
    """Switches for experiments and ablations (tools/ablation.py; docs/method.md says what each changes,
    docs/quality.md what it measured): the defaults are the method; a user has no reason to change them."""

    # false: one decoder (and teacher) per block, the paper's "independent blocks" ablation
    shared_decoder: bool = True
    # lambda_consistency ramps linearly from 0 to its value between these fractions of a block's iterations
    # ([0, 0]: from the first iteration, as the paper)
    consistency_ramp: Annotated[
        list[float], ListOf((2,), Range(ge=0, le=1), _non_decreasing, "start <= end")
    ] = field(default_factory=lambda: [0.0, 0.0])
    # the opacity term over "all" V*K slots (the paper) or only the "kept" ones (alpha > 0 in the student)
    consistency_opacity: OpacitySlots = "all"
    # the shape term: "quaternion" (the paper: MSE of unit quaternions plus MSE of scales) or "covariance"
    # (MSE of the covariance R S^2 R^T, which the image depends on; a rotation the image cannot see is free)
    consistency_shape: ConsistencyShape = "quaternion"
    # false: method.teacher.balance caps the decoder heads only; the anchors take the consistency gradient as
    # it is
    consistency_balance_anchors: bool = True
    # true: a block trains on the rectangle of each view where its own cell lies (its cell's points' box,
    # widened by crop_pad x the image on each side): faster steps, but its context trains less
    # (docs/method.md, Training schedule). false: whole views, as the paper
    crop_views: bool = False
    crop_pad: Fraction = 0.05


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    experimental: ExperimentalConfig = field(default_factory=ExperimentalConfig)
    output: Text = "runs/demo"


# Keys of earlier versions and where each went: a file or `--set` that uses one gets a one-line error
# naming the new key (never silent acceptance).
MOVED = {
    "partition.visibility_threshold": "partition.assign.threshold (with partition.assign.mode: visibility)",
    "partition.ssim_threshold": "partition.assign.threshold (with partition.assign.mode: ssim)",
    "partition.coarse_model": "partition.assign.coarse_model (with partition.assign.mode: ssim)",
    "method.momentum": "method.teacher.momentum",
    "method.lambda_consistency": "method.teacher.lambda_consistency",
    "method.consistency_balance": "method.teacher.balance",
    "method.weighting": "method.weighting.enabled",  # where the value is not a mapping
    "method.weighting_sigma": "method.weighting.sigma",
    "method.weighting_every": "method.weighting.every",
    "method.weighting_source": "method.weighting.source",
    "method.weighting_view_stride": "method.weighting.view_stride",
    "method.weighting_smoothing": "method.weighting.smoothing",
    "method.shared_decoder": "experimental.shared_decoder",
    "method.consistency_ramp": "experimental.consistency_ramp",
    "method.consistency_opacity": "experimental.consistency_opacity",
    "method.consistency_shape": "experimental.consistency_shape",
    "method.consistency_balance_anchors": "experimental.consistency_balance_anchors",
    "method.crop_views": "experimental.crop_views",
    "method.crop_pad": "experimental.crop_pad",
}


# --- loading -----------------------------------------------------------------------------------


def declared_check(hint: Any) -> Check | None:
    """The check a field's annotation declares (its Annotated check, its Literal or bool choices), or None."""
    origin = typing.get_origin(hint)
    if origin is Annotated:
        return next((m for m in hint.__metadata__ if isinstance(m, Check)), None)
    if origin is Literal:
        return OneOf(typing.get_args(hint))
    if hint is bool:
        return OneOf((True, False))
    return None


def check_config(obj: Any, prefix: str = "") -> None:
    """Every field of dataclass `obj` (a Config or a section) within what it allows; else a ConfigError
    naming the key, the value and what is allowed."""
    hints = typing.get_type_hints(type(obj), include_extras=True)
    for f in dataclasses.fields(obj):
        key, value, hint = f"{prefix}{f.name}", getattr(obj, f.name), hints[f.name]
        variants = _variants(hint)
        if variants and not isinstance(value, tuple(variants.values())):
            names = ", ".join(c.__name__ for c in variants.values())
            raise ConfigError(f"{key}: expected a section, one of {names}, got {value!r}")
        if dataclasses.is_dataclass(value):
            check_config(value, key + ".")
            continue
        check = declared_check(hint)  # None only for a field still to declare it (the tests say which)
        if check is not None and not check.allows(value):
            base = typing.get_args(hint)[0] if typing.get_origin(hint) is Annotated else hint
            raise ConfigError(f"{key}: expected {check.describe(base)}, got {value!r}")


class _Spelled:
    """A YAML 1.1 boolean with the word it was written as (yes, no, on, off, true, false in any case).

    YAML reads `off` as false; a field whose choices hold the word takes the word (`model.appearance: off`
    is the choice "off", and so is `--set model.appearance=off`), a string field takes it as text, and any
    other field gets the boolean. Knowing the word, `no` and `off` never stand for one another."""

    __slots__ = ("value", "text")

    def __init__(self, value: bool, text: str):
        self.value, self.text = value, text

    def __bool__(self) -> bool:
        return self.value


class _Loader(yaml.SafeLoader):
    """yaml.safe_load's loader, but a boolean keeps the word it was written as (_Spelled)."""


_Loader.add_constructor(
    "tag:yaml.org,2002:bool", lambda loader, node: _Spelled(loader.construct_yaml_bool(node), node.value)
)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # a SafeLoader: no Python objects


def _plain(value: Any) -> Any:
    """`value` (as _load_yaml gives it) with each _Spelled back to its boolean."""
    return value.value if isinstance(value, _Spelled) else value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotated type `tp`; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if isinstance(value, _Spelled) and origin not in (typing.Union, types.UnionType):
        if value.text in (typing.get_args(tp) if origin is Literal else ()) or tp is str:
            return value.text  # the choice (or the text) as written, which YAML 1.1 reads as a boolean
        if origin is Literal:
            choices = ", ".join(map(str, typing.get_args(tp)))
            raise ConfigError(f"config key '{key}': expected one of {choices}, got {value.text}")
        value = value.value
    if origin is Literal:  # here only the type of its choices; which ones, check_config
        return _coerce(value, type(typing.get_args(tp)[0]), key)
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
        if where in MOVED:
            raise ConfigError(_moved_text(where))
        raise ConfigError(f"config key '{where}': expected a mapping, got {type(_plain(data)).__name__}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in names:
            raise ConfigError(_unknown_key(obj, key))
        current = getattr(obj, name)
        variants = _variants(hints[name])
        if variants:
            current, value = _choose_variant(current, value, variants, key)
            setattr(obj, name, current)
        if dataclasses.is_dataclass(current):
            _apply(current, value, key + ".")
        else:
            setattr(obj, name, _coerce(value, hints[name], key))


def _moved_text(key: str) -> str:
    return f"config key '{key}' is now '{MOVED[key]}'"


def _unknown_key(obj: Any, key: str) -> str:
    if key in MOVED:
        return _moved_text(key)
    mode = getattr(obj, "mode", None)
    where = f" (not an option of {key.rsplit('.', 1)[0]}.mode {mode})" if mode is not None else ""
    return f"unknown config key '{key}'{where}"


def _variants(hint: Any) -> dict[str, type] | None:
    """A tagged section's classes by their `mode` (AssignConfig); None for any other annotation."""
    if typing.get_origin(hint) not in (typing.Union, types.UnionType):
        return None
    classes = typing.get_args(hint)
    if not all(dataclasses.is_dataclass(c) for c in classes):
        return None
    return {typing.get_args(typing.get_type_hints(c)["mode"])[0]: c for c in classes}


def _choose_variant(current: Any, value: Any, variants: dict[str, type], key: str) -> tuple[Any, Any]:
    """The section a tagged field's `value` selects, and what is left of `value` to apply to it: a mode
    (`assign: center`) or a mapping with a mode starts that mode's defaults (unless it is the current mode);
    a mapping without one applies to the current section."""
    if isinstance(value, dict) and "mode" not in value:
        return current, value
    where, mode = (f"{key}.mode", value.get("mode")) if isinstance(value, dict) else (key, value)
    text = mode.text if isinstance(mode, _Spelled) else mode
    if text not in variants:  # a word YAML reads as a boolean as written, any other value as Python's repr
        shown = text if isinstance(mode, _Spelled) else repr(mode)
        raise ConfigError(f"config key '{where}': expected one of {', '.join(variants)}, got {shown}")
    if text != current.mode:
        current = variants[text]()
    rest = {k: v for k, v in value.items() if k != "mode"} if isinstance(value, dict) else {}
    return current, rest


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.iterations=2000' -> (['train', 'iterations'], 2000). Values are parsed as YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"--set '{text}': expected KEY=VALUE, e.g. train.iterations=2000")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set '{text}': empty key")
    try:
        value = _load_yaml(raw) if raw.strip() else ""
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
            data = _load_yaml(path.read_text()) or {}
        except yaml.YAMLError as exc:
            line = getattr(getattr(exc, "problem_mark", None), "line", None)
            where = f" (line {line + 1})" if line is not None else ""
            raise ConfigError(f"config file {path}: not valid YAML{where}") from exc
        try:
            _apply(cfg, data)
            check_config(cfg)  # a bad value in the file is the file's error, even if an override follows
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    for text in overrides:
        keys, value = parse_override(text)
        _apply(cfg, _nest(keys, value))
    check_config(cfg)
    return cfg


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def dump_config(cfg: Any) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
