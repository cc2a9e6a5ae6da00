"""Plausibility of a COLMAP reconstruction: signs that SfM registered photos at wrong poses.

A low reprojection error does not prove the poses right: on a low, repetitive survey the mapper can
register a subset of photos mirrored or folded onto the rest, each photo still agreeing with its own
points. These checks look at what such a model gets wrong, on plain arrays (cameras in image-name order):

- view directions: when most cameras look the same way, steeply at the ground (a survey looks down), one
  looking more than 90 deg away from the common direction is flipped. Views along the ground may look back
  (a street walked both ways): there the check applies only when nearly all look one way.
- ground side: when the points lie on a dominant plane, the cameras all see it from the same side; one
  clearly on the other side (below the ground), or looking away from it, is misplaced.
- capture order: photos named in capture order follow a path; a run of photos that jumps far away from its
  order neighbours and comes back (while the path before and after it joins up) is misplaced.
- tracks: photos with very few observed points are weakly tied to the model, and a model whose points are
  mostly seen by only two photos is poorly constrained.

Each check returns the indices it flags and the figure it measured; `check_reconstruction` runs them all
and words one-line warnings naming the photos.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SHARED_DIRECTION = 0.5  # mean resultant length of the view directions above which they share a direction
SHARED_WITHOUT_PLANE = 0.8  # ... the same, when the points give no ground plane to tell down from along
STEEP = 0.5  # |cos| between the shared direction and the ground normal: looking down by 30 deg or more
FLIPPED_DEG = 90.0  # a camera this far from the shared direction looks the other way
# sqrt(smallest / middle eigenvalue) of the points below which they lie on a plane with a clear normal (the
# demo city, buildings on flat ground, is at 0.15; the survey, rolling farmland, at 0.05)
PLANARITY = 0.25
BELOW_MARGIN = 2.0  # a camera is on the other side when beyond the plane by this many point spreads (RMS)
LOOKING_UP = 0.5  # cos between the optical axis and the normal above which a camera looks away (> 30 deg up)
JUMP_FACTOR = 5.0  # an order step this many times the median step is a jump
MAX_RUN_SHARE = 1 / 3  # a run of jumped photos longer than this share of all photos is not flagged
MIN_TRACK_SHARE = 0.3  # share of points seen by >= 3 photos below which the model is poorly constrained
WEAK_PHOTO_SHARE = 0.1  # a photo seeing fewer than this share of the median photo's points is weak
WEAK_PHOTO_MIN = 15  # ... or fewer points than this (the mapper's minimum inliers to register a photo)
SHOWN = 5  # photos named in a warning before "and N more"


@dataclass
class Check:
    """One check's verdict: the photos it flags (indices), the figure it measured, and whether it applied."""

    name: str
    flagged: list[int] = field(default_factory=list)
    value: float = float("nan")
    applies: bool = True


def view_direction_outliers(axes: np.ndarray, plane: Plane | None) -> Check:
    """Cameras looking more than 90 deg away from the direction most cameras share. axes: [V, 3] unit
    optical axes (world). Applies where looking back is no capture pattern: the shared direction looks
    steeply at the ground plane (an aerial survey), or, without a plane, nearly all cameras look one way (a
    street walked both ways looks back along it). value: the mean resultant length of the axes (1: all
    parallel, 0: no shared direction)."""
    mean = axes.mean(axis=0)  # [3]
    strength = float(np.linalg.norm(mean))
    shared = mean / max(strength, 1e-12)
    if plane is None:
        applies = strength >= SHARED_WITHOUT_PLANE
    else:
        applies = strength >= SHARED_DIRECTION and abs(float(shared @ plane.normal)) >= STEEP
    if len(axes) < 3 or not applies:
        return Check("view directions", value=strength, applies=False)
    angles = np.degrees(np.arccos(np.clip(axes @ shared, -1.0, 1.0)))  # [V]
    return Check("view directions", np.flatnonzero(angles > FLIPPED_DEG).tolist(), strength)


