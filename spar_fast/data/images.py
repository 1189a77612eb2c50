"""Robust image loading and image lists.

:func:`read_rgb` turns any common image file into ``uint8 [H, W, 3]`` RGB:

* EXIF orientation is applied (``ImageOps.exif_transpose``), so the array is upright as viewers
  show it.
* Grayscale (``1``, ``L``) is replicated to three channels.
* Alpha (``LA``, ``RGBA``, ``PA``, palette images with a transparency entry) is composited onto
  black: ``rgb * alpha / 255``, rounded. Fully transparent pixels become black whatever colour
  they hold, so garbage under the alpha never reaches the teacher.
* 16-bit grayscale (``I;16*``, and ``I``, read as 16-bit range) is scaled with
  ``round(v / 257)`` (65535 -> 255), never clipped. 16-bit RGB PNG / TIFF are scaled by Pillow
  itself to the high byte (``v >> 8``), at most one level from ``round(v / 257)``. Float (``F``)
  images are read as values in [0, 1].
* CMYK, YCbCr, LAB, HSV go through Pillow's conversion to RGB (embedded ICC profiles are not
  applied). Multi-frame files (GIF, TIFF) give their first frame.

Files that cannot be decoded completely raise :class:`ImageLoadError` (a ``UserError``) with a
one-line reason: missing, not a regular file, empty, not an image, truncated, corrupt, or too
large. Pillow's ``LOAD_TRUNCATED_IMAGES`` is left False so truncation is detected by ``load()``.

Bounded resources: only regular files are opened (a FIFO or a link to ``/dev/zero`` is refused
from its ``stat``, before any read, so nothing blocks), and the pixel count is read from the
header (:func:`read_image_size`, no decoding) and checked against ``max_pixels`` before the
pixels are decoded. :func:`check_image_size` is the one refusal rule for every stage: an image
(source or model input) may hold at most ``DEFAULT_MAX_PIXELS`` = 2**25 pixels (33.5 M: a
33-megapixel photo, a 4096x8192 image; 131k tokens of 16 px; 400 MB as float32 RGB) unless the
caller raises it (``--max-pixels``), and each side must reach the model's minimum.

:func:`list_images` turns a directory, a list file or a list of paths into ``ImageItem(id, path)``
with stable ids (see there).
"""
from __future__ import annotations

import io
import os
import stat
import warnings
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import UserError
from .members import clean_name, is_archive, list_members, member_id, member_stat, parse_member, read_member

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".tif", ".tiff", ".webp",
                    ".gif", ".ppm", ".pgm", ".pbm", ".pnm")


DEFAULT_MAX_PIXELS = 1 << 25
_ORIENTATION_TAG = 0x0112  # EXIF orientation; values 5-8 swap height and width
_FILE_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


class ImageLoadError(UserError):
    """An image file that cannot be decoded into RGB (message: one line with path and reason;
    undecodable file-name bytes spelled ``\\xNN`` so the message can always be printed)."""

    def __init__(self, message: str):
        super().__init__(printable_id(message))


def check_image_size(hw, max_pixels: int | None = DEFAULT_MAX_PIXELS, min_side: int = 1,
                     what: str = "image") -> None:
    """Refuse (one-line ``UserError``) an image of ``hw = (H, W)`` with more than ``max_pixels``
    pixels (``None``: no limit) or a side below ``min_side`` (e.g. the patch size after the
    resize a stage applies). ``what`` names the image in the message."""
    h, w = int(hw[0]), int(hw[1])
    if max_pixels is not None and h * w > max_pixels:
        raise UserError(f"{what} of {h}x{w} = {h * w / 1e6:.1f} M pixels exceeds the limit of "
                        f"{max_pixels / 1e6:.1f} M pixels (raise it with --max-pixels)")
    if min(h, w) < min_side:
        raise UserError(f"{what} of {h}x{w} has a side below {min_side} pixels")


