"""Built-in procedural street scenes with CamVid's 11 classes, so the demo runs without real data.

Each scene is laid out in metres in front of a pinhole camera (street, facades, cars, people, poles...),
projected with a z-buffer and shaded with procedural textures, haze and a per-image lighting change. Geometry
is drawn in resolution-independent units (image heights), so one sample looks the same at any size.
Sample ``i`` of ``generate(seed=s)`` depends only on ``np.random.default_rng([s, i])``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from augment.core.errors import AugmentError
from augment.data.codec import MIN_SIDE
from augment.data.formats import camvid

# CamVid's classes, palette and ignore index, as the CamVid format defines them.
CLASSES: tuple[str, ...] = tuple(camvid.CLASSES)
PALETTE: tuple[tuple[int, int, int], ...] = tuple(tuple(c) for c in camvid.PALETTE)
IGNORE_INDEX = camvid.IGNORE_INDEX

SKY, BUILDING, POLE, ROAD, PAVEMENT, TREE, SIGN, FENCE, CAR, PEDESTRIAN, BICYCLIST = range(11)

_NEAR = 0.5


@dataclass(frozen=True)
class _Camera:
    """Pinhole camera; image coordinates are in image heights (x in [0, W/H], y in [0, 1], y down)."""

    h: int
    w: int
    horizon: float
    vp: float
    focal: float
    height: float

    def visible(self, x: float, z: float, margin: float = 0.0) -> bool:
        u = self.vp + self.focal * x / z
        return -margin <= u <= self.w / self.h + margin


@dataclass
class _Patch:
    """Pixels covered by one planar face, with each pixel's position on the face in metres."""

    rows: slice
    cols: slice
    u: np.ndarray
    v: np.ndarray
    z: np.ndarray | float
    px: np.ndarray | float
    valid: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows.stop - self.rows.start, self.cols.stop - self.cols.start)


class _Canvas:
    def __init__(self, cam: _Camera, rng: np.random.Generator) -> None:
        self.cam = cam
        self.xs = (np.arange(cam.w, dtype=np.float32) + 0.5) / cam.h
        self.ys = (np.arange(cam.h, dtype=np.float32) + 0.5) / cam.h
        self.label = np.zeros((cam.h, cam.w), np.uint8)
        self.rgb = np.zeros((cam.h, cam.w, 3), np.float32)
        self.depth = np.full((cam.h, cam.w), np.inf, np.float32)
        self.grain = rng.standard_normal((cam.h, cam.w), dtype=np.float32)
        self.mottle = _value_noise(rng, cam.h, cam.w, 12) + 0.5 * _value_noise(rng, cam.h, cam.w, 30)

    def paint(self, p: _Patch, mask: np.ndarray, label: int, colour: np.ndarray,
              blend: np.ndarray | None = None) -> None:
        """Write `label` and `colour` where `mask` holds and the face is nearest (z-buffer)."""
        depth = self.depth[p.rows, p.cols]
        mask = (p.z <= depth) & mask
        if p.valid is not None:
            mask &= p.valid
        if not mask.any():
            return
        self.label[p.rows, p.cols][mask] = label
        depth[mask] = p.z if np.ndim(p.z) == 0 else np.broadcast_to(p.z, mask.shape)[mask]
        rgb = self.rgb[p.rows, p.cols]
        colour = np.asarray(colour, np.float32)
        if colour.ndim > 1:
            colour = (colour if colour.shape[:2] == mask.shape else np.broadcast_to(colour, mask.shape + (3,)))[mask]
        if blend is not None:
            a = np.broadcast_to(blend, mask.shape)[mask][:, None]
            colour = rgb[mask] * (1.0 - a) + colour * a
        rgb[mask] = colour


def _value_noise(rng: np.random.Generator, h: int, w: int, cells: float) -> np.ndarray:
    """Smooth unit-variance noise with `cells` lattice cells per image height."""
    gh, gw = int(cells) + 2, int(cells * w / h) + 2
    g = rng.standard_normal((gh, gw), dtype=np.float32)
    yy = (np.arange(h, dtype=np.float32) + 0.5) / h * cells
    xx = (np.arange(w, dtype=np.float32) + 0.5) / h * cells
    y0, x0 = yy.astype(np.int64), xx.astype(np.int64)
    fy, fx = (yy - y0)[:, None], (xx - x0)[None, :]
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
    top = g[y0][:, x0] * (1 - fx) + g[y0][:, x0 + 1] * fx
    bottom = g[y0 + 1][:, x0] * (1 - fx) + g[y0 + 1][:, x0 + 1] * fx
    return (top * (1 - fy) + bottom * fy) * 1.6


def _span(lo: float, hi: float, n: int, scale: int) -> slice | None:
    """Pixel indices whose centres fall in [lo, hi] (image-height units)."""
    lo = min(max(lo * scale - 0.5, -1.0), n + 1.0)
    hi = min(max(hi * scale - 0.5, -1.0), n + 1.0)
    a, b = max(int(np.ceil(lo)), 0), min(int(np.floor(hi)) + 1, n)
    return slice(a, b) if b > a else None


def _face_z(c: _Canvas, z: float, x0: float, x1: float, y0: float, y1: float) -> _Patch | None:
    """A face facing the camera at depth z; u = world x, v = height, both in metres."""
    cam = c.cam
    if z < _NEAR:
        return None
    s = cam.focal / z
    cols = _span(cam.vp + s * x0, cam.vp + s * x1, cam.w, cam.h)
    rows = _span(cam.horizon + s * (cam.height - y1), cam.horizon + s * (cam.height - y0), cam.h, cam.h)
    if cols is None or rows is None:
        return None
    u = ((c.xs[cols] - cam.vp) / s)[None, :]
    v = (cam.height - (c.ys[rows] - cam.horizon) / s)[:, None]
    return _Patch(rows, cols, u, v, z, 1.0 / (s * cam.h))


