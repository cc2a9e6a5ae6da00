"""Similarity alignment (Umeyama 1991) and camera-pose errors between two reconstructions.

SfM returns poses in an arbitrary similarity frame; comparing them with ground truth (or with another
run) means first finding the scale s, rotation R and translation t with dst ~ s R src + t.
"""

from __future__ import annotations

import numpy as np


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity mapping src [N, 3] onto dst [N, 3]: returns (s, R [3, 3], t [3]).

    Needs N >= 3 points that are not collinear; R is a proper rotation (det +1).
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or len(src) < 3:
        raise ValueError(f"umeyama: need two [N, 3] arrays with N >= 3, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    var_s = (a**2).sum() / len(src)
    cov = b.T @ a / len(src)  # [3, 3]
    U, D, Vt = np.linalg.svd(cov)
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:  # reflection -> flip the weakest axis
        S[2, 2] = -1.0
    R = U @ S @ Vt
    s = float(np.trace(np.diag(D) @ S) / var_s)
    t = mu_d - s * R @ mu_s
    return s, R, t


def camera_centers(viewmats: np.ndarray) -> np.ndarray:
    """World->camera [N, 4, 4] -> camera centres [N, 3]."""
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    return -np.einsum("nji,nj->ni", R, t)


def rotation_angle_deg(Ra: np.ndarray, Rb: np.ndarray) -> np.ndarray:
    """Angle of Ra Rb^T for stacks [N, 3, 3] -> [N] degrees."""
    cos = (np.einsum("nij,nij->n", Ra, Rb) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def pose_errors(est_viewmats: np.ndarray, gt_viewmats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-camera errors of estimated poses after the similarity that best maps their centres onto
    the ground-truth centres: (centre errors [N] in ground-truth units, rotation errors [N] degrees).

    Inputs are world->camera matrices [N, 4, 4] of the same cameras in the same order.
    """
    est, gt = np.asarray(est_viewmats, np.float64), np.asarray(gt_viewmats, np.float64)
    s, R, t = umeyama(camera_centers(est), camera_centers(gt))
    aligned = s * camera_centers(est) @ R.T + t
    centre_err = np.linalg.norm(aligned - camera_centers(gt), axis=1)
    # a world point x_gt = s R x_est + t; camera rotation in the gt frame: R_est R^T
    rot_err = rotation_angle_deg(est[:, :3, :3] @ R.T, gt[:, :3, :3])
    return centre_err, rot_err