@dataclass
class Plane:
    centre: np.ndarray  # [3]
    normal: np.ndarray  # [3] unit
    spread: float  # RMS distance of the points fitted to the plane
    planarity: float  # sqrt(smallest / middle eigenvalue)


def dominant_plane(points: np.ndarray) -> Plane | None:
    """The plane the points lie on, or None when they do not lie on one. Robust to stray points: fitted to
    the points within the 5-95 % range along each principal axis."""
    if len(points) < 10:
        return None
    centre = np.median(points, axis=0)
    _, _, vt = np.linalg.svd(points - centre, full_matrices=False)
    local = (points - centre) @ vt.T  # [N, 3] in principal axes
    lo, hi = np.percentile(local, [5, 95], axis=0)
    core = points[np.all((local >= lo) & (local <= hi), axis=1)]
    if len(core) < 10:
        return None
    centre = np.median(core, axis=0)
    _, s, vt = np.linalg.svd(core - centre, full_matrices=False)
    planarity = float(s[2] / max(s[1], 1e-12))
    if planarity > PLANARITY:
        return None
    spread = float(s[2] / np.sqrt(len(core)))
    return Plane(centre, vt[2], spread, planarity)


def ground_side_outliers(centres: np.ndarray, axes: np.ndarray, plane: Plane | None) -> Check:
    """Cameras on the other side of the points' ground plane than most cameras (clearly beyond it), or
    looking away from it (more than 30 deg up: a street view at the horizon may look slightly up).
    centres, axes: [V, 3]. value: the share of cameras on the side most are on."""
    if plane is None or len(centres) < 3:
        return Check("ground side", applies=False)
    height = (centres - plane.centre) @ plane.normal  # [V] signed distance to the plane
    side = 1.0 if np.median(height) >= 0 else -1.0
    height, normal = side * height, side * plane.normal  # positive on the side most cameras are on
    margin = BELOW_MARGIN * plane.spread
    facing = axes @ normal  # [V] < 0 when the camera looks towards the plane
    flagged = np.flatnonzero((height < -margin) | (facing > LOOKING_UP))
    return Check("ground side", flagged.tolist(), float(np.mean(height > 0)))


def capture_order_jumps(centres: np.ndarray) -> Check:
    """Runs of photos (in name order) that leave the path and come back: the step into the run and the step
    out of it are jumps (> JUMP_FACTOR x the median step), and the photos just before and just after the
    run are closer to each other than either jump (and than the run's length in median steps plus a
    jump). A single jump, to a new flight line or a new session, is no detour. centres: [V, 3].
    value: the largest step / the median step."""
    if len(centres) < 4:
        return Check("capture order", applies=False)
    steps = np.linalg.norm(np.diff(centres, axis=0), axis=1)  # [V-1], step i joins photo i and i+1
    typical = float(np.median(steps))
    if typical <= 0:
        return Check("capture order", applies=False)
    limit = JUMP_FACTOR * typical
    jumps = np.flatnonzero(steps > limit)
    flagged: set[int] = set()
    for a, b in zip(jumps[:-1], jumps[1:], strict=True):
        run = range(a + 1, b + 1)  # photos between the jump out and the jump back
        gap = np.linalg.norm(centres[a] - centres[b + 1])
        rejoins = gap < min(steps[a], steps[b], limit + (len(run) + 1) * typical)
        if rejoins and len(run) <= MAX_RUN_SHARE * len(centres):
            flagged.update(run)
    return Check("capture order", sorted(flagged), float(steps.max() / typical))


def weak_photos(observations: np.ndarray) -> Check:
    """Photos observing few points. observations: [V] points seen per photo. value: the median count."""
    median = float(np.median(observations)) if len(observations) else 0.0
    limit = max(WEAK_PHOTO_MIN, WEAK_PHOTO_SHARE * median)
    return Check("observations", np.flatnonzero(observations < limit).tolist(), median)


