"""Drawing label maps: a color palette, the overlay with a legend, palette mask PNGs."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from ..atomic import save_image
from .classes import display_name

# Overlay opacity of the class colors over the photo.
ALPHA = 0.5


def palette(n: int) -> np.ndarray:
    """``uint8 [n, 3]`` distinct colors (the PASCAL VOC bit-interleaved colormap)."""
    colors = np.zeros((n, 3), dtype=np.uint8)
    for k in range(n):
        c, r, g, b = k, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colors[k] = (r, g, b)
    return colors


def blend(image: np.ndarray, labels: np.ndarray, num_classes: int) -> Image.Image:
    """Photo ``uint8 [H, W, 3]`` blended (opacity ``ALPHA``) with the colors of ``labels [H, W]``."""
    colors = palette(num_classes)
    mixed = image.astype(np.float32) * (1 - ALPHA) + colors[labels].astype(np.float32) * ALPHA
    return Image.fromarray(np.rint(mixed).astype(np.uint8))


def overlay(image: np.ndarray, labels: np.ndarray, lines: list[str]) -> Image.Image:
    """Photo ``uint8 [H, W, 3]`` blended with the colors of ``labels [H, W]``, plus a legend of
    the classes present (first name of each line) on the right."""
    colors = palette(len(lines))
    canvas = blend(image, labels, len(lines))
    present = np.unique(labels).tolist()
    row, pad = 18, 6
    names = [display_name(lines[k]) for k in present]
    legend_w = pad * 3 + row + 7 * max(len(n) for n in names)
    out = Image.new("RGB", (canvas.width + legend_w, max(canvas.height, pad + row * len(names))),
                    (255, 255, 255))
    out.paste(canvas, (0, 0))
    draw = ImageDraw.Draw(out)
    for i, (k, name) in enumerate(zip(present, names)):
        x, y = canvas.width + pad, pad + i * row
        draw.rectangle([x, y, x + row - 4, y + row - 4], fill=tuple(int(v) for v in colors[k]))
        draw.text((x + row + pad, y + 1), name, fill=(0, 0, 0))
    return out


def mask_image(labels: np.ndarray, num_classes: int) -> Image.Image:
    """Label indices ``[H, W]`` as an image: palette mode up to 256 classes, else 16-bit grey."""
    if num_classes <= 256:
        img = Image.fromarray(labels.astype(np.uint8), mode="P")
        img.putpalette(palette(256).flatten().tolist())
        return img
    return Image.fromarray(labels.astype(np.uint16))


def save_mask(labels: np.ndarray, num_classes: int, path: str) -> None:
    """Label indices as a PNG (:func:`mask_image`), written atomically."""
    save_image(mask_image(labels, num_classes), path)
