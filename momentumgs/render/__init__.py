"""Rasterization of 3D Gaussians: gsplat on CUDA tensors, our compositor on CPU tensors."""

from momentumgs.render.rasterize import rasterize

__all__ = ["rasterize"]
