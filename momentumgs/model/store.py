"""A trained model on disk: anchors (one field, or the merged blocks) and the decoder, with the options
needed to rebuild them. Written with the checksummed checkpoint format."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from momentumgs.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from momentumgs.model.anchors import AnchorField
from momentumgs.model.decoder import GaussianDecoder

MODEL_KIND = "momentumgs-anchor-model"


@dataclass
class DecoderSpec:
    feat_dim: int = 32
    n_offsets: int = 10
    hidden_dim: int = 32
    use_distance: bool = False
    appearance_dim: int = 0
    appearance_count: int = 0
    appearance_mode: str = "embedding"  # model files written before the exposure table had only embeddings

    def build(self) -> GaussianDecoder:
        return GaussianDecoder(**asdict(self))


@dataclass
class AnchorModel:
    field: AnchorField
    decoder: GaussianDecoder
    spec: DecoderSpec
    info: dict  # free-form: iteration, scene path, block cells, ...
    # Only for models trained with independent per-block decoders (an ablation): decoder of each block and
    # block of each anchor. A normal Momentum-GS model has one shared decoder and leaves these None.
    block_decoders: list[GaussianDecoder] | None = None
    anchor_block: torch.Tensor | None = None  # [N] long

    def to(self, device: torch.device | str) -> AnchorModel:
        block_decoders = None
        if self.block_decoders is not None:
            block_decoders = [d.to(device) for d in self.block_decoders]
        anchor_block = None if self.anchor_block is None else self.anchor_block.to(device)
        return AnchorModel(
            self.field.to(device), self.decoder.to(device), self.spec, self.info, block_decoders, anchor_block
        )


def save_model(path: str | Path, model: AnchorModel) -> None:
    save_checkpoint(
        path,
        {
            "kind": MODEL_KIND,
            "anchors": model.field.state_dict(),
            "decoder": model.decoder.state_dict(),
            "decoder_spec": asdict(model.spec),
            "info": model.info,
            "block_decoders": [d.state_dict() for d in model.block_decoders or []],
            "anchor_block": model.anchor_block,
        },
    )


def load_model(path: str | Path, device: torch.device | str = "cpu") -> AnchorModel:
    state = load_checkpoint(path)
    if state.get("kind") != MODEL_KIND:
        raise CheckpointError(f"{path}: not a momentumgs model file (kind {state.get('kind')!r})")
    spec = DecoderSpec(**state["decoder_spec"])
    decoder = spec.build()
    decoder.load_state_dict(state["decoder"])
    decoder.requires_grad_(False)
    field = AnchorField.from_state_dict(state["anchors"])
    for param in field.params().values():  # a loaded model is rendered, not trained
        param.requires_grad_(False)
    block_decoders = None
    if state.get("block_decoders"):
        block_decoders = [spec.build() for _ in state["block_decoders"]]
        for d, d_state in zip(block_decoders, state["block_decoders"], strict=True):
            d.load_state_dict(d_state)
            d.requires_grad_(False)
    model = AnchorModel(
        field, decoder, spec, state.get("info", {}), block_decoders, state.get("anchor_block")
    )
    return model.to(device)
