"""Image decode paths shared by feature extraction and training (the student must see the
teacher's pixels).

A decode path turns an image file into ``uint8 [H, W, 3]`` RGB. Three are defined; the feature
store records which one made its targets (``store.json`` key ``decode``, with
:func:`decode_signature` under ``decode_version``), and training decodes with the same one:

* ``pil`` — :func:`spar_fast.data.read_rgb` (Pillow): every format, EXIF orientation, alpha,
  16-bit. Stores written before the key existed used it.
* ``torchvision`` — plain JPEGs (RGB or grayscale, no EXIF rotation) through
  ``torchvision.io.decode_jpeg`` on the CPU (libjpeg-turbo, like Pillow: the same pixels, 2-4x
  faster because no PIL image object or mode conversion is built); every other file through
  ``pil``.
* ``nvjpeg`` — the same plain JPEGs decoded on a CUDA device with nvJPEG
  (``decode_jpeg(device="cuda")``, batched), other files through ``pil``. nvJPEG's IDCT and
  chroma upsampling differ from libjpeg's (pixels differ by a few levels), so a store made with
  it must be trained with it.

Two stages, so data-loader workers only read bytes: :func:`read_encoded` (worker side: the file's
bytes for a JPEG the device will decode, else decoded pixels) and :func:`finish_decode` (on the
device, a batch at a time). :func:`decode_rgb` is both in one call — the function the
extraction job calls.
"""
from __future__ import annotations

import functools
import io
import os
import warnings
from typing import NamedTuple

import torch

from ..errors import UserError
from .images import read_rgb, read_source_bytes

DECODES = ("pil", "torchvision", "nvjpeg")
LEGACY_DECODE = "pil"  # stores without a "decode" key were made by read_rgb
SAME_PIXELS = {"pil", "torchvision"}  # both libjpeg-turbo ISLOW + fancy upsampling (tests/test_loader.py)
_EXIF_ORIENTATION = 0x0112


class EncodedImage(NamedTuple):
    """A worker's read of one image: ``jpeg`` = the file's bytes ``uint8 [N]`` (decoded later on
    the device), else ``pixels`` = decoded ``uint8 [H, W, 3]``. ``path`` names it in errors."""
    kind: str
    data: torch.Tensor
    path: str


@functools.lru_cache(maxsize=None)
def _torchvision_io():
    """``torchvision.io`` when it can decode JPEGs, else ``None`` (torchvision is optional)."""
    try:
        import torchvision.io as tvio

        tvio.decode_jpeg  # noqa: B018  (older builds lack the image ops)
    except (ImportError, AttributeError, OSError, RuntimeError):
        return None
    return tvio


def available(decode: str, device: torch.device | str = "cpu") -> bool:
    """Whether ``decode`` can run here (``nvjpeg`` needs a CUDA ``device`` and torchvision)."""
    if decode == "pil":
        return True
    if _torchvision_io() is None:
        return False
    return decode == "torchvision" or (torch.device(device).type == "cuda" and torch.cuda.is_available())


def default_decode(device: torch.device | str = "cpu") -> str:
    """The fastest path available on ``device``: nvjpeg on CUDA, else torchvision, else pil."""
    for decode in ("nvjpeg", "torchvision"):
        if available(decode, device):
            return decode
    return "pil"


def decode_signature(decode: str) -> str:
    """``decode`` plus the versions of the libraries that fix its pixels (recorded in the store)."""
    import PIL

    parts = [decode, f"Pillow {PIL.__version__}"]
    if decode != "pil":
        import torchvision

        parts.append(f"torchvision {torchvision.__version__}")
    if decode == "nvjpeg":
        parts.append(f"CUDA {torch.version.cuda}")
    return ", ".join(parts)


def _check(decode: str) -> None:
    if decode not in DECODES:
        raise UserError(f"decode must be one of {', '.join(DECODES)}, got {decode!r}")


def _plain_jpeg(data: bytes) -> bool:
    """A JPEG both decoders treat alike: RGB or grayscale, upright, within Pillow's size limit.
    Only the headers are parsed (Image.open is lazy); anything odd goes to ``read_rgb``."""
    from PIL import Image

    if not data.startswith(b"\xff\xd8\xff"):
        return False
    try:
        with Image.open(io.BytesIO(data)) as img:
            return (img.format == "JPEG" and img.mode in ("RGB", "L")
                    and img.getexif().get(_EXIF_ORIENTATION, 1) == 1
                    and img.width * img.height <= (Image.MAX_IMAGE_PIXELS or float("inf")))
    except Exception:  # any header Pillow rejects: read_rgb gives the reason
        return False


