"""Procedural movie posters whose pixels carry the film's genre.

Every poster is drawn from a seed and the film's id, so the same catalog always
yields the same images.  The first genre paints the background palette and the
main motif; further genres add secondary elements.  A random low-frequency
lighting field and randomly placed large shapes keep the 64-bit DCT perceptual
hashes of distinct films far apart.  A last step nudges the luminance so that
no pHash coefficient sits within HASH_MARGIN of the threshold (the bits stay the
same), which is why `near_copy` edits keep a poster within a few bits of its
source.

Every poster also has a hidden "look" (`LOOKS`), chosen from the seed and the
movie id alone, never from the genres: fine stripes in one of four directions
laid over the art before the title.  The catalog's synthetic users prefer one
look, so the art carries audience signal that the metadata does not.  The
stripes are far finer than pHash's frequencies and average out over every
1/8 of the poster, so genre colours, thumbnails and hashes barely differ
between looks, while a small CNN at 64-128 px sees their direction at once.
"""

from __future__ import annotations

import functools
import io
import math
import struct
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageEnhance
from PIL import ImageFont

if TYPE_CHECKING:
    from synthetic.catalog import Film

RGB = tuple[int, int, int]

DEFAULT_SIZE: tuple[int, int] = (182, 268)
HASH_MARGIN = 100.0
NEAR_TRANSFORMS: tuple[str, ...] = ("reencode", "resize", "crop", "brightness")


@dataclass(frozen=True)
class GenreStyle:
    """The palette and composition motif that mark one genre."""

    background: tuple[RGB, RGB]
    accents: tuple[RGB, ...]
    motif: str


GENRE_STYLES: dict[str, GenreStyle] = {
    "Action": GenreStyle(
        ((15, 12, 10), (235, 110, 15)), ((255, 150, 0), (255, 210, 60), (10, 10, 10)), "stripes"
    ),
    "Adventure": GenreStyle(
        ((25, 85, 45), (205, 175, 85)), ((240, 200, 90), (70, 130, 55), (120, 80, 40)), "mountains"
    ),
    "Animation": GenreStyle(
        ((255, 50, 170), (40, 200, 255)), ((255, 230, 0), (0, 220, 90), (140, 60, 255)), "confetti"
    ),
    "Children": GenreStyle(
        ((255, 235, 160), (160, 220, 255)),
        ((255, 160, 200), (150, 235, 150), (255, 200, 120)),
        "balloons",
    ),
    "Comedy": GenreStyle(
        ((255, 235, 40), (255, 145, 25)),
        ((255, 80, 50), (255, 255, 240), (250, 200, 0)),
        "sunburst",
    ),
    "Crime": GenreStyle(
        ((20, 20, 25), (95, 95, 105)), ((250, 210, 0), (200, 200, 200), (0, 0, 0)), "tape"
    ),
    "Documentary": GenreStyle(
        ((205, 205, 200), (85, 85, 85)), ((240, 240, 240), (40, 40, 40), (150, 150, 150)), "grid"
    ),
    "Drama": GenreStyle(
        ((65, 80, 105), (150, 160, 175)),
        ((200, 205, 215), (35, 45, 65), (110, 120, 140)),
        "silhouette",
    ),
    "Fantasy": GenreStyle(
        ((55, 15, 100), (165, 90, 205)), ((255, 215, 100), (200, 160, 255), (30, 0, 60)), "stars"
    ),
    "Film-Noir": GenreStyle(
        ((5, 5, 5), (70, 70, 70)), ((235, 235, 235), (20, 20, 20), (150, 150, 150)), "blinds"
    ),
    "Horror": GenreStyle(((8, 3, 3), (70, 0, 0)), ((175, 0, 0), (225, 20, 20), (0, 0, 0)), "drips"),
    "IMAX": GenreStyle(
        ((0, 45, 125), (0, 0, 10)), ((0, 170, 255), (255, 255, 255), (0, 90, 200)), "rings"
    ),
    "Musical": GenreStyle(
        ((115, 0, 90), (235, 60, 150)), ((255, 215, 0), (255, 240, 255), (60, 0, 50)), "spotlights"
    ),
    "Mystery": GenreStyle(
        ((15, 15, 55), (35, 75, 70)), ((140, 205, 120), (80, 60, 140), (200, 230, 200)), "fog"
    ),
    "Romance": GenreStyle(
        ((255, 175, 195), (205, 25, 70)), ((255, 240, 245), (230, 0, 60), (255, 120, 150)), "hearts"
    ),
    "Sci-Fi": GenreStyle(
        ((0, 10, 50), (0, 155, 205)), ((0, 255, 255), (180, 240, 255), (0, 60, 140)), "planet"
    ),
    "Thriller": GenreStyle(
        ((5, 38, 42), (25, 95, 100)), ((200, 235, 235), (0, 165, 150), (0, 15, 20)), "shards"
    ),
    "War": GenreStyle(
        ((70, 75, 40), (155, 145, 90)), ((205, 60, 20), (40, 40, 30), (190, 185, 160)), "smoke"
    ),
    "Western": GenreStyle(
        ((235, 195, 135), (140, 80, 30)), ((95, 40, 10), (255, 225, 150), (200, 110, 40)), "sun"
    ),
}