def _face_x(c: _Canvas, xp: float, z0: float, z1: float, y0: float, y1: float) -> _Patch | None:
    """A face parallel to the street at lateral offset xp; u = depth, v = height, both in metres."""
    cam = c.cam
    z0 = max(z0, _NEAR)
    if abs(xp) < 0.05 or z1 <= z0:
        return None
    xa, xb = cam.vp + cam.focal * xp / z0, cam.vp + cam.focal * xp / z1
    ys = [cam.horizon + cam.focal * (cam.height - y) / z for y in (y0, y1) for z in (z0, z1)]
    cols = _span(min(xa, xb), max(xa, xb), cam.w, cam.h)
    rows = _span(min(ys), max(ys), cam.h, cam.h)
    if cols is None or rows is None:
        return None
    s = np.maximum((c.xs[cols] - cam.vp) / xp, 1e-6)[None, :]
    z = cam.focal / s
    v = cam.height - (c.ys[rows, None] - cam.horizon) / s
    valid = (z >= z0) & (z <= z1) & (v >= y0) & (v <= y1)
    return _Patch(rows, cols, z, v, z, z / (cam.focal * cam.h), valid)


def _band(d: np.ndarray, half: float, px: np.ndarray | float) -> np.ndarray:
    """Anti-aliased coverage of a band |d| <= half sampled with pixel size px."""
    px = np.maximum(px, 1e-6)
    return np.clip((half - np.abs(d)) / px + 0.5, 0.0, 1.0) * np.minimum(1.0, 2.0 * half / px)


def _stripes(t: np.ndarray, period: float, px: np.ndarray | float) -> np.ndarray:
    """A cosine stripe pattern in [-1, 1] that fades to 0 where the period nears the pixel size."""
    fade = np.clip(period / (np.asarray(px) * 4.0) - 0.5, 0.0, 1.0)
    return np.cos(t * (2 * np.pi / period)) * fade


def _ellipse(u, v, cu: float, cv: float, ru: float, rv: float) -> np.ndarray:
    return ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 <= 1.0


def _box(u, v, u0: float, u1: float, v0: float, v1: float) -> np.ndarray:
    return (u >= u0) & (u <= u1) & (v >= v0) & (v <= v1)


def _capsule(u, v, p: tuple[float, float], q: tuple[float, float], r: float | np.ndarray) -> np.ndarray:
    """Points within r of the segment p-q."""
    dx, dy = q[0] - p[0], q[1] - p[1]
    t = np.clip(((u - p[0]) * dx + (v - p[1]) * dy) / max(dx * dx + dy * dy, 1e-9), 0.0, 1.0)
    return (u - p[0] - t * dx) ** 2 + (v - p[1] - t * dy) ** 2 <= r * r


def _lumps(rng: np.random.Generator, u, v, wavelength: float, n: int = 5) -> np.ndarray:
    """Smooth metric-space noise (sum of random plane waves), roughly in [-1.5, 1.5]."""
    acc = 0.0
    for _ in range(n):
        a = rng.uniform(0, 2 * np.pi)
        k = 2 * np.pi / (wavelength * rng.uniform(0.7, 1.3))
        acc = acc + np.sin(k * (np.cos(a) * u + np.sin(a) * v) + rng.uniform(0, 2 * np.pi))
    return acc / np.sqrt(n / 2)


def _hash(i: np.ndarray, j: np.ndarray, seed: float) -> np.ndarray:
    return np.modf(np.abs(np.sin(i * 12.9898 + j * 78.233 + seed) * 43758.5453))[0]


def _child(rng: np.random.Generator) -> int:
    """A seed for an independent generator, so what one part draws never shifts another part's stream."""
    return int(rng.integers(2**63))


def _tone(rng: np.random.Generator, base, spread: float = 0.08) -> np.ndarray:
    """`base` with a random brightness and a small per-channel tint."""
    base = np.asarray(base, np.float32)
    tint = rng.uniform(1 - 2 * spread, 1 + 2 * spread) * (1 + rng.normal(0, spread / 2, 3))
    return np.clip(base * tint.astype(np.float32), 0, 255)


def _shade(c: _Canvas, p: _Patch, colour, mottle: float, grain: float) -> np.ndarray:
    f = 1.0 + mottle * c.mottle[p.rows, p.cols] + grain * c.grain[p.rows, p.cols]
    return np.asarray(colour, np.float32) * f[..., None]


_PAVING = ((150, 145, 140), (170, 160, 140), (150, 110, 100), (125, 125, 130))


@dataclass
class _Look:
    sky_top: np.ndarray
    sky_horizon: np.ndarray
    cloud: np.ndarray
    cloud_cover: float
    asphalt: np.ndarray
    pavement: np.ndarray
    verge: np.ndarray
    foliage: np.ndarray
    light_left: float
    light_right: float
    haze: float


def _sample_look(rng: np.random.Generator) -> _Look:
    overcast = rng.random() < 0.55
    if overcast:
        grey = rng.uniform(170, 235)
        top = _tone(rng, (grey - 20, grey - 10, grey), 0.04)
        horizon = _tone(rng, (grey, grey, grey + 5), 0.03)
    else:
        top = _tone(rng, (70, 120, 200), 0.1)
        horizon = _tone(rng, (180, 205, 230), 0.05)
    sun = rng.uniform(0.6, 0.85) if not overcast else rng.uniform(0.85, 0.95)
    lit = rng.uniform(1.0, 1.15)
    left, right = (lit, sun) if rng.random() < 0.5 else (sun, lit)
    return _Look(
        sky_top=top, sky_horizon=horizon, cloud=_tone(rng, (235, 235, 238), 0.03),
        cloud_cover=rng.uniform(0.1, 0.5) if not overcast else rng.uniform(0.0, 0.3),
        asphalt=_tone(rng, (rng.uniform(65, 110),) * 3, 0.05),
        pavement=_tone(rng, _PAVING[rng.integers(len(_PAVING))], 0.06),
        verge=_tone(rng, (90, 115, 55), 0.1),
        foliage=_tone(rng, (70, 100, 40), 0.12),
        light_left=left, light_right=right, haze=rng.uniform(80, 300),
    )


@dataclass
class _Street:
    road_left: float
    road_right: float
    fac_left: float
    fac_right: float
    lanes: int
    end: float | None
    far: float