def _read_bytes(path: str) -> bytes:
    """The encoded bytes of a file or a tar member source."""
    return read_source_bytes(path)


def _decode_jpeg(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """torchvision's JPEG decode of byte tensors -> ``uint8 [H, W, 3]`` views on ``device``."""
    tvio = _torchvision_io()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision >= 0.29 warns that its decoders are deprecated
        out = tvio.decode_jpeg(tensors, mode=tvio.ImageReadMode.RGB, device=device)
    return [t.permute(1, 2, 0) for t in out]


def read_encoded(path: str | os.PathLike, decode: str) -> EncodedImage:
    """Worker side of ``decode``: bytes of a plain JPEG for nvjpeg, decoded pixels otherwise.
    Raises :class:`ImageLoadError` for a file that does not decode."""
    _check(decode)
    path = os.fspath(path)
    if decode != "pil":
        data = _read_bytes(path)
        if _plain_jpeg(data):
            raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            if decode == "nvjpeg":
                return EncodedImage("jpeg", raw, path)
            try:
                return EncodedImage("pixels", _decode_jpeg([raw], torch.device("cpu"))[0], path)
            except RuntimeError:  # truncated or corrupt: read_rgb names the problem
                pass
    return EncodedImage("pixels", torch.from_numpy(read_rgb(path)), path)


def finish_decode(items: list[EncodedImage], device: torch.device | str) -> list[torch.Tensor]:
    """Device side: ``uint8 [H, W, 3]`` on ``device`` for each item; JPEG bytes are decoded in one
    nvJPEG batch (a batch that fails is retried image by image; an image nvJPEG rejects is
    decoded by ``read_rgb``, the same fallback extraction took)."""
    device = torch.device(device)
    out: list[torch.Tensor | None] = [None] * len(items)
    jpeg = [i for i, item in enumerate(items) if item.kind == "jpeg"]
    if jpeg:
        if device.type != "cuda":
            raise UserError("the nvjpeg decode path needs a CUDA device")
        try:
            for i, img in zip(jpeg, _decode_jpeg([items[i].data for i in jpeg], device)):
                out[i] = img
        except RuntimeError:
            for i in jpeg:
                try:
                    out[i] = _decode_jpeg([items[i].data], device)[0]
                except RuntimeError:
                    out[i] = torch.from_numpy(read_rgb(items[i].path)).to(device)
    for i, item in enumerate(items):
        if out[i] is None:
            out[i] = item.data.to(device, non_blocking=True)
    return out


def decode_rgb(path: str | os.PathLike, decode: str = "pil",
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """Decode one image file with path ``decode`` -> ``uint8 [H, W, 3]`` on ``device``.

    The extraction job calls this (and records ``decode`` in store.json); training runs the same
    two stages in its loader. Raises :class:`ImageLoadError` for a file that does not decode."""
    if decode == "nvjpeg" and torch.device(device).type != "cuda":
        raise UserError("the nvjpeg decode path needs a CUDA device")
    return finish_decode([read_encoded(path, decode)], device)[0]


def training_decode(stored: str, requested: str | None, device: torch.device,
                    signature: str | None = None) -> str:
    """The decode path training uses for a store whose targets were computed from ``stored``
    decodes (``signature``: the decoder version the store records, if any): ``stored``
    (``requested`` None), or ``requested``, with a warning when it gives other pixels than the
    store's (``pil`` and ``torchvision`` give the same). Refuses a store path this machine cannot
    run, naming the way out."""
    if requested is None:
        if not available(stored, device):
            raise UserError(f"the store's targets were computed from images decoded by {stored!r}, "
                            f"which cannot run on {device.type} here; train on a device that has it, "
                            f"or pass decode= another path (the student would then see other pixels)")
        if signature and signature != decode_signature(stored):
            warnings.warn(f"store images were decoded with {signature}; this machine has "
                          f"{decode_signature(stored)} (pixels may differ slightly)", stacklevel=2)
        return stored
    _check(requested)
    if not available(requested, device):
        raise UserError(f"decode path {requested!r} cannot run on {device.type} here")
    if requested != stored and {requested, stored} != SAME_PIXELS:
        warnings.warn(f"training decodes images with {requested!r} but the store's targets were "
                      f"computed from {stored!r} decodes: the student sees other pixels than the "
                      "teacher did", stacklevel=2)
    return requested
