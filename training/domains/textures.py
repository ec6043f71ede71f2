"""Procedural textures and shape masks for the synthetic clip generator.

Numpy and OpenCV only. Every function draws from the `numpy.random.Generator`
it is given, so a seed fixes the result. Images are float32 ``[H, W, 3]`` in
``[0, 1]``; shape masks are float32 ``[S, S]`` alpha in ``[0, 1]``.
"""

from __future__ import annotations

import cv2
import numpy as np

SHAPES = ("ellipse", "polygon", "star", "blob")

# OpenCV drawing takes integer coordinates with this many fractional bits.
_DRAW_SHIFT = 4


def smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float,
                 channels: int = 1) -> np.ndarray:
    """Value noise: random values on a grid `cell` pixels apart, bicubically upsampled.

    Returns float32 ``[height, width, channels]``, roughly in ``[0, 1]``.
    """
    cell = max(float(cell), 1.0)
    grid_h, grid_w = int(height / cell) + 3, int(width / cell) + 3
    grid = rng.random((grid_h, grid_w, channels), dtype=np.float32)
    size = (int(grid_w * cell), int(grid_h * cell))
    noise = cv2.resize(grid, size, interpolation=cv2.INTER_CUBIC).reshape(size[1], size[0], channels)
    # A random offset inside the first cell so the grid does not line up across textures.
    top, left = rng.integers(0, int(cell) + 1, size=2)
    return noise[top:top + height, left:left + width]


def fractal_noise(rng: np.random.Generator, height: int, width: int, cell: float,
                  octaves: int = 4) -> np.ndarray:
    """Sum of `octaves` value-noise layers, each at half the cell size and half the weight
    of the one before; normalised to ``[0, 1]``. Returns float32 ``[height, width]``."""
    total = np.zeros((height, width), np.float32)
    for octave in range(octaves):
        total += 0.5 ** octave * smooth_noise(rng, height, width, cell / 2 ** octave)[..., 0]
    low, high = float(total.min()), float(total.max())
    return (total - low) / max(high - low, 1e-6)


def colour_ramp(rng: np.random.Generator, values: np.ndarray, num_colours: int) -> np.ndarray:
    """Maps values in ``[0, 1]`` through a piecewise-linear ramp of random colours."""
    stops = rng.random((num_colours, 3), dtype=np.float32)
    positions = np.linspace(0.0, 1.0, num_colours)
    levels = np.linspace(0.0, 1.0, 256)
    table = np.stack([np.interp(levels, positions, stops[:, c]) for c in range(3)], axis=-1)
    return table.astype(np.float32)[np.round(values * 255).astype(np.uint8)]


