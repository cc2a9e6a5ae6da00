"""Single-block training run: the loop, its run folder, checkpoints, logging and periodic evaluation.

Run folder layout:
    config.yaml          the resolved config of the run
    checkpoints/last.ckpt  complete state (anchors, decoder, optimizers, RNGs, iteration), atomic
    metrics.jsonl        one JSON object per logged iteration / evaluation
    model.ckpt           the trained model (anchors + decoder), written at the end
    eval/                per-image metrics of the final evaluation
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from momentumgs.anchor_render import render_anchor_view
from momentumgs.checkpoint import load_checkpoint, save_checkpoint
from momentumgs.config import Config, dump_config, load_config
from momentumgs.data.scene import Scene
from momentumgs.errors import UserError
from momentumgs.io_utils import write_text_atomic
from momentumgs.model.anchors import init_anchors_from_points
from momentumgs.model.store import AnchorModel, DecoderSpec, save_model
from momentumgs.render.view import View, camera_view
from momentumgs.timing import phase
from momentumgs.train.block import Block, StepResult
from momentumgs.train.optimizers import apply_schedules, decoder_optimizer, lr_schedules

RUN_FORMAT = "momentumgs-run-v1"
MAX_BAD_STEPS = 20  # consecutive non-finite steps before the run stops (the last checkpoint stays intact)


class TrainingDiverged(UserError):
    pass


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"train.device={name}: CUDA is not available on this machine")
    return device


def spatial_scale(scene: Scene, view_ids: list[int]) -> float:
    """3DGS's scene extent: 1.1 x the largest distance of a training camera from their mean centre."""
    centers = np.stack([scene.cameras[i].center for i in view_ids])
    radius = float(np.linalg.norm(centers - centers.mean(0), axis=1).max())
    return 1.1 * max(radius, 1e-6)


def decoder_spec(cfg: Config, scene: Scene) -> DecoderSpec:
    mc = cfg.model
    return DecoderSpec(
        feat_dim=mc.feat_dim,
        n_offsets=mc.n_offsets,
        hidden_dim=mc.hidden_dim,
        use_distance=mc.use_distance,
        appearance_dim=mc.appearance_dim,
        appearance_count=len(scene.cameras) if mc.appearance_dim > 0 else 0,
    )


