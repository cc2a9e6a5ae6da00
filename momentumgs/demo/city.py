"""The demo city: layout, photo textures and drone cameras, all deterministic from `CityParams`.

Units are metres, world z is up, the ground is z = 0. Two roads cross at the origin and split the
city into four quadrants that each hold buildings, so a 2 x 2 (or finer) block grid has content in
every block. Textures are cut from the real photos shipped inside scikit-image's wheel (no download):
SIFT needs rich, non-repeating texture, which flat colours or tiled patterns do not give.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from momentumgs.demo.raycast import Texture, World
from momentumgs.demo.scenery import BoxSpec, box_atlas, look_down_viewmat, pinhole_intrinsics, sun_direction

# bundled with scikit-image (skimage/data/*.png|jpg): loading them never downloads anything
COLOR_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "retina",
    "immunohistochemistry",
)
GRAY_PHOTOS = ("brick", "grass", "gravel", "camera", "moon", "coins", "text", "page")


@dataclass(frozen=True)
class Ring:
    """Oblique views on a circle around the city centre, looking inwards."""

    views: int
    radius: float  # metres from the centre
    altitude: float
    tilt_deg: float  # angle of the optical axis from straight down


@dataclass(frozen=True)
class CityParams:
    """Everything that decides the demo scene. Its hash names the cache entry."""

    seed: int = 0
    width: int = 320
    height: int = 240
    focal: float = 256.0  # pixels, fx = fy; principal point at the image centre
    supersample: int = 2  # rays per pixel side
    # layout
    city_half: float = 34.0  # buildings lie within [-city_half, city_half]^2
    road_width: float = 8.0
    sidewalk: float = 2.0
    buildings_per_quadrant: int = 3
    building_side: tuple[float, float] = (7.0, 13.0)
    building_height: tuple[float, float] = (6.0, 20.0)
    max_yaw_deg: float = 30.0
    cars: int = 20
    trees: int = 14
    kiosks: int = 6
    # textures
    ground_half: float = 90.0  # the ground texture covers [-ground_half, ground_half]^2
    ground_texel: float = 0.1  # metres per ground texel
    atlas_texel: float = 0.08  # metres per wall / roof texel
    # lighting
    sun_elevation_deg: float = 52.0
    sun_azimuth_deg: float = 35.0
    ambient: float = 0.4
    # cameras: a lawn-mower grid of near-nadir views plus oblique rings
    grid: tuple[int, int] = (6, 6)
    grid_spacing: float = 11.0
    grid_altitude: float = 55.0
    grid_tilt_deg: float = 12.0
    rings: tuple[Ring, ...] = field(
        default_factory=lambda: (Ring(16, 46.0, 42.0, 42.0), Ring(12, 28.0, 60.0, 24.0))
    )
    jitter: float = 1.0  # metres of random position jitter per camera

    @property
    def num_views(self) -> int:
        return self.grid[0] * self.grid[1] + sum(r.views for r in self.rings)


def city_params(size: str = "demo", seed: int = 0) -> CityParams:
    """The two shipped sizes: `demo` (64 views) and `test` (24 views, smaller city), both 320x240."""
    if size == "demo":
        return CityParams(seed=seed)
    if size == "test":
        return CityParams(
            seed=seed,
            city_half=26.0,
            buildings_per_quadrant=2,
            building_side=(6.0, 10.0),
            building_height=(5.0, 15.0),
            cars=10,
            trees=8,
            kiosks=4,
            ground_half=70.0,
            grid=(4, 4),
            grid_spacing=11.0,
            grid_altitude=45.0,
            rings=(Ring(8, 36.0, 34.0, 40.0),),
        )
    raise ValueError(f"unknown demo size {size!r} (expected 'demo' or 'test')")


# --- photos and patches --------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def load_photos() -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """(colour photos, grey photos) as float32 [H, W, 3] in [0, 1]."""
    import skimage.data

    def rgb(name):
        img = getattr(skimage.data, name)()
        img = img if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2)
        return np.ascontiguousarray(img[..., :3], dtype=np.float32) / 255.0

    return tuple(rgb(n) for n in COLOR_PHOTOS), tuple(rgb(n) for n in GRAY_PHOTOS)


def photo_patch(rng: np.random.Generator, photo: np.ndarray, h: int, w: int, scale=(0.6, 1.6)) -> np.ndarray:
    """A randomly rotated, scaled and placed h x w view into `photo` (mirrored at its borders)."""
    ph, pw = photo.shape[:2]
    s = rng.uniform(*scale)
    angle = rng.uniform(0, 360)
    cx, cy = rng.uniform(0, pw), rng.uniform(0, ph)
    M = cv2.getRotationMatrix2D((cx, cy), angle, s)
    M[:, 2] += (w / 2 - cx, h / 2 - cy)
    return cv2.warpAffine(photo, M, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def detail(rng, h, w, tint, colourfulness=0.25, contrast=1.0, scale=(0.6, 1.6)) -> np.ndarray:
    """Tinted photo texture [h, w, 3]: a grey photo mixed with a little of a colour photo."""
    colour, grey = load_photos()
    g = photo_patch(rng, grey[rng.integers(len(grey))], h, w, scale)
    c = photo_patch(rng, colour[rng.integers(len(colour))], h, w, scale)
    lum = g.mean(axis=2, keepdims=True)
    lum = 0.5 + (lum - lum.mean()) * contrast
    base = lum * np.asarray(tint, np.float32) * 2.0
    return np.clip((1 - colourfulness) * base + colourfulness * c, 0.0, 1.0)


def hann_blend(rng, h, w, cell, make_patch) -> np.ndarray:
    """Cover an h x w canvas with overlapping patches blended by Hann windows (no seams, no repeats)."""
    size = int(cell * 1.5)
    win = np.hanning(size + 2)[1:-1].astype(np.float32)
    win = np.outer(win, win)[..., None] + 1e-4
    acc = np.zeros((h + 2 * size, w + 2 * size, 3), np.float32)
    wsum = np.zeros((h + 2 * size, w + 2 * size, 1), np.float32)
    for y in range(-size // 2, h, cell):
        for x in range(-size // 2, w, cell):
            y0, x0 = y + size // 2, x + size // 2
            acc[y0 : y0 + size, x0 : x0 + size] += make_patch(size) * win
            wsum[y0 : y0 + size, x0 : x0 + size] += win
    off = size // 2
    return acc[off : off + h, off : off + w] / wsum[off : off + h, off : off + w]


# --- layout --------------------------------------------------------------------------------------


def layout(p: CityParams) -> list[BoxSpec]:
    """Buildings in four quadrants, roof units, cars on the roads, trees and kiosks."""
    rng = np.random.default_rng([p.seed, 1])  # one stream, drawn in this order: the city depends on it
    discs: list[tuple[float, float, float]] = []  # occupied ground discs (x, y, r)
    boxes = _buildings(p, rng, discs)
    boxes += _cars(p, rng)
    boxes += _trees_and_kiosks(p, rng, discs)
    return boxes


def _free(discs: list[tuple[float, float, float]], x: float, y: float, r: float, gap: float) -> bool:
    """Whether the disc (x, y, r) keeps `gap` metres from every occupied disc."""
    return all(math.hypot(x - a, y - b) > r + c + gap for a, b, c in discs)


def _buildings(p: CityParams, rng: np.random.Generator, discs: list) -> list[BoxSpec]:
    """Buildings, each with its roof units, quadrant by quadrant; their footprints are added to `discs`."""
    boxes: list[BoxSpec] = []
    street = p.road_width / 2 + p.sidewalk
    for qx, qy in ((1, 1), (-1, 1), (-1, -1), (1, -1)):
        placed, tries = 0, 0
        while placed < p.buildings_per_quadrant and tries < 2000:
            tries += 1
            hx, hy = rng.uniform(*p.building_side, size=2) / 2
            r = math.hypot(hx, hy)  # footprint radius
            lo = street + r + 0.5
            if lo >= p.city_half:
                continue
            x, y = qx * rng.uniform(lo, p.city_half), qy * rng.uniform(lo, p.city_half)
            if not _free(discs, x, y, r, 3.0):
                continue
            h = rng.uniform(*p.building_height)
            yaw = math.radians(rng.uniform(-p.max_yaw_deg, p.max_yaw_deg))
            boxes.append(BoxSpec("building", (x, y, h / 2), (hx, hy, h / 2), yaw))
            discs.append((x, y, r))
            placed += 1
            boxes += _roof_units(rng, x, y, h, hx, hy, yaw)
    return boxes


def _roof_units(rng: np.random.Generator, x, y, h, hx, hy, yaw) -> list[BoxSpec]:
    """One or two small boxes on the roof of the building at (x, y), placed in its own frame."""
    boxes = []
    for _ in range(rng.integers(1, 3)):
        ux, uy = rng.uniform(0.6, 1.5, size=2)
        lx, ly = (
            rng.uniform(-(hx - ux - 0.5), hx - ux - 0.5),
            rng.uniform(-(hy - uy - 0.5), hy - uy - 0.5),
        )
        uh = rng.uniform(0.5, 1.2)
        c, s = math.cos(yaw), math.sin(yaw)
        centre = (x + c * lx - s * ly, y + s * lx + c * ly, h + uh)
        boxes.append(BoxSpec("roof_unit", centre, (ux, uy, uh), yaw))
    return boxes


def _cars(p: CityParams, rng: np.random.Generator) -> list[BoxSpec]:
    """Cars in the lanes of both roads, 6 m apart at least, the crossing kept clear."""
    boxes: list[BoxSpec] = []
    cars: list[tuple[float, float]] = []
    reach = p.city_half + 10.0
    for _ in range(p.cars * 20):
        if len(cars) >= p.cars:
            break
        along = rng.uniform(-reach, reach)
        lane = rng.choice([-1.0, 1.0]) * p.road_width / 4
        if abs(along) < p.road_width:  # keep the crossing clear
            continue
        vertical = rng.random() < 0.5
        x, y = (lane, along) if vertical else (along, lane)
        if any(math.hypot(x - a, y - b) < 6.0 for a, b in cars):
            continue
        cars.append((x, y))
        yaw = (math.pi / 2 if vertical else 0.0) + rng.normal(0, 0.03)
        boxes.append(BoxSpec("car", (x, y, 0.75), (2.2, 0.9, 0.75), yaw))
    return boxes


def _trees_and_kiosks(p: CityParams, rng: np.random.Generator, discs: list) -> list[BoxSpec]:
    """Trees (trunk and crown) then kiosks on free ground off the roads; each taken spot joins `discs`."""
    boxes: list[BoxSpec] = []
    street = p.road_width / 2 + p.sidewalk

    def spot(r, gap):
        for _ in range(500):
            x, y = rng.uniform(-p.city_half - 6, p.city_half + 6, size=2)
            if min(abs(x), abs(y)) > street + r and _free(discs, x, y, r, gap):
                discs.append((x, y, r))
                return x, y
        return None

    for _ in range(p.trees):
        xy = spot(1.8, 1.0)
        if xy is None:
            continue
        crown = rng.uniform(1.2, 1.8)
        trunk = rng.uniform(1.6, 2.6)
        yaw = rng.uniform(0, math.pi)
        boxes.append(BoxSpec("tree_trunk", (*xy, trunk / 2), (0.2, 0.2, trunk / 2), yaw))
        boxes.append(BoxSpec("tree_crown", (*xy, trunk + crown), (crown, crown, crown), yaw))
    for _ in range(p.kiosks):
        xy = spot(1.6, 1.0)
        if xy is None:
            continue
        hx, hy = rng.uniform(0.9, 1.4, size=2)
        boxes.append(BoxSpec("kiosk", (*xy, 1.3), (hx, hy, 1.3), rng.uniform(0, math.pi)))
    return boxes


# --- textures ------------------------------------------------------------------------------------


def ground_texture(p: CityParams, buildings: list[BoxSpec]) -> np.ndarray:
    """[N, N, 3] float32 ground: fields and lawns, roads with markings, sidewalks, paved lots.

    Row i, column j is the texel centred at x = (j + 0.5) * texel - ground_half, y likewise with i.
    """
    rng = np.random.default_rng([p.seed, 2])  # one stream, drawn in this order: the city depends on it
    n = int(round(2 * p.ground_half / p.ground_texel))
    earth = [(0.42, 0.5, 0.3), (0.5, 0.46, 0.36), (0.38, 0.46, 0.28), (0.55, 0.52, 0.42), (0.45, 0.4, 0.3)]

    def field_patch(size):
        return detail(rng, size, size, earth[rng.integers(len(earth))], colourfulness=0.3, contrast=1.6)

    img = hann_blend(rng, n, n, 128, field_patch)
    ground = _Ground(rng, img, (np.arange(n, dtype=np.float32) + 0.5) * p.ground_texel - p.ground_half)
    _paint_lots(ground, buildings)
    _paint_roads(ground, p)
    marks = _road_marks(ground.coords, p.road_width / 2)
    img[marks] = img[marks] * 0.25 + np.float32(0.92 * 0.75)
    _darken_road_patches(ground, p)
    return np.clip(img, 0, 1)


@dataclass
class _Ground:
    """The ground texture being painted: its texels [n, n, 3] and the world coordinate of each texel
    centre along x (columns) and y (rows) [n]."""

    rng: np.random.Generator
    img: np.ndarray
    coords: np.ndarray

    def index(self, v: float) -> int:
        return int(np.clip(np.searchsorted(self.coords, v), 0, len(self.coords)))

    def paint(self, x0, x1, y0, y1, mask_fn, tint, colourfulness, contrast, scale) -> None:
        """Paint a fresh photo layer where mask_fn(X, Y) holds, within the world rectangle given."""
        rng = self.rng
        rows, cols = slice(self.index(y0), self.index(y1)), slice(self.index(x0), self.index(x1))
        X, Y = self.coords[cols][None, :], self.coords[rows][:, None]
        mask = mask_fn(X, Y)
        if not mask.any():
            return

        def patch(size):
            return detail(rng, size, size, tint, colourfulness=colourfulness, contrast=contrast, scale=scale)

        layer = hann_blend(rng, mask.shape[0], mask.shape[1], 96, patch)
        np.copyto(self.img[rows, cols], layer, where=mask[..., None])


def _paint_lots(ground: _Ground, buildings: list[BoxSpec]) -> None:
    """Paved lots around the buildings: their footprints, rotated, with a 2.5 m margin."""
    for b in buildings:
        c, s = math.cos(b.yaw), math.sin(b.yaw)
        hx, hy = b.half[0] + 2.5, b.half[1] + 2.5
        r = math.hypot(hx, hy)

        def lot(X, Y, b=b, c=c, s=s, hx=hx, hy=hy):
            dx, dy = X - b.center[0], Y - b.center[1]
            return (np.abs(c * dx + s * dy) < hx) & (np.abs(c * dy - s * dx) < hy)

        cx, cy = b.center[0], b.center[1]
        ground.paint(cx - r, cx + r, cy - r, cy + r, lot, (0.55, 0.53, 0.5), 0.15, 1.3, (1.0, 1.6))


def _paint_roads(ground: _Ground, p: CityParams) -> None:
    """The two roads with their sidewalks: a strip along y (x near 0) and one along x (y near 0)."""
    half_road, g = p.road_width / 2, p.ground_half
    w = half_road + p.sidewalk

    def everywhere(X, Y):
        return np.ones(np.broadcast(X, Y).shape, bool)

    # sidewalks first, then the asphalt over their middle; each as a strip along y and one along x
    for half, color, *texture in (
        (w, (0.62, 0.6, 0.58), 0.1, 1.4, (0.5, 0.8)),
        (half_road, (0.3, 0.3, 0.32), 0.1, 1.8, (0.6, 1.0)),
    ):
        for x0, x1, y0, y1 in ((-half, half, -g, g), (-g, g, -half, half)):
            ground.paint(x0, x1, y0, y1, everywhere, color, *texture)


def _road_marks(coords: np.ndarray, half_road: float) -> np.ndarray:
    """Where the markings are: dashed centre lines, edge lines, zebra crossings. [n, n] bool"""
    X, Y = coords[None, :], coords[:, None]
    near_x, near_y = np.abs(X) + 0 * Y, np.abs(Y) + 0 * X  # [n, n] distance from the road axes
    road = (near_x < half_road) | (near_y < half_road)
    crossing = (near_x < half_road) & (near_y < half_road)
    dash = (np.mod(np.where(near_x < half_road, Y, X), 6.0) < 3.0) & ~crossing
    centre = ((near_x < 0.08) | (near_y < 0.08)) & dash
    edge = (np.abs(near_x - (half_road - 0.4)) < 0.08) | (np.abs(near_y - (half_road - 0.4)) < 0.08)
    edge &= road & ~crossing
    zebra_x = (near_x < half_road) & (np.abs(near_y - half_road - 1.5) < 1.2) & (np.mod(X, 1.0) < 0.5)
    zebra_y = (near_y < half_road) & (np.abs(near_x - half_road - 1.5) < 1.2) & (np.mod(Y, 1.0) < 0.5)
    return centre | edge | zebra_x | zebra_y


def _darken_road_patches(ground: _Ground, p: CityParams) -> None:
    """Patches of fresh asphalt and manholes: unique landmarks along the otherwise similar roads."""
    rng, coords = ground.rng, ground.coords
    half_road, g = p.road_width / 2, p.ground_half
    for _ in range(int(p.ground_half)):
        along = rng.uniform(-g, g)
        across = rng.uniform(-half_road + 0.5, half_road - 0.5)
        x, y = (across, along) if rng.random() < 0.5 else (along, across)
        r = rng.uniform(0.3, 0.9)
        rows, cols = (
            slice(ground.index(y - r), ground.index(y + r)),
            slice(ground.index(x - r), ground.index(x + r)),
        )
        blob = (coords[cols][None, :] - x) ** 2 + (coords[rows][:, None] - y) ** 2 < r * r
        ground.img[rows, cols][blob] *= rng.uniform(0.4, 0.7)


def facade_texture(rng, w: int, h: int, texel: float, height_m: float) -> np.ndarray:
    """Unrolled walls [h, w, 3]: a photo-textured wall with a grid of windows, each window unique."""
    wall_tint = rng.uniform(0.35, 0.7, size=3).astype(np.float32)
    wall = detail(rng, h, w, wall_tint, colourfulness=0.2, contrast=1.5, scale=(0.8, 1.5))
    colour, _ = load_photos()
    reflect = photo_patch(rng, colour[rng.integers(len(colour))], h, w, scale=(0.8, 1.4))
    u = (np.arange(w, dtype=np.float32) + 0.5) * texel
    v = height_m - (np.arange(h, dtype=np.float32) + 0.5) * texel  # metres above the ground
    col_w, floor_h = rng.uniform(2.4, 3.2), rng.uniform(3.0, 3.6)
    win_w, win_h = col_w * rng.uniform(0.45, 0.7), floor_h * rng.uniform(0.4, 0.6)
    ci, fi = np.floor(u / col_w).astype(int), np.floor((v - 0.8) / floor_h).astype(int)
    du, dv = np.mod(u, col_w) - (col_w - win_w) / 2, np.mod(v - 0.8, floor_h) - (floor_h - win_h) / 2
    in_u = (du > 0) & (du < win_w)
    in_v = (dv > 0) & (dv < win_h) & (v > 1.2) & (v < height_m - 0.6)
    window = in_v[:, None] & in_u[None, :]
    frame_u = (du > -0.12) & (du < win_w + 0.12)
    frame_v = (dv > -0.12) & (dv < win_h + 0.12) & (v > 1.0) & (v < height_m - 0.4)
    frame = frame_v[:, None] & frame_u[None, :] & ~window
    # per-window brightness and tint: lit rooms, blinds, reflections; breaks the grid's repetition
    n_f, n_c = fi.max() + 2, ci.max() + 2
    shade = rng.uniform(0.25, 1.0, size=(n_f, n_c)).astype(np.float32)
    tint = rng.uniform(0.5, 1.0, size=(n_f, n_c, 3)).astype(np.float32)
    fidx, cidx = np.clip(fi, 0, n_f - 1)[:, None], np.clip(ci, 0, n_c - 1)[None, :]
    glass = reflect * shade[fidx, cidx][..., None] * tint[fidx, cidx] * np.float32(0.8) + np.float32(0.05)
    out = wall.copy()
    out[window] = glass[window]
    out[frame] = np.clip(wall[frame] * 0.4 + 0.55, 0, 1)
    # a darker band at the roof line and a lighter plinth give each wall a horizontal landmark
    out[v > height_m - 0.4] *= 0.6
    out[v < 0.6] = np.clip(out[v < 0.6] * 0.5 + 0.35, 0, 1)
    return out


def roof_texture(rng, w: int, h: int) -> np.ndarray:
    tint = rng.uniform(0.35, 0.6, size=3).astype(np.float32)
    roof = detail(rng, h, w, tint, colourfulness=0.35, contrast=1.8, scale=(0.6, 1.2))
    border = max(2, min(h, w) // 24)
    roof[:border], roof[-border:], roof[:, :border], roof[:, -border:] = 0.8, 0.8, 0.8, 0.8
    return roof


def small_texture(rng, kind: str, w: int, h: int, top: bool) -> np.ndarray:
    """Cars, kiosks, trees and roof units: coloured photo textures."""
    colour, _ = load_photos()
    if kind == "car":
        paint = rng.uniform(0.1, 0.9, size=3).astype(np.float32)
        tex = detail(rng, h, w, paint, colourfulness=0.2, contrast=1.2)
        if top:
            tex[h // 4 : h // 2, w // 6 : 5 * w // 6] *= 0.3  # windscreen
        else:
            tex[: h // 2] = tex[: h // 2] * 0.35 + 0.05  # side windows
        return tex
    if kind == "tree_crown":
        return detail(rng, h, w, (0.25, 0.45, 0.2), colourfulness=0.15, contrast=2.2, scale=(0.4, 0.8))
    if kind == "tree_trunk":
        return detail(rng, h, w, (0.4, 0.3, 0.2), colourfulness=0.1, contrast=1.5)
    if kind == "kiosk":
        return photo_patch(rng, colour[rng.integers(len(colour))], h, w, scale=(0.5, 1.0))
    return detail(rng, h, w, (0.55, 0.55, 0.58), colourfulness=0.1, contrast=1.5)  # roof unit


def paint_box(rng: np.random.Generator, texel: float):
    """The city's painter for `box_atlas`: facades and roofs for buildings, photo textures for the rest."""

    def paint(b: BoxSpec, side_size, top_size):
        if b.kind == "building":
            return facade_texture(rng, *side_size, texel, 2 * b.half[2]), roof_texture(rng, *top_size)
        walls = small_texture(rng, b.kind, *side_size, top=False)
        return walls, small_texture(rng, b.kind, *top_size, top=True)

    return paint


