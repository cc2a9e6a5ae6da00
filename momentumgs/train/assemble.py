"""One model from trained blocks: each block cut to its own cell (`merge.py`), the blocks concatenated, and
the shared decoder (or, for the independent-blocks ablation, each anchor's block decoder). The final model
of a run, a model of a run while it trains (tools, tests) and the live viewer's snapshots are all made by
`assemble_model`."""

from __future__ import annotations

import torch

from momentumgs.checkpoint import load_checkpoint
from momentumgs.merge import block_share, concat_fields
from momentumgs.model.anchors import AnchorField
from momentumgs.model.decoder import GaussianDecoder
from momentumgs.model.store import AnchorModel, DecoderSpec
from momentumgs.train.trainer import Trainer


def assemble_model(
    shares: dict[int, AnchorField],
    decoder: GaussianDecoder,
    spec: DecoderSpec,
    info: dict,
    block_decoders: dict[int, GaussianDecoder] | None = None,
) -> AnchorModel:
    """The model of the blocks' `shares` (each block's part that the merge keeps, `merge.block_share`), in
    block order, decoded by `decoder`; with `block_decoders`, each anchor by its own block's decoder."""
    ids = sorted(shares)
    fields = [shares[b] for b in ids]
    model = AnchorModel(concat_fields(fields), decoder, spec, info)
    if block_decoders is not None:
        model.block_decoders = [block_decoders[b] for b in ids]
        counts = torch.tensor([f.n_anchors for f in fields])
        anchor_block = torch.repeat_interleave(torch.arange(len(ids)), counts)  # [N]
        model.anchor_block = anchor_block.to(model.field.positions.device)
    return model


def merged_model(
    trainer: Trainer, fields: dict[int, AnchorField], block_decoders: dict[int, dict] | None, iteration: int
) -> AnchorModel:
    """Every block of `trainer`'s run (`fields`, and their decoders' state dicts for independent decoders)
    merged into one model on the CPU, with the run's facts in its info."""
    cfg, partition, scene, spec = trainer.cfg, trainer.partition, trainer.scene, trainer.spec
    rule = cfg.partition.merge
    shares = {b: block_share(fields[b], b, partition, rule) for b in range(len(partition.blocks))}
    info = {
        "iteration": iteration,
        "blocks": len(partition.blocks),
        "anchors_per_block": [shares[b].n_anchors for b in sorted(shares)],
        "scene": str(scene.root),
    }
    if spec.appearance_dim > 0:  # the embedding rows training reached: the views of some block
        trained = sorted({int(i) for block in partition.blocks for i in block.camera_ids})
        info["appearance_images"] = [{"index": i, "name": scene.cameras[i].name} for i in trained]
    decoder = _cpu_decoder(spec, trainer.decoder.state_dict())
    decoders = None
    if block_decoders is not None:
        decoders = {b: _cpu_decoder(spec, state) for b, state in block_decoders.items()}
    return assemble_model(shares, decoder, spec, info, decoders)


def final_model(trainer: Trainer) -> AnchorModel:
    """The run's blocks as training left them (blocks/, written by every process), merged."""
    finals = {b: load_checkpoint(trainer.paths.block_file(b)) for b in range(len(trainer.partition.blocks))}
    fields = {b: AnchorField.from_state_dict(final["anchors"]) for b, final in finals.items()}
    decoders = None if trainer.decoders.shared else {b: final["decoder"] for b, final in finals.items()}
    return merged_model(trainer, fields, decoders, trainer.cfg.train.iterations)


def current_model(trainer: Trainer) -> AnchorModel:
    """The blocks as they are now, merged, on the CPU (for tools and tests: every block must live in this
    process)."""
    if len(trainer.residency.owned) != len(trainer.partition.blocks):
        raise RuntimeError("current_model needs every block in this process (one-process runs)")
    fields = {
        b: AnchorField.from_state_dict({k: v.cpu() for k, v in f.state_dict().items()})
        for b, f in trainer.residency.block_fields()
    }
    decoders = None
    if not trainer.decoders.shared:
        decoders = {b: trainer.decoders.of(b).module.state_dict() for b in sorted(fields)}
    return merged_model(trainer, fields, decoders, trainer.global_step)


def _cpu_decoder(spec: DecoderSpec, state: dict) -> GaussianDecoder:
    decoder = spec.build()
    decoder.load_state_dict({k: v.cpu() for k, v in state.items()})
    return decoder
