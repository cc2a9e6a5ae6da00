"""A small numpy ray caster for scenes made of a textured ground and yawed boxes.

Used by the synthetic scenes (momentumgs/demo/build.py). Rays are processed in groups (an image
tile, or a run of nearby segments): a group is tested only against the boxes whose xy bounds overlap
the group's xy bounds within the height slab that holds the boxes, so the cost follows what a ray can
actually hit rather than rays x boxes. World z is up; the ground is the plane z = 0 (the city) or a
smooth height field (`HeightField`, the survey's rolling terrain), textured by its xy position.

Textures are mip-mapped and sampled trilinearly with a footprint from the hit distance, which keeps
the renders free of the texture aliasing that would otherwise produce unstable SIFT features.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

EPS = 1e-6
MISS = -1
GROUND = -2  # `box` value of a ray that hits the ground plane


@dataclass
class Boxes:
    """Yawed boxes standing on (or above) the ground. All arrays share the first axis B."""

    center: np.ndarray  # [B, 3] box centre (world, metres)
    half: np.ndarray  # [B, 3] half extents along the box's own x, y and z axes
    yaw: np.ndarray  # [B] rotation about world z (radians)
    side_rect: np.ndarray  # [B, 4] atlas rectangle (x0, y0, w, h) in texels for the unrolled walls
    top_rect: np.ndarray  # [B, 4] atlas rectangle for the roof

    def __len__(self) -> int:
        return len(self.yaw)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """World-space AABB of each box, ([B, 3] low, [B, 3] high)."""
        c, s = np.abs(np.cos(self.yaw)), np.abs(np.sin(self.yaw))
        ext = np.stack(
            [
                c * self.half[:, 0] + s * self.half[:, 1],
                s * self.half[:, 0] + c * self.half[:, 1],
                self.half[:, 2],
            ],
            axis=1,
        )
        return self.center - ext, self.center + ext


@dataclass
class Texture:
    """A mip-mapped RGB texture covering a world rectangle (ground) or an atlas (boxes)."""

    levels: list[np.ndarray]  # level i: about [H / 2^i, W / 2^i, 3] (pyrDown rounds up), float32 in [0, 1]
    texel: float  # metres per level-0 texel

    @staticmethod
    def from_image(image: np.ndarray, texel: float, min_size: int = 8) -> Texture:
        levels = [np.ascontiguousarray(image, dtype=np.float32)]
        while min(levels[-1].shape[:2]) >= 2 * min_size:
            levels.append(cv2.pyrDown(levels[-1]))
        return Texture(levels, texel)


@dataclass
class HeightField:
    """Rolling terrain z = base + sum_k a_k cos(w_k . (x, y) + phase_k): smooth, with a known bound on
    its slope, which lets rays march to it without ever stepping through (`terrain_t`)."""

    amplitude: np.ndarray  # [M] metres
    wavevector: np.ndarray  # [M, 2] radians per metre
    phase: np.ndarray  # [M] radians
    base: float = 0.0

    @property
    def max_slope(self) -> float:
        """Upper bound of |grad h| (the Lipschitz constant of h)."""
        return float(np.sum(np.abs(self.amplitude) * np.linalg.norm(self.wavevector, axis=1)))

    @property
    def max_curvature(self) -> float:
        """Upper bound of h's second derivative along any unit direction in the ground plane."""
        return float(np.sum(np.abs(self.amplitude) * np.sum(self.wavevector**2, axis=1)))

    @property
    def z_range(self) -> tuple[float, float]:
        reach = float(np.sum(np.abs(self.amplitude)))
        return self.base - reach, self.base + reach

    def _angles(self, x, y):
        return x[..., None] * self.wavevector[:, 0] + y[..., None] * self.wavevector[:, 1] + self.phase

    def height(self, x, y):
        """Terrain height at x, y [...] -> [...]."""
        return self.base + np.cos(self._angles(x, y)) @ self.amplitude

    def normal(self, points):
        """Upward unit normals [N, 3] at the xy of points [N, 3]."""
        slope = -np.sin(self._angles(points[:, 0], points[:, 1])) * self.amplitude  # [N, M]
        n = np.stack(
            [-(slope @ self.wavevector[:, 0]), -(slope @ self.wavevector[:, 1]), np.ones(len(points))], 1
        )
        return n / np.linalg.norm(n, axis=1, keepdims=True)