def _pattern(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Rotated stripes or checkerboard with a random period; float32 ``[H, W]`` in [0, 1]."""
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(4, 32)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    along = (xs * np.cos(angle) + ys * np.sin(angle)) * np.float32(2 * np.pi / period)
    if rng.random() < 0.5:
        wave = np.sin(along + rng.uniform(0, 2 * np.pi))
    else:
        across = (-xs * np.sin(angle) + ys * np.cos(angle)) * np.float32(2 * np.pi / period)
        wave = np.sin(along) * np.sin(across)
    # Sharpness from soft sinusoid to nearly hard-edged bands.
    sharpness = np.float32(rng.uniform(1, 6))
    return np.clip(wave * sharpness * 0.5 + 0.5, 0, 1)


def _blobs(rng: np.random.Generator, image: np.ndarray, count: int) -> None:
    """Paints `count` soft-edged, shaded ellipses of random colours onto `image` in place."""
    height, width = image.shape[:2]
    colours = np.zeros_like(image)
    mask = np.zeros((height, width), np.uint8)
    for _ in range(count):
        centre = (int(rng.uniform(0, width)), int(rng.uniform(0, height)))
        axes = tuple(int(a) for a in rng.uniform(2, 0.15 * min(height, width), size=2))
        angle = float(rng.uniform(0, 180))
        colour = tuple(float(c) for c in rng.random(3))
        cv2.ellipse(colours, centre, axes, angle, 0, 360, colour, -1)
        cv2.ellipse(mask, centre, axes, angle, 0, 360, 255, -1)
    # Shading so that blobs are not flat, untrackable patches.
    shade = fractal_noise(rng, height, width, rng.uniform(4, 32), octaves=3)
    colours *= (0.5 + shade)[..., None]
    alpha = cv2.GaussianBlur(mask.astype(np.float32) / 255, (0, 0), rng.uniform(0.5, 2.0))
    # `colours` is hard-edged: outside the blobs use the image itself so that the soft
    # edge fades towards the background rather than towards black.
    colours = np.where(mask[..., None] > 0, colours, image)
    image += alpha[..., None] * (colours - image)


def make_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random texture: coloured fractal noise, optionally stripes or a checkerboard and
    photo-like blobs, plus fine per-channel grain so every patch is trackable.

    Returns float32 ``[height, width, 3]`` in ``[0, 1]``.
    """
    scale = rng.uniform(0.1, 0.5) * min(height, width)
    base = fractal_noise(rng, height, width, scale, octaves=int(rng.integers(2, 5)))
    image = colour_ramp(rng, base, int(rng.integers(2, 5)))
    if rng.random() < 0.5:
        strength = np.float32(rng.uniform(0.3, 0.8))
        colour = rng.random(3, dtype=np.float32)
        pattern = _pattern(rng, height, width)[..., None] * strength
        image += pattern * (colour - image)
    if rng.random() < 0.7:
        _blobs(rng, image, int(rng.integers(3, 16)))
    grain = smooth_noise(rng, height, width, rng.uniform(1.5, 3.0), channels=3) - 0.5
    image += np.float32(rng.uniform(0.1, 0.3)) * grain
    return np.clip(image, 0, 1)


def make_faint_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A weak, fine texture: one surface colour with low-contrast detail a few pixels in
    size, as on table tops, floors, walls and fabric, where a tracker has little to hold on to.

    Fine grain, and half the time thin lines 5-24 pixels apart (parallel fibres or a
    grid), at 2-12 % contrast (the lines up to about 15 %), over a slow shading of up to
    15 %. Returns float32 ``[height, width, 3]`` in ``[0, 1]``.
    """
    # Mostly muted colours (wood, stone, plastic, cloth): a grey level and a little hue.
    colour = np.clip(rng.uniform(0.15, 0.85) + rng.uniform(0.0, 0.4) * (rng.random(3) - 0.5), 0.05, 0.95)
    colour = colour.astype(np.float32)
    detail = fractal_noise(rng, height, width, rng.uniform(2.0, 8.0), octaves=3) - 0.5
    if rng.random() < 0.5:
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(5, 24)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        directions = [angle, angle + np.pi / 2] if rng.random() < 0.5 else [angle]
        lines = np.zeros((height, width), np.float32)
        for direction in directions:
            along = (xs * np.cos(direction) + ys * np.sin(direction)) / np.float32(period)
            # Distance in pixels to the nearest line; lines about 1-2 px wide.
            distance = np.abs(along - np.round(along)) * np.float32(period)
            lines = np.maximum(lines, np.exp(-0.5 * (distance / np.float32(rng.uniform(0.5, 1.0))) ** 2))
        detail = 0.5 * detail + (lines - 0.5) * np.float32(rng.choice([-1.0, 1.0]))
    contrast = np.float32(rng.uniform(0.02, 0.12))
    shading = np.float32(rng.uniform(0.0, 0.15)) * (
        fractal_noise(rng, height, width, rng.uniform(0.2, 0.6) * min(height, width), octaves=2) - 0.5)
    tint = 1 + np.float32(0.3) * (rng.random(3, dtype=np.float32) - 0.5)  # detail not quite grey
    image = colour * (1 + shading[..., None]) + contrast * detail[..., None] * tint
    return np.clip(image, 0, 1).astype(np.float32)


def make_shape_mask(rng: np.random.Generator, size: int, radius: float,
                    kind: str | None = None) -> np.ndarray:
    """An anti-aliased alpha mask of a random shape centred in a ``size x size`` sprite.

    The shape lies inside the disc of `radius` pixels around the sprite centre and
    contains that centre, so it is never empty. `kind` is one of `SHAPES`; random
    when None.

    Returns float32 ``[size, size]`` in ``[0, 1]``.
    """
    kind = kind if kind is not None else SHAPES[rng.integers(len(SHAPES))]
    # OpenCV drawing puts pixel centres at integers; the raster centre size/2 is size/2 - 0.5 there.
    centre = np.array([size / 2 - 0.5, size / 2 - 0.5])
    canvas = np.zeros((size, size), np.uint8)

    def to_fixed(points: np.ndarray) -> np.ndarray:
        return np.round(points * (1 << _DRAW_SHIFT)).astype(np.int32)

    if kind == "ellipse":
        axes = radius * rng.uniform(0.4, 1.0, size=2)
        cv2.ellipse(canvas, tuple(int(v) for v in to_fixed(centre)), tuple(int(v) for v in to_fixed(axes)),
                    float(rng.uniform(0, 180)), 0, 360, 255, -1, cv2.LINE_AA, _DRAW_SHIFT)
    elif kind in ("polygon", "star"):
        if kind == "polygon":
            count = int(rng.integers(3, 10))
            # Jittered even angles: the gaps stay below 180 degrees, so the polygon surrounds the centre.
            spacing = 2 * np.pi / count
            angles = np.arange(count) * spacing + rng.uniform(-0.2, 0.2, count) * spacing
            radii = radius * rng.uniform(0.5, 1.0, count)
        else:
            tips = int(rng.integers(4, 9))
            count = 2 * tips
            angles = np.linspace(0, 2 * np.pi, count, endpoint=False) + rng.uniform(0, 2 * np.pi)
            radii = np.where(np.arange(count) % 2 == 0, radius, radius * rng.uniform(0.3, 0.6))
        vertices = centre + radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=-1)
        cv2.fillPoly(canvas, [to_fixed(vertices)], 255, cv2.LINE_AA, _DRAW_SHIFT)
    elif kind == "blob":
        noise = fractal_noise(rng, size, size, radius / 2, octaves=3)
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + np.float32(0.5)
        r2 = ((xs - size / 2) ** 2 + (ys - size / 2) ** 2) / np.float32(radius ** 2)
        # 0.5 * noise + (1 - r^2) exceeds 0.75 everywhere inside r = 0.5 and nowhere outside r = 1.
        field = 0.5 * noise + (1 - r2)
        canvas = np.where(field > 0.75, 255, 0).astype(np.uint8)
        return cv2.GaussianBlur(canvas.astype(np.float32) / 255, (0, 0), 0.7)
    else:
        raise ValueError(f"unknown shape kind {kind!r}; expected one of {SHAPES}")
    return canvas.astype(np.float32) / 255