def _sample_street(rng: np.random.Generator) -> _Street:
    width = rng.uniform(5.5, 11.0)
    left = -width * rng.uniform(0.15, 0.85)
    right = left + width
    end = rng.uniform(50, 220) if rng.random() < 0.7 else None
    return _Street(
        road_left=left, road_right=right,
        fac_left=left - rng.uniform(2.5, 6.0), fac_right=right + rng.uniform(2.5, 6.0),
        lanes=max(2, int(round(width / 3.3))), end=end, far=end if end is not None else 400.0,
    )


def _sky(c: _Canvas, look: _Look, rng: np.random.Generator) -> None:
    t = np.clip(c.ys / max(c.cam.horizon, 1e-3), 0, 1)[:, None, None] ** 0.6
    colour = look.sky_top * (1 - t) + look.sky_horizon * t
    clouds = _value_noise(rng, c.cam.h, c.cam.w, 3) + 0.5 * _value_noise(rng, c.cam.h, c.cam.w, 7)
    cover = np.clip((clouds - 1.0 + 2.0 * look.cloud_cover) * 1.2, 0, 1)[..., None]
    c.rgb[:] = colour * (1 - 0.85 * cover) + look.cloud * (0.92 + 0.08 * clouds[..., None]) * 0.85 * cover


def _ground(c: _Canvas, st: _Street, look: _Look, rng: np.random.Generator) -> None:
    cam = c.cam
    r0 = int(np.searchsorted(c.ys, cam.horizon + 1e-4))
    if r0 >= cam.h:
        return
    rows, cols = slice(r0, cam.h), slice(0, cam.w)
    s = ((c.ys[rows] - cam.horizon) / cam.height)[:, None]
    z = cam.focal / s
    x = (c.xs[None, :] - cam.vp) / s
    px = 1.0 / (s * cam.h)
    pz = z * z / (cam.focal * cam.height * cam.h)
    p = _Patch(rows, cols, x, z, z, px)

    road = (x >= st.road_left) & (x <= st.road_right)
    pave = ((x >= st.fac_left) & (x < st.road_left)) | ((x > st.road_right) & (x <= st.fac_right))

    asphalt = _shade(c, p, look.asphalt, 0.035, 0.05)
    lane = (st.road_right - st.road_left) / st.lanes
    for k in range(st.lanes):
        centre = st.road_left + (k + 0.5) * lane
        for side in (-0.8, 0.8):
            asphalt = asphalt * (1 - 0.12 * _band(x - centre - side, 0.3, px))[..., None]
    paint = np.zeros_like(x)
    phase, dash = rng.uniform(0, 9), rng.uniform(2.5, 4.5)
    for k in range(1, st.lanes):
        dashed = np.mod(z + phase, 9.0) < dash
        paint = np.maximum(paint, _band(x - st.road_left - k * lane, 0.07, px) * dashed)
    if rng.random() < 0.6:
        for edge in (st.road_left + 0.3, st.road_right - 0.3):
            paint = np.maximum(paint, _band(x - edge, 0.06, px))
    if rng.random() < 0.25:
        zc = rng.uniform(8, 30)
        zebra = (np.abs(z - zc) < 2.0) & (np.mod(x - st.road_left, 1.0) < 0.5) & road
        paint = np.maximum(paint, zebra * np.clip(2.0 / pz, 0, 1))
    marking = np.float32(rng.uniform(190, 235))
    road_rgb = asphalt * (1 - paint[..., None]) + marking * paint[..., None]

    tile = rng.uniform(0.5, 1.0)
    grout = np.maximum(_stripes(x, tile, px), _stripes(z, tile, pz)).clip(0.7, 1) - 0.7
    curb = (_band(x - st.road_left + 0.15, 0.15, px) + _band(x - st.road_right - 0.15, 0.15, px)).clip(0, 1)
    pave_rgb = _shade(c, p, look.pavement, 0.06, 0.04) * (1 - grout * 0.5 + curb * 0.15)[..., None]
    verge_rgb = _shade(c, p, look.verge, 0.18, 0.12)

    colour = np.where(road[..., None], road_rgb, np.where(pave[..., None], pave_rgb, verge_rgb))
    label = np.where(road, ROAD, np.where(pave, PAVEMENT, TREE)).astype(np.uint8)
    c.label[rows] = label
    c.rgb[rows] = colour
    c.depth[rows] = np.broadcast_to(z, label.shape)


_FACADES = ((150, 80, 65), (185, 165, 135), (140, 140, 138), (205, 198, 185), (115, 90, 75), (195, 175, 120),
            (95, 95, 100), (170, 120, 95))


@dataclass
class _Building:
    colour: np.ndarray
    glass: np.ndarray
    height: float
    bay: float
    floor: float
    ground: float
    win_w: float
    win_h: float
    brick: bool
    shop: bool
    signs: bool
    seed: float


def _sample_building(rng: np.random.Generator, height: float) -> _Building:
    return _Building(
        colour=_tone(rng, _FACADES[rng.integers(len(_FACADES))], 0.08),
        glass=_tone(rng, (45, 55, 70), 0.15),
        height=height,
        bay=rng.uniform(2.5, 4.5), floor=rng.uniform(2.8, 3.6), ground=rng.uniform(3.0, 4.2),
        win_w=rng.uniform(0.35, 0.65), win_h=rng.uniform(0.4, 0.6),
        brick=rng.random() < 0.4, shop=rng.random() < 0.5, signs=rng.random() < 0.35,
        seed=rng.uniform(0, 100),
    )


