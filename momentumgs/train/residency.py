"""Where each block of this process lives while a run trains: the block of each local worker's slot on the
training device, the others in the `BlockStore` (host RAM within `method.ram_budget_mb`, disk beyond it),
the blocks the slot rotation (`slots.py`) brings next prefetched."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from momentumgs.config import Config
from momentumgs.data.scene import Scene
from momentumgs.errors import UserError
from momentumgs.model.anchors import AnchorField, init_anchors_from_points
from momentumgs.partition import Partition, cell_rectangles
from momentumgs.render.view import Crop
from momentumgs.train.block import Block
from momentumgs.train.block_store import BlockStore
from momentumgs.train.measure import spatial_scale
from momentumgs.train.slots import SlotSchedule


class BlockResidency:
    """The blocks `owned` by this process: which one each local worker holds (`resident`), the store for
    the rest, and how a block is made from its anchors or its saved state."""

    def __init__(
        self,
        cfg: Config,
        scene: Scene,
        partition: Partition,
        owned: list[int],
        spill_dir: Path,
        device: torch.device,
    ):
        self.cfg, self.scene, self.partition, self.owned, self.device = cfg, scene, partition, owned, device
        self.spatial_scale = spatial_scale(scene, scene.train_ids)  # the whole scene's
        self.store = BlockStore(int(cfg.method.ram_budget_mb * (1 << 20)), spill_dir)
        self.resident: dict[int, tuple[int, Block]] = {}  # worker -> (block id, block)

    # --- making blocks ----------------------------------------------------------------------------

    def new_block(self, block_id: int, field: AnchorField) -> Block:
        views = [int(i) for i in self.partition.blocks[block_id].camera_ids]
        seed = self.cfg.train.seed + 1000 * (block_id + 1)
        return Block(field, views, self.cfg.train, self.block_spatial_scale(views), seed)

    def block_spatial_scale(self, views: list[int]) -> float:
        """The offsets' learning-rate scale of a block training on `views`: the whole scene's, or 1.1 x the
        spread of the block's own views (`train.spatial_lr_scale: block`)."""
        if self.cfg.train.spatial_lr_scale == "block" and views:
            return spatial_scale(self.scene, views)
        return self.spatial_scale

    def block_from_state(self, block_id: int, state: dict) -> Block:
        block = self.new_block(block_id, AnchorField.from_state_dict(state["anchors"]).to(self.device))
        block.load_state_dict(state)
        return block

    def init_blocks(self, voxel_size: float) -> None:
        """Each owned block's anchors from its points (cell + margin), straight into the store."""
        mc = self.cfg.model
        for b in self.owned:
            points = self.scene.points[self.partition.blocks[b].point_ids]
            if len(points) == 0:
                raise UserError(f"partition block {b}: no SfM points to initialise anchors from")
            field = init_anchors_from_points(points, voxel_size, mc.n_offsets, mc.feat_dim, self.device)
            self.store.put(b, self.new_block(b, field).state_dict())

    # --- the slots --------------------------------------------------------------------------------

    def hold(self, active: dict[int, int | None], schedule: SlotSchedule) -> None:
        """Swap blocks so that each local worker (`active`: worker -> its block at this step) holds its
        block; prefetch the blocks they take next."""
        for w, b in active.items():
            held = self.resident.get(w)
            if held is not None and held[0] == b:
                continue
            if held is not None:
                self.store.put(held[0], held[1].state_dict())
                del self.resident[w]
            if b is not None:
                self.resident[w] = (b, self.block_from_state(b, self.store.take(b, self.device)))
        upcoming = [schedule.next_block(w) for w in active]
        upcoming = [b for b in upcoming if b is not None and b in self.store]
        self.store.hint_next(upcoming)
        for b in upcoming:
            self.store.prefetch(b)

    def block_of(self, worker: int) -> Block:
        """The block worker `worker` holds."""
        return self.resident[worker][1]

    def resident_blocks(self) -> list[tuple[int, Block]]:
        """(block id, block) of the blocks this process holds in its workers' slots now."""
        return list(self.resident.values())

    # --- every owned block, one at a time ---------------------------------------------------------

    def block_states(self) -> Iterator[tuple[int, dict]]:
        """(block id, state) of every owned block, one at a time, so that host RAM stays within the store's
        budget: resident blocks are copied, stored ones are read and put back after use."""
        resident = dict(self.resident_blocks())
        for b in self.owned:
            if b in resident:
                yield b, resident[b].state_dict()
            else:
                state = self.store.take(b, "cpu")
                yield b, state
                self.store.put(b, state)

    def block_fields(self) -> Iterator[tuple[int, AnchorField]]:
        """(block id, anchors on the device) of every owned block, one at a time, as `block_states`."""
        resident = dict(self.resident_blocks())
        for b in self.owned:
            if b in resident:
                yield b, resident[b].field
            else:
                state = self.store.take(b, "cpu")
                yield b, AnchorField.from_state_dict(state["anchors"]).to(self.device)
                self.store.put(b, state)

    def load_states(self, states: Iterator[tuple[int, dict]]) -> None:
        """Put the saved state of each owned block (from a checkpoint) into the store."""
        for b, state in states:
            self.store.put(b, state)

    def close(self) -> None:
        self.store.close()


def block_crops(cfg: Config, scene: Scene, partition: Partition) -> list[dict[int, Crop]]:
    """Per block, the crop of each training view it trains on where that is not the whole image
    (`experimental.crop_views`; one block's cell is the whole scene, so it trains on whole views)."""
    ex, blocks = cfg.experimental, partition.blocks
    if not ex.crop_views or len(blocks) == 1:
        return [{} for _ in blocks]
    crops = []
    for rects in cell_rectangles(scene, partition, ex.crop_pad):
        sizes = {i: (scene.cameras[i].width, scene.cameras[i].height) for i in rects}
        crops.append({i: Crop(*r, *sizes[i]) for i, r in rects.items() if tuple(r) != (0, 0, *sizes[i])})
    return crops
