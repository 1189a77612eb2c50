"""Synthetic scenes with per-pixel labels: textured objects on a smooth background.

A scene of any size is a deterministic function of ``(seed, height, width)``. Objects are
blobs of fixed size in pixels (radius :data:`RADIUS`), so a bigger image holds more of them
(:data:`OBJECTS_PER_MPIX` per million pixels). Each object is filled with one of the periodic
textures of :data:`CLASSES`, a brightness pattern of random contrast and sign over a random
base colour, at a random period, angle and phase:
colour says nothing about the class, and a single 16-pixel patch sees about one period, so the
class needs the context of neighbouring patches (stripes and the flanks of rings look alike
locally). Objects span several patches (radius 36-80 px against the 16 px patch), so the
stride-24 stitch of SPEC §2 (upsample by r = 2, average) does not blur their features: with
radius 18-40 it did, and a student fitting those targets lost to the single pass
(docs/WORLD.md, "Second round"). The background (label 0) is a smooth random colour gradient with mild noise.

Labels are ``uint8 [H, W]``: the class index, 255 on a one-pixel band along object outlines
(pixels whose class is ambiguous after antialiasing).
"""
from __future__ import annotations

import numpy as np

CLASSES = ("background", "stripes", "checker", "dots", "rings")
RADIUS = (36.0, 80.0)          # object radius in pixels, uniform
PERIOD = (10.0, 18.0)          # texture period in pixels, uniform
OBJECTS_PER_MPIX = 40.0        # about 10 objects in a 512x512 scene, 0.7 in a 128x128 one
IGNORE = 255


def _texture(kind: int, u: np.ndarray, v: np.ndarray, r: np.ndarray, period: float,
             phase: float) -> np.ndarray:
    """Binary pattern ``[h, w]`` in {0, 1} of class ``kind`` in rotated coordinates ``u, v``
    (pixels, origin at the object centre) and radius ``r``."""
    w = 2 * np.pi / period
    if kind == 1:    # stripes
        return (np.sin(w * u + phase) > 0).astype(np.float32)
    if kind == 2:    # checker
        return ((np.sin(w * u + phase) > 0) ^ (np.sin(w * v + phase) > 0)).astype(np.float32)
    if kind == 3:    # dots on a square lattice
        du = (u / period + phase / (2 * np.pi)) % 1.0 - 0.5
        dv = (v / period) % 1.0 - 0.5
        return (du * du + dv * dv < 0.09).astype(np.float32)
    # rings around the object centre
    return (np.sin(w * r + phase) > 0).astype(np.float32)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth gradient between two random colours plus low noise: float32 ``[H, W, 3]``."""
    c0, c1 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    t = (np.cos(angle) * xx + np.sin(angle) * yy) / max(height, width, 1)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    return img.astype(np.float32)


def render_scene(seed: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The scene ``(image uint8 [H, W, 3], label uint8 [H, W])`` of ``seed`` at ``height x width``.

    Deterministic: the same arguments give the same arrays on every machine (numpy's PCG64).
    """
    if height < 1 or width < 1:
        raise ValueError(f"scene size {height}x{width} is empty")
    rng = np.random.default_rng([int(seed), int(height), int(width)])
    img = _background(rng, height, width)
    label = np.zeros((height, width), np.uint8)
    edge = np.zeros((height, width), bool)
    n = rng.poisson(OBJECTS_PER_MPIX * height * width / 1e6)
    n = max(1, int(n))
    for _ in range(n):
        kind = int(rng.integers(1, len(CLASSES)))
        radius = rng.uniform(*RADIUS)
        cy, cx = rng.uniform(-radius / 2, height + radius / 2), rng.uniform(-radius / 2, width + radius / 2)
        # blob: a radius modulated by a few low harmonics, so outlines are not plain circles
        harm = rng.normal(0, 0.12, 3)
        hphase = rng.uniform(0, 2 * np.pi, 3)
        ext = int(np.ceil(radius * 1.5)) + 1
        y0, y1 = max(0, int(cy) - ext), min(height, int(cy) + ext + 1)
        x0, x1 = max(0, int(cx) - ext), min(width, int(cx) + ext + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dy, dx = yy + 0.5 - cy, xx + 0.5 - cx
        r = np.sqrt(dy * dy + dx * dx)
        theta = np.arctan2(dy, dx)
        bound = radius * (1 + sum(a * np.cos((k + 2) * theta + p) for k, (a, p) in enumerate(zip(harm, hphase))))
        inside = r < bound
        if not inside.any():
            continue
        angle = rng.uniform(0, np.pi)
        u = np.cos(angle) * dx + np.sin(angle) * dy
        v = -np.sin(angle) * dx + np.cos(angle) * dy
        pattern = _texture(kind, u, v, r, rng.uniform(*PERIOD), rng.uniform(0, 2 * np.pi))
        base = rng.uniform(0.25, 0.75, 3)
        contrast = rng.uniform(0.25, 0.45) * rng.choice((-1.0, 1.0))
        fill = base + contrast * (pattern[..., None] - 0.5)
        region = img[y0:y1, x0:x1]
        region[inside] = fill[inside]
        label[y0:y1, x0:x1][inside] = kind
        band = np.abs(r - bound) < 1.0
        edge[y0:y1, x0:x1] |= band
        edge[y0:y1, x0:x1][inside & ~band] = False
    img += rng.normal(0, 0.03, img.shape).astype(np.float32)
    label[edge] = IGNORE
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), label