def gt_image(scene: Scene, index: int, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(scene.load_image(index)).to(device=device, dtype=torch.float32) / 255.0


@torch.no_grad()
def view_quality(field, decoder, scene: Scene, views: list[View], ids: list[int]) -> tuple[float, float]:
    """Mean PSNR and SSIM of the anchor model over the views `ids` (for logs and block weights)."""
    from momentumgs.metrics import psnr, ssim

    values = []
    for i in ids:
        image = render_anchor_view(field, decoder, views[i]).image.clamp(0, 1)
        gt = gt_image(scene, i, views[i].viewmat.device)
        values.append((float(psnr(image, gt)), float(ssim(image, gt))))
    mean = np.asarray(values).mean(0)
    return float(mean[0]), float(mean[1])


class MetricsLog:
    """Append-only JSON lines; on resume, lines past the checkpoint's iteration are dropped."""

    def __init__(self, path: Path):
        self.path = path

    def truncate_after(self, iteration: int) -> None:
        if not self.path.exists():
            return
        kept = [
            line
            for line in self.path.read_text().splitlines()
            if line.strip() and json.loads(line).get("iteration", 0) <= iteration
        ]
        write_text_atomic(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


@dataclass
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoints" / "last.ckpt"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def model(self) -> Path:
        return self.root / "model.ckpt"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"


def prepare_run_dir(paths: RunPaths, resume: bool) -> None:
    """Refuse to start a new run over an existing one; refuse to resume what is not a run."""
    if resume:
        if not paths.checkpoint.is_file():
            raise UserError(f"{paths.root}: no checkpoint to resume (expected {paths.checkpoint})")
        return
    if paths.root.exists() and any(paths.root.iterdir()):
        raise UserError(
            f"{paths.root}: output folder is not empty; resume it with `momentumgs train --resume "
            f"{paths.root}` or choose another with --set output=..."
        )
    paths.root.mkdir(parents=True, exist_ok=True)


class SingleBlockTrainer:
    """Trains one anchor field and its decoder on all training views of a scene."""

    def __init__(self, cfg: Config, scene: Scene, run_dir: str | Path, device: torch.device):
        self.cfg = cfg
        self.scene = scene
        self.device = device
        self.paths = RunPaths(Path(run_dir))
        self.log = MetricsLog(self.paths.metrics)
        tc = cfg.train
        torch.manual_seed(tc.seed)  # decoder initialisation
        if len(scene.points) == 0:
            raise UserError(f"{scene.root}: the scene has no SfM points to initialise anchors from")
        mc = cfg.model
        self.spec = decoder_spec(cfg, scene)
        self.decoder = self.spec.build().to(device)
        self.decoder_optimizer = decoder_optimizer(self.decoder, tc.lr)
        self.decoder_schedules = lr_schedules(tc.lr, tc.iterations, 1.0)
        field = init_anchors_from_points(
            scene.points, mc.voxel_size, mc.n_offsets, mc.feat_dim, device=device
        )
        self.block = Block(field, scene.train_ids, tc, spatial_scale(scene, scene.train_ids), tc.seed)
        self.views = [camera_view(c, device, i) for i, c in enumerate(scene.cameras)]
        self.bad_steps = 0
        self.skipped_steps = 0

    # --- state ------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "format": RUN_FORMAT,
            "block": self.block.state_dict(),
            "decoder": self.decoder.state_dict(),
            "decoder_optimizer": self.decoder_optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "skipped_steps": self.skipped_steps,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != RUN_FORMAT:
            raise UserError(f"{self.paths.checkpoint}: not a single-block run checkpoint")
        self.block.load_state_dict(state["block"])
        self.decoder.load_state_dict(state["decoder"])
        self.decoder_optimizer.load_state_dict(state["decoder_optimizer"])
        torch.set_rng_state(state["torch_rng"])
        self.skipped_steps = int(state["skipped_steps"])

    def save_checkpoint(self) -> None:
        save_checkpoint(self.paths.checkpoint, self.state_dict())

    def model(self) -> AnchorModel:
        info = {"iteration": self.block.iteration, "scene": str(self.scene.root)}
        return AnchorModel(self.block.field, self.decoder, self.spec, info)

    # --- loop -------------------------------------------------------------------------------------

    def train_step(self) -> StepResult:
        block = self.block
        index = block.sampler.next()
        apply_schedules(self.decoder_optimizer, self.decoder_schedules, block.iteration)
        with phase("data"):
            gt = gt_image(self.scene, index, self.device)
        result = block.forward_backward(self.decoder, self.views[index], gt)
        with phase("optimizer"):
            finite = result.finite and all(
                p.grad is None or bool(torch.isfinite(p.grad).all()) for p in self.decoder.parameters()
            )
            if finite:
                self.decoder_optimizer.step()
            self.decoder_optimizer.zero_grad(set_to_none=True)
        if finite:
            self.bad_steps = 0
        else:
            self.skipped_steps += 1
            self.bad_steps += 1
        block.step(finite)
        if self.bad_steps >= MAX_BAD_STEPS:
            raise TrainingDiverged(
                f"{self.paths.root}: {self.bad_steps} consecutive non-finite losses at iteration "
                f"{block.iteration}; stopped, the last checkpoint is intact"
            )
        return result

    @torch.no_grad()
    def quick_eval(self, max_views: int = 0) -> dict:
        """Mean PSNR/SSIM on (a subset of) the test views, for the log."""
        ids = self.scene.test_ids or self.scene.train_ids[::8]
        if max_views > 0:
            ids = ids[:: max(1, math.ceil(len(ids) / max_views))]
        mean_psnr, mean_ssim = view_quality(self.block.field, self.decoder, self.scene, self.views, ids)
        split = "test" if self.scene.test_ids else "train-subset"
        return {f"{split}_psnr": mean_psnr, f"{split}_ssim": mean_ssim}

    def run(self, progress: bool = True, stop_after: int | None = None, on_step=None) -> None:
        """Train until `cfg.train.iterations` (or `stop_after` more steps)."""
        from tqdm import tqdm

        tc = self.cfg.train
        block = self.block
        end = tc.iterations if stop_after is None else min(tc.iterations, block.iteration + stop_after)
        bar = tqdm(
            total=tc.iterations,
            initial=block.iteration,
            disable=not progress,
            desc="train",
            dynamic_ncols=True,
        )
        t0, it0 = time.perf_counter(), block.iteration
        try:
            while block.iteration < end:
                result = self.train_step()
                if on_step is not None:  # e.g. the viewer's snapshots (momentumgs train --view)
                    on_step(self)
                it = block.iteration
                if it % tc.log_every == 0 or it == end:
                    rate = (it - it0) / max(time.perf_counter() - t0, 1e-9)
                    record = {
                        "iteration": it,
                        "loss": result.loss,
                        "psnr": result.psnr,
                        "l1": result.l1,
                        "ssim": result.ssim,
                        "anchors": block.field.n_anchors,
                        "gaussians": result.n_gaussians,
                        "it_per_s": rate,
                        "skipped": self.skipped_steps,
                    }
                    self.log.write(record)
                    bar.set_postfix(
                        loss=f"{result.loss:.4f}", psnr=f"{result.psnr:.2f}", anchors=block.field.n_anchors
                    )
                bar.update(1)
                if tc.eval_every > 0 and it % tc.eval_every == 0 and it < tc.iterations:
                    self.log.write({"iteration": it, **self.quick_eval(tc.eval_views)})
                if tc.checkpoint_every > 0 and it % tc.checkpoint_every == 0:
                    with phase("checkpoint"):
                        self.save_checkpoint()
        finally:
            bar.close()
        if block.iteration >= tc.iterations:
            self.save_checkpoint()
            save_model(self.paths.model, self.model())


# --- entry points used by the CLI ---------------------------------------------------------------------


def start_or_resume(
    cfg: Config | None, scene_loader, run_dir: str | Path, resume: bool, overrides: list[str] = ()
) -> SingleBlockTrainer:
    """Build a trainer for a new run in `run_dir`, or restore the one saved there.

    `scene_loader(cfg) -> Scene` loads the scene the config names (kept outside so tests can inject one).
    """
    paths = RunPaths(Path(run_dir))
    prepare_run_dir(paths, resume)
    if resume:
        cfg = load_config(paths.config, overrides)
    assert cfg is not None
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    scene = scene_loader(cfg)
    trainer = SingleBlockTrainer(cfg, scene, paths.root, device)
    if resume:
        state = load_checkpoint(paths.checkpoint, map_location=device)
        trainer.load_state_dict(state)
        trainer.log.truncate_after(trainer.block.iteration)
    else:
        write_text_atomic(paths.config, dump_config(cfg))
    return trainer
