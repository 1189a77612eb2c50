"""The one way the package reads a JSON file: bounded, strict, and checked field by field.

Every JSON file kind (``store.json``, ``manifest.json``, a chunk index, ``trainer_state.json``,
...) has one reader that parses with :func:`parse_json` / :func:`read_json_file` and takes each
field through :class:`Fields`, so a malformed file ends as one line (:class:`MalformedFile`, a
``UserError``) naming the file and the field, never as a traceback:

* size at most ``MAX_BYTES``; nesting at most ``MAX_DEPTH`` (the parser's ``RecursionError``
  is caught, then an iterative walk checks the depth, so no code walking the result recurses
  deeper); duplicate keys,
  ``NaN`` / ``Infinity`` refused;
* types exact (``bool`` is not an integer, a string is not a list), integers within bounds;
* :func:`plain_name`: a name read from a file that becomes part of a path is one plain path
  component matching its pattern (no ``/``, ``..``, NUL), so no file can point outside its folder.
"""
from __future__ import annotations

import json
import math
import os
import re
import stat

from .errors import UserError

MAX_DEPTH = 64  # deeper than any file the package writes (trainer state: ~10)
MAX_BYTES = 1 << 30
MAX_TEXT = 1 << 16  # longest string field (paths, reasons)


class MalformedFile(UserError, ValueError):
    """A file that does not parse or does not have the fields its kind needs."""


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _no_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _too_deep(obj) -> bool:
    """True when ``obj`` nests lists / objects deeper than ``MAX_DEPTH`` (an iterative walk)."""
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > MAX_DEPTH:
                    return True
                stack.append((child, depth + 1))
    return False