def regular_file(path: str) -> os.stat_result:
    """``os.stat(path)`` of a non-empty regular file (links followed), else ``ImageLoadError``.

    Never opens the file, so a FIFO or a device cannot block or stream forever."""
    try:
        st = os.stat(path)
    except ValueError:  # a NUL byte in the name
        raise ImageLoadError(f"{printable_id(str(path))}: not a valid file name") from None
    except OSError as exc:
        reason = "file not found" if isinstance(exc, FileNotFoundError) else f"unreadable ({exc.strerror})"
        raise ImageLoadError(f"{path}: {reason}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _FILE_KINDS if test(st.st_mode)), "not a regular file")
        raise ImageLoadError(f"{path}: not a regular file ({kind})")
    if st.st_size == 0:
        raise ImageLoadError(f"{path}: empty file")
    return st


def _opened(path: str):
    """What ``Image.open`` reads for ``path``: the path of a checked regular file, or the bytes
    of a tar member source (:mod:`spar_fast.data.members`) in memory."""
    member = parse_member(path)
    if member is None:
        regular_file(path)
        return path
    return io.BytesIO(read_source_bytes(path))


def read_source_bytes(path: str) -> bytes:
    """The encoded bytes of an image source (a file or a tar member), ``ImageLoadError`` with
    the reason when unreadable."""
    member = parse_member(path)
    try:
        if member is not None:
            regular_file(member.archive)
            data = read_member(member)
            if not data:
                raise ImageLoadError(f"{path}: empty file")
            return data
        regular_file(path)
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ImageLoadError(f"{path}: unreadable file ({exc.strerror})" if exc.strerror else f"{path}: {exc}") from None


def source_stat(path: str) -> tuple[int, int]:
    """``(size, mtime_ns)`` of an image source: a regular file's, or a tar member's size with its
    archive's mtime. ``ImageLoadError`` when missing or not a regular file."""
    member = parse_member(path)
    if member is None:
        st = regular_file(path)
        return st.st_size, st.st_mtime_ns
    regular_file(member.archive)
    return member_stat(member)


def _open_error(path: str, exc: BaseException) -> ImageLoadError:
    if isinstance(exc, UnidentifiedImageError):
        return ImageLoadError(f"{path}: not an image file Pillow can read")
    if isinstance(exc, Image.DecompressionBombError):
        return ImageLoadError(f"{path}: image too large ({exc})")
    reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    kind = "truncated" if "truncated" in reason.lower() else "corrupt"
    return ImageLoadError(f"{path}: {kind} image ({reason})")


_OPEN_ERRORS = (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError,
                ValueError, EOFError, IndexError, KeyError, TypeError, ZeroDivisionError)


def read_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(H, W)`` of the upright image from its header only (no pixel is decoded): the size
    :func:`read_rgb` returns. Raises ``ImageLoadError`` like :func:`read_rgb`."""
    path = os.fspath(path)
    opened = _opened(path)
    try:
        with Image.open(opened) as img:
            w, h = img.size
            try:
                orientation = img.getexif().get(_ORIENTATION_TAG, 1)
            except Exception:  # malformed EXIF: read_rgb keeps the stored orientation too
                orientation = 1
    except _OPEN_ERRORS as exc:
        raise _open_error(path, exc) from None
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


class ImageItem(NamedTuple):
    """One input image: its stable id and the file to read."""
    id: str
    path: str


def _composite_on_black(rgba: np.ndarray) -> np.ndarray:
    """``uint8 [H, W, 4]`` -> ``uint8 [H, W, 3]``: ``round(rgb * a / 255)`` in integers."""
    rgb = rgba[..., :3].astype(np.uint32)
    alpha = rgba[..., 3:4].astype(np.uint32)
    return ((rgb * alpha + 127) // 255).astype(np.uint8)


def _to_rgb(img: Image.Image) -> np.ndarray:
    """A loaded, upright PIL image in any mode -> ``uint8 [H, W, 3]`` RGB."""
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(img).astype(np.float64)
        gray = np.rint(np.clip(values, 0, 65535) / 257.0).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        values = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0)
        gray = np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB") and "transparency" in img.info)
    if has_alpha:
        return _composite_on_black(np.asarray(img.convert("RGBA")))
    if mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img)


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; an unreadable EXIF block leaves the image as stored."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # malformed EXIF must not make a decodable image unusable
        return img


def load_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Deprecated name of :func:`read_rgb` (a name says what it returns)."""
    warnings.warn("spar_fast.data.load_image is deprecated; use spar_fast.data.read_rgb", DeprecationWarning,
                  stacklevel=2)
    return read_rgb(path, max_pixels)


def read_rgb(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as upright RGB.

    Returns ``uint8 [H, W, 3]`` (C-contiguous, writable). Raises :class:`ImageLoadError` for
    anything that is not a regular file, has more than ``max_pixels`` pixels in its header
    (checked before decoding; ``None``: no limit) or does not decode completely.
    """
    path = os.fspath(path)
    hw = read_image_size(path)
    try:
        check_image_size(hw, max_pixels)
    except UserError as exc:
        raise ImageLoadError(f"{path}: {exc}") from None
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    opened = _opened(path)
    try:
        with Image.open(opened) as img:
            img.load()
            rgb = _to_rgb(_upright(img))
    except _OPEN_ERRORS as exc:
        raise _open_error(path, exc) from None
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageLoadError(f"{path}: unexpected decoded shape {rgb.shape}")
    return rgb if rgb.flags.c_contiguous and rgb.flags.writeable else np.array(rgb, order="C")


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def printable_id(text: str) -> str:
    """``text`` with undecodable file-name bytes (``os.fsdecode`` surrogates) spelled ``\\xNN``,
    so ids are valid UTF-8 in JSON, safetensors keys and messages; other text is unchanged."""
    return os.fsencode(text).decode("utf-8", "backslashreplace") if _has_surrogates(text) else text


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def _strip_ext(rel: str) -> str:
    root, _ = os.path.splitext(rel)
    return root


def _unique_ids(pairs: list[tuple[str, str, str]]) -> list[ImageItem]:
    """``(id, id_with_extension, path)`` -> items; ids shared by several files keep the extension
    (``a.jpg`` and ``a.png`` in one folder become ``a.jpg`` and ``a.png``)."""
    counts: dict[str, int] = {}
    for image_id, _, _ in pairs:
        counts[image_id] = counts.get(image_id, 0) + 1
    items = [ImageItem(full if counts[image_id] > 1 else image_id, path)
             for image_id, full, path in pairs]
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise UserError(f"image id {item.id!r} occurs twice in the image list")
        seen.add(item.id)
    return items


def _archive_pairs(archive) -> list[tuple[str, str, str]]:
    """``(id, id with extension, member source)`` of every image member of a ``.tar``, in
    archive order (id: the member name without ``./`` and extension)."""
    pairs = []
    for m in list_members(archive, _is_image_name):
        image_id = printable_id(member_id(m.name))
        pairs.append((image_id, printable_id(clean_name(m.name)), m.source()))
    return pairs


def _from_archives(archives: list) -> list[ImageItem]:
    pairs = [p for archive in archives for p in _archive_pairs(archive)]
    if not pairs:
        raise UserError(f"no images found in {', '.join(map(str, archives))} "
                        f"(extensions: {' '.join(IMAGE_EXTENSIONS)})")
    return _unique_ids(pairs)


def _from_directory(root: Path) -> list[ImageItem]:
    pairs = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if _is_image_name(name):
                full = os.path.join(dirpath, name)
                rel = printable_id(Path(os.path.relpath(full, root)).as_posix())
                pairs.append((_strip_ext(rel), rel, full))
    pairs.sort(key=lambda p: p[1])
    if not pairs:
        archives = sorted(str(p) for p in root.iterdir() if is_archive(p) and not p.name.startswith("."))
        if archives:  # a folder of tar shards (SA-1B): their images, archive by archive
            return _from_archives(archives)
        raise UserError(f"no images found under {root} (extensions: {' '.join(IMAGE_EXTENSIONS)})")
    return _unique_ids(pairs)


def _from_entries(entries: Iterable, base: Path | None) -> list[ImageItem]:
    """Entries: a path (id = the path as written, normalized, without extension) or an
    ``(id, path)`` pair. Relative paths resolve against ``base`` when given."""
    pairs = []
    for entry in entries:
        if isinstance(entry, (tuple, list)):
            if len(entry) != 2:
                raise UserError(f"image list entry {entry!r} is not (id, path)")
            image_id, path = printable_id(str(entry[0])), os.fspath(entry[1])
            full_id = image_id
        else:
            path = os.fspath(entry)
            full = path if base is None or os.path.isabs(path) else os.path.join(base, path)
            if is_archive(full):  # a tar shard: its image members, in archive order
                pairs.extend(_archive_pairs(full))
                continue
            written = printable_id(Path(os.path.normpath(path)).as_posix())
            image_id, full_id = _strip_ext(written), written
        if "\0" in path or "\0" in image_id or not image_id:
            raise UserError(f"image list entry {printable_id(str(entry))[:80]!r}: an empty id or a NUL "
                            "byte in a path or id")
        if base is not None and not os.path.isabs(path):
            path = os.path.join(base, path)
        pairs.append((image_id, full_id, path))
    if not pairs:
        raise UserError("the image list is empty")
    return _unique_ids(pairs)


def _read_list_file(path: Path) -> list:
    """One image per line: ``path`` or ``path<TAB>id``; blank lines and ``#`` comments skipped."""
    entries = []
    data = path.read_bytes()
    if b"\0" in data:  # no path holds a NUL byte
        raise UserError(f"image list {path} is a binary file, not one path per line")
    # undecodable bytes stay as os.fsdecode spells them, so such paths still open
    for line in data.decode("utf-8", "surrogateescape").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "\t" in line:
            file_path, image_id = (part.strip() for part in line.split("\t", 1))
            entries.append((image_id, file_path))
        else:
            entries.append(line)
    return entries


def list_images(source) -> list[ImageItem]:
    """The images to process, in a stable order.

    ``source`` is one of:

    * a directory: searched recursively (hidden files and folders skipped) for the extensions in
      ``IMAGE_EXTENSIONS`` (any case), sorted by relative path; id = relative path (``/``
      separators) without extension;
    * a text file: one ``path`` or ``path<TAB>id`` per line, relative paths resolved against the
      list file's folder, order kept; id = the given id, or the path as written without extension;
    * a Python list of paths or ``(id, path)`` pairs, handled like the lines of a list file
      (relative paths against the current directory);
    * an uncompressed ``.tar`` archive (also as an entry of a list, and a folder that holds no
      images but ``.tar`` files at its top level: each, sorted by name): its image members in
      archive order, read in place (:mod:`spar_fast.data.members`); id = the member name without
      ``./`` and extension, path = the member source ``ARCHIVE::NAME@OFFSET+SIZE``.

    Ids shared by several files (``a.jpg`` and ``a.png``) keep their extension; bytes of names
    that are not UTF-8 appear in ids as ``\\xNN`` (:func:`printable_id`). Listed files are
    not opened here: unreadable ones are reported when loaded. Raises ``UserError`` for a missing
    source, an empty list or a duplicated id.
    """
    if isinstance(source, (list, tuple)):
        return _from_entries(source, None)
    path = Path(os.fspath(source))
    if path.is_dir():
        return _from_directory(path)
    if path.is_file():
        if is_archive(path):
            return _from_archives([str(path)])
        if _is_image_name(path.name):
            return _from_entries([(_strip_ext(path.name), str(path))], None)
        return _from_entries(_read_list_file(path), path.parent)
    raise UserError(f"{path}: no such directory or image list file")