def _draw_facade(c: _Canvas, p: _Patch, b: _Building, light: float, origin: float) -> None:
    u, v, px = p.u - origin, p.v, p.px
    fu, fv = u / b.bay, (v - b.ground) / b.floor
    cu, cv = np.mod(fu, 1.0), np.mod(fv, 1.0)
    upper = (v > b.ground) & (v < b.height - 0.8)
    win = (np.abs(cu - 0.5) < b.win_w / 2) & (np.abs(cv - 0.45) < b.win_h / 2) & upper
    fade = np.clip(b.bay / (np.asarray(px) * 5.0) - 0.3, 0, 1)
    alpha = np.where(upper, win * fade + b.win_w * b.win_h * (1 - fade) * 0.8, 0.0)
    pane = _hash(np.floor(fu), np.floor(fv), b.seed)
    glass = b.glass * (0.6 + 0.8 * pane)[..., None]
    glass = np.where((pane > 0.94)[..., None], np.float32([210, 190, 120]), glass)
    wall = b.colour * (1 + 0.05 * c.mottle[p.rows, p.cols] + 0.03 * c.grain[p.rows, p.cols])[..., None]
    if b.brick:
        wall = wall * (1 + 0.08 * _stripes(v, 0.3, px))[..., None]
    wall = wall * np.where(v > b.height - 0.4, 0.75, 1.0)[..., None]
    colour = wall * (1 - alpha[..., None]) + glass * alpha[..., None]
    sign = np.zeros(np.broadcast_shapes(np.shape(u), np.shape(v)), bool)
    if b.shop:
        shop = (np.abs(np.mod(u, b.bay) / b.bay - 0.5) < 0.38) & (v > 0.3) & (v < b.ground - 0.7)
        colour = np.where(shop[..., None], b.glass * 0.7, colour)
        if b.signs:
            bays = _hash(np.floor(u / b.bay), np.zeros(1), b.seed + 1.0) < 0.5
            sign = bays & (v > b.ground - 0.6) & (v < b.ground - 0.1) & (np.abs(np.mod(u, b.bay) / b.bay - 0.5) < 0.4)
    colour = colour * (0.8 + 0.2 * np.clip(v / 3.0, 0, 1))[..., None] * light
    c.paint(p, np.ones(p.shape, bool), BUILDING, colour)
    if sign.any():
        board = np.float32(_SIGN_COLOURS[int(b.seed) % len(_SIGN_COLOURS)]) * light
        letters = 1 - 0.5 * (_stripes(u, 0.25, px) > 0.3)
        c.paint(p, sign, SIGN, board * letters[..., None])


def _hedge(c: _Canvas, p: _Patch, look: _Look, rng: np.random.Generator, light: float) -> None:
    _, colour = _foliage(c, p, rng, look.foliage * light, p.u, p.v)
    c.paint(p, np.ones(p.shape, bool), TREE, colour)


def _sides(c: _Canvas, st: _Street, look: _Look, rng: np.random.Generator) -> None:
    for xp, light in ((st.fac_left, look.light_left), (st.fac_right, look.light_right)):
        z = 0.0
        open_side = rng.random() < 0.12
        while z < st.far:
            length = rng.uniform(8, 35) * (1 + z / 40)
            gap = open_side or rng.random() < 0.12
            height = rng.uniform(0.8, 2.2) if gap else rng.uniform(7, 28)
            seed = _child(rng)
            p = _face_x(c, xp, z, z + length, 0, height)
            if p is not None and gap:
                _hedge(c, p, look, np.random.default_rng(seed), light)
            elif p is not None:
                _draw_facade(c, p, _sample_building(np.random.default_rng(seed), height), light, z)
            z += length
    if st.end is None:
        return
    x = (0 - c.cam.vp) * st.end / c.cam.focal - 5
    x_end = (c.cam.w / c.cam.h - c.cam.vp) * st.end / c.cam.focal + 5
    while x < x_end:
        width = rng.uniform(8, 25)
        trees = rng.random() < 0.2
        height = rng.uniform(4, 12) if trees else rng.uniform(5, 25)
        seed = _child(rng)
        p = _face_z(c, st.end, x, x + width, 0, height)
        if p is not None and trees:
            _tree_canopy_wall(c, p, look, np.random.default_rng(seed), height)
        elif p is not None:
            light = 0.5 * (look.light_left + look.light_right)
            _draw_facade(c, p, _sample_building(np.random.default_rng(seed), height), light, x)
        x += width


def _foliage(c: _Canvas, p: _Patch, rng: np.random.Generator, leaf: np.ndarray, u, v) -> tuple[np.ndarray, np.ndarray]:
    """Clumpy leaf noise (for ragged edges) and the matching leaf colour."""
    clumps = _lumps(rng, u, v, 1.0, 7)
    leaves = _lumps(rng, u, v, 0.3, 7)
    light = 0.72 + 0.12 * clumps + 0.1 * leaves
    return 0.7 * clumps + 0.3 * leaves, _shade(c, p, leaf, 0.04, 0.15) * light[..., None]


def _tree_canopy_wall(c: _Canvas, p: _Patch, look: _Look, rng: np.random.Generator, height: float) -> None:
    edge = _lumps(rng, p.u, 0.0, 3.0, 7)
    ragged, colour = _foliage(c, p, rng, _tone(rng, look.foliage, 0.08), p.u, p.v)
    c.paint(p, p.v < height - 1.5 + 1.0 * edge + 0.3 * ragged, TREE, colour)


def _draw_tree(c: _Canvas, rng: np.random.Generator, x: float, z: float, look: _Look) -> None:
    trunk_h = rng.uniform(1.8, 3.5)
    r = rng.uniform(1.6, 4.0)
    cy = trunk_h + r * 0.8
    p = _face_z(c, z, x - r * 1.8, x + r * 1.8, 0, cy + r * 1.6)
    if p is None:
        return
    u, v = p.u - x, p.v
    tw = max(rng.uniform(0.1, 0.22), 0.5 * p.px)
    bark = _tone(rng, (85, 70, 55), 0.1)
    c.paint(p, (np.abs(u) <= tw) & (v <= cy), TREE,
            _shade(c, p, bark, 0.05, 0.1) * (1 + 0.15 * np.clip(u / tw, -1, 1))[..., None])
    field = np.full(p.shape, -1.0, np.float32)
    for _ in range(rng.integers(3, 7)):
        bu, bv = np.clip(rng.normal(0, 0.45), -0.7, 0.7) * r, cy + np.clip(rng.normal(0, 0.35), -0.5, 0.5) * r
        rk = r * rng.uniform(0.5, 0.8)
        field = np.maximum(field, 1 - ((u - bu) ** 2 + (v - bv) ** 2) / rk ** 2)
    ragged, colour = _foliage(c, p, rng, _tone(rng, look.foliage, 0.1), u, v)
    colour = colour * (1 + 0.15 * np.clip((v - cy) / r, -1, 1))[..., None]
    c.paint(p, field + 0.2 * ragged > 0, TREE, colour)


