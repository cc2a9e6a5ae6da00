"""The records the training loop writes to metrics.jsonl (schema: `metrics_log.py`): each logged step's
training record, and the periodic evaluation of every block on the evaluation views in its cell."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
import torch

from momentumgs.data.scene import Scene
from momentumgs.memory import peak_rss_mb
from momentumgs.model.anchors import AnchorField
from momentumgs.model.decoder import GaussianDecoder
from momentumgs.partition import Partition
from momentumgs.render.view import View
from momentumgs.train.block import StepResult
from momentumgs.train.measure import view_metrics


def block_step_records(
    results: dict[int, StepResult], iterations: list[int], anchors: dict[int, int], weights: list[float]
) -> dict[str, dict]:
    """The training record's entry of each block trained at this step: its iteration (`iterations`, per
    block), losses, PSNR, anchors (`anchors`, per block id), Gaussians and weight."""
    return {
        str(b): {
            "iteration": iterations[b],
            "loss": r.loss,
            "l1": r.l1,
            "ssim": r.ssim,
            "psnr": r.psnr,
            "consistency": r.consistency,
            "anchors": anchors[b],
            "gaussians": r.n_gaussians,
            "weight": weights[b],
        }
        for b, r in results.items()
    }


def train_record(blocks: dict[str, dict], step: int, rate: float, comm, **totals) -> dict:
    """The training record of `step` with the `blocks` entries of every process (a collective); `totals`:
    the run's seconds, skipped steps and swap seconds."""
    gathered = comm.gather_objects((blocks, peak_rss_mb()))
    for other, _ in gathered:
        blocks.update(other)
    return {
        "kind": "train",
        "step": step,
        "steps_per_s": rate,
        "seconds": totals["seconds"],
        "peak_rss_mb": max(rss for _, rss in gathered),  # the largest process's
        "skipped": totals["skipped"],
        "swap_seconds": totals["swap_seconds"],
        "blocks": dict(sorted(blocks.items(), key=lambda item: int(item[0]))),
    }


def eval_view_ids(scene: Scene, eval_views: int) -> tuple[str, list[int]]:
    """The split and views of the periodic evaluation: the test views (every 8th train view when the scene
    has none), thinned to at most `eval_views` (`train.eval_views`; 0: all)."""
    split = "test" if scene.test_ids else "train-subset"
    ids = list(scene.test_ids or scene.train_ids[::8])
    if eval_views > 0:
        ids = ids[:: max(1, math.ceil(len(ids) / eval_views))]
    return split, ids


@torch.no_grad()
def eval_record(
    scene: Scene,
    partition: Partition,
    views: list[View],
    fields: Iterable[tuple[int, AnchorField]],
    decoder_of: Callable[[int], GaussianDecoder],
    comm,
    eval_views: int,
    step: int,
) -> dict:
    """PSNR / SSIM of each block (`fields`: this process's, one at a time) on the evaluation views whose
    camera centre lies in its cell (each block renders with all its anchors, margin included), gathered
    from every process. -> an eval record"""
    split, ids = eval_view_ids(scene, eval_views)
    owner = partition.block_of_points(np.stack([scene.cameras[i].center for i in ids]))  # [V]
    sums = torch.zeros((len(partition.blocks), 3), dtype=torch.float64)  # [B, (psnr sum, ssim sum, views)]
    for b, field in fields:
        mine = [i for i, o in zip(ids, owner, strict=True) if o == b]
        if mine:
            values = view_metrics(field, decoder_of(b), scene, views, mine)
            sums[b] = torch.tensor([*values.sum(0), len(mine)], dtype=torch.float64)
    comm.sum_(sums)
    total = sums.sum(0)
    blocks = {
        str(b): {"psnr": p / v, "ssim": s / v, "views": int(v)}
        for b, (p, s, v) in enumerate(sums.tolist())
        if v > 0
    }
    views_done = max(float(total[2]), 1.0)
    return {
        "kind": "eval",
        "step": step,
        "split": split,
        "psnr": float(total[0]) / views_done,
        "ssim": float(total[1]) / views_done,
        "views": int(total[2]),
        "blocks": blocks,
    }
