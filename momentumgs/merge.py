"""Merge trained blocks into one model: each block keeps the anchors inside its own (half-open) cell, the
blocks are concatenated, and the shared student decoder decodes them all (docs/method.md, Partitioning and
merging)."""

from __future__ import annotations

import torch
from torch import nn

from momentumgs.model.anchors import AnchorField
from momentumgs.partition import Partition


def merge_blocks(fields: dict[int, AnchorField], partition: Partition) -> tuple[AnchorField, list[int]]:
    """-> the merged field and the number of anchors each block contributed."""
    voxel_sizes = {f.voxel_size for f in fields.values()}
    if len(voxel_sizes) != 1:
        raise ValueError(f"blocks were trained with different voxel sizes: {sorted(voxel_sizes)}")
    kept: dict[str, list[torch.Tensor]] = {name: [] for name in ("positions", *AnchorField.PARAM_NAMES)}
    counts = []
    for b in range(len(partition.blocks)):
        field = fields[b]
        owner = partition.block_of_points(field.positions.detach().cpu().double().numpy())  # [N]
        inside = torch.from_numpy(owner == b).to(field.positions.device)  # [N]
        for name, tensors in kept.items():
            tensors.append(getattr(field, name).detach()[inside])
        counts.append(int(inside.sum()))
    merged = AnchorField(
        positions=torch.cat(kept["positions"]),
        features=nn.Parameter(torch.cat(kept["features"])),
        offsets=nn.Parameter(torch.cat(kept["offsets"])),
        log_scales=nn.Parameter(torch.cat(kept["log_scales"])),
        voxel_size=voxel_sizes.pop(),
    )
    return merged, counts