_SIGN_COLOURS = ((200, 30, 35), (30, 70, 170), (235, 235, 230), (240, 190, 30), (30, 120, 60))
_METAL = ((110, 110, 115), (60, 65, 60), (40, 60, 45), (150, 150, 150))


def _draw_pole(c: _Canvas, rng: np.random.Generator, x: float, z: float, towards_road: float) -> None:
    kind = rng.choice(["lamp", "sign", "signal"], p=[0.35, 0.45, 0.2])
    height = {"lamp": rng.uniform(6, 9), "sign": rng.uniform(2.8, 3.8), "signal": rng.uniform(3.2, 4.2)}[kind]
    reach = 1.6 if kind == "lamp" else 0.8
    p = _face_z(c, z, x - reach - 0.5, x + reach + 0.5, 0, height + 0.6)
    if p is None:
        return
    u, v = p.u - x, p.v
    half = max(rng.uniform(0.08, 0.14), 0.5 * p.px)
    metal = _tone(rng, _METAL[rng.integers(len(_METAL))], 0.08)
    shading = (1 + 0.25 * np.clip(u / half, -1, 1) * -np.sign(towards_road))[..., None]
    pole = (np.abs(u) <= half) & (v <= height)
    if kind == "lamp":
        tip = (towards_road * 1.5, height + 0.2)
        pole |= _capsule(u, v, (0.0, height - 0.4), tip, max(0.05, 0.5 * p.px))
        c.paint(p, _ellipse(u, v, tip[0], tip[1] - 0.1, 0.35, 0.12), POLE, np.float32([200, 200, 190]))
    c.paint(p, pole, POLE, _shade(c, p, metal, 0.03, 0.05) * shading)
    if kind == "signal":
        box = _box(u, v, -0.18, 0.18, height - 0.9, height + 0.05)
        c.paint(p, box, SIGN, _shade(c, p, (35, 35, 35), 0.02, 0.05))
        lit = rng.integers(3)
        for k, col in enumerate(((220, 40, 30), (230, 170, 30), (40, 200, 80))):
            cv = height - 0.17 - 0.28 * k
            c.paint(p, _ellipse(u, v, 0.0, cv, 0.1, 0.1), SIGN, np.float32(col) * (1.0 if k == lit else 0.35))
    elif kind == "sign":
        shape = rng.choice(["disc", "triangle", "rect", "ring"])
        size = rng.uniform(0.7, 1.1)
        cv = height - size / 2
        colour = np.float32(_SIGN_COLOURS[rng.integers(len(_SIGN_COLOURS))])
        if shape == "disc":
            outer = _ellipse(u, v, 0, cv, size / 2, size / 2)
            inner = _ellipse(u, v, 0, cv, size / 3, size / 3)
            c.paint(p, outer, SIGN, colour)
            c.paint(p, inner, SIGN, np.float32([235, 235, 235]) if colour[0] > 150 else colour * 1.3)
        elif shape == "triangle":
            tri = (v >= cv - size / 2) & (np.abs(u) <= (cv + size / 2 - v) / np.sqrt(3))
            inner = (v >= cv - size / 3) & (np.abs(u) <= (cv + size / 4 - v) / np.sqrt(3))
            c.paint(p, tri, SIGN, np.float32([200, 30, 35]))
            c.paint(p, inner, SIGN, np.float32([235, 235, 230]))
        elif shape == "ring":
            c.paint(p, _ellipse(u, v, 0, cv, size / 2, size / 2), SIGN, np.float32([200, 30, 35]))
            c.paint(p, _ellipse(u, v, 0, cv, size / 2.8, size / 2.8), SIGN, np.float32([235, 235, 230]))
        else:
            w = size * rng.uniform(0.8, 1.4)
            rect = _box(u, v, -w / 2, w / 2, cv - size / 2.6, cv + size / 2)
            c.paint(p, rect, SIGN, colour * (1 + 0.15 * _stripes(v, size / 3, p.px))[..., None])


def _draw_fence(c: _Canvas, rng: np.random.Generator, xp: float, z0: float, z1: float) -> None:
    height = rng.uniform(1.0, 1.8)
    p = _face_x(c, xp, z0, z1, 0, height)
    if p is None:
        return
    u, v, px = p.u - z0, p.v, p.px
    if rng.random() < 0.5:
        wood = _tone(rng, (125, 95, 65) if rng.random() < 0.6 else (140, 140, 130), 0.1)
        colour = _shade(c, p, wood, 0.06, 0.08) * (1 + 0.15 * _stripes(u, 0.2, px))[..., None]
        c.paint(p, np.ones(p.shape, bool), FENCE, colour)
    else:
        metal = _tone(rng, _METAL[rng.integers(len(_METAL))], 0.08)
        bars = 0.35 + 0.35 * _stripes(u, 0.15, px)
        rails = np.maximum(_band(v - height + 0.05, 0.06, px), _band(v - 0.15, 0.05, px))
        posts = _band(np.mod(u, 2.5) - 1.25, 0.06, px)
        alpha = np.clip(np.maximum(np.maximum(bars, rails), posts), 0, 1) * 0.95
        c.paint(p, np.ones(p.shape, bool), FENCE, _shade(c, p, metal, 0.03, 0.05), blend=alpha)


_CAR_COLOURS = ((200, 200, 205), (30, 30, 35), (150, 20, 25), (30, 50, 120), (120, 125, 130), (230, 230, 230),
                (90, 100, 60), (170, 150, 110), (20, 80, 90))


