"""Merge trained blocks into one model: each block keeps what lies inside its own (half-open) cell, the
blocks are concatenated, and the shared student decoder decodes them all (docs/method.md, Partitioning and
merging).

Two rules for "what lies inside":
- `gaussians` (default): every neural Gaussian whose centre lies in the cell. A slot's centre does not depend
  on the view, so this is a per-slot mask on the kept anchors (`AnchorField.slot_mask`); an anchor is kept
  when any of its slots is, wherever the anchor itself lies. Each point of space is then drawn by the one
  block that trained it together with its surroundings.
- `anchors` (the Momentum-GS code's): every anchor whose position lies in the cell, with all its slots. The
  slots of anchors near a border reach into the neighbour's cell, where the neighbour's own Gaussians
  already explain the surface, and the neighbour's reach into this cell likewise: the two overlap.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from momentumgs.config import MergeRule
from momentumgs.model.anchors import AnchorField
from momentumgs.partition import Partition

_CHUNK = 1 << 20  # points per block_of_points call (bounds its float64 temporaries)


def owner_of(points: torch.Tensor, partition: Partition) -> torch.Tensor:
    """The block holding each point [..., 3]. -> [...] long, on the points' device"""
    flat = points.detach().reshape(-1, 3).cpu().double().numpy()
    owner = np.concatenate(
        [partition.block_of_points(flat[i : i + _CHUNK]) for i in range(0, len(flat), _CHUNK)]
        or [np.zeros(0, np.int64)]
    )
    return torch.from_numpy(owner).to(points.device).reshape(points.shape[:-1])


def block_share(
    field: AnchorField, block: int, partition: Partition, rule: MergeRule = "gaussians"
) -> AnchorField:
    """The detached part of block `block`'s trained `field` that the merged model keeps, by `rule`."""
    if rule == "anchors":
        keep = owner_of(field.positions, partition) == block  # [N]
        slot_mask = None
    else:  # "gaussians"
        inside = (owner_of(field.slot_means(), partition) == block) & allowed_slots(field)  # [N, K]
        keep = inside.any(dim=1)  # [N]
        slot_mask = inside[keep]
    return AnchorField(
        positions=field.positions.detach()[keep],
        features=nn.Parameter(field.features.detach()[keep], requires_grad=False),
        offsets=nn.Parameter(field.offsets.detach()[keep], requires_grad=False),
        log_scales=nn.Parameter(field.log_scales.detach()[keep], requires_grad=False),
        voxel_size=field.voxel_size,
        slot_mask=slot_mask,
    )


def allowed_slots(field: AnchorField) -> torch.Tensor:
    """The field's slot mask, all true when it has none. [N, K] bool"""
    if field.slot_mask is not None:
        return field.slot_mask
    return torch.ones(field.offsets.shape[:2], dtype=torch.bool, device=field.offsets.device)


def concat_fields(fields: list[AnchorField]) -> AnchorField:
    """The anchors of `fields`, one field after another. The slot mask is dropped when every slot is on."""
    voxel_sizes = {f.voxel_size for f in fields}
    if len(voxel_sizes) != 1:
        raise ValueError(f"blocks were trained with different voxel sizes: {sorted(voxel_sizes)}")

    def cat(name: str) -> torch.Tensor:
        return torch.cat([getattr(f, name).detach() for f in fields])

    slot_mask = torch.cat([allowed_slots(f) for f in fields])  # [N, K]
    return AnchorField(
        positions=cat("positions"),
        features=nn.Parameter(cat("features"), requires_grad=False),
        offsets=nn.Parameter(cat("offsets"), requires_grad=False),
        log_scales=nn.Parameter(cat("log_scales"), requires_grad=False),
        voxel_size=voxel_sizes.pop(),
        slot_mask=None if bool(slot_mask.all()) else slot_mask,
    )


def merge_blocks(
    fields: dict[int, AnchorField], partition: Partition, rule: MergeRule = "gaussians"
) -> tuple[AnchorField, list[int]]:
    """-> the merged field (blocks in index order) and the number of anchors each block contributed."""
    shares = [block_share(fields[b], b, partition, rule) for b in range(len(partition.blocks))]
    return concat_fields(shares), [s.n_anchors for s in shares]