def build_world(p: CityParams) -> tuple[World, list[BoxSpec]]:
    """Layout, textures and lighting of the city, ready for the ray caster."""
    specs = layout(p)
    rng = np.random.default_rng([p.seed, 3])
    boxes, atlas = box_atlas(specs, p.atlas_texel, paint_box(rng, p.atlas_texel))
    buildings = [b for b in specs if b.kind == "building"]
    ground = ground_texture(p, buildings)
    world = World(
        boxes=boxes,
        atlas=atlas,
        ground=Texture.from_image(ground, p.ground_texel),
        ground_rect=(-p.ground_half, -p.ground_half, p.ground_half, p.ground_half),
        sun=sun_direction(p.sun_elevation_deg, p.sun_azimuth_deg),
        ambient=p.ambient,
    )
    return world, specs


# --- cameras -------------------------------------------------------------------------------------


def intrinsics(p: CityParams) -> np.ndarray:
    return pinhole_intrinsics(p.focal, p.width, p.height)


def camera_poses(p: CityParams) -> list[np.ndarray]:
    """World->camera matrices [4, 4]: the survey grid (lawn-mower order), then each ring."""
    rng = np.random.default_rng([p.seed, 4])
    poses = []
    nx, ny = p.grid
    for j in range(ny):
        for i in range(nx):
            ii = i if j % 2 == 0 else nx - 1 - i  # serpentine flight line
            x = (ii - (nx - 1) / 2) * p.grid_spacing
            y = (j - (ny - 1) / 2) * p.grid_spacing
            eye = np.array([x, y, p.grid_altitude]) + rng.normal(0, p.jitter, 3)
            heading = (0.0 if j % 2 == 0 else math.pi) + rng.normal(0, 0.05)
            poses.append(look_down_viewmat(eye, heading, math.radians(p.grid_tilt_deg)))
    for ring in p.rings:
        offset = rng.uniform(0, 2 * math.pi)
        for i in range(ring.views):
            a = offset + 2 * math.pi * i / ring.views
            eye = np.array([ring.radius * math.cos(a), ring.radius * math.sin(a), ring.altitude])
            eye = eye + rng.normal(0, p.jitter, 3)
            poses.append(
                look_down_viewmat(eye, a + math.pi + rng.normal(0, 0.03), math.radians(ring.tilt_deg))
            )
    return poses