def _draw_car(c: _Canvas, rng: np.random.Generator, xc: float, zr: float, front: bool) -> None:
    kind = rng.choice(["car", "van", "bus"], p=[0.75, 0.2, 0.05])
    width, height, length, belt = {
        "car": (rng.uniform(1.65, 1.9), rng.uniform(1.35, 1.55), rng.uniform(3.8, 4.7), 0.9),
        "van": (rng.uniform(1.9, 2.1), rng.uniform(1.9, 2.4), rng.uniform(4.8, 5.6), 1.1),
        "bus": (2.5, rng.uniform(2.9, 3.3), rng.uniform(9, 12), 1.0),
    }[kind]
    hw = width / 2
    paint = _tone(rng, _CAR_COLOURS[rng.integers(len(_CAR_COLOURS))], 0.06)
    glass = _tone(rng, (40, 45, 55), 0.1)
    tyre = np.float32([25, 25, 27])
    cabin_rear, cabin_front = (0.6, 1.2) if kind == "car" else (0.1, 0.2)

    side_x = xc - hw if xc - hw > 0.3 else (xc + hw if xc + hw < -0.3 else None)
    if side_x is not None:
        p = _face_x(c, side_x, zr, zr + length, 0, height)
        if p is not None:
            u, v, px = p.u - zr, p.v, p.px
            if front:
                u = length - u
            slope = (v - belt) / max(height - belt, 1e-3)
            body = (v >= 0.25) & (v <= belt)
            bonnet = 0.5 if kind == "car" else 0.0
            cabin = (v > belt) & (u >= cabin_rear * slope + 0.1) & (u <= length - 0.1 - cabin_front * slope - bonnet)
            wheel = _ellipse(u, v, 0.8, 0.33, 0.33, 0.33) | _ellipse(u, v, length - 0.9, 0.33, 0.33, 0.33)
            win = cabin & (v < height - 0.07) & (v > belt + 0.06) & (np.abs(u - length * 0.48) > 0.06 + 0.5 * px)
            colour = _shade(c, p, paint * 0.82, 0.03, 0.04) * (1 + 0.1 * (v > belt * 0.85))[..., None]
            colour = np.where(win[..., None], glass * 1.1, colour)
            c.paint(p, body | cabin, CAR, colour)
            c.paint(p, wheel, CAR, tyre)
    p = _face_z(c, zr, xc - hw, xc + hw, 0, height)
    if p is None:
        return
    u, v = np.abs(p.u - xc), p.v
    mid, halfh = (0.25 + belt) / 2, (belt - 0.25) / 2
    body = (u / hw) ** 6 + ((v - mid) / halfh) ** 6 <= 1
    t = (v - belt) / max(height - belt, 1e-3)
    taper = 0.16 if kind == "car" else 0.03
    cabin = (v > belt - 0.02) & (v <= height) & (u <= hw * (0.94 - taper * t))
    win = cabin & (v > belt + 0.07) & (v < height - 0.07) & (u <= hw * (0.84 - taper * t))
    lamp = _box(u, v, hw - 0.33, hw - 0.06, belt - 0.25, belt - 0.1)
    plate = _box(u, v, 0, 0.26, 0.38, 0.5)
    wheels = _box(u, v, hw - 0.3, hw - 0.05, 0, 0.4)
    under = _box(u, v, 0, hw - 0.3, 0, 0.25)
    colour = _shade(c, p, paint, 0.03, 0.04) * (1 - 0.4 * (v < 0.38))[..., None]
    colour = np.where(win[..., None], glass * (0.8 + 0.4 * t)[..., None], colour)
    colour = np.where(lamp[..., None], np.float32([200, 30, 30] if not front else [230, 225, 190]), colour)
    colour = np.where(plate[..., None], np.float32([230, 230, 220] if front else [230, 200, 40]), colour)
    c.paint(p, under, ROAD, np.float32([30, 30, 32]))
    c.paint(p, wheels, CAR, tyre)
    c.paint(p, body | cabin, CAR, colour)


_CLOTHES = ((35, 35, 40), (60, 60, 70), (30, 40, 80), (120, 30, 35), (200, 200, 195), (110, 90, 70),
            (40, 80, 60), (150, 130, 100), (170, 60, 40), (80, 80, 85))
_SKIN = ((230, 190, 160), (200, 150, 115), (150, 100, 70), (95, 65, 45))


def _draw_pedestrian(c: _Canvas, rng: np.random.Generator, x: float, z: float) -> None:
    k = rng.uniform(0.9, 1.08) if rng.random() > 0.1 else rng.uniform(0.6, 0.75)
    p = _face_z(c, z, x - 0.45 * k, x + 0.45 * k, 0, 1.76 * k)
    if p is None:
        return
    u, v, px = (p.u - x) / k, p.v / k, p.px / k
    top, legs = (_tone(rng, _CLOTHES[rng.integers(len(_CLOTHES))], 0.1) for _ in range(2))
    skin, hair = _tone(rng, _SKIN[rng.integers(len(_SKIN))], 0.05), _tone(rng, (40, 30, 25), 0.3)
    r = lambda w: max(w, 0.5 * px)  # noqa: E731
    stride = rng.uniform(0.0, 0.3)
    if rng.random() < 0.5:
        leg = _capsule(u, v, (-0.09, 0.88), (-0.11 - stride * 0.2, 0.05), r(0.075))
        leg |= _capsule(u, v, (0.09, 0.88), (0.11 + stride * 0.2, 0.05), r(0.075))
        torso = _capsule(u, v, (0, 0.98), (0, 1.34), r(0.19))
        arms = _capsule(u, v, (-0.21, 1.4), (-0.27, 0.85), r(0.055))
        arms |= _capsule(u, v, (0.21, 1.4), (0.27, 0.85), r(0.055))
        head = (0.0, 1.63)
    else:
        d = 1 if rng.random() < 0.5 else -1
        leg = _capsule(u, v, (0, 0.88), (d * stride, 0.05), r(0.08))
        leg |= _capsule(u, v, (0, 0.88), (-d * stride, 0.05), r(0.08))
        torso = _capsule(u, v, (0, 0.98), (0.02 * d, 1.34), r(0.14))
        arms = _capsule(u, v, (0.0, 1.38), (d * stride * 0.6, 0.86), r(0.055))
        head = (0.03 * d, 1.63)
    shade = lambda col: _shade(c, p, col, 0.04, 0.08)  # noqa: E731
    c.paint(p, leg, PEDESTRIAN, shade(legs) * np.where(v < 0.1, 0.4, 1.0)[..., None])
    c.paint(p, torso | arms, PEDESTRIAN, shade(top))
    face = np.where((v > head[1] + 0.03)[..., None], hair, skin)
    c.paint(p, _ellipse(u, v, head[0], head[1], r(0.1), r(0.12)), PEDESTRIAN, face)


