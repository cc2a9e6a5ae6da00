"""The anchor field of one block (docs/method.md, Representation): frozen voxel-centre positions with
learnable features, offsets and log-scales, from which the shared decoder spawns k neural Gaussians per
anchor.

Initialisation follows Scaffold-GS (Lu et al. 2024, `create_from_pcd`) as used by Momentum-GS:
voxelise the SfM points at `voxel_size`, features and offsets zero, log-scale the log of the anchor's
nearest-neighbour spacing repeated 6 times. The field holds tensors only; the optimizer, the densifier's
statistics and file I/O live elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import nn

# Floor on squared neighbour distances, as Scaffold-GS's clamp_min(dist2, 1e-7), so coincident
# points never give log(0).
_MIN_DIST2 = 1e-7


def knn_rms_distance(points: np.ndarray | torch.Tensor, k: int = 3) -> torch.Tensor:
    """Root mean square distance of every point to its k nearest other points. [P, 3] -> [P].

    This is what Scaffold-GS's `sqrt(distCUDA2(points))` computes (distCUDA2 is the mean squared
    distance to the 3 nearest neighbours). A k-d tree (scipy, a dependency of scikit-image) answers
    100k points in a fraction of a second on one core; brute-force torch.cdist needs about a minute.
    """
    pts = torch.as_tensor(points).detach().to("cpu", torch.float64).numpy()
    n = pts.shape[0]
    if n < 2:
        return torch.full((n,), float(np.sqrt(_MIN_DIST2)), dtype=torch.float32)
    kk = min(k, n - 1)
    dist, _ = cKDTree(pts).query(pts, k=kk + 1)  # [P, kk+1], column 0 is the point itself
    dist2 = np.maximum((dist[:, 1:] ** 2).mean(axis=1), _MIN_DIST2)
    return torch.from_numpy(np.sqrt(dist2)).float()


def choose_voxel_size(points: np.ndarray | torch.Tensor, quantile: float = 0.5) -> float:
    """Voxel size for `voxel_size = 0`: the median (by default) over points of the RMS distance to
    their 3 nearest neighbours, i.e. the typical SfM point spacing.

    Scaffold-GS takes the median of distCUDA2, which is a *squared* distance (a unit slip); we take
    the square root so the voxel is a length in scene units.
    """
    spacing = knn_rms_distance(points)
    if spacing.numel() == 0:
        raise ValueError("cannot choose a voxel size from an empty point cloud")
    return float(torch.quantile(spacing.double(), quantile))


def voxelize(points: torch.Tensor, voxel_size: float) -> torch.Tensor:
    """Unique voxel centres unique(round(p / eps)) * eps. [P, 3] -> [N, 3], sorted by grid index."""
    cells = torch.round(points.double() / voxel_size).long()  # [P, 3]
    cells = torch.unique(cells, dim=0)  # [N, 3]
    return (cells.double() * voxel_size).to(points.dtype)


@dataclass
class AnchorField:
    """Anchors of one block. Learnable tensors are nn.Parameters; `positions` is frozen (lr 0)."""

    positions: torch.Tensor  # [N, 3] anchor positions x_v (no grad)
    features: nn.Parameter  # [N, F] anchor features f_v
    offsets: nn.Parameter  # [N, K, 3] offsets O_v, in units of exp(log_scales[:, :3])
    log_scales: nn.Parameter  # [N, 6] l_v: [0:3] offset scale, [3:6] Gaussian scale
    voxel_size: float
    # [N, K] bool: the slots that may decode; None: all. A merged model keeps each block's neural Gaussians
    # in the block's own cell (momentumgs/merge.py), so an anchor near a border may keep only some slots.
    slot_mask: torch.Tensor | None = None

    # names of the learnable tensors, in the order the optimizer groups use them
    PARAM_NAMES = ("features", "offsets", "log_scales")

    @property
    def n_anchors(self) -> int:
        return self.positions.shape[0]

    @property
    def n_offsets(self) -> int:
        return self.offsets.shape[1]

    @property
    def feat_dim(self) -> int:
        return self.features.shape[1]

    def params(self) -> dict[str, nn.Parameter]:
        """Learnable tensors by name (for optimizer param groups)."""
        return {name: getattr(self, name) for name in self.PARAM_NAMES}

    def slot_means(self) -> torch.Tensor:
        """Centres of every slot's neural Gaussian (they do not depend on the view). [N, K, 3]"""
        return slot_means(self.positions, self.offsets, self.log_scales)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Plain detached tensors (safe for torch.save/torch.load(weights_only=True))."""
        state = {
            "positions": self.positions.detach().clone(),
            "features": self.features.detach().clone(),
            "offsets": self.offsets.detach().clone(),
            "log_scales": self.log_scales.detach().clone(),
            "voxel_size": torch.tensor(self.voxel_size, dtype=torch.float64),
        }
        if self.slot_mask is not None:
            state["slot_mask"] = self.slot_mask.clone()
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> AnchorField:
        n = state["positions"].shape[0]
        shapes = {
            "features": (n,),
            "offsets": (n,),
            "log_scales": (n, 6),
        }
        for name, lead in shapes.items():
            if tuple(state[name].shape[: len(lead)]) != lead:
                raise ValueError(f"anchor state: '{name}' has shape {tuple(state[name].shape)}, {n} anchors")
        slot_mask = state.get("slot_mask")
        if slot_mask is not None:
            if slot_mask.dtype != torch.bool or slot_mask.shape != state["offsets"].shape[:2]:
                raise ValueError(
                    f"anchor state: 'slot_mask' is {slot_mask.dtype} {tuple(slot_mask.shape)}, "
                    f"expected bool {tuple(state['offsets'].shape[:2])}"
                )
            slot_mask = slot_mask.clone()
        return cls(
            positions=state["positions"].detach().clone(),
            features=nn.Parameter(state["features"].detach().clone()),
            offsets=nn.Parameter(state["offsets"].detach().clone()),
            log_scales=nn.Parameter(state["log_scales"].detach().clone()),
            voxel_size=float(state["voxel_size"]),
            slot_mask=slot_mask,
        )

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Replace every tensor (the anchor count may change). Rebuild the optimizer afterwards:
        it still refers to the old Parameters."""
        other = AnchorField.from_state_dict(state)
        device = self.positions.device
        self.positions = other.positions.to(device)
        for name in self.PARAM_NAMES:
            setattr(self, name, nn.Parameter(getattr(other, name).data.to(device)))
        self.voxel_size = other.voxel_size
        self.slot_mask = None if other.slot_mask is None else other.slot_mask.to(device)

    def to(self, device: torch.device | str) -> AnchorField:
        return AnchorField(
            positions=self.positions.to(device),
            features=nn.Parameter(self.features.data.to(device), self.features.requires_grad),
            offsets=nn.Parameter(self.offsets.data.to(device), self.offsets.requires_grad),
            log_scales=nn.Parameter(self.log_scales.data.to(device), self.log_scales.requires_grad),
            voxel_size=self.voxel_size,
            slot_mask=None if self.slot_mask is None else self.slot_mask.to(device),
        )


