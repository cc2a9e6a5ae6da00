"""Export: bake an anchor model into explicit Gaussians, write PLY (INRIA), .splat, SPZ and glTF (.glb), read
PLY / SPZ / glTF."""

from momentumgs.export.bake import bake
from momentumgs.export.gaussians import BakedGaussians, render_baked
from momentumgs.export.gltf import read_glb, write_glb
from momentumgs.export.ply import read_ply, write_ply
from momentumgs.export.splat import write_splat
from momentumgs.export.spz import read_spz, write_spz

__all__ = [
    "BakedGaussians",
    "bake",
    "read_glb",
    "read_ply",
    "read_spz",
    "render_baked",
    "write_glb",
    "write_ply",
    "write_splat",
    "write_spz",
]