def _draw_bicyclist(c: _Canvas, rng: np.random.Generator, x: float, z: float) -> None:
    p = _face_z(c, z, x - 1.0, x + 1.0, 0, 1.8)
    if p is None:
        return
    u, v, px = p.u - x, p.v, p.px
    r = lambda w: max(w, 0.5 * px)  # noqa: E731
    frame = _tone(rng, _SIGN_COLOURS[rng.integers(len(_SIGN_COLOURS))], 0.1)
    top, legs = (_tone(rng, _CLOTHES[rng.integers(len(_CLOTHES))], 0.1) for _ in range(2))
    skin, hair = _tone(rng, _SKIN[rng.integers(len(_SKIN))], 0.05), _tone(rng, (40, 30, 25), 0.3)
    tyre = np.float32([25, 25, 28])
    if rng.random() < 0.6:
        d = 1 if rng.random() < 0.5 else -1
        rear, fwd, bb = (-0.55 * d, 0.34), (0.55 * d, 0.34), (-0.05 * d, 0.32)
        seat, bar = (-0.2 * d, 0.92), (0.4 * d, 0.98)
        wheels = np.zeros(p.shape, bool)
        for cu in (rear[0], fwd[0]):
            dist = np.sqrt((u - cu) ** 2 + (v - 0.34) ** 2)
            wheels |= (np.abs(dist - 0.31) <= r(0.035)) | (dist <= r(0.04))
        tubes = np.zeros(p.shape, bool)
        for a, b in ((rear, bb), (bb, seat), (seat, rear), (seat, bar), (bb, bar), (bar, fwd)):
            tubes |= _capsule(u, v, a, b, r(0.025))
        hip, knee, foot = (-0.2 * d, 1.0), (0.12 * d, 0.72), (0.0, 0.3)
        shoulder = (0.18 * d, 1.5)
        leg = _capsule(u, v, hip, knee, r(0.075)) | _capsule(u, v, knee, foot, r(0.06))
        body = _capsule(u, v, hip, shoulder, r(0.13)) | _capsule(u, v, shoulder, (0.42 * d, 1.02), r(0.045))
        head = (0.28 * d, 1.68)
    else:
        wheels = _capsule(u, v, (0, 0.04), (0, 0.66), r(0.035))
        tubes = _capsule(u, v, (-0.3, 1.08), (0.3, 1.08), r(0.02)) | _capsule(u, v, (0, 0.66), (0, 1.0), r(0.03))
        leg = _capsule(u, v, (-0.1, 1.0), (-0.12, 0.4), r(0.07)) | _capsule(u, v, (0.1, 1.0), (0.12, 0.55), r(0.07))
        body = _capsule(u, v, (0, 1.05), (0, 1.42), r(0.17))
        for side in (-1, 1):
            body |= _capsule(u, v, (0.2 * side, 1.45), (0.28 * side, 1.1), r(0.045))
        head = (0.0, 1.66)
    c.paint(p, wheels, BICYCLIST, tyre)
    c.paint(p, tubes, BICYCLIST, frame)
    c.paint(p, leg, BICYCLIST, _shade(c, p, legs, 0.04, 0.08))
    c.paint(p, body, BICYCLIST, _shade(c, p, top, 0.04, 0.08))
    helmet = rng.random() < 0.5
    c.paint(p, _ellipse(u, v, head[0], head[1], r(0.11), r(0.12)), BICYCLIST,
            np.where((v > head[1] + (-0.01 if helmet else 0.03))[..., None], frame if helmet else hair, skin))


def _draw_clutter(c: _Canvas, rng: np.random.Generator, x: float, z: float) -> None:
    p = _face_z(c, z, x - 0.4, x + 0.4, 0, 1.2)
    if p is None:
        return
    u, v = p.u - x, p.v
    if rng.random() < 0.5:
        mask = _box(u, v, -0.3, 0.3, 0, 1.0) | _box(u, v, -0.33, 0.33, 0.95, 1.08)
        colour = _tone(rng, ((40, 60, 45), (30, 30, 30), (120, 120, 125))[rng.integers(3)], 0.1)
    else:
        mask = _capsule(u, v, (0, 0), (0, 0.8), max(0.08, 0.5 * p.px))
        colour = _tone(rng, ((60, 60, 60), (180, 180, 175), (40, 40, 45))[rng.integers(3)], 0.1)
    c.paint(p, mask, IGNORE_INDEX, _shade(c, p, colour, 0.04, 0.08))


def _place(rng: np.random.Generator, cam: _Camera, xs: Callable[[], float], z_lo: float,
           z_hi: float) -> tuple[float, float] | None:
    """A ground position (x, z) that projects inside the image, or None after a few tries."""
    for _ in range(8):
        x, z = xs(), rng.uniform(z_lo, z_hi)
        if cam.visible(x, z, 0.05):
            return x, z
    return None


_Draw = Callable[[_Canvas], None]


