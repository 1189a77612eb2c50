"""A segmentation request of the page, parsed and checked before it waits for the model.

The page posts one JSON object::

    {"image": {"name": "cat.jpg", "data": "<base64>"} | "example_image": "cat.jpg",
     "classes": "cat\\nsofa, couch; floor" | "class_file": "voc.txt"
                | "query_file": {"name": ..., "data": ...} | "example_queries": "voc.safetensors",
     "backbone": ..., "weights": ..., "mode": "single" | "slide", "stride": 24,
     "refine": "none" | "lposs" | "lposs+", "resize": true}

Classes typed in the page: one per line or separated by ";", synonyms by ", " (as ``--classes``).
Every problem is one :class:`RequestError` line; the image's pixel count is read from its header
before any decoding (:func:`spar_fast.data.images.read_rgb`).
"""
from __future__ import annotations

import base64
import binascii
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import UserError
from ...segmentation.queries import parse_classes, read_class_file
from ...segmentation.query_file import QuerySet, load_query_set
from .examples import Examples, RequestError
from .options import ServeOptions

MODES = ("single", "slide")
REFINES = ("none", "lposs", "lposs+")
MAX_STRIDE = 4096  # a stride beyond any window: one window per side anyway
MAX_CLASSES = 1000  # text encoding of more names than this takes minutes on a CPU


@dataclass(frozen=True)
class SegmentRequest:
    """What to segment and how. ``image``: ``uint8 [H, W, 3]``; ``lines``: class lines (those of
    ``queries`` when a query file was given); ``refine``: None, "lposs" or "lposs+"."""

    image: np.ndarray
    image_name: str
    lines: tuple[str, ...]
    queries: QuerySet | None
    backbone: str
    weights: str
    mode: str
    stride: int
    refine: str | None
    resize: bool


def _choice(body: dict, key: str, offered, default=None):
    value = body.get(key, default)
    if value not in offered:
        raise RequestError(f"{key} must be one of {', '.join(map(str, offered))}, got {value!r}")
    return value


def _upload(body: dict, key: str) -> tuple[str, bytes]:
    """``(name, bytes)`` of an uploaded file ``{"name": ..., "data": base64}``."""
    item = body[key]
    if not isinstance(item, dict) or not isinstance(item.get("data"), str):
        raise RequestError(f"{key} must be an object with the file's name and base64 data")
    name = str(item.get("name") or key)[:200]
    try:
        data = base64.b64decode(item["data"], validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{key} {name!r} is not valid base64 data") from None
    if not data:
        raise RequestError(f"{key} {name!r} is empty")
    return name, data


def _read_as_file(name: str, data: bytes, reader):
    """``reader(path)`` of ``data`` written to a private temporary file; the temporary path in an
    error message is replaced by the upload's ``name``."""
    with tempfile.TemporaryDirectory(prefix="spar-fast-serve-") as tmp:
        path = Path(tmp) / ("upload" + Path(name).suffix.lower()[:16])
        path.write_bytes(data)
        try:
            return reader(str(path))
        except UserError as exc:
            raise RequestError(str(exc).replace(str(path), name)) from None


def _image(body: dict, options: ServeOptions, examples: Examples) -> tuple[str, np.ndarray]:
    from ...data.images import read_rgb

    if ("image" in body) == ("example_image" in body):
        raise RequestError("give one image: an upload or an example")
    if "image" in body:
        name, data = _upload(body, "image")
        return name, _read_as_file(name, data, lambda p: read_rgb(p, options.max_pixels))
    path = examples.path("image", body["example_image"])
    try:
        return path.name, read_rgb(path, options.max_pixels)
    except UserError as exc:
        raise RequestError(str(exc)) from None


def _classes(body: dict, examples: Examples) -> tuple[tuple[str, ...], QuerySet | None]:
    given = [k for k in ("classes", "class_file", "query_file", "example_queries") if body.get(k)]
    if len(given) != 1:
        raise RequestError("give the classes one way: typed, a class file or a query file"
                           + (f" (got {', '.join(given)})" if given else ""))
    key = given[0]
    try:
        if key == "classes":
            if not isinstance(body[key], str):
                raise RequestError("classes must be text")
            parts = [p.strip() for line in body[key].splitlines() for p in line.split(";")]
            lines = parse_classes([p for p in parts if p])
        elif key == "class_file":
            lines = parse_classes(read_class_file(examples.path("class file", body[key])))
        else:
            if key == "query_file":
                name, data = _upload(body, key)
                queries = _read_as_file(name, data, load_query_set)
            else:
                queries = load_query_set(examples.path("query file", body[key]))
            return tuple(queries.lines), queries
    except RequestError:
        raise
    except UserError as exc:
        raise RequestError(str(exc)) from None
    if len(lines) > MAX_CLASSES:
        raise RequestError(f"{len(lines)} classes; at most {MAX_CLASSES} are accepted")
    return tuple(lines), None


def _stride(body: dict) -> int:
    stride = body.get("stride", 24)
    if isinstance(stride, str) and stride.strip().isdigit():
        stride = int(stride)
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= MAX_STRIDE:
        raise RequestError(f"stride must be a whole number of pixels in [1, {MAX_STRIDE}], got {stride!r}")
    return stride


def parse_request(raw: bytes, options: ServeOptions, examples: Examples) -> SegmentRequest:
    """The checked :class:`SegmentRequest` of a request body (JSON, UTF-8)."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise RequestError("the request is not JSON") from None
    if not isinstance(body, dict):
        raise RequestError("the request must be a JSON object")
    backbone = _choice(body, "backbone", options.backbones, options.backbones[0])
    weights = _choice(body, "weights", options.weights, options.weights[0])
    mode = _choice(body, "mode", MODES, "single")
    refine = _choice(body, "refine", REFINES, "none")
    resize = body.get("resize", True)
    if not isinstance(resize, bool):
        raise RequestError(f"resize must be true or false, got {resize!r}")
    stride = _stride(body)
    lines, queries = _classes(body, examples)
    name, image = _image(body, options, examples)
    return SegmentRequest(image=image, image_name=name, lines=lines, queries=queries, backbone=backbone,
                          weights=weights, mode=mode, stride=stride,
                          refine=None if refine == "none" else refine, resize=resize)