def parse_json(data: bytes, where: str):
    """The parsed JSON of ``data``; :class:`MalformedFile` naming ``where`` when it is not
    strict JSON, nests deeper than ``MAX_DEPTH`` or repeats a key."""
    try:  # the C parser raises RecursionError (caught) past the interpreter's depth limit
        obj = json.loads(data, parse_constant=_refuse_constant, object_pairs_hook=_no_duplicates)
    except RecursionError:
        obj = None
        deep = True
    except (ValueError, UnicodeDecodeError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise MalformedFile(f"{where}: malformed JSON ({first})") from None
    else:
        deep = _too_deep(obj)
    if deep:
        raise MalformedFile(f"{where}: malformed JSON (nested deeper than {MAX_DEPTH})")
    return obj


def _read_regular(path: str, limit: int, not_regular: str, too_big) -> bytes:
    """At most ``limit + 1`` bytes of the regular file ``path``; :class:`MalformedFile` with
    ``not_regular`` for anything else, with ``too_big(size)`` above ``limit``. ``OSError``
    passes through."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise MalformedFile(not_regular)
    if st.st_size > limit:
        raise MalformedFile(too_big(st.st_size))
    with open(path, "rb") as f:
        return f.read(limit + 1)


def read_json_file(path: str, what: str = "JSON file"):
    """Parse the regular file ``path`` (``what`` names its kind in errors); ``FileNotFoundError``
    passes through for callers to whom a missing file means something; any other problem is a
    :class:`MalformedFile`."""
    try:
        data = _read_regular(path, MAX_BYTES, f"{path}: unreadable {what} (not a regular file)",
                             lambda size: f"{path}: unreadable {what} ({size} bytes, over {MAX_BYTES})")
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise MalformedFile(f"{path}: unreadable {what} ({exc.strerror or exc})") from None
    return parse_json(data, f"{path}")


MAX_TEXT_FILE = 1 << 26  # a class file or split list larger than 64 MiB is not one


def read_text(path, what: str) -> str:
    """The UTF-8 text of a line-based input file (class file, split list); one-line
    :class:`MalformedFile` for a file that is not regular, larger than ``MAX_TEXT_FILE``, binary
    (NUL bytes) or not UTF-8. Universal newlines, like ``open(path, encoding="utf-8")``."""
    path = os.fspath(path)
    try:
        data = _read_regular(path, MAX_TEXT_FILE, f"{what} {path} is not a regular file",
                             lambda size: f"{what} {path} has {size} bytes, over {MAX_TEXT_FILE}; not a text list")
    except OSError as exc:
        raise MalformedFile(f"cannot read {what} {path} ({exc.strerror or exc})") from None
    if b"\0" in data:
        raise MalformedFile(f"{what} {path} is a binary file, not UTF-8 text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedFile(f"{what} {path} is not UTF-8 text (byte {exc.start})") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _kind(value) -> str:
    return "null" if value is None else type(value).__name__


class Fields:
    """Typed access to the fields of a JSON object read from ``where``; each getter raises a
    one-line :class:`MalformedFile` naming the field when it is missing or of the wrong type or
    range. ``optional=True``: a missing (or null) field gives ``None``."""

    def __init__(self, obj, where: str):
        if not isinstance(obj, dict):
            raise MalformedFile(f"{where}: expected a JSON object, got {_kind(obj)}")
        self.obj, self.where = obj, where

    def _get(self, key: str, optional: bool):
        value = self.obj.get(key)
        if value is None and not optional:
            raise MalformedFile(f"{self.where}: missing field {key!r}")
        return value

    def bad(self, key: str, want: str, value=None) -> MalformedFile:
        value = self.obj.get(key) if value is None else value
        return MalformedFile(f"{self.where}: field {key!r} must be {want}, got {_kind(value)} "
                             f"{str(value)[:40]!r}")

    def int(self, key: str, low: int | None = 0, high: int | None = None, optional: bool = False):
        value = self._get(key, optional)
        if value is None:
            return None
        if not check_int(value, low, high):
            raise self.bad(key, f"an integer in [{low}, {'inf' if high is None else high}]")
        return value

    def num(self, key: str, optional: bool = False):
        value = self._get(key, optional)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.bad(key, "a finite number")
        return float(value)

    def str(self, key: str, optional: bool = False, choices=None, max_len: int = MAX_TEXT):
        value = self._get(key, optional)
        if value is None:
            return None
        if not isinstance(value, str) or len(value) > max_len or "\0" in value:
            raise self.bad(key, f"a string of at most {max_len} characters")
        if choices is not None and value not in choices:
            raise self.bad(key, f"one of {', '.join(map(repr, choices))}")
        return value

    def list(self, key: str, optional: bool = False, max_len: int | None = None):
        value = self._get(key, optional)
        if value is None:
            return None
        if not isinstance(value, list) or (max_len is not None and len(value) > max_len):
            raise self.bad(key, "a list" + (f" of at most {max_len} items" if max_len else ""), value)
        return value

    def child(self, key: str, optional: bool = False) -> "Fields | None":
        value = self._get(key, optional)
        if value is None:
            return None
        return Fields(value, f"{self.where}: field {key!r}")

    def ints(self, key: str, n: int, low: int = 1, optional: bool = False):
        """A list of ``n`` integers >= ``low`` as a tuple."""
        value = self._get(key, optional)
        if value is None:
            return None
        if not isinstance(value, list) or len(value) != n or not all(check_int(v, low) for v in value):
            raise self.bad(key, f"a list of {n} integers >= {low}", value)
        return tuple(value)

    def nums(self, key: str, n: int):
        value = self._get(key, False)
        if (not isinstance(value, list) or len(value) != n
                or not all(not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
                           for v in value)):
            raise self.bad(key, f"a list of {n} finite numbers", value)
        return tuple(float(v) for v in value)


def check_int(value, low: int | None = 0, high: int | None = None) -> bool:
    """True for an ``int`` (not a ``bool``) within ``[low, high]``."""
    return (isinstance(value, int) and not isinstance(value, bool)
            and (low is None or value >= low) and (high is None or value <= high))


def plain_name(name, pattern: str, where: str, what: str = "name") -> str:
    """``name`` when it is one plain path component fully matching ``pattern`` (a regex); else a
    :class:`MalformedFile`: a name read from a file never leads outside its folder."""
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
            or "\0" in name or re.fullmatch(pattern, name) is None):
        raise MalformedFile(f"{where}: {what} {str(name)[:60]!r} is not a valid name here")
    return name
