"""A chunk's index file (``shards/<chunk>.json``): its one schema-checked reader, and the source
check of its records.

:func:`read_index` refuses, with one line naming the file and the field, an index that is not
strict JSON, has a field of the wrong type or range, lists other images (ids, sources, indexes)
than its manifest chunk, names a shard other than its own chunk's (nothing outside the chunk can
be referenced), or whose tensor keys are reserved by safetensors or repeat.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from ..jsonfile import Fields, MalformedFile, read_json_file
from .codec import FP8, SCALE_SUFFIX
from .layout import FORMAT, INDEX_SUFFIX, SHARD_SUFFIX, file_digest
from .records import Chunk, StoreRecord

RESERVED_KEYS = ("__metadata__",)  # the safetensors header's own entry
MISSING_SOURCE = "source image missing"


@dataclass(frozen=True)
class ChunkIndex:
    """A parsed, checked chunk index: the records in chunk order and the shard's size and
    XXH3-128 checksum as written."""
    records: tuple[StoreRecord, ...]
    shard_bytes: int
    shard_checksum: str


def shard_keys(rec: StoreRecord) -> tuple[str, ...]:
    """The shard entries of an ok record: its target, and its scale for fp8."""
    return (rec.key, rec.key + SCALE_SUFFIX) if rec.dtype == FP8 else (rec.key,)


def parse_index(doc, chunk: Chunk, where: str) -> ChunkIndex:
    """The checked index of manifest chunk ``chunk`` from its JSON form ``doc``."""
    f = Fields(doc, where)
    f.str("format", choices=(FORMAT,))
    shard = chunk.name + SHARD_SUFFIX
    if f.str("chunk") != chunk.name:
        raise f.bad("chunk", repr(chunk.name))
    if f.str("shard") != shard:
        raise f.bad("shard", repr(shard))
    records = tuple(StoreRecord.from_dict(r, f"{where}: record {k}")
                    for k, r in enumerate(f.list("records", max_len=len(chunk.items))))
    if [(r.image_id, r.source, r.index) for r in records] != [tuple(i) for i in chunk.items]:
        raise MalformedFile(f"{where}: lists other images than the manifest")
    keys = set()
    for rec in records:
        if not rec.ok:
            continue
        if rec.shard != shard:  # a record may only point into its own chunk's shard
            raise MalformedFile(f"{where}: record {rec.image_id!r} points outside its chunk "
                                f"(shard {rec.shard!r})")
        for key in shard_keys(rec):
            if key in RESERVED_KEYS or key in keys:
                raise MalformedFile(f"{where}: record {rec.image_id!r} has a reserved or repeated "
                                    f"tensor key {key!r}")
            keys.add(key)
    return ChunkIndex(records, f.int("shard_bytes", 0), f.str("shard_checksum", max_len=64))


def index_path(shard_dir: str, chunk: Chunk) -> str:
    return os.path.join(shard_dir, chunk.name + INDEX_SUFFIX)


def read_index(shard_dir: str, chunk: Chunk) -> ChunkIndex:
    """The checked index of ``chunk``; ``FileNotFoundError`` when it was not written yet, a
    one-line :class:`MalformedFile` for anything else wrong with it."""
    path = index_path(shard_dir, chunk)
    return parse_index(read_json_file(path, "chunk index"), chunk, path)


def source_changed(rec: StoreRecord) -> str | None:
    """Why the source image of ``rec`` (a file, or a tar member ``ARCHIVE::MEMBER@OFFSET+SIZE``)
    no longer is what its target was computed from, or ``None``. Fast path: size and mtime (a
    member's: its archive's) as recorded; the checksum is read only when they differ."""
    from ..data.images import source_stat
    from ..data.members import parse_member
    from ..errors import UserError
    from .layout import source_digest

    file = parse_member(rec.source)
    file = rec.source if file is None else file.archive
    try:
        st = os.stat(file)
    except (OSError, ValueError):
        return MISSING_SOURCE
    if not stat.S_ISREG(st.st_mode):
        return "source image replaced by something that is not a file"
    try:
        size, mtime_ns = source_stat(rec.source)
    except UserError:
        return MISSING_SOURCE
    if size == rec.source_bytes and mtime_ns == rec.source_mtime_ns:
        return None
    if rec.source_checksum is None:  # an upgraded format-1 record whose source had changed then
        return "source image changed since extraction"
    try:
        if size != rec.source_bytes or source_digest(rec.source) != rec.source_checksum:
            return "source image changed since extraction"
    except UserError:  # a tar member cut short since
        return "source image changed since extraction"
    return None
    if rec.source_checksum is None:  # an upgraded format-1 record whose source had changed then
        return "source image changed since extraction"
    if st.st_size != rec.source_bytes or file_digest(rec.source) != rec.source_checksum:
        return "source image changed since extraction"
    return None