_FALLBACK_STYLE = GENRE_STYLES["Drama"]


# The hidden looks: fine stripes with (cycles across the width, cycles across the height).
# Whole cycles fit twice into every 1/8 (and 4 times into every 1/16) of the poster, so block
# averages (8x8 thumbnails, the pixels baseline) and pHash barely differ between looks.
LOOK_WAVES: dict[str, tuple[int, int]] = {
    "scanlines": (0, 16),
    "pinstripes": (16, 0),
    "rising_hatch": (16, 16),
    "falling_hatch": (16, -16),
}
LOOKS: tuple[str, ...] = tuple(LOOK_WAVES)
LOOK_STRENGTH = 0.22


def _look_and_phase(movie_id: int, seed: int) -> tuple[str, float]:
    """A poster's look and the phase of its stripes, drawn apart from the rest of the poster."""
    rng = np.random.default_rng([seed & 0xFFFFFFFF, movie_id & 0xFFFFFFFF, 0x100C])
    return LOOKS[int(rng.integers(len(LOOKS)))], float(rng.uniform(0.0, 2.0 * math.pi))


def look_for(movie_id: int, seed: int) -> str:
    """The hidden look of the poster drawn for movie_id under seed (independent of genres)."""
    return _look_and_phase(movie_id, seed)[0]


def style_for(genre: str) -> GenreStyle:
    """Return the drawing style of a genre (Drama's for an unknown genre)."""
    return GENRE_STYLES.get(genre, _FALLBACK_STYLE)


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in font at a pixel size, loaded once."""
    return ImageFont.load_default(size=size)


@functools.lru_cache(maxsize=8)
def _cosine_basis(n: int) -> np.ndarray:
    """DCT-II cosine basis sampled at n pixels for frequencies 0..7, shape (n, 8)."""
    pos = (np.arange(n, dtype=np.float64) + 0.5) / n
    return np.cos(np.pi * np.outer(pos, np.arange(8))).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _unit_grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates scaled to [-1, 1], as broadcastable column/row arrays."""
    xs = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :]
    ys = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None]
    return xs, ys


def _jitter(color: RGB, rng: np.random.Generator, amount: int = 18) -> RGB:
    """A colour nudged by a small random amount per channel."""
    dr, dg, db = (int(v) for v in rng.integers(-amount, amount + 1, size=3))
    return (
        min(255, max(0, color[0] + dr)),
        min(255, max(0, color[1] + dg)),
        min(255, max(0, color[2] + db)),
    )


def _background(
    style: GenreStyle, rng: np.random.Generator, width: int, height: int
) -> Image.Image:
    """A two-colour gradient in a random direction, offset and curvature."""
    xs, ys = _unit_grid(width, height)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    offset = 127.5 + 255.0 * rng.uniform(-0.25, 0.25)
    t = (127.5 * math.cos(angle)) * xs + (127.5 * math.sin(angle)) * ys + offset
    ramp = Image.fromarray(np.clip(t, 0, 255).astype(np.uint8), "L")
    curve = (np.arange(256) / 255.0) ** rng.uniform(0.6, 1.6)
    c1 = _jitter(style.background[0], rng)
    c2 = _jitter(style.background[1], rng)
    bands = [
        ramp.point(np.rint(a + (b - a) * curve).astype(int).tolist())
        for a, b in zip(c1, c2, strict=True)
    ]
    return Image.merge("RGB", bands)


