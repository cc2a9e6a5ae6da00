"""The survey: rolling farmland with a village, flown low by a mapping drone; deterministic from
`SurveyParams`.

Unlike the city it is made for what large-scene methods are for: each photo sees a small part of the
scene. Units are metres, world z is up. The ground is a smooth height field (a few long waves, some
metres of relief) painted procedurally by its xy position: a patchwork of fields (crop rows, furrows,
meadow, rapeseed) with grass verges, a winding paved road with a dirt track across it, gravel yards and a
pond. On it stand a village of houses along the road (walls with windows and doors, tiled roofs with a
ridge), farms (barn, silo, shed), hedgerows and woods, and hay bales. No photo textures: every texture is
fractal noise shaped into its pattern, so nothing here looks like the city's photo-cut textures.

Cameras fly a lawn-mower pattern: strips along x, flown in alternate directions, with the forward and side
overlaps given; the nadir views lean `tilt_deg` forward. Oblique cross lines along y then look sideways
at `oblique_tilt_deg`. Images are named in capture order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from momentumgs.demo.raycast import HeightField, Texture, World
from momentumgs.demo.scenery import BoxSpec, box_atlas, look_down_viewmat, pinhole_intrinsics, sun_direction

SIZES = ("survey", "test", "large")


@dataclass(frozen=True)
class SurveyParams:
    """Everything that decides the survey scene. Its hash names the cache entry."""

    seed: int = 0
    width: int = 320
    height: int = 240
    focal: float = 256.0  # pixels, fx = fy; principal point at the image centre
    supersample: int = 2  # rays per pixel side
    # flight: strips along x, flown alternately towards +x and -x
    strips: int = 6
    views_per_strip: int = 12
    altitude: float = 40.0  # metres above the terrain's mean height
    forward_overlap: float = 0.7  # share of the along-track footprint that consecutive views have in common
    side_overlap: float = 0.65  # share of the across-track footprint that neighbouring strips have in common
    tilt_deg: float = 10.0  # the strip views lean forward by this much
    # oblique cross lines along y, evenly spaced in x, each view looking sideways (alternately +x and -x)
    oblique_lines: int = 2
    oblique_views: int = 8  # per line
    oblique_altitude: float = 34.0
    oblique_tilt_deg: float = 35.0
    jitter: float = 0.8  # metres of random position jitter per camera
    heading_jitter_deg: float = 2.0
    # terrain: `waves` plane waves with wavelengths in `wavelengths`, heights spanning at most `relief`
    relief: float = 9.0
    waves: int = 6
    wavelengths: tuple[float, float] = (40.0, 160.0)
    # layout
    village_houses: int = 12
    farms: int = 3
    woods: int = 3
    hedgerows: int = 5
    bales: int = 24
    margin: float = 45.0  # metres of painted ground beyond the surveyed area
    # textures
    ground_texel: float = 0.1  # metres per ground texel
    atlas_texel: float = 0.06  # metres per wall / roof texel
    field_size: tuple[float, float] = (22.0, 40.0)  # metres, side of a field
    # lighting
    sun_elevation_deg: float = 57.0
    sun_azimuth_deg: float = 130.0
    ambient: float = 0.45

    @property
    def num_views(self) -> int:
        return self.strips * self.views_per_strip + self.oblique_lines * self.oblique_views


def survey_params(size: str = "survey", seed: int = 0) -> SurveyParams:
    """The shipped sizes: `survey` (88 views, 320x240), `test` (28 views, 128x96) and `large` (236 views,
    320x240, about 2.4 times the survey's area)."""
    if size == "survey":
        return SurveyParams(seed=seed)
    if size == "test":
        return SurveyParams(
            seed=seed,
            width=128,
            height=96,
            focal=102.4,
            strips=4,
            views_per_strip=6,
            altitude=32.0,
            forward_overlap=0.65,
            side_overlap=0.6,
            oblique_lines=1,
            oblique_views=4,
            oblique_altitude=28.0,
            village_houses=5,
            farms=2,
            woods=2,
            hedgerows=3,
            bales=10,
            margin=35.0,
            ground_texel=0.16,
            atlas_texel=0.12,
        )
    if size == "large":
        return SurveyParams(
            seed=seed,
            strips=10,
            views_per_strip=20,
            oblique_lines=3,
            oblique_views=12,
            village_houses=24,
            farms=6,
            woods=6,
            hedgerows=10,
            bales=56,
        )
    raise ValueError(f"unknown survey size {size!r} (expected {', '.join(repr(s) for s in SIZES)})")


# --- flight plan ---------------------------------------------------------------------------------


def footprint(p: SurveyParams) -> tuple[float, float]:
    """Ground covered by a straight-down view from the strip altitude: (across, along) track, metres."""
    return p.altitude * p.width / p.focal, p.altitude * p.height / p.focal


def flight_spacing(p: SurveyParams) -> tuple[float, float]:
    """(distance between views along a strip, distance between strips), metres."""
    across, along = footprint(p)
    return (1 - p.forward_overlap) * along, (1 - p.side_overlap) * across


def survey_half_extent(p: SurveyParams) -> tuple[float, float]:
    """Half sizes (x, y) of the area the strips cover, centred on the origin."""
    across, along = footprint(p)
    step, strip = flight_spacing(p)
    return (p.views_per_strip - 1) / 2 * step + along / 2, (p.strips - 1) / 2 * strip + across / 2


def camera_poses(p: SurveyParams) -> list[np.ndarray]:
    """World->camera matrices [4, 4] in capture order: the strips (serpentine), then the oblique lines."""
    rng = np.random.default_rng([p.seed, 4])
    step, strip = flight_spacing(p)
    poses = []
    for j in range(p.strips):
        forward = j % 2 == 0  # towards +x on even strips
        for i in range(p.views_per_strip):
            along = (i - (p.views_per_strip - 1) / 2) * step * (1 if forward else -1)
            eye = np.array([along, (j - (p.strips - 1) / 2) * strip, p.altitude]) + rng.normal(0, p.jitter, 3)
            heading = (0.0 if forward else math.pi) + math.radians(rng.normal(0, p.heading_jitter_deg))
            poses.append(look_down_viewmat(eye, heading, math.radians(p.tilt_deg)))
    x_half, y_half = survey_half_extent(p)
    for k in range(p.oblique_lines):
        x = (2 * (k + 1) / (p.oblique_lines + 1) - 1) * x_half * 0.8
        for i in range(p.oblique_views):
            y = (2 * i / max(p.oblique_views - 1, 1) - 1) * (y_half - footprint(p)[0] / 4)
            y = y if k % 2 == 0 else -y  # serpentine between lines
            eye = np.array([x, y, p.oblique_altitude]) + rng.normal(0, p.jitter, 3)
            heading = (0.0 if i % 2 == 0 else math.pi) + math.radians(rng.normal(0, p.heading_jitter_deg))
            poses.append(look_down_viewmat(eye, heading, math.radians(p.oblique_tilt_deg)))
    return poses


def intrinsics(p: SurveyParams) -> np.ndarray:
    return pinhole_intrinsics(p.focal, p.width, p.height)


# --- terrain -------------------------------------------------------------------------------------


def make_terrain(p: SurveyParams) -> HeightField:
    """Plane waves in random directions, amplitudes proportional to their wavelengths (every wave as
    steep as the others), scaled so that the heights span at most `relief` metres around z = 0."""
    rng = np.random.default_rng([p.seed, 5])
    lo, hi = p.wavelengths
    wavelength = np.exp(rng.uniform(math.log(lo), math.log(hi), p.waves))
    direction = rng.uniform(0, 2 * math.pi, p.waves)
    wavevector = (2 * math.pi / wavelength)[:, None] * np.stack([np.cos(direction), np.sin(direction)], 1)
    amplitude = wavelength / wavelength.sum() * p.relief / 2
    terrain = HeightField(amplitude, wavevector, rng.uniform(0, 2 * math.pi, p.waves))
    if terrain.max_slope >= math.tan(math.radians(p.sun_elevation_deg)):
        raise ValueError("survey terrain: slopes reach the sun's elevation; the terrain would cast shadows")
    return terrain


def stand_on(terrain: HeightField, kind, x, y, half_x, half_y, height, yaw, sink=0.3) -> BoxSpec:
    """A box `height` metres tall above the terrain at its centre, its base sunk below the terrain's
    lowest point under its footprint, so that no gap shows on a slope."""
    c, s = math.cos(yaw), math.sin(yaw)
    corners = [(x + c * a - s * b, y + s * a + c * b) for a in (-half_x, half_x) for b in (-half_y, half_y)]
    ground = [float(terrain.height(np.float64(cx), np.float64(cy))) for cx, cy in [(x, y), *corners]]
    bottom, top = min(ground) - sink, ground[0] + height
    return BoxSpec(kind, (x, y, (bottom + top) / 2), (half_x, half_y, (top - bottom) / 2), yaw)


# --- layout --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Roads:
    """A winding paved road along x (y = road_y(x)) and a dirt track along y (x = track_x(y))."""

    road_offset: float
    road_amplitude: float
    road_wavelength: float
    road_phase: float
    track_offset: float
    track_amplitude: float
    track_wavelength: float
    road_half_width: float = 3.0
    track_half_width: float = 1.8

    def road_y(self, x):
        k = 2 * math.pi / self.road_wavelength
        return self.road_offset + self.road_amplitude * np.sin(k * x + self.road_phase)

    def road_distance(self, x, y):
        """Approximate distance from (x, y) to the road's centre line."""
        k = 2 * math.pi / self.road_wavelength
        slope = self.road_amplitude * k * np.cos(k * x + self.road_phase)
        return np.abs(y - self.road_y(x)) / np.sqrt(1 + slope**2)

    def road_heading(self, x) -> float:
        k = 2 * math.pi / self.road_wavelength
        return math.atan(self.road_amplitude * k * math.cos(k * x + self.road_phase))

    def track_x(self, y):
        return self.track_offset + self.track_amplitude * np.sin(2 * math.pi * y / self.track_wavelength)

    def track_distance(self, x, y):
        k = 2 * math.pi / self.track_wavelength
        slope = self.track_amplitude * k * np.cos(k * y)
        return np.abs(x - self.track_x(y)) / np.sqrt(1 + slope**2)


def make_roads(p: SurveyParams) -> Roads:
    rng = np.random.default_rng([p.seed, 6])
    x_half, y_half = survey_half_extent(p)
    return Roads(
        road_offset=rng.uniform(-0.15, 0.15) * y_half,
        road_amplitude=rng.uniform(0.1, 0.2) * y_half,
        road_wavelength=rng.uniform(1.2, 1.8) * 2 * x_half,
        road_phase=rng.uniform(0, 2 * math.pi),
        track_offset=rng.uniform(0.15, 0.35) * x_half * rng.choice([-1, 1]),
        track_amplitude=rng.uniform(0.05, 0.12) * x_half,
        track_wavelength=rng.uniform(1.0, 1.5) * 2 * y_half,
    )


@dataclass
class Layout:
    specs: list[BoxSpec]
    yards: list[tuple[float, float, float, float, float]]  # gravel lots: centre x, y, half x, half y, yaw
    pond: tuple[float, float, float, float]  # centre x, y, radii a, b (an axis-aligned ellipse)


class Ground:
    """Occupied ground: discs (x, y, r), and the two roads, which nothing may stand on."""

    def __init__(self, roads: Roads):
        self.roads, self.discs = roads, []

    def free(self, x, y, r, gap=1.0) -> bool:
        if self.roads.road_distance(x, y) < self.roads.road_half_width + r + gap:
            return False
        if self.roads.track_distance(x, y) < self.roads.track_half_width + r + gap:
            return False
        return all(math.hypot(x - a, y - b) > r + c + gap for a, b, c in self.discs)

    def take(self, x, y, r) -> None:
        self.discs.append((x, y, r))


def place_house(rng, terrain, ground: Ground, roads: Roads, x_near: float, specs, yards) -> bool:
    """A house beside the road near x = x_near, facing it: walls, a ridge on the roof, a yard."""
    hx, hy = rng.uniform(3.5, 6.0), rng.uniform(3.0, 4.5)
    side = rng.choice([-1.0, 1.0])
    x = x_near + rng.normal(0, 2.0)
    yaw = roads.road_heading(x)
    setback = roads.road_half_width + hy + rng.uniform(3.0, 7.0)
    y = float(roads.road_y(x)) + side * setback / math.cos(yaw)
    r = math.hypot(hx, hy)
    if not ground.free(x, y, r, gap=2.0):
        return False
    ground.take(x, y, r)
    walls = rng.uniform(4.5, 7.0)
    house = stand_on(terrain, "house", x, y, hx, hy, walls, yaw)
    specs.append(house)
    roof_top = house.center[2] + house.half[2]
    ridge_h = rng.uniform(0.8, 1.6)
    specs.append(BoxSpec("ridge", (x, y, roof_top + ridge_h / 2), (hx * 0.9, hy * 0.45, ridge_h / 2), yaw))
    yards.append((x, y, hx + 2.5, hy + 2.5, yaw))
    return True


def place_farm(rng, terrain, ground: Ground, x_half, y_half, specs, yards) -> bool:
    """A barn with a silo and a shed beside it, on a gravel yard."""
    x, y = rng.uniform(-x_half, x_half), rng.uniform(-y_half, y_half)
    if not ground.free(x, y, 16.0, gap=3.0):
        return False
    ground.take(x, y, 16.0)
    yaw = rng.uniform(0, math.pi)
    c, s = math.cos(yaw), math.sin(yaw)
    bx, by = rng.uniform(7.0, 11.0), rng.uniform(4.5, 6.0)
    specs.append(stand_on(terrain, "barn", x, y, bx, by, rng.uniform(6.0, 8.5), yaw))
    sx, sy = x + c * (bx + 3.0) - s * (by - 2.0), y + s * (bx + 3.0) + c * (by - 2.0)
    specs.append(stand_on(terrain, "silo", sx, sy, 1.6, 1.6, rng.uniform(10.0, 13.0), yaw + math.pi / 4))
    hx, hy = rng.uniform(2.5, 4.0), rng.uniform(2.0, 3.0)
    dx, dy = -(bx - hx), -(by + hy + 3.0)
    specs.append(stand_on(terrain, "shed", x + c * dx - s * dy, y + s * dx + c * dy, hx, hy, 3.5, yaw))
    yards.append((x, y, bx + 5.0, by + 3.0, yaw))
    return True


def place_tree(rng, terrain, ground: Ground, x, y, specs, gap=0.3) -> bool:
    """A broadleaf (round crown) or a conifer (tall crown) on a trunk."""
    conifer = rng.random() < 0.35
    crown = (rng.uniform(1.0, 1.5), rng.uniform(2.5, 4.0)) if conifer else (rng.uniform(1.6, 2.8),) * 2
    if not ground.free(x, y, crown[0], gap):
        return False
    ground.take(x, y, crown[0])
    yaw = rng.uniform(0, math.pi)
    trunk = rng.uniform(1.5, 2.8)
    stem = stand_on(terrain, "trunk", x, y, 0.25, 0.25, trunk, yaw)
    specs.append(stem)
    top = stem.center[2] + stem.half[2]
    specs.append(BoxSpec("crown", (x, y, top + crown[1]), (crown[0], crown[0], crown[1]), yaw))
    return True


def place_pond(rng, ground: Ground, x_half, y_half) -> tuple[float, float, float, float]:
    """An elliptic pond (centre x, y, radii a, b) clear of the roads; nothing will stand in it."""
    for _ in range(200):
        x, y = rng.uniform(-0.7, 0.7) * x_half, rng.uniform(-0.7, 0.7) * y_half
        a, b = rng.uniform(6.0, 11.0, 2)
        if ground.free(x, y, max(a, b), gap=3.0):
            break
    ground.take(x, y, max(a, b))
    return x, y, a, b


def place_village(rng, p: SurveyParams, terrain, ground: Ground, roads: Roads, specs, yards) -> None:
    """Houses on both sides of the road, around its crossing with the track."""
    x_half, _ = survey_half_extent(p)
    centre = float(roads.track_x(roads.road_y(roads.track_offset)))
    spread = 9.0 * p.village_houses
    placed = 0
    for _ in range(p.village_houses * 40):
        if placed == p.village_houses:
            break
        x_near = float(np.clip(centre + rng.uniform(-spread / 2, spread / 2), -x_half, x_half))
        placed += place_house(rng, terrain, ground, roads, x_near, specs, yards)


def place_trees(rng, p: SurveyParams, terrain, ground: Ground, specs) -> None:
    """Woods (loose round clusters), then hedgerows (lines of trees along x or y)."""
    x_half, y_half = survey_half_extent(p)
    for _ in range(p.woods):
        cx, cy, radius = rng.uniform(-x_half, x_half), rng.uniform(-y_half, y_half), rng.uniform(8.0, 14.0)
        for _ in range(int(radius * 2.5)):
            a, r = rng.uniform(0, 2 * math.pi), radius * math.sqrt(rng.random())
            place_tree(rng, terrain, ground, cx + r * math.cos(a), cy + r * math.sin(a), specs)
    for _ in range(p.hedgerows):
        x0, y0 = rng.uniform(-x_half, x_half), rng.uniform(-y_half, y_half)
        a, length = rng.choice([0.0, math.pi / 2]) + rng.normal(0, 0.1), rng.uniform(25.0, 50.0)
        for t in np.arange(0.0, length, rng.uniform(4.5, 6.5)):
            x, y = x0 + t * math.cos(a) + rng.normal(0, 0.4), y0 + t * math.sin(a) + rng.normal(0, 0.4)
            place_tree(rng, terrain, ground, x, y, specs, gap=-0.5)


def place_bales(rng, p: SurveyParams, terrain, ground: Ground, specs) -> None:
    """Hay bales (square ones: boxes) scattered over the fields, a few metres apart."""
    x_half, y_half = survey_half_extent(p)
    placed = 0
    for _ in range(p.bales * 20):
        if placed == p.bales:
            break
        x, y = rng.uniform(-x_half, x_half), rng.uniform(-y_half, y_half)
        if ground.free(x, y, 1.0, gap=1.5):
            ground.take(x, y, 1.0)
            specs.append(stand_on(terrain, "bale", x, y, 0.7, 0.7, 1.3, rng.uniform(0, math.pi), sink=0.15))
            placed += 1


def layout(p: SurveyParams, terrain: HeightField, roads: Roads) -> Layout:
    """The pond, the village, farms, woods and hedgerows, and hay bales, each clear of what came before."""
    rng = np.random.default_rng([p.seed, 1])
    x_half, y_half = survey_half_extent(p)
    ground = Ground(roads)
    specs: list[BoxSpec] = []
    yards: list[tuple[float, float, float, float, float]] = []
    pond = place_pond(rng, ground, x_half, y_half)
    place_village(rng, p, terrain, ground, roads, specs, yards)
    placed = 0
    for _ in range(p.farms * 200):
        if placed == p.farms:
            break
        placed += place_farm(rng, terrain, ground, x_half, y_half, specs, yards)
    place_trees(rng, p, terrain, ground, specs)
    place_bales(rng, p, terrain, ground, specs)
    return Layout(specs, yards, pond)


# --- procedural textures -------------------------------------------------------------------------


def fractal_noise(
    rng, h: int, w: int, coarsest: float, finest: float = 2.0, gain: float = 0.65
) -> np.ndarray:
    """Smooth random noise [h, w] float32 with unit variance: octaves with cells (in texels) from
    `coarsest` down to `finest`, each octave `gain` times the amplitude of the one before."""
    out = np.zeros((h, w), np.float32)
    amp, total, cell = 1.0, 0.0, float(coarsest)
    while cell >= finest:
        grid = rng.standard_normal((int(h / cell) + 3, int(w / cell) + 3)).astype(np.float32)
        out += np.float32(amp) * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        total += amp * amp
        amp, cell = amp * gain, cell / 2
    return out / np.float32(math.sqrt(max(total, 1e-12)) * 0.8)


def tinted(noise: np.ndarray, colour, contrast: float) -> np.ndarray:
    """[h, w, 3]: `colour` brightened and darkened by `noise` [h, w]."""
    return np.clip(np.asarray(colour, np.float32) * (1 + contrast * noise)[..., None], 0, 1)


def wall_texture(rng, w: int, h: int, texel: float, height_m: float, kind: str) -> np.ndarray:
    """Unrolled walls [h, w, 3]: plaster with windows and doors (houses), or planks (barns, sheds)."""
    plaster = rng.uniform(0.45, 0.85, 3).astype(np.float32)
    if kind in ("barn", "shed"):
        wood = np.array(rng.choice([(0.45, 0.25, 0.18), (0.35, 0.3, 0.25), (0.5, 0.42, 0.3)]), np.float32)
        plank = rng.uniform(0.7, 1.3, int(w * texel / 0.25) + 2).astype(np.float32)
        u = ((np.arange(w) + 0.5) * texel / 0.25).astype(int)
        tex = tinted(fractal_noise(rng, h, w, 24, 1.5), wood, 0.3) * plank[u][None, :, None]
        seam = (np.mod((np.arange(w) + 0.5) * texel, 0.25) < 0.03)[None, :]
        tex[np.broadcast_to(seam, (h, w))] *= 0.5
        return np.clip(tex, 0, 1)
    if kind == "silo":
        ring = np.mod((np.arange(h) + 0.5) * texel, 1.2) < 0.08
        tex = tinted(fractal_noise(rng, h, w, 32, 1.5), (0.7, 0.72, 0.7), 0.25)
        tex[ring] *= 0.55
        return tex
    tex = tinted(fractal_noise(rng, h, w, 32, 1.5), plaster, 0.22)
    u = (np.arange(w, dtype=np.float32) + 0.5) * texel
    v = height_m - (np.arange(h, dtype=np.float32) + 0.5) * texel  # metres above the base
    spacing, floor = rng.uniform(2.2, 3.2), 2.8
    col, level = np.floor(u / spacing).astype(int), np.floor((v - 0.9) / floor).astype(int)
    du, dv = np.mod(u, spacing) - spacing * 0.3, np.mod(v - 0.9, floor) - 0.5
    window = ((dv > 0) & (dv < 1.3) & (v > 0.9) & (v < height_m - 0.5))[:, None] & ((du > 0) & (du < 1.0))[
        None
    ]
    door = ((v > 0.2) & (v < 2.2))[:, None] & (np.abs(np.mod(u, 11.0) - 5.5) < 0.55)[None]
    glass = rng.uniform(0.1, 0.5, (level.max() + 2, col.max() + 2)).astype(np.float32)
    pane = glass[np.clip(level, 0, None)[:, None], col[None, :]]
    tex[window] = (0.55 * pane[window])[:, None] * np.array([0.8, 0.9, 1.0], np.float32) + 0.05
    tex[door & ~window] = np.array(
        rng.choice([(0.35, 0.2, 0.1), (0.2, 0.3, 0.4), (0.4, 0.1, 0.1)]), np.float32
    )
    tex[v < 0.4] *= 0.6  # plinth
    return tex


def roof_texture(rng, w: int, h: int, texel: float, kind: str) -> np.ndarray:
    """Roofs [h, w, 3]: clay or slate tiles (houses, ridges), corrugated sheets (barns, sheds), leaves
    (crowns), straw (bales), a cap (silos)."""
    noise = fractal_noise(rng, h, w, 32, 1.5)
    if kind == "crown":
        leaves = fractal_noise(rng, h, w, 6, 1.0, gain=0.8)
        green = np.array(rng.choice([(0.22, 0.38, 0.16), (0.18, 0.3, 0.14), (0.3, 0.42, 0.2)]), np.float32)
        return tinted(0.4 * noise + 0.8 * leaves, green, 0.5)
    if kind == "bale":
        return tinted(0.5 * noise + 0.7 * fractal_noise(rng, h, w, 4, 1.0, 0.8), (0.75, 0.65, 0.35), 0.35)
    if kind in ("barn", "shed", "silo"):
        metal = np.array(rng.choice([(0.55, 0.57, 0.6), (0.35, 0.45, 0.38), (0.5, 0.3, 0.25)]), np.float32)
        ribs = 1 + 0.25 * np.sin(2 * math.pi * (np.arange(h) + 0.5) * texel / 0.3).astype(np.float32)
        return np.clip(tinted(noise, metal, 0.3) * ribs[:, None, None], 0, 1)
    clay = np.array(rng.choice([(0.6, 0.3, 0.2), (0.5, 0.25, 0.18), (0.3, 0.3, 0.33)]), np.float32)
    rows = (np.arange(h) + 0.5) * texel / 0.35
    cols = (np.arange(w) + 0.5) * texel / 0.25 + 0.5 * (rows.astype(int) % 2)[:, None]
    tile = rng.uniform(0.75, 1.2, (int(rows.max()) + 2, int(cols.max()) + 2)).astype(np.float32)
    shade = tile[rows.astype(int)[:, None], cols.astype(int)] * (0.75 + 0.25 * np.mod(rows, 1.0))[:, None]
    return np.clip(tinted(noise, clay, 0.25) * shade[..., None], 0, 1)


def trunk_texture(rng, w: int, h: int) -> np.ndarray:
    return tinted(fractal_noise(rng, h, w, 8, 1.0, 0.8), (0.35, 0.27, 0.2), 0.4)


def paint_box(rng, texel: float):
    """The survey's painter for `box_atlas`."""

    def paint(b: BoxSpec, side_size, top_size):
        if b.kind == "trunk":
            return trunk_texture(rng, *side_size), trunk_texture(rng, *top_size)
        if b.kind in ("crown", "bale"):
            return roof_texture(rng, *side_size, texel, b.kind), roof_texture(rng, *top_size, texel, b.kind)
        if b.kind == "ridge":
            return roof_texture(rng, *side_size, texel, "house"), roof_texture(rng, *top_size, texel, "house")
        walls = wall_texture(rng, *side_size, texel, 2 * b.half[2], b.kind)
        return walls, roof_texture(rng, *top_size, texel, b.kind)

    return paint


# --- the ground ----------------------------------------------------------------------------------

# crop: (colour, second colour, row spacing in metres or 0, row contrast)
CROPS = (
    ((0.72, 0.62, 0.35), (0.62, 0.5, 0.28), 0.35, 0.25),  # wheat
    ((0.3, 0.45, 0.2), (0.4, 0.36, 0.25), 0.75, 0.45),  # maize rows over soil
    ((0.45, 0.33, 0.24), (0.35, 0.26, 0.2), 0.5, 0.35),  # ploughed furrows
    ((0.36, 0.5, 0.26), (0.45, 0.55, 0.3), 0.0, 0.0),  # meadow
    ((0.8, 0.72, 0.2), (0.45, 0.55, 0.2), 0.0, 0.0),  # rapeseed
    ((0.5, 0.48, 0.32), (0.4, 0.45, 0.28), 0.0, 0.0),  # fallow
)


def field_layer(rng, X, Y, p: SurveyParams) -> np.ndarray:
    """The patchwork of fields [H, W, 3] on a rotated grid of irregular fields, with grass verges."""
    angle = rng.uniform(-0.4, 0.4)
    c, s = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    U, V = c * X + s * Y, c * Y - s * X  # field-grid coordinates [H, W]
    reach = float(np.abs(X).max() + np.abs(Y).max())
    n_edges = int(2 * reach / p.field_size[0]) + 2
    edges_u = (np.cumsum(rng.uniform(*p.field_size, n_edges)) - reach).astype(np.float32)  # [E]
    edges_v = (np.cumsum(rng.uniform(*p.field_size, n_edges)) - reach).astype(np.float32)
    iu, iv = np.searchsorted(edges_u, U), np.searchsorted(edges_v, V)  # [H, W] each, in 0..E
    n_fields = (n_edges + 1) ** 2
    crop = rng.integers(len(CROPS), size=n_fields)
    colour_a = np.array([CROPS[k][0] for k in crop]) * rng.uniform(0.85, 1.15, (n_fields, 1))
    colour_b = np.array([CROPS[k][1] for k in crop]) * rng.uniform(0.85, 1.15, (n_fields, 1))
    spacing = np.array([CROPS[k][2] for k in crop]) * rng.uniform(0.85, 1.2, n_fields)
    rows_per_metre = np.where(spacing > 0, 1 / np.maximum(spacing, 1e-3), 0.0)
    row_contrast = np.array([CROPS[k][3] for k in crop])
    along_u = rng.random(n_fields) < 0.5  # rows along the field's u or v side
    table = np.concatenate(
        [colour_a, colour_b - colour_a, np.stack([rows_per_metre, row_contrast, along_u], 1)], 1
    ).astype(np.float32)  # [F, 9] per field: colour, colour change, rows per metre, row contrast, row axis
    f = table[iu * (n_edges + 1) + iv]  # [H, W, 9]
    h, w = X.shape
    mix = 0.5 + 0.5 * np.tanh(1.5 * fractal_noise(rng, h, w, 400, 8))  # [H, W] between the two colours
    fine = fractal_noise(rng, h, w, 60, 1.0, gain=0.75)
    across = np.where(f[..., 8] > 0.5, V, U)
    rows = np.sin(np.float32(2 * math.pi) * across * f[..., 6]) * f[..., 7]
    img = (f[..., 0:3] + f[..., 3:6] * mix[..., None]) * (1 + 0.3 * fine + rows)[..., None]
    # grass verges along the field edges
    du = np.minimum(U - edges_u[np.maximum(iu - 1, 0)], edges_u[np.minimum(iu, n_edges - 1)] - U)
    dv = np.minimum(V - edges_v[np.maximum(iv - 1, 0)], edges_v[np.minimum(iv, n_edges - 1)] - V)
    verge = np.minimum(np.abs(du), np.abs(dv)) < 0.9
    img[verge] = tinted(fine[verge][:, None], (0.3, 0.42, 0.2), 0.4)[:, 0]
    return img


def ground_texture(p: SurveyParams, roads: Roads, plan: Layout) -> np.ndarray:
    """[N_y, N_x, 3] float32 ground over the survey area and its margin; row i, column j is the texel
    centred at x = x0 + (j + 0.5) * texel, y = y0 + (i + 0.5) * texel (`ground_rect`)."""
    rng = np.random.default_rng([p.seed, 2])
    x0, y0, x1, y1 = ground_rect(p)
    nx, ny = round((x1 - x0) / p.ground_texel), round((y1 - y0) / p.ground_texel)
    xs = (x0 + (np.arange(nx) + 0.5) * p.ground_texel).astype(np.float32)
    ys = (y0 + (np.arange(ny) + 0.5) * p.ground_texel).astype(np.float32)
    X, Y = np.broadcast_to(xs[None, :], (ny, nx)), np.broadcast_to(ys[:, None], (ny, nx))
    img = field_layer(rng, X, Y, p)
    grit = fractal_noise(rng, ny, nx, 20, 1.0, gain=0.8)  # fine gravel / asphalt grain

    def cover(mask, colour, contrast):
        img[mask] = tinted(grit[mask][:, None], colour, contrast)[:, 0]

    for x, y, hx, hy, yaw in plan.yards:  # gravel yards
        c, s = math.cos(yaw), math.sin(yaw)
        cover(
            (np.abs(c * (X - x) + s * (Y - y)) < hx) & (np.abs(c * (Y - y) - s * (X - x)) < hy),
            (0.52, 0.49, 0.44),
            0.35,
        )
    px, py, a, b = plan.pond
    pond = ((X - px) / a) ** 2 + ((Y - py) / b) ** 2
    cover(pond < 1.15, (0.4, 0.36, 0.28), 0.4)  # muddy bank
    cover(pond < 1.0, (0.16, 0.26, 0.3), 0.5)
    track = roads.track_distance(X, Y)
    cover(track < roads.track_half_width, (0.62, 0.52, 0.4), 0.45)
    img[(np.abs(track - 0.8) < 0.2)] *= 0.8  # wheel ruts
    road = roads.road_distance(X, Y)
    cover(road < roads.road_half_width + 0.6, (0.45, 0.43, 0.4), 0.3)  # shoulder
    cover(road < roads.road_half_width, (0.27, 0.27, 0.29), 0.35)
    dash = (road < 0.08) & (np.mod(X, 6.0) < 3.0)
    edge = np.abs(road - (roads.road_half_width - 0.3)) < 0.07
    img[dash | edge] = img[dash | edge] * 0.3 + 0.65
    return np.clip(img, 0, 1)


def ground_rect(p: SurveyParams) -> tuple[float, float, float, float]:
    x_half, y_half = survey_half_extent(p)
    return -x_half - p.margin, -y_half - p.margin, x_half + p.margin, y_half + p.margin


def build_world(p: SurveyParams) -> tuple[World, list[BoxSpec]]:
    """Terrain, layout, textures and lighting of the survey, ready for the ray caster."""
    terrain = make_terrain(p)
    roads = make_roads(p)
    plan = layout(p, terrain, roads)
    rng = np.random.default_rng([p.seed, 3])
    boxes, atlas = box_atlas(plan.specs, p.atlas_texel, paint_box(rng, p.atlas_texel))
    world = World(
        boxes=boxes,
        atlas=atlas,
        ground=Texture.from_image(ground_texture(p, roads, plan), p.ground_texel),
        ground_rect=ground_rect(p),
        sun=sun_direction(p.sun_elevation_deg, p.sun_azimuth_deg),
        ambient=p.ambient,
        terrain=terrain,
    )
    return world, plan.specs
