"""The embedded demo scenes: synthetic scenes rendered here and reconstructed from their renders, so that
the README's commands work with nothing downloaded. Each is written as an ordinary COLMAP scene folder,
read by `momentumgs.data` like any other, and cached (`cached_scene`).

city     (`--scene city`, sizes demo: 64 views, test: 24, both 320x240) a small city of textured boxes on a
         flat ground, seen by near-nadir views and oblique rings that each see much of it; real SfM
         (`prepare colmap`'s pipeline), its model in COLMAP's own frame
survey   (`--scene survey`, sizes survey: 88 views at 320x240, test: 28 at 128x96, large: 236 at
         320x240 over 2.4 times the area) rolling farmland with a village, fields, roads, farms, woods and
         a pond, flown low in lawn-mower strips (70% forward, 65% side overlap, views leaning 10 degrees
         forward) plus oblique cross lines: each photo sees about a tenth of the scene, the case that
         partitioning is for; points triangulated at the exact poses (prepare/known_poses.py), in metres,
         z up

build.py     the scene folder (renders, ground truth, reconstruction) and its cache, for either scene
city.py      the city's layout, photo textures and drone cameras, all deterministic from `CityParams`
survey.py    the survey's terrain, layout, procedural textures and flight plan, from `SurveyParams`
scenery.py   what both share: textured boxes in one atlas, the sun, look-down cameras
raycast.py   the numpy ray caster: boxes on a flat ground or on a height field
align.py     similarity alignment and pose errors: an SfM model against the ground truth
"""

from momentumgs.demo.build import (
    MARKER,
    SCENES,
    build_demo_scene,
    build_scene,
    cached_demo_scene,
    cached_scene,
    cached_scene_path,
    cached_survey_scene,
    is_demo_scene,
)

__all__ = [
    "MARKER",
    "SCENES",
    "build_demo_scene",
    "build_scene",
    "cached_demo_scene",
    "cached_scene",
    "cached_scene_path",
    "cached_survey_scene",
    "is_demo_scene",
]
