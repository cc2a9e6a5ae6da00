"""Photos whose appearance changes, as in a capture taken over hours: per photo an exposure, a white
balance and a sun strength (the share of ambient light: a cloud over the sun softens the shadows) drawn
from a seed, and one lens's mild vignetting. The scene is lit and rendered once more per photo with its
sun strength; exposure, white balance and vignetting then act on the rendered image as a camera's would.
The neutral render (exposure 1, neutral white balance, the world's own light, no vignetting) is kept as
the ground truth, so a model that learned the scene can be told from one that learned the photos."""

from __future__ import annotations

import dataclasses

import numpy as np

EXPOSURE_LOG_STD = 0.3  # exposure factor exp(N(0, 0.3)): about ±35 % for one photo in three
WHITE_BALANCE_LOG_STD = 0.06  # per-channel gains around 1 (geometric mean kept at 1)
AMBIENT_RANGE = (-0.12, 0.2)  # added to the world's ambient share: harder to softer sun
VIGNETTING = 0.2  # brightness falls by this much at the image corners (cos^4-like, r^2 model)


@dataclasses.dataclass(frozen=True)
class PhotoAppearance:
    exposure: float
    white_balance: tuple[float, float, float]  # RGB gains
    ambient: float  # the world's ambient share for this photo


def draw_appearances(count: int, seed: int, base_ambient: float) -> list[PhotoAppearance]:
    """Each photo's appearance, deterministic from `seed`."""
    rng = np.random.default_rng([seed, 0xA99E])
    exposure = np.exp(rng.normal(0.0, EXPOSURE_LOG_STD, count))
    log_gains = rng.normal(0.0, WHITE_BALANCE_LOG_STD, (count, 3))
    gains = np.exp(log_gains - log_gains.mean(axis=1, keepdims=True))
    ambient = np.clip(base_ambient + rng.uniform(*AMBIENT_RANGE, count), 0.05, 0.9)
    return [
        PhotoAppearance(float(e), tuple(float(g) for g in gain), float(a))
        for e, gain, a in zip(exposure, gains, ambient, strict=True)
    ]


def vignette(width: int, height: int, strength: float = VIGNETTING) -> np.ndarray:
    """Brightness factor [H, W, 1]: 1 at the centre, 1 - strength at the corners."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    r2 = ((x - width / 2) / (width / 2)) ** 2 + ((y - height / 2) / (height / 2)) ** 2  # 2 at a corner
    return (1.0 - strength * r2 / 2.0)[..., None]


def photograph(image: np.ndarray, look: PhotoAppearance, falloff: np.ndarray) -> np.ndarray:
    """The camera's image [H, W, 3] in [0, 1] of a rendered image (lit with the photo's sun already)."""
    gains = look.exposure * np.asarray(look.white_balance, dtype=np.float32)  # [3]
    return np.clip(image * gains * falloff, 0.0, 1.0).astype(np.float32)


def appearance_table(looks: list[PhotoAppearance], names: list[str]) -> list[dict]:
    """Per photo, what was applied (for ground_truth/<scene>.json)."""
    return [{"name": n, **dataclasses.asdict(look)} for n, look in zip(names, looks, strict=True)]