def _lighting(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A smooth random field (sum of the 8x8 lowest DCT cosines) with unit peak, shape (h, w)."""
    coef = rng.normal(0.0, 1.0, size=(8, 8)).astype(np.float32)
    falloff = 1.0 / (1.0 + 0.25 * np.add.outer(np.arange(8), np.arange(8))).astype(np.float32)
    coef *= falloff
    coef[0, 0] = 0.0
    field = _cosine_basis(height) @ coef @ _cosine_basis(width).T
    return field / max(float(np.abs(field).max()), 1e-6)


def _pick(rng: np.random.Generator, colors: tuple[RGB, ...]) -> RGB:
    """One of the colours, jittered."""
    return _jitter(colors[int(rng.integers(len(colors)))], rng)


def _heart(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill: RGB) -> None:
    """A heart made of two discs and a triangle."""
    draw.ellipse((cx - r, cy - r * 0.6, cx, cy + r * 0.4), fill=fill)
    draw.ellipse((cx, cy - r * 0.6, cx + r, cy + r * 0.4), fill=fill)
    draw.polygon([(cx - r * 0.97, cy), (cx + r * 0.97, cy), (cx, cy + r * 1.25)], fill=fill)


def _star(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, rot: float, fill: RGB) -> None:
    """A five-pointed star."""
    points = []
    for i in range(10):
        rad = r if i % 2 == 0 else r * 0.42
        a = rot + i * math.pi / 5
        points.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    draw.polygon(points, fill=fill)


def _rotated_band(
    draw: ImageDraw.ImageDraw,
    cx: float,
    cy: float,
    length: float,
    thick: float,
    angle: float,
    fill: RGB,
) -> None:
    """A long rectangle centred at (cx, cy) turned by angle radians."""
    dx, dy = math.cos(angle), math.sin(angle)
    nx, ny = -dy, dx
    hl, ht = length / 2, thick / 2
    draw.polygon(
        [
            (cx - dx * hl - nx * ht, cy - dy * hl - ny * ht),
            (cx + dx * hl - nx * ht, cy + dy * hl - ny * ht),
            (cx + dx * hl + nx * ht, cy + dy * hl + ny * ht),
            (cx - dx * hl + nx * ht, cy - dy * hl + ny * ht),
        ],
        fill=fill,
    )


@dataclass(frozen=True)
class _Canvas:
    """Where one motif is drawn: the drawing, the poster's seeded generator, the genre's accent
    colours, the poster size and the motif's scale (1.0 for the main genre's, less after)."""

    draw: ImageDraw.ImageDraw
    rng: np.random.Generator
    accents: tuple[RGB, ...]
    w: int
    h: int
    scale: float

    def u(self, low: float, high: float) -> float:
        """A uniform draw from the poster's generator."""
        return self.rng.uniform(low, high)

    def pick(self, colors: tuple[RGB, ...] | None = None) -> RGB:
        """One of ``colors`` (the accents by default), jittered."""
        return _pick(self.rng, self.accents if colors is None else colors)


# One function per motif. Each draws from the poster's generator in a fixed order, so a film's
# poster is the same on every machine and in every run.
def _stripes(c: _Canvas) -> None:
    w, h = c.w, c.h
    angle = c.u(0.5, 1.1) * (1 if c.rng.random() < 0.5 else -1)
    n = int(c.rng.integers(2, 5)) if c.scale >= 1 else 1
    cx0, cy0 = c.u(0.2, 0.8) * w, c.u(0.2, 0.8) * h
    gap = c.u(0.12, 0.25) * h
    for i in range(n):
        off = (i - (n - 1) / 2) * gap
        _rotated_band(
            c.draw,
            cx0 - math.sin(angle) * off,
            cy0 + math.cos(angle) * off,
            2.5 * h,
            c.u(0.05, 0.12) * h * c.scale,
            angle,
            c.pick(),
        )


