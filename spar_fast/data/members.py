"""Images inside uncompressed ``.tar`` archives (SA-1B ships ≈11k JPEGs + JSON per tar), read in
place: nothing is unpacked.

A tar member image is named everywhere a file path goes (image lists, store records, the
training loader) by its *member source*::

    /abs/path/sa_000000.tar::sa_1.jpg@1536+260817

the archive, the member name, the byte offset of its data in the archive and its size. Reading
one image is one ``seek`` + ``read`` of those bytes (:func:`read_member`); the archive is listed
once, header by header (:func:`list_members`: ``tarfile`` seeks over the data of an
uncompressed archive). A member source's size is the member's, its mtime the archive's.
"""
from __future__ import annotations

import os
import re
import tarfile
import warnings
from typing import NamedTuple

ARCHIVE_SUFFIX = ".tar"
# the archive is the shortest prefix ending in ".tar" before "::"; the member name may hold anything
_SOURCE = re.compile(r"^(.*?\.tar)::(.+)@(\d+)\+(\d+)$", re.IGNORECASE | re.DOTALL)


class TarMember(NamedTuple):
    """One regular file inside an archive: ``archive`` (absolute path), member ``name``, the
    ``offset`` of its data in the archive and its ``size`` in bytes."""
    archive: str
    name: str
    offset: int
    size: int

    def source(self) -> str:
        """The member source string (see the module docstring)."""
        return f"{self.archive}::{self.name}@{self.offset}+{self.size}"


def parse_member(source) -> TarMember | None:
    """The :class:`TarMember` a member source names, or ``None`` for an ordinary path."""
    if not isinstance(source, str) or "::" not in source:
        return None
    match = _SOURCE.match(source)
    if match is None:
        return None
    return TarMember(match.group(1), match.group(2), int(match.group(3)), int(match.group(4)))


def is_archive(path) -> bool:
    """Whether ``path`` is an existing ``.tar`` file."""
    text = os.fspath(path)
    return text.lower().endswith(ARCHIVE_SUFFIX) and os.path.isfile(text)


def read_member(member: TarMember) -> bytes:
    """The member's bytes. ``OSError`` (with a reason) when the archive is missing or ends
    inside the member (a truncated download)."""
    with open(member.archive, "rb") as f:
        f.seek(member.offset)
        data = f.read(member.size)
    if len(data) != member.size:
        raise OSError(f"truncated archive member ({len(data)} of {member.size} bytes)")
    return data


def member_stat(member: TarMember) -> tuple[int, int]:
    """``(size, mtime_ns)`` of a member: its size, the archive's mtime (``OSError`` if missing)."""
    return member.size, os.stat(member.archive).st_mtime_ns


def clean_name(name: str) -> str:
    """A member name without its leading ``./`` (tar files made with ``tar -C dir .``)."""
    while name.startswith("./"):
        name = name[2:]
    return name


def member_id(name: str) -> str:
    """The image id of a member name: the name without a leading ``./`` and without extension."""
    return os.path.splitext(clean_name(name))[0]


def list_members(archive, is_image) -> list[TarMember]:
    """The regular-file members of ``archive`` whose name ``is_image`` accepts, in archive order.

    An archive damaged part-way (a header that does not parse, data cut short) keeps the members
    listed before the damage, with a warning; a member whose data is cut short is listed and
    reported when read."""
    path = os.path.abspath(os.fspath(archive))
    found = []
    try:
        with tarfile.open(path, "r:") as tar:
            while True:
                try:
                    info = tar.next()
                except tarfile.TarError as exc:
                    warnings.warn(f"{path}: archive damaged after {len(found)} images ({exc}); the "
                                  "images before it are used", stacklevel=3)
                    break
                if info is None:
                    break
                name = info.name
                if info.isreg() and is_image(os.path.basename(name)):
                    found.append(TarMember(path, name, info.offset_data, info.size))
    except tarfile.TarError as exc:
        from ..errors import UserError
        raise UserError(f"{path}: not a readable uncompressed tar archive ({exc})") from None
    return found
