"""Input resolutions of a resolution sweep: a keep-ratio resize to a short side, a long side or
an area (Fig. 3 / Fig. 4 of the paper evaluate one dataset at several of them).

Text form (``spar-fast eval --sweep``, ``--resolution``)::

    short:512            short side 512 px
    long:1024            long side 1024 px
    area:524288          about 524,288 pixels (the ratio kept)
    area:512x1024        the same area written as a size (H x W, only the product counts)
    short:256,512,768    a sweep: one kind, several values

The resize keeps the aspect ratio and rounds each side as the test resize of SPEC §5.1 does
(``int(side * factor + 0.5)``), so ``long:2048`` of a 1024x2048 image is the identity.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import UserError

KINDS = ("short", "long", "area")


@dataclass(frozen=True)
class Resolution:
    """A keep-ratio target size: ``kind`` "short" / "long" (a side in pixels) or "area" (pixels)."""
    kind: str
    value: int

    def __post_init__(self):
        if self.kind not in KINDS:
            raise UserError(f"resolution kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not isinstance(self.value, int) or self.value < 1:
            raise UserError(f"{self.kind} resolution must be a positive whole number, got {self.value!r}")

    def factor(self, height: int, width: int) -> float:
        """The scale factor taking an ``height x width`` image to this resolution."""
        if height <= 0 or width <= 0:
            raise UserError(f"image size {height}x{width} is empty")
        if self.kind == "short":
            return self.value / min(height, width)
        if self.kind == "long":
            return self.value / max(height, width)
        return math.sqrt(self.value / (height * width))

    def hw(self, height: int, width: int) -> tuple[int, int]:
        """``(H', W')``: the image resized to this resolution, each side at least 1 px."""
        f = self.factor(height, width)
        return max(1, int(height * f + 0.5)), max(1, int(width * f + 0.5))

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"


def _value(kind: str, text: str) -> int:
    text = text.strip()
    parts = text.lower().split("x") if kind == "area" else [text]
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        form = "a number of pixels or HxW" if kind == "area" else "a side in pixels"
        raise UserError(f"bad {kind} resolution {text!r}: expected {form}") from None
    if len(numbers) > 2 or min(numbers) < 1:
        raise UserError(f"bad {kind} resolution {text!r}: expected positive whole numbers")
    return math.prod(numbers)


def parse_resolutions(text: str) -> tuple[Resolution, ...]:
    """``"KIND:V1,V2,..."`` -> one :class:`Resolution` per value, in the order given (a value
    given twice is an error: the sweep would repeat a point)."""
    kind, sep, values = str(text).partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in KINDS or not values.strip():
        raise UserError(f"bad resolution {text!r}: expected KIND:V1,V2,... with KIND one of "
                        f"{', '.join(KINDS)} (e.g. short:256,512,768 or area:512x1024)")
    out = tuple(Resolution(kind, _value(kind, v)) for v in values.split(","))
    if len(set(out)) != len(out):
        raise UserError(f"resolution {text!r} repeats a value")
    return out


def parse_resolution(text: str) -> Resolution:
    """``"KIND:VALUE"`` -> one :class:`Resolution`."""
    out = parse_resolutions(text)
    if len(out) != 1:
        raise UserError(f"expected one resolution (KIND:VALUE), got {text!r}")
    return out[0]