def _mountains(c: _Canvas) -> None:
    w, h = c.w, c.h
    for _ in range(int(c.rng.integers(1, 4)) if c.scale >= 1 else 1):
        peak_x, peak_y = c.u(0, 1) * w, c.u(0.25, 0.7) * h
        half = c.u(0.35, 0.8) * w * c.scale
        base = h * c.u(0.85, 1.1)
        c.draw.polygon(
            [(peak_x - half, base), (peak_x, peak_y), (peak_x + half, base)],
            fill=c.pick(),
        )


def _circles(c: _Canvas, balloons: bool) -> None:
    w, h = c.w, c.h
    n = int(c.rng.integers(3, 7)) if c.scale >= 1 else 2
    for _ in range(n):
        r = c.u(0.1, 0.24) * w * c.scale
        cx, cy = c.u(0, 1) * w, c.u(0, 0.85) * h
        color = c.pick()
        if balloons:
            c.draw.line(
                [(cx, cy + r), (cx + c.u(-10, 10), cy + r + 0.25 * h)], fill=(90, 90, 90), width=2
            )
            c.draw.ellipse((cx - r, cy - r * 1.2, cx + r, cy + r), fill=color)
        else:
            c.draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=color)


def _sunburst(c: _Canvas) -> None:
    w, h = c.w, c.h
    cx, cy = c.u(0.15, 0.85) * w, c.u(0.15, 0.75) * h
    rays = int(c.rng.integers(6, 12))
    rot = c.u(0, math.pi)
    color = c.pick()
    if c.scale >= 1:
        for i in range(rays):
            a0 = rot + 2 * math.pi * i / rays
            a1 = a0 + math.pi / rays
            far = 2.2 * h
            c.draw.polygon(
                [
                    (cx, cy),
                    (cx + far * math.cos(a0), cy + far * math.sin(a0)),
                    (cx + far * math.cos(a1), cy + far * math.sin(a1)),
                ],
                fill=color,
            )
    r = c.u(0.15, 0.3) * w * c.scale
    c.draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=c.pick())


def _tape(c: _Canvas) -> None:
    w, h = c.w, c.h
    for _ in range(int(c.rng.integers(1, 3))):
        angle = c.u(-0.5, 0.5)
        cx, cy = c.u(0.2, 0.8) * w, c.u(0.15, 0.85) * h
        _rotated_band(c.draw, cx, cy, 2.5 * w, c.u(0.06, 0.1) * h * c.scale, angle, (250, 210, 0))


def _grid(c: _Canvas) -> None:
    w, h = c.w, c.h
    x0, y0 = c.u(0, 0.4) * w, c.u(0, 0.5) * h
    cols = int(c.rng.integers(2, 4)) if c.scale >= 1 else 1
    rows = int(c.rng.integers(2, 4)) if c.scale >= 1 else 2
    cw, ch = c.u(0.18, 0.3) * w * c.scale, c.u(0.1, 0.18) * h * c.scale
    for i in range(cols):
        for j in range(rows):
            x, y = x0 + i * cw * 1.15, y0 + j * ch * 1.15
            c.draw.rectangle((x, y, x + cw, y + ch), fill=c.pick())


def _silhouette(c: _Canvas) -> None:
    w, h = c.w, c.h
    cx = c.u(0.2, 0.8) * w
    r = c.u(0.1, 0.18) * w * (1.0 if c.scale >= 1 else 0.7)
    top = c.u(0.25, 0.55) * h
    color = c.pick()
    c.draw.ellipse((cx - r, top - 2 * r, cx + r, top), fill=color)
    c.draw.rounded_rectangle(
        (cx - 2.4 * r, top + 0.2 * r, cx + 2.4 * r, top + 7 * r), radius=int(r), fill=color
    )


def _stars(c: _Canvas) -> None:
    w, h = c.w, c.h
    for _ in range(int(c.rng.integers(2, 5)) if c.scale >= 1 else 2):
        _star(
            c.draw,
            c.u(0, 1) * w,
            c.u(0, 1) * h,
            c.u(0.1, 0.25) * w * c.scale,
            c.u(0, math.pi),
            c.pick(),
        )


