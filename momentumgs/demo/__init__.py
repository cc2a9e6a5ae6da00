"""The embedded demo city: a synthetic scene rendered here and reconstructed with real SfM, so that the
README's command works with nothing downloaded. Its output is an ordinary COLMAP scene folder, read by
`momentumgs.data` like any other.

build.py     the scene folder (renders, ground truth, SfM by `prepare colmap`'s pipeline) and its cache
city.py      layout, photo textures and drone cameras, all deterministic from `CityParams`
raycast.py   the numpy ray caster that renders the city
align.py     similarity alignment and pose errors: an SfM model against the ground truth
"""

from momentumgs.demo.build import (
    MARKER,
    build_demo_scene,
    cached_demo_scene,
    cached_scene_path,
    is_demo_scene,
)

__all__ = ["MARKER", "build_demo_scene", "cached_demo_scene", "cached_scene_path", "is_demo_scene"]
