"""Explicit ("baked") Gaussians: what the export formats store and what other 3DGS tools render."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from momentumgs.export.sh import degree_for_coeffs, eval_sh_colors
from momentumgs.render.view import View, rasterize_gaussians


@dataclass
class BakedGaussians:
    """M Gaussians with SH colour, in the INRIA 3DGS conventions (activated values)."""

    means: torch.Tensor  # [M, 3]
    quats: torch.Tensor  # [M, 4] unit, (w, x, y, z)
    scales: torch.Tensor  # [M, 3] linear (not log)
    opacities: torch.Tensor  # [M] in (0, 1) (not logit)
    sh: torch.Tensor  # [M, (d + 1)^2, 3], DC first: colour = max(0.5 + SH(sh, dir), 0)
    info: dict = field(default_factory=dict)  # how it was made (bake statistics), free-form

    def __post_init__(self) -> None:
        m = self.means.shape[0]
        shapes = {
            "means": (m, 3),
            "quats": (m, 4),
            "scales": (m, 3),
            "opacities": (m,),
        }
        for name, shape in shapes.items():
            if tuple(getattr(self, name).shape) != shape:
                got = tuple(getattr(self, name).shape)
                raise ValueError(f"BakedGaussians.{name}: shape {got}, not {shape}")
        if self.sh.dim() != 3 or self.sh.shape[0] != m or self.sh.shape[2] != 3:
            raise ValueError(f"BakedGaussians.sh: shape {tuple(self.sh.shape)}, not ({m}, (d+1)^2, 3)")
        degree_for_coeffs(self.sh.shape[1])

    @property
    def count(self) -> int:
        return self.means.shape[0]

    @property
    def sh_degree(self) -> int:
        return degree_for_coeffs(self.sh.shape[1])

    def colors(self, cam_center: torch.Tensor) -> torch.Tensor:
        """RGB seen from a camera at `cam_center` [3]. -> [M, 3]"""
        return eval_sh_colors(self.sh, self.means - cam_center.to(self.means))

    def subset(self, index: torch.Tensor) -> BakedGaussians:
        """The Gaussians selected by a bool mask [M] or an index tensor."""
        return BakedGaussians(
            self.means[index],
            self.quats[index],
            self.scales[index],
            self.opacities[index],
            self.sh[index],
            dict(self.info),
        )

    def with_sh_degree(self, degree: int) -> BakedGaussians:
        """The same Gaussians with their SH cut to `degree` (lower bands are unchanged)."""
        if degree > self.sh_degree:
            raise ValueError(f"cannot raise the SH degree from {self.sh_degree} to {degree}")
        sh = self.sh[:, : (degree + 1) ** 2].contiguous()
        return BakedGaussians(self.means, self.quats, self.scales, self.opacities, sh, dict(self.info))

    def to(self, device: torch.device | str) -> BakedGaussians:
        return BakedGaussians(
            *(t.to(device) for t in (self.means, self.quats, self.scales, self.opacities, self.sh)),
            dict(self.info),
        )


def render_baked(
    gaussians: BakedGaussians, view: View, background: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """One view of baked Gaussians, SH colours evaluated for that view's centre.
    -> image [H, W, 3], alpha [H, W, 1], meta"""
    g = gaussians.to(view.viewmat.device)
    return rasterize_gaussians(
        g.means, g.quats, g.scales, g.opacities, g.colors(view.center), view, background
    )