def _blinds(c: _Canvas) -> None:
    w, h = c.w, c.h
    angle = c.u(-0.35, 0.35)
    cx0, cy0 = c.u(0.2, 0.8) * w, c.u(0.2, 0.8) * h
    n = int(c.rng.integers(3, 6)) if c.scale >= 1 else 2
    gap = c.u(0.06, 0.1) * h
    length = c.u(0.5, 1.2) * w
    for i in range(n):
        _rotated_band(
            c.draw, cx0, cy0 + (i - n / 2) * gap, length, gap * 0.45, angle, (225, 225, 225)
        )


def _drips(c: _Canvas) -> None:
    w, h = c.w, c.h
    y0 = c.u(0, 0.4) * h
    c.draw.rectangle((0, 0, w, y0), fill=c.pick())
    for _ in range(int(c.rng.integers(3, 7)) if c.scale >= 1 else 2):
        x = c.u(0, 1) * w
        dw = c.u(0.04, 0.1) * w
        length = c.u(0.1, 0.55) * h * c.scale
        color = c.pick(c.accents[:2])
        c.draw.rectangle((x - dw / 2, y0 - 2, x + dw / 2, y0 + length), fill=color)
        c.draw.ellipse(
            (x - dw * 0.8, y0 + length - dw * 0.8, x + dw * 0.8, y0 + length + dw * 0.8),
            fill=color,
        )


def _rings(c: _Canvas) -> None:
    w, h = c.w, c.h
    cx, cy = c.u(0.1, 0.9) * w, c.u(0.1, 0.9) * h
    r = c.u(0.35, 0.6) * w * c.scale
    for k, color in enumerate((c.accents[0], c.accents[2], c.accents[1])):
        rr = r * (1 - 0.3 * k)
        c.draw.ellipse(
            (cx - rr, cy - rr, cx + rr, cy + rr),
            outline=color,
            width=max(2, int(0.06 * w * c.scale)),
        )


def _spotlights(c: _Canvas) -> None:
    w, h = c.w, c.h
    for _ in range(int(c.rng.integers(1, 4)) if c.scale >= 1 else 1):
        sx = c.u(0, 1) * w
        bx = c.u(-0.2, 1.2) * w
        half = c.u(0.15, 0.3) * w * c.scale
        c.draw.polygon([(sx, 0), (bx - half, h), (bx + half, h)], fill=c.pick(c.accents[:2]))


def _fog(c: _Canvas) -> None:
    w, h = c.w, c.h
    for _ in range(int(c.rng.integers(2, 5)) if c.scale >= 1 else 2):
        cx, cy = c.u(0, 1) * w, c.u(0, 1) * h
        rx, ry = c.u(0.25, 0.5) * w * c.scale, c.u(0.06, 0.15) * h * c.scale
        c.draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=c.pick())


def _hearts(c: _Canvas) -> None:
    w, h = c.w, c.h
    n = int(c.rng.integers(1, 4)) if c.scale >= 1 else 1
    for _ in range(n):
        _heart(
            c.draw,
            c.u(0.15, 0.85) * w,
            c.u(0.1, 0.75) * h,
            c.u(0.15, 0.35) * w * c.scale,
            c.pick(),
        )


def _planet(c: _Canvas) -> None:
    w, h = c.w, c.h
    cx, cy = c.u(0, 1) * w, c.u(0, 1) * h
    r = c.u(0.2, 0.45) * w * c.scale
    c.draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=c.pick())
    _rotated_band(c.draw, cx, cy, 3.2 * r, 0.18 * r, c.u(-0.6, 0.6), c.pick())


def _shards(c: _Canvas) -> None:
    w, h = c.w, c.h
    for _ in range(int(c.rng.integers(2, 4)) if c.scale >= 1 else 1):
        cx, cy = c.u(0, 1) * w, c.u(0, 1) * h
        r = c.u(0.2, 0.5) * w * c.scale
        pts = [
            (cx + r * math.cos(a), cy + r * math.sin(a))
            for a in sorted(c.rng.uniform(0, 2 * math.pi, 3))
        ]
        c.draw.polygon(pts, fill=c.pick())