def track_share(track_lengths: np.ndarray) -> Check:
    """The share of points seen by >= 3 photos. track_lengths: [N]. Flags nothing (a model-wide figure)."""
    if len(track_lengths) == 0:
        return Check("tracks", applies=False)
    return Check("tracks", value=float(np.mean(track_lengths >= 3)))


def _named(indices: list[int], names: list[str]) -> str:
    shown = ", ".join(names[i] for i in indices[:SHOWN])
    return shown + (f" and {len(indices) - SHOWN} more" if len(indices) > SHOWN else "")


@dataclass
class Plausibility:
    names: list[str]  # the photos, in the caller's order (the checks' indices)
    checks: list[Check]
    warnings: list[str]

    def flagged_names(self, check: str) -> list[str]:
        return sorted(self.names[i] for c in self.checks if c.name == check for i in c.flagged)

    def to_dict(self) -> dict:
        return {
            c.name: {
                "applies": c.applies,
                "value": None if np.isnan(c.value) else c.value,
                "flagged": c.flagged,
            }
            for c in self.checks
        }


def check_reconstruction(
    names: list[str],
    centres: np.ndarray,  # [V, 3] camera centres, world
    axes: np.ndarray,  # [V, 3] unit optical axes, world
    observations: np.ndarray,  # [V] points seen per photo
    points: np.ndarray,  # [N, 3]
    track_lengths: np.ndarray,  # [N] photos seeing each point
) -> Plausibility:
    """Every check on one reconstruction (cameras sorted by image name, the capture order)."""
    given = list(names)
    order = np.argsort(names, kind="stable")
    names = [names[i] for i in order]
    centres, axes, observations = centres[order], axes[order], observations[order]
    plane = dominant_plane(points)
    checks = [
        view_direction_outliers(axes, plane),
        ground_side_outliers(centres, axes, plane),
        capture_order_jumps(centres),
        weak_photos(observations),
        track_share(track_lengths),
    ]
    v = len(names)
    texts = {
        "view directions": f"look more than {FLIPPED_DEG:g} deg away from the direction most photos share",
        "ground side": "are below the ground plane of the points, or look away from it",
        "capture order": f"jump more than {JUMP_FACTOR:g}x the median step away from the photos taken before "
        "and after them (by name)",
        "observations": "see few points (weakly registered)",
    }
    warnings = []
    for c in checks:
        if c.flagged:
            which = _named(c.flagged, names)
            warnings.append(f"implausible poses: {len(c.flagged)} of {v} photos {texts[c.name]}: {which}")
    tracks = checks[-1]
    if tracks.applies and tracks.value < MIN_TRACK_SHARE:
        warnings.append(
            f"weak reconstruction: only {tracks.value:.0%} of the points are seen by 3 or more photos "
            f"(expected >= {MIN_TRACK_SHARE:.0%})"
        )
    for c in checks:  # back to the caller's indices
        c.flagged = sorted(int(order[i]) for i in c.flagged)
    return Plausibility(given, checks, warnings)


def check_pycolmap(rec) -> Plausibility:
    """`check_reconstruction` on a pycolmap.Reconstruction's registered images and points."""
    from momentumgs.data.colmap_cameras import cam_from_world

    ids = sorted(rec.reg_image_ids())
    if not ids:
        return Plausibility([], [], [])
    names = [rec.image(i).name for i in ids]
    viewmats = np.stack([cam_from_world(rec.image(i)) for i in ids])  # [V, 4, 4] world -> camera
    rot, trans = viewmats[:, :3, :3], viewmats[:, :3, 3]  # [V, 3, 3], [V, 3]
    centres = -np.einsum("vji,vj->vi", rot, trans)  # [V, 3] R^T (-t)
    axes = rot[:, 2, :]  # [V, 3] the camera's z axis in world
    observations = np.array([rec.image(i).num_points3D for i in ids])
    pts = rec.points3D.values()
    points = np.array([p.xyz for p in pts], np.float64).reshape(-1, 3)
    tracks = np.array([p.track.length() for p in pts], np.int64)
    return check_reconstruction(names, centres, axes, observations, points, tracks)