@dataclass
class World:
    boxes: Boxes
    atlas: Texture  # box walls and roofs
    ground: Texture  # covers ground_rect
    ground_rect: tuple[float, float, float, float]  # x0, y0, x1, y1 in metres
    sun: np.ndarray  # [3] unit vector towards the sun
    ambient: float = 0.35
    sky: tuple[float, float, float] = (0.62, 0.74, 0.9)
    terrain: HeightField | None = None  # None: the ground is the plane z = 0

    def __post_init__(self):
        self.box_lo, self.box_hi = self.boxes.bounds()
        self.zmax = float(self.box_hi[:, 2].max()) if len(self.boxes) else 0.0
        self.zmin = float(self.box_lo[:, 2].min()) if len(self.boxes) else 0.0

    def ground_normal(self, points):
        """Normals [N, 3] of ground points [N, 3]."""
        if self.terrain is None:
            return np.broadcast_to(np.array([0.0, 0.0, 1.0]), points.shape).copy()
        return self.terrain.normal(points)


# --- geometry ----------------------------------------------------------------------------------


def _to_box_frame(o, d, center, cos, sin):
    """Ray origins/directions [..., 3] into the frames of boxes broadcast against them: 6 arrays."""
    px, py, pz = o[..., 0] - center[..., 0], o[..., 1] - center[..., 1], o[..., 2] - center[..., 2]
    ox, oy = cos * px + sin * py, cos * py - sin * px
    dx, dy = cos * d[..., 0] + sin * d[..., 1], cos * d[..., 1] - sin * d[..., 0]
    return (ox, oy, pz), (dx, dy, d[..., 2])


def _slab(lo, ld, half):
    """Slab test in box frame (per-axis arrays, no small trailing axis): entry and exit t."""
    t_in, t_out = -np.inf, np.inf
    for axis in range(3):
        dd = ld[axis]
        inv = 1.0 / np.where(np.abs(dd) < 1e-12, 1e-12, dd)
        ta = (-half[..., axis] - lo[axis]) * inv
        tb = (half[..., axis] - lo[axis]) * inv
        t_in = np.maximum(t_in, np.minimum(ta, tb))
        t_out = np.minimum(t_out, np.maximum(ta, tb))
    return t_in, t_out


def ray_box_t(o, d, boxes: Boxes, idx, t_limit):
    """Entry distance of rays o, d [..., 3] into boxes `idx` [...]; inf where missed or beyond t_limit."""
    yaw = boxes.yaw[idx]
    lo, ld = _to_box_frame(o, d, boxes.center[idx], np.cos(yaw), np.sin(yaw))
    t_in, t_out = _slab(lo, ld, boxes.half[idx])
    hit = (t_in <= t_out) & (t_in > EPS) & (t_in < t_limit)
    return np.where(hit, t_in, np.inf)


def slab_segment(o, d, t_max, z_top, z_bottom=0.0):
    """Clip segments o + t d, t in [0, t_max], to the slab z_bottom <= z <= z_top: (t_enter, t_exit) [...]."""
    dz = np.where(np.abs(d[..., 2]) < 1e-12, 1e-12, d[..., 2])
    t0 = (z_bottom - o[..., 2]) / dz
    t1 = (z_top - o[..., 2]) / dz
    return np.clip(np.minimum(t0, t1), 0.0, t_max), np.clip(np.maximum(t0, t1), 0.0, t_max)


def candidate_pairs(world: World, o, d, t_max):
    """(group, box) pairs whose xy bounds overlap, for ray groups o, d [G, R, 3] with limits t_max
    [G, R] (nan: no ray). Only the part of a ray inside the boxes' height slab counts. -> two [C]."""
    if len(world.boxes) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    t_enter, t_exit = slab_segment(o, d, t_max, world.zmax, world.zmin)  # nan stays nan: fmin/fmax skip it
    lo, hi = [], []
    for axis in range(2):
        a = o[..., axis] + t_enter * d[..., axis]
        b = o[..., axis] + t_exit * d[..., axis]
        lo.append(np.fmin.reduce(np.fmin(a, b), axis=1))  # [G]
        hi.append(np.fmax.reduce(np.fmax(a, b), axis=1))
    overlap = (
        (lo[0][:, None] <= world.box_hi[None, :, 0])
        & (hi[0][:, None] >= world.box_lo[None, :, 0])
        & (lo[1][:, None] <= world.box_hi[None, :, 1])
        & (hi[1][:, None] >= world.box_lo[None, :, 1])
    )  # [G, B]; all-nan groups compare False
    return np.nonzero(overlap)