def _smoke(c: _Canvas) -> None:
    w, h = c.w, c.h
    for _ in range(int(c.rng.integers(3, 6)) if c.scale >= 1 else 2):
        cx, cy = c.u(0, 1) * w, c.u(0.3, 1.0) * h
        r = c.u(0.12, 0.3) * w * c.scale
        c.draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=c.pick(c.accents[1:]))
    if c.scale >= 1:
        _rotated_band(
            c.draw, c.u(0.2, 0.8) * w, c.u(0.3, 0.8) * h, 0.9 * w, 0.05 * h, c.u(-0.8, 0.8),
            c.accents[0],
        )


def _sun(c: _Canvas) -> None:
    w, h = c.w, c.h
    horizon = c.u(0.5, 0.85) * h
    cx, r = c.u(0.15, 0.85) * w, c.u(0.15, 0.3) * w * c.scale
    c.draw.ellipse(
        (cx - r, horizon - r * c.u(0.6, 1.6), cx + r, horizon + r * (2 - c.u(0.6, 1.6))),
        fill=c.accents[1],
    )
    if c.scale >= 1:
        c.draw.rectangle((0, horizon, w, h), fill=c.pick((c.accents[0], c.accents[2])))


def _square(c: _Canvas) -> None:
    w, h = c.w, c.h
    r = c.u(0.2, 0.4) * w * c.scale
    cx, cy = c.u(0, 1) * w, c.u(0, 1) * h
    c.draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=c.pick())


MOTIFS = {
    "stripes": _stripes,
    "mountains": _mountains,
    "confetti": functools.partial(_circles, balloons=False),
    "balloons": functools.partial(_circles, balloons=True),
    "sunburst": _sunburst,
    "tape": _tape,
    "grid": _grid,
    "silhouette": _silhouette,
    "stars": _stars,
    "blinds": _blinds,
    "drips": _drips,
    "rings": _rings,
    "spotlights": _spotlights,
    "fog": _fog,
    "hearts": _hearts,
    "planet": _planet,
    "shards": _shards,
    "smoke": _smoke,
    "sun": _sun,
}
"""Motif name -> how it is drawn; an unknown motif is drawn as a square."""


def _draw_motif(
    draw: ImageDraw.ImageDraw,
    motif: str,
    style: GenreStyle,
    rng: np.random.Generator,
    width: int,
    height: int,
    scale: float,
) -> None:
    """Draw one genre motif; scale 1.0 is the dominant version, smaller for secondary genres."""
    MOTIFS.get(motif, _square)(_Canvas(draw, rng, style.accents, width, height, scale))


def _title_block(img: Image.Image, film: Film, style: GenreStyle, rng: np.random.Generator) -> None:
    """Draw the title and year in a band at a random height."""
    w, h = img.size
    draw = ImageDraw.Draw(img)
    font_size = max(9, int(h * 0.05))
    band_h = int(font_size * 2.6)
    top = (
        int(rng.uniform(0.02, 0.12) * h)
        if rng.random() < 0.5
        else int(h - band_h - rng.uniform(0.02, 0.1) * h)
    )
    dark = sum(style.background[0]) < 300
    band = (245, 245, 240) if dark else (20, 20, 25)
    ink = (20, 20, 25) if dark else (245, 245, 240)
    draw.rectangle((0, top, w, top + band_h), fill=band)
    font = _font(font_size)
    text = film.title.upper()
    while len(text) > 3 and draw.textlength(text, font=font) > w - 8:
        text = text[:-1]
    draw.text((4, top + 2), text, fill=ink, font=font)
    draw.text((4, top + 4 + font_size), str(film.year), fill=ink, font=_font(max(8, font_size - 3)))


def _texture(img: Image.Image, look: str, phase: float) -> Image.Image:
    """The poster under its look's stripes: crests blend towards white, troughs towards black."""
    width, height = img.size
    cycles_x, cycles_y = LOOK_WAVES[look]
    xs = (np.arange(width, dtype=np.float32) + 0.5) / width
    ys = (np.arange(height, dtype=np.float32) + 0.5) / height
    angle = 2.0 * np.pi * (cycles_x * xs[None, :] + cycles_y * ys[:, None]) + phase
    wave = (LOOK_STRENGTH * np.cos(angle))[..., None]
    pixels = np.asarray(img, dtype=np.float32)
    pixels = pixels + np.where(wave > 0, wave * (255.0 - pixels), wave * pixels)
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "RGB")