def _populate(rng: np.random.Generator, cam: _Camera, st: _Street, look: _Look) -> list[tuple[float, _Draw]]:
    """Street furniture, vehicles and people as (depth, draw) pairs."""
    items: list[tuple[float, _Draw]] = []
    far = min(st.far, 90.0)

    def pavement_x(edge: float | None = None) -> Callable[[], float]:
        def pick() -> float:
            left = rng.random() < 0.5
            lo, hi = (st.fac_left, st.road_left) if left else (st.road_right, st.fac_right)
            if edge is None:
                return rng.uniform(lo + 0.3, hi - 0.3)
            return hi - edge if left else lo + edge
        return pick

    def add(z: float, draw: Callable[..., None], *args) -> None:
        seed = _child(rng)
        items.append((z, lambda c: draw(c, np.random.default_rng(seed), *args)))

    vehicles: list[tuple[float, float]] = []

    def free(x: float, z: float, clear: float = 2.2) -> bool:
        return all(abs(x - vx) > clear or abs(z - vz) > 6.5 for vx, vz in vehicles)

    for side in (st.road_left + 1.1, st.road_right - 1.1):
        if rng.random() < 0.45:
            z = rng.uniform(3, 15)
            while z < far * 0.7:
                if rng.random() < 0.8 and cam.visible(side, z, 0.3):
                    vehicles.append((side, z))
                    add(z, _draw_car, side, z, rng.random() < 0.3)
                z += rng.uniform(5.0, 9.0)
    lane = (st.road_right - st.road_left) / st.lanes
    for _ in range(rng.poisson(2.5)):
        k = rng.integers(st.lanes)
        pos = _place(rng, cam, lambda: st.road_left + (k + 0.5) * lane + rng.normal(0, 0.2), 6, far)
        if pos and free(*pos):
            vehicles.append(pos)
            add(pos[1], _draw_car, pos[0], pos[1], bool(k < st.lanes / 2 and rng.random() < 0.7))
    for _ in range(rng.integers(1, 9) if rng.random() < 0.85 else 0):
        pos = _place(rng, cam, pavement_x(0.7), 5, far)
        if pos:
            add(pos[1], _draw_tree, pos[0], pos[1], look)
    for _ in range(rng.integers(1, 6) if rng.random() < 0.85 else 0):
        pos = _place(rng, cam, pavement_x(0.35), 4, 40)
        if pos:
            add(pos[1], _draw_pole, pos[0], pos[1], 1.0 if pos[0] < st.road_left else -1.0)
    for _ in range(rng.integers(1, 4) if rng.random() < 0.5 else 0):
        side = rng.random() < 0.5
        xp = (st.fac_left + 0.4) if side else (st.fac_right - 0.4)
        if rng.random() < 0.4:
            xp = (st.road_left - 0.4) if side else (st.road_right + 0.4)
        z0 = rng.uniform(3, 40)
        add(z0, _draw_fence, xp, z0, z0 + rng.uniform(8, 35))
    for _ in range(rng.integers(1, 8) if rng.random() < 0.65 else 0):
        crossing = rng.random() < 0.15
        pos = _place(rng, cam, (lambda: rng.uniform(st.road_left, st.road_right)) if crossing else pavement_x(), 3, 25)
        if pos:
            add(pos[1], _draw_pedestrian, pos[0], pos[1])
    for _ in range(rng.integers(1, 4) if rng.random() < 0.45 else 0):
        def kerbside() -> float:
            offset = rng.uniform(0.7, 3.0)
            return st.road_left + offset if rng.random() < 0.5 else st.road_right - offset

        pos = _place(rng, cam, kerbside, 4, 25)
        if pos and free(*pos, clear=1.4):
            add(pos[1], _draw_bicyclist, pos[0], pos[1])
    for _ in range(rng.integers(1, 4) if rng.random() < 0.4 else 0):
        pos = _place(rng, cam, pavement_x(), 4, 40)
        if pos:
            add(pos[1], _draw_clutter, pos[0], pos[1])
    return items


def _blur(a: np.ndarray) -> np.ndarray:
    p = np.pad(a, ((1, 1), (1, 1), (0, 0)), mode="edge")
    p = (p[:-2] + 2 * p[1:-1] + p[2:]) * 0.25
    return (p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]) * 0.25


def _finish(c: _Canvas, look: _Look, rng: np.random.Generator, noise: np.random.Generator) -> np.ndarray:
    cam = c.cam
    depth = np.where(c.label == SKY, 0.0, np.minimum(c.depth, 1e4))
    fog = (1 - np.exp(-depth / look.haze))[..., None] * 0.85
    rgb = c.rgb * (1 - fog) + look.sky_horizon * fog
    soft = rng.uniform(0.2, 0.8)
    rgb = rgb * (1 - soft) + _blur(rgb) * soft
    gain = rng.uniform(0.75, 1.2)
    temp = rng.uniform(-0.1, 0.1)
    tint = np.float32([1 + temp, 1 + rng.uniform(-0.03, 0.03), 1 - temp])
    rgb = rgb * (gain * tint)
    mean = rgb.mean()
    rgb = (rgb - mean) * rng.uniform(0.85, 1.15) + mean
    yy = (c.ys - 0.5)[:, None]
    xx = (c.xs - cam.w / cam.h / 2)[None, :] * cam.h / max(cam.w, cam.h)
    rgb = rgb * (1 - rng.uniform(0.0, 0.35) * (xx * xx + yy * yy))[..., None]
    rgb = rgb + noise.standard_normal((cam.h, cam.w, 1), dtype=np.float32) * rng.uniform(1.0, 4.0)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError) as e:
        raise AugmentError(f"example data size must be two integers (height, width), got {size!r}") from e
    if h < MIN_SIDE or w < MIN_SIDE or (h, w) != tuple(size):
        raise AugmentError(f"example data size must be integers >= {MIN_SIDE} (height, width), got {size!r}")
    return h, w


def render_scene(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Draw one street scene of `size` (height, width).

    Returns (image uint8 H x W x 3 RGB, mask uint8 H x W of class indices into CLASSES or IGNORE_INDEX).
    """
    h, w = _check_size(size)
    cam = _Camera(h=h, w=w, horizon=rng.uniform(0.36, 0.52), vp=w / h * rng.uniform(0.35, 0.65),
                  focal=rng.uniform(0.85, 1.2), height=rng.uniform(1.6, 2.8))
    noise = np.random.default_rng(_child(rng))
    c = _Canvas(cam, noise)
    look = _sample_look(rng)
    street = _sample_street(rng)
    _sky(c, look, noise)
    _ground(c, street, look, rng)
    _sides(c, street, look, rng)
    for _, draw in sorted(_populate(rng, cam, street, look), key=lambda item: -item[0]):
        draw(c)
    return _finish(c, look, rng, noise), c.label


def sample_id(index: int) -> str:
    return f"example/{index:06d}"


def render_sample(index: int, size: tuple[int, int] = (128, 128), seed: int = 0) -> tuple[str, np.ndarray, np.ndarray]:
    """Sample `index` of the example dataset for `seed`; independent of any other sample."""
    if index < 0 or seed < 0:
        raise AugmentError(f"example data index and seed must be >= 0, got index={index}, seed={seed}")
    image, mask = render_scene(np.random.default_rng([seed, index]), size)
    return sample_id(index), image, mask


def generate(n: int, size: tuple[int, int] = (128, 128), seed: int = 0) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Yield (sample id, image, mask) for samples 0..n-1; see render_sample."""
    if n < 0:
        raise AugmentError(f"example data count must be >= 0, got {n}")
    _check_size(size)
    if seed < 0:
        raise AugmentError(f"example data seed must be >= 0, got {seed}")
    return (render_sample(i, size, seed) for i in range(n))