def first_box_hit(world: World, o, d, t_max, max_pairs: int = 1 << 14):
    """Nearest box hit of each ray in groups o, d [G, R, 3] before t_max [G, R] -> (t, box) [G, R]."""
    G, R = t_max.shape
    t_best = np.full((G, R), np.inf)
    box = np.full((G, R), MISS, dtype=np.int64)
    gi, bi = candidate_pairs(world, o, d, t_max)
    step = max(1, max_pairs // R)
    for s in range(0, len(gi), step):
        g, b = gi[s : s + step], bi[s : s + step]
        t = ray_box_t(o[g], d[g], world.boxes, b[:, None], t_max[g])  # [C, R]
        # groups are sorted, so the pairs of one group are contiguous: reduce them with reduceat
        starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
        t_grp = np.minimum.reduceat(t, starts, axis=0)  # [G', R]
        grp = g[starts]
        better = t_grp < t_best[grp]
        t_best[grp] = np.where(better, t_grp, t_best[grp])
        counts = np.diff(np.r_[starts, len(g)])
        is_best = (t == np.repeat(t_grp, counts, axis=0)) & np.repeat(better, counts, axis=0)
        c, r = np.nonzero(is_best)
        box[g[c], r] = b[c]
    return t_best, box


def any_box_hit(world: World, o, d, t_max, max_pairs: int = 1 << 14):
    """Whether each ray in groups o, d [G, R, 3] hits any box before t_max [G, R] -> bool [G, R]."""
    G, R = t_max.shape
    blocked = np.zeros((G, R), dtype=bool)
    gi, bi = candidate_pairs(world, o, d, t_max)
    step = max(1, max_pairs // R)
    for s in range(0, len(gi), step):
        g, b = gi[s : s + step], bi[s : s + step]
        hit = np.isfinite(ray_box_t(o[g], d[g], world.boxes, b[:, None], t_max[g]))  # [C, R]
        starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
        blocked[g[starts]] |= np.logical_or.reduceat(hit, starts, axis=0)
    return blocked


def ground_t(o, d):
    """Distance to the plane z = 0 along d, inf for rays that do not go down."""
    down = d[..., 2] < -1e-9
    return np.where(down, -o[..., 2] / np.where(down, d[..., 2], -1.0), np.inf)


def terrain_t(terrain: HeightField, o, d, t_max=np.inf, eps: float = 1e-4):
    """Distance along unit d [..., 3] from o [..., 3] to the first terrain hit before t_max, else inf.

    A ray steeper than the terrain's steepest slope crosses it at most once: going down, bracketed
    Newton steps find the crossing; going up, it hits only if it starts below the terrain (at t = 0
    then). Shallower rays march safely (`_march_to_terrain`).
    """
    shape = np.broadcast_shapes(o.shape, d.shape)[:-1]
    o, d = np.broadcast_to(o, (*shape, 3)).reshape(-1, 3), np.broadcast_to(d, (*shape, 3)).reshape(-1, 3)
    limit = np.broadcast_to(t_max, shape).reshape(-1).astype(np.float64)
    t_in, t_out = _terrain_slab(terrain, o, d, limit)
    hit = np.full(len(limit), np.inf)
    rays = _TerrainRays(terrain, o, d, np.flatnonzero(t_in <= t_out))
    climb = terrain.max_slope * np.hypot(rays.d[:, 0], rays.d[:, 1])  # [A] steepest rise under each ray
    for part, solve in (
        (rays.dz < -climb, _descend_to_terrain),
        (rays.dz > climb, _start_below_terrain),
        (np.abs(rays.dz) <= climb, _march_to_terrain),
    ):
        if part.any():
            sub = rays.select(part)
            hit[sub.idx] = solve(sub, t_in[sub.idx], t_out[sub.idx], eps)
    return np.where(hit <= limit, hit, np.inf).reshape(shape)


class _TerrainRays:
    """Rays o, d [N, 3] picked by `idx` [A], with what evaluating the terrain along them needs."""

    def __init__(self, terrain: HeightField, o, d, idx):
        self.terrain, self.idx, self.d = terrain, idx, d[idx]
        self.phase0 = np.ascontiguousarray(terrain._angles(o[idx, 0], o[idx, 1]).T)  # [M, A] phases at t = 0
        self.beta = terrain.wavevector @ self.d[:, :2].T  # [M, A] ... and their change per metre
        self.z0, self.dz = o[idx, 2] - terrain.base, self.d[:, 2]  # [A]

    def select(self, keep) -> _TerrainRays:
        """The rays at positions `keep` (bool [A])."""
        if keep.all():
            return self
        rows = np.flatnonzero(keep)
        sub = object.__new__(_TerrainRays)
        sub.terrain, sub.idx, sub.d, sub.z0, sub.dz = (
            self.terrain,
            self.idx[rows],
            self.d[rows],
            self.z0[rows],
            self.dz[rows],
        )
        sub.phase0, sub.beta = self.phase0[:, rows], self.beta[:, rows]
        return sub

    def gap(self, t, rows=slice(None), slope=False):
        """Height above the terrain at distances t [A'] along rays `rows` (and its derivative in t)."""
        gap = self.z0[rows] + t * self.dz[rows]
        rise = np.zeros_like(gap) if slope else None
        for m, a in enumerate(self.terrain.amplitude):  # wave by wave: no [A', M] temporaries
            beta = self.beta[m, rows]
            phase = self.phase0[m, rows] + t * beta
            gap -= a * np.cos(phase)
            if slope:
                rise += (a * np.sin(phase)) * beta
        return (gap, self.dz[rows] + rise) if slope else gap


def _descend_to_terrain(rays: _TerrainRays, t_in, t_out, eps, max_steps: int = 60):
    """Rays going down more steeply than any slope: their gap falls monotonically, so the one crossing
    in [t_in, t_out] is found by Newton steps kept inside a shrinking bracket -> t [A] (inf: none).

    A Newton step from gap g lands within curvature / 2 * (g / s)^2 of the terrain, s the least rate at
    which the gap can fall: once that is below eps, the step is taken as the hit without checking it."""
    hit = np.full(len(t_in), np.inf)
    lo, hi = t_in.copy(), t_out.copy()
    t = np.clip(rays.z0 / np.maximum(-rays.dz, 1e-12), lo, hi)  # start where the ray meets z = base
    fall = -rays.dz - rays.terrain.max_slope * np.hypot(rays.d[:, 0], rays.d[:, 1])  # [A] > 0
    half_curvature = rays.terrain.max_curvature / 2
    live = np.arange(len(t))
    for _ in range(max_steps):
        if not len(live):
            break
        tl = t[live]
        gap, slope = rays.gap(tl, live, slope=True)
        done = np.abs(gap) < eps
        hit[live[done]] = tl[done]
        above = gap > 0
        lo[live] = np.where(above, tl, lo[live])
        hi[live] = np.where(above, hi[live], tl)
        newton = tl - gap / np.minimum(slope, -1e-12)
        inside = (newton > lo[live]) & (newton < hi[live])
        sure = ~done & inside & (half_curvature * (gap / fall[live]) ** 2 < eps)
        hit[live[sure]] = newton[sure]
        t[live] = np.where(inside, newton, (lo[live] + hi[live]) / 2)
        # still above the terrain at the far end of the range: no crossing before t_out
        missed = above & (t_out[live] - lo[live] < eps)
        live = live[~done & ~sure & ~missed]
    return hit


def _start_below_terrain(rays: _TerrainRays, t_in, t_out, eps):
    """Rays going up more steeply than any slope: their gap only grows, so they hit at t_in or never."""
    return np.where(rays.gap(t_in) < eps, t_in, np.inf)


def _march_to_terrain(rays: _TerrainRays, t_in, t_out, eps, max_steps: int = 2000):
    """Shallow rays: while a ray is g metres above the terrain, g cannot reach zero within
    g / (|d_z| + max_slope |d_xy|), so stepping that far never passes through a hill -> t [A]."""
    hit = np.full(len(t_in), np.inf)
    rate = np.abs(rays.dz) + rays.terrain.max_slope * np.hypot(rays.d[:, 0], rays.d[:, 1])  # [A]
    t = t_in.copy()
    live = np.arange(len(t))
    for _ in range(max_steps):
        if not len(live):
            break
        gap = rays.gap(t[live], live)
        done = gap < eps
        hit[live[done]] = t[live[done]]
        t[live] = t[live] + np.maximum(gap, 0.0) / rate[live]
        live = live[~done & (t[live] <= t_out[live])]
    return hit


def _terrain_slab(terrain: HeightField, o, d, limit):
    """Where rays o, d [N, 3] enter the terrain's height range and where they leave it: t_in, t_out [N].

    Rays enter at the top of the range (or start inside it) and leave below its bottom (going down),
    above its top (going up), or at `limit` [N]; t_in = inf for rays that pass above it."""
    lo, hi = terrain.z_range
    oz, dz = o[:, 2], d[:, 2]
    down, up = dz < -1e-12, dz > 1e-12
    t_in = np.where(oz > hi, np.where(down, (hi - oz) / np.where(down, dz, -1.0), np.inf), 0.0)
    t_out = np.where(down, (lo - oz) / np.where(down, dz, -1.0), np.inf)
    t_out = np.where(up, (hi - oz) / np.where(up, dz, 1.0), t_out)
    return t_in, np.minimum(t_out, limit)


def ground_hit_t(world: World, o, d):
    """Distance to the ground (plane or terrain) along unit d [G, R, 3] from o -> [G, R]."""
    if world.terrain is None:
        return ground_t(o, d)
    return terrain_t(world.terrain, o, d)


def any_hit(world: World, o, d, t_max):
    """Whether each ray in groups o, d [G, R, 3] meets a box, or the terrain, before t_max [G, R] (nan:
    no ray) -> bool [G, R]. The plane z = 0 never blocks: rays start on or above it."""
    blocked = any_box_hit(world, o, d, t_max)
    if world.terrain is not None:
        blocked |= terrain_t(world.terrain, o, d, np.nan_to_num(t_max, nan=-1.0)) < t_max
    return blocked


# --- surface attributes --------------------------------------------------------------------------


def box_surface(boxes: Boxes, box, p):
    """Normal [N, 3] and level-0 atlas texel coordinates (u, v) [N] of points p [N, 3] on boxes `box` [N].

    The four walls are unrolled around the box (perimeter coordinate u, height v from the roof edge
    down); the roof maps to its own rectangle.
    """
    cos, sin = np.cos(boxes.yaw[box]), np.sin(boxes.yaw[box])
    q = p - boxes.center[box]
    lx, ly, lz = cos * q[:, 0] + sin * q[:, 1], -sin * q[:, 0] + cos * q[:, 1], q[:, 2]
    hx, hy, hz = boxes.half[box].T
    rel = np.abs(np.stack([lx / hx, ly / hy, lz / hz], axis=1))  # the face is the axis at |1|
    axis = np.argmax(rel, axis=1)
    side = boxes.side_rect[box]
    top = boxes.top_rect[box]
    # perimeter coordinate, walls in counter-clockwise order starting at the -y wall
    u_wall = np.select(
        [(axis == 1) & (ly < 0), (axis == 0) & (lx > 0), (axis == 1) & (ly > 0)],
        [lx + hx, 2 * hx + ly + hy, 2 * hx + 2 * hy + hx - lx],
        default=4 * hx + 2 * hy + hy - ly,
    )
    v_wall = hz - lz
    is_top = axis == 2
    # world-metre coordinates within the rectangle -> texels (side: w texels span the perimeter)
    per = 4 * (hx + hy)
    u = np.where(is_top, top[:, 0] + (lx + hx) / (2 * hx) * top[:, 2], side[:, 0] + u_wall / per * side[:, 2])
    v = np.where(
        is_top, top[:, 1] + (ly + hy) / (2 * hy) * top[:, 3], side[:, 1] + v_wall / (2 * hz) * side[:, 3]
    )
    lo_u = np.where(is_top, top[:, 0], side[:, 0]) + 0.5
    hi_u = np.where(is_top, top[:, 0] + top[:, 2], side[:, 0] + side[:, 2]) - 0.5
    lo_v = np.where(is_top, top[:, 1], side[:, 1]) + 0.5
    hi_v = np.where(is_top, top[:, 1] + top[:, 3], side[:, 1] + side[:, 3]) - 0.5
    u, v = np.clip(u, lo_u, hi_u), np.clip(v, lo_v, hi_v)
    n_local = np.zeros((len(box), 3))
    n_local[np.arange(len(box)), axis] = np.sign(np.stack([lx, ly, lz], axis=1)[np.arange(len(box)), axis])
    normal = np.stack(
        [cos * n_local[:, 0] - sin * n_local[:, 1], sin * n_local[:, 0] + cos * n_local[:, 1], n_local[:, 2]],
        axis=1,
    )
    return normal, u, v


def sample_texture(tex: Texture, u, v, footprint):
    """Trilinear lookup at level-0 texel coordinates u, v [N] (texel centres at +0.5) -> [N, 3].

    `footprint` [N] is the size of the sample on the surface in metres; it picks the mip level.
    """
    level = np.clip(np.log2(np.maximum(footprint / tex.texel, 1e-6)), 0.0, len(tex.levels) - 1.0)
    base = np.floor(level).astype(np.int64)
    frac = (level - base).astype(np.float32)[:, None]
    out = np.zeros((len(u), 3), dtype=np.float32)
    h0, w0 = tex.levels[0].shape[:2]

    def lookup(lvl, m):  # the extent of every level covers the same surface, whatever its rounding
        img = tex.levels[lvl]
        return _bilinear(img, u[m] * (img.shape[1] / w0), v[m] * (img.shape[0] / h0))

    for lvl in np.unique(base):
        m = np.flatnonzero(base == lvl)
        a = lookup(lvl, m)
        if lvl + 1 < len(tex.levels):
            a = a + (lookup(lvl + 1, m) - a) * frac[m]
        out[m] = a
    return out


def _bilinear(img, u, v):
    """Bilinear lookup of img [h, w, 3] at texel coordinates u, v [N] (centres at +0.5), clamped."""
    h, w = img.shape[:2]
    flat = img.reshape(-1, 3)
    x, y = u - 0.5, v - 0.5
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0).astype(np.float32)[:, None], (y - y0).astype(np.float32)[:, None]
    x0 = np.clip(x0.astype(np.int64), 0, w - 1)
    y0 = np.clip(y0.astype(np.int64), 0, h - 1)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    row0, row1 = y0 * w, y1 * w
    top = flat.take(row0 + x0, axis=0) * (1 - fx) + flat.take(row0 + x1, axis=0) * fx
    bot = flat.take(row1 + x0, axis=0) * (1 - fx) + flat.take(row1 + x1, axis=0) * fx
    return top * (1 - fy) + bot * fy


def ground_uv(world: World, p):
    x0, y0, x1, y1 = world.ground_rect
    h, w = world.ground.levels[0].shape[:2]
    return (p[:, 0] - x0) / (x1 - x0) * w, (p[:, 1] - y0) / (y1 - y0) * h


# --- rendering -----------------------------------------------------------------------------------


@dataclass
class Hits:
    t: np.ndarray  # [N] distance along the (unit) ray, inf on a miss
    box: np.ndarray  # [N] box index, GROUND, or MISS
    point: np.ndarray  # [N, 3] world hit point (undefined on a miss)


def cast(world: World, o, d):
    """First surface hit by each ray of groups o, d [G, R, 3] (unit d) -> Hits flattened to [G*R]."""
    t_ground = ground_hit_t(world, o, d)  # [G, R]
    t_box, box = first_box_hit(world, o, d, t_ground)
    t = np.minimum(t_box, t_ground).reshape(-1)
    box = np.where(np.isfinite(t_box), box, np.where(np.isfinite(t_ground), GROUND, MISS)).reshape(-1)
    point = o.reshape(-1, 3) + np.where(np.isfinite(t), t, 0.0)[:, None] * d.reshape(-1, 3)
    return Hits(t, box, point)


def shade(world: World, o, d, hits: Hits, pixel_angle: float, shadows: bool = True):
    """Lambert colour [N, 3] (float32, [0, 1]) of the hits of rays o, d [G, R, 3] with cast shadows."""
    G, R = o.shape[:2]
    N = G * R
    dirs = d.reshape(-1, 3)
    color = np.tile(np.asarray(world.sky, dtype=np.float32), (N, 1))
    normal = np.zeros((N, 3))
    on_ground = hits.box == GROUND
    on_box = hits.box >= 0
    normal[on_ground] = (0.0, 0.0, 1.0)
    if on_ground.any():
        p = hits.point[on_ground]
        u, v = ground_uv(world, p)
        if world.terrain is None:
            cos_in = np.abs(dirs[on_ground, 2])
        else:
            normal[on_ground] = world.terrain.normal(p)
            cos_in = np.abs(np.einsum("ij,ij->i", normal[on_ground], dirs[on_ground]))
        fp = hits.t[on_ground] * pixel_angle / np.maximum(cos_in, 0.2)
        color[on_ground] = sample_texture(world.ground, u, v, fp)
    if on_box.any():
        n, u, v = box_surface(world.boxes, hits.box[on_box], hits.point[on_box])
        normal[on_box] = n
        cos_in = np.abs(np.einsum("ij,ij->i", n, dirs[on_box]))
        fp = hits.t[on_box] * pixel_angle / np.maximum(cos_in, 0.2)
        color[on_box] = sample_texture(world.atlas, u, v, fp)
    surface = (on_ground | on_box).reshape(G, R)
    ndl = np.clip(normal @ world.sun, 0.0, 1.0)  # [N]
    if shadows:
        # a shadow ray per lit surface point towards the sun; nan limits switch the others off. Only boxes
        # cast shadows: terrain whose slope stays below the sun's elevation casts none on itself
        # (momentumgs/demo/survey.py checks that it does)
        lit = surface & (ndl > 0).reshape(G, R)
        so = hits.point.reshape(G, R, 3) + 1e-4 * normal.reshape(G, R, 3)
        sd = np.broadcast_to(world.sun, so.shape)
        blocked = any_box_hit(world, so, sd, np.where(lit, 1e9, np.nan))
        ndl = ndl * ~blocked.reshape(-1)
    light = (world.ambient + (1.0 - world.ambient) * ndl).astype(np.float32)
    surf = surface.reshape(-1)
    color[surf] *= light[surf, None]
    return color


def camera_rays(K, viewmat, width: int, height: int, tile: int = 16):
    """Rays through the pixel centres (+0.5) of a width x height image, grouped in tile x tile blocks.

    Returns origins and unit directions [G, tile * tile, 3] (world); the grid is padded up to whole
    tiles, `untile` crops it back.
    """
    ty, tx = -(-height // tile), -(-width // tile)
    ys, xs = np.mgrid[0 : ty * tile, 0 : tx * tile].astype(np.float64) + 0.5
    cam = np.stack([(xs - K[0, 2]) / K[0, 0], (ys - K[1, 2]) / K[1, 1], np.ones_like(xs)], axis=-1)
    cam = cam.reshape(ty, tile, tx, tile, 3).transpose(0, 2, 1, 3, 4).reshape(ty * tx, tile * tile, 3)
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    d = cam @ R  # camera -> world rotation is R^T: row vectors times R
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    o = np.broadcast_to(-R.T @ t, d.shape)
    return o, d


def untile(values, width: int, height: int, tile: int = 16):
    """Inverse of the grouping of `camera_rays`: [G * tile * tile, ...] -> [height, width, ...]."""
    ty, tx = -(-height // tile), -(-width // tile)
    rest = values.shape[1:]
    grid = values.reshape(ty, tx, tile, tile, *rest).swapaxes(1, 2).reshape(ty * tile, tx * tile, *rest)
    return grid[:height, :width]


@dataclass
class Render:
    image: np.ndarray  # [H, W, 3] float32 in [0, 1], the average of supersample^2 rays per pixel
    point: np.ndarray  # [H*s, W*s, 3] world hit points of the individual rays
    box: np.ndarray  # [H*s, W*s] box index, GROUND or MISS per ray


def render(world: World, K, viewmat, width: int, height: int, supersample: int = 2, tile: int = 16) -> Render:
    """Ray-cast one view: s x s rays per pixel (at offsets (i + 0.5) / s), Lambert shading, shadows."""
    s = supersample
    Ks = K.copy()
    Ks[:2] *= s  # pixel centres of the fine grid map to (i + 0.5) / s of the coarse one
    o, d = camera_rays(Ks, viewmat, width * s, height * s, tile)
    hits = cast(world, o, d)
    color = shade(world, o, d, hits, pixel_angle=1.0 / Ks[0, 0])
    fine = untile(color, width * s, height * s, tile)  # [H*s, W*s, 3]
    image = fine.reshape(height, s, width, s, 3).mean(axis=(1, 3))
    point = untile(hits.point, width * s, height * s, tile)
    box = untile(hits.box, width * s, height * s, tile)
    return Render(image, point, box)