def draw_poster(
    film: Film, seed: int, size: tuple[int, int] = DEFAULT_SIZE, look: str | None = None
) -> Image.Image:
    """Draw the RGB poster of a film from a base seed and its movie id, in its look by default."""
    own_look, phase = _look_and_phase(film.movie_id, seed)
    look = own_look if look is None else look
    if look not in LOOK_WAVES:
        raise ValueError(f"unknown poster look {look!r}; expected one of {LOOKS}")
    width, height = size
    rng = np.random.default_rng([seed & 0xFFFFFFFF, film.movie_id & 0xFFFFFFFF, 0x9051E7])
    genres = film.genres or ("Drama",)
    style = style_for(genres[0])
    img = _background(style, rng, width, height)
    draw = ImageDraw.Draw(img)
    _draw_motif(draw, style.motif, style, rng, width, height, 1.0)
    for extra in genres[1:]:
        extra_style = style_for(extra)
        _draw_motif(draw, extra_style.motif, extra_style, rng, width, height, 0.55)
    lit = np.asarray(img, dtype=np.float32)
    field = _lighting(rng, width, height)[..., None]
    lit = lit * (1.0 + 0.45 * field) + 45.0 * field
    img = Image.fromarray(np.clip(lit, 0, 255).astype(np.uint8), "RGB")
    img = _texture(img, look, phase)
    _title_block(img, film, style, rng)
    return _widen_hash_margin(img, HASH_MARGIN)


@functools.lru_cache(maxsize=8)
def _phash_basis(n: int) -> np.ndarray:
    """The 32-point orthonormal DCT basis for frequencies 0..7 sampled at n pixels, shape (n, 8)."""
    scale = np.full(8, math.sqrt(2.0 / 32), dtype=np.float32)
    scale[0] = math.sqrt(1.0 / 32)
    return _cosine_basis(n) * scale


def _phash_block(img: Image.Image) -> np.ndarray:
    """The top-left 8x8 DCT block that phash64 thresholds."""
    gray = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    dct = _dct_matrix(32)
    return (dct @ gray @ dct.T)[:8, :8]


def _widen_hash_margin(img: Image.Image, margin: float, passes: int = 2) -> Image.Image:
    """Nudge the luminance so no AC pHash coefficient lies within margin of the median.

    Only coefficients already close to the median move, each away from it on its own
    side, so the hash bits are unchanged while small edits (re-encoding, resizing,
    cropping, brightness) can no longer push them across the threshold.
    """
    width, height = img.size
    pixels = np.asarray(img, dtype=np.float32)
    for _ in range(passes):
        ac = _phash_block(img).ravel()[1:]
        median = float(np.median(ac))
        gap = ac - median
        close = (np.abs(gap) < margin) & (gap != 0.0)
        if not close.any():
            break
        delta = np.zeros(64, dtype=np.float32)
        delta[1:][close] = (median + np.sign(gap[close]) * margin - ac[close]) * 1.05
        field = _phash_basis(height) @ delta.reshape(8, 8) @ _phash_basis(width).T
        pixels = pixels + field[..., None]
        img = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "RGB")
    return img