def slot_means(positions: torch.Tensor, offsets: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """mu_vj = x_v + O_vj * exp(l_v[0:3]) for anchors positions [N, 3], offsets [N, K, 3] and log-scales
    [N, 6]. -> [N, K, 3]"""
    return positions[:, None, :] + offsets * torch.exp(log_scales[:, None, :3])


def init_anchors_from_points(
    points: np.ndarray | torch.Tensor,
    voxel_size: float = 0.0,
    n_offsets: int = 10,
    feat_dim: int = 32,
    device: torch.device | str = "cpu",
) -> AnchorField:
    """Anchor field from SfM points [P, 3]: voxel centres, zero features and offsets, log-scales
    log(RMS distance to the 3 nearest anchors) repeated 6x. `voxel_size <= 0` chooses it with
    `choose_voxel_size`."""
    pts = torch.as_tensor(np.asarray(points) if not torch.is_tensor(points) else points).float()
    if pts.ndim != 2 or pts.shape[1] != 3 or pts.shape[0] == 0:
        raise ValueError(f"expected a non-empty [P, 3] point array, got shape {tuple(pts.shape)}")
    if voxel_size <= 0:
        voxel_size = choose_voxel_size(pts)
    positions = voxelize(pts, voxel_size)  # [N, 3]
    n = positions.shape[0]
    log_scale = torch.log(knn_rms_distance(positions))[:, None].repeat(1, 6)  # [N, 6]
    field = AnchorField(
        positions=positions,
        features=nn.Parameter(torch.zeros(n, feat_dim)),
        offsets=nn.Parameter(torch.zeros(n, n_offsets, 3)),
        log_scales=nn.Parameter(log_scale),
        voxel_size=float(voxel_size),
    )
    return field.to(device)
