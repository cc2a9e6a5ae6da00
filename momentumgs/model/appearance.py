"""Which appearance a trained model renders with (docs/method.md, Appearance).

A decoder with a per-photo appearance table (exposure gains or embeddings, model/decoder.py) has one row per
image of the scene, trained only for the training photos. Rendering a model therefore needs a choice: a
training photo's own row, a row computed at test time (eval's protocols, momentumgs/eval/appearance.py), or
by default the neutral appearance, the mean of the trained rows (an untrained row, such as a test view's
own, keeps its initial zeros)."""

from __future__ import annotations

import torch

from momentumgs.model.decoder import Appearance, GaussianDecoder


def trained_rows(info: dict, table_rows: int) -> list[int]:
    """Rows of the embedding table that training reached (model info's `appearance_images`; all rows for
    a model saved without it)."""
    images = info.get("appearance_images")
    if not images:
        return list(range(table_rows))
    return [int(row["index"]) for row in images]


def neutral_appearance(decoder: GaussianDecoder, rows: list[int]) -> torch.Tensor | None:
    """The mean of the trained rows -> [A]; None for a decoder without an embedding."""
    if decoder.appearance is None:
        return None
    table = decoder.appearance.weight  # [N, A]
    index = torch.as_tensor(rows, dtype=torch.long, device=table.device)
    return table.index_select(0, index).mean(dim=0)


def resolve_appearance(decoder: GaussianDecoder, appearance: Appearance, info: dict) -> Appearance:
    """What `decoder` is given for `appearance` (None: the neutral appearance; an int: that image's row)."""
    if decoder.appearance is None:
        return None
    if appearance is None:
        return neutral_appearance(decoder, trained_rows(info, decoder.appearance.num_embeddings))
    return appearance


def appearance_image_row(info: dict, name: str) -> int:
    """The embedding row of the training photo `name` (its file name, with or without folders). KeyError
    when the model holds no trained appearance of that name."""
    for row in info.get("appearance_images", []):
        if row["name"] == name or row["name"].rsplit("/", 1)[-1] == name:
            return int(row["index"])
    raise KeyError(name)