def encode_jpeg(img: Image.Image, quality: int = 90) -> bytes:
    """Encode an image as baseline JPEG bytes, deterministically."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality, subsampling=2, optimize=False)
    return buf.getvalue()


def _either_side(rng: np.random.Generator, low: float, high: float) -> float:
    """A factor drawn from [low, high] but kept at least 0.05 away from 1.0."""
    while True:
        value = float(rng.uniform(low, high))
        if abs(value - 1.0) >= 0.05:
            return value


def near_copy(jpeg_bytes: bytes, transform: str, rng: np.random.Generator) -> bytes:
    """A near-duplicate JPEG of a poster: re-encoded, resized, cropped or brightened."""
    with Image.open(io.BytesIO(jpeg_bytes)) as src:
        img = src.convert("RGB")
    if transform == "reencode":
        return encode_jpeg(img, quality=int(rng.integers(65, 76)))
    if transform == "resize":
        factor = _either_side(rng, 0.6, 1.6)
        new_size = (max(8, round(img.width * factor)), max(8, round(img.height * factor)))
        return encode_jpeg(img.resize(new_size, Image.Resampling.LANCZOS), quality=88)
    if transform == "crop":
        total_x = rng.uniform(0.02, 0.04) * img.width
        total_y = rng.uniform(0.02, 0.04) * img.height
        left = round(total_x * rng.uniform(0.3, 0.7))
        top = round(total_y * rng.uniform(0.3, 0.7))
        box = (left, top, img.width - (round(total_x) - left), img.height - (round(total_y) - top))
        return encode_jpeg(img.crop(box), quality=88)
    if transform == "brightness":
        factor = _either_side(rng, 0.85, 1.15)
        arr = np.asarray(img, dtype=np.float32) * factor
        return encode_jpeg(
            Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGB"), quality=88
        )
    raise ValueError(
        f"unknown near-copy transform {transform!r}; expected one of {NEAR_TRANSFORMS}"
    )


@functools.lru_cache(maxsize=1)
def _dct_matrix(n: int = 32) -> np.ndarray:
    """Orthonormal DCT-II matrix of size n x n."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    mat = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * i + 1) * k / (2 * n))
    mat[0, :] = np.sqrt(1.0 / n)
    return mat


def phash64(img: Image.Image) -> int:
    """Reference 64-bit DCT pHash: gray, 32x32 Lanczos, top-left 8x8 block vs. its AC median."""
    gray = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    dct = _dct_matrix(32)
    block = (dct @ gray @ dct.T)[:8, :8].ravel()
    median = float(np.median(block[1:]))
    value = 0
    for bit in block > median:
        value = (value << 1) | int(bit)
    return value


def phash64_bytes(data: bytes) -> int:
    """phash64 of encoded image bytes."""
    with Image.open(io.BytesIO(data)) as img:
        return phash64(img)


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two hashes."""
    return (a ^ b).bit_count()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk with its length and CRC."""
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def decompression_bomb_png(width: int = 60000, height: int = 60000) -> bytes:
    """A few-KB PNG whose header claims width x height pixels (8-bit grayscale)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = b"".join(b"\x00" + bytes(width) for _ in range(4))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(rows, 9))
        + _png_chunk(b"IEND", b"")
    )


def _crop_edges(img: Image.Image, fraction: float) -> Image.Image:
    dx, dy = round(img.width * fraction), round(img.height * fraction)
    return img.crop((dx, dy, img.width - dx, img.height - dy))


def _resize(img: Image.Image, factor: float) -> Image.Image:
    size = (max(1, round(img.width * factor)), max(1, round(img.height * factor)))
    return img.resize(size, Image.Resampling.LANCZOS)


def _brighten(img: Image.Image, factor: float) -> Image.Image:
    return ImageEnhance.Brightness(img).enhance(factor)


# The copies a near-duplicate step must still join to their original: 3% cropped off every edge,
# resized to 60%, saved at JPEG quality 55, brightened 12%, and all four together.
COPY_TRANSFORMS = ("crop3", "resize60", "jpeg55", "bright12", "all4")


def edited_copy(jpeg_bytes: bytes, transform: str) -> bytes:
    """A copy of a poster after one of :data:`COPY_TRANSFORMS` (deterministic)."""
    with Image.open(io.BytesIO(jpeg_bytes)) as src:
        img = src.convert("RGB")
    if transform == "crop3":
        return encode_jpeg(_crop_edges(img, 0.03))
    if transform == "resize60":
        return encode_jpeg(_resize(img, 0.6))
    if transform == "jpeg55":
        return encode_jpeg(img, quality=55)
    if transform == "bright12":
        return encode_jpeg(_brighten(img, 1.12))
    if transform == "all4":
        return encode_jpeg(_brighten(_resize(_crop_edges(img, 0.03), 0.6), 1.12), quality=55)
    raise ValueError(f"transform must be one of {COPY_TRANSFORMS}, not {transform!r}")
