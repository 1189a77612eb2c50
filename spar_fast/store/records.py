"""The typed records of a feature store (file layout in ``layout.py``): ``StoreConfig``
(``store.json``), ``Chunk`` (a ``manifest.json`` entry) and ``StoreRecord`` (an image's entry in
a chunk index), each with its JSON form; other packages read a store through these only."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, NamedTuple

from ..atomic import atomic_write, create_exclusive
from ..data.augment import VARIANTS, AugmentParams
from ..data.decode import LEGACY_DECODE
from ..jsonfile import MAX_TEXT, Fields, MalformedFile, check_int, plain_name, read_json_file
from .layout import CHUNK_NAME, CONFIG_NAME, DTYPES, FORMAT, MANIFEST_NAME, json_bytes

MAX_ID = 4096  # longest image id
MAX_INDEX = 1 << 40


@dataclass(frozen=True)
class StoreRecord:
    """An image of the store. ``status`` "ok": its target ``[grid_hw[0], grid_hw[1], channels]``
    in ``dtype`` is tensor ``key`` of shard file ``shard`` (``checksum``: XXH3-128 of its bytes),
    computed from the image ``source`` (``source_bytes``, ``source_mtime_ns``,
    ``source_checksum`` when extracted) augmented by ``augment`` to ``image_hw``. ``status``
    "skipped": ``reason`` says why; the target fields are ``None``. ``index``: position in the
    store (the order of ``FeatureStore.records``; images appended later come after)."""
    image_id: str
    index: int
    source: str
    status: str
    source_checksum: str | None = None
    source_bytes: int | None = None
    source_mtime_ns: int | None = None
    reason: str | None = None
    augment: AugmentParams | None = None
    image_hw: tuple[int, int] | None = None
    grid_hw: tuple[int, int] | None = None
    channels: int | None = None
    dtype: str | None = None
    shard: str | None = None
    key: str | None = None
    checksum: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict:
        """JSON form (as in the index file); ``None`` fields left out."""
        out = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, AugmentParams):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[name] = value
        return out

    @classmethod
    def from_dict(cls, d: dict, where: str = "record") -> "StoreRecord":
        """From the JSON form, every field checked (type, range); one-line :class:`MalformedFile`
        naming ``where`` and the field otherwise."""
        f = Fields(d, where)
        status = f.str("status", choices=("ok", "skipped"))
        ok = status == "ok"
        augment = f.child("augment", optional=not ok)
        return cls(image_id=f.str("image_id", max_len=MAX_ID), index=f.int("index", 0, MAX_INDEX),
                   source=f.str("source"), status=status,
                   source_checksum=f.str("source_checksum", optional=True, max_len=64),
                   source_bytes=f.int("source_bytes", 0, optional=True),
                   source_mtime_ns=f.int("source_mtime_ns", None, optional=True),
                   reason=f.str("reason", optional=ok),
                   augment=None if augment is None else _augment_params(augment),
                   image_hw=f.ints("image_hw", 2, 1, optional=not ok),
                   grid_hw=f.ints("grid_hw", 2, 1, optional=not ok),
                   channels=f.int("channels", 1, 1 << 20, optional=not ok),
                   dtype=f.str("dtype", optional=not ok, choices=tuple(DTYPES)),
                   shard=f.str("shard", optional=not ok, max_len=255),
                   key=f.str("key", optional=not ok, max_len=MAX_ID + 16),
                   checksum=f.str("checksum", optional=not ok, max_len=64))


def _augment_params(f: Fields) -> AugmentParams:
    """The record's augmentation, every field checked."""
    crop = f.ints("crop", 4, 0, optional=True)
    flip = f.obj.get("flip")
    if not isinstance(flip, bool):
        raise f.bad("flip", "true or false")
    rho = f.num("rho", optional=True)
    return AugmentParams(variant=f.str("variant", choices=VARIANTS), source_hw=f.ints("source_hw", 2),
                         rho=rho, resize_hw=f.ints("resize_hw", 2),
                         mode=f.str("mode", choices=("upscale", "full", "crop")), crop=crop,
                         final_hw=f.ints("final_hw", 2), flip=flip)


@dataclass(frozen=True)
class StoreConfig:
    """The settings that define a store's targets (``store.json``, written once by the first run;
    a later run must bring the same). ``weights``: the teacher weights as recorded (canonical
    ``hub | random:SEED | file`` string; None for a Backbone object, or absent in stores that
    recorded the older ``pretrained``, kept in ``extra``); ``min_side`` /
    ``multiple``: the augmentation's size rules for this backbone; ``decode``: the image decode
    path (``data.decode``), left out of the file when it is the original one, so older stores
    read back equal; ``decode_version`` (optional): the decoder's signature; ``augment_scale``:
    the augmentation's size scale (``data.augment.sample_augment``), left out when it is the
    SPEC's 1; ``teacher``: what made the targets, ``sliding`` (the stitched sliding window at
    ``stride``, SPEC §2) or ``single`` (one single pass of the backbone, the targets of
    multi-resolution distillation; ``stride`` is then unused), left out when ``sliding``.
    ``extra``: keys of
    older versions (e.g. the ``pretrained`` of an upgraded format-1 store), kept as read."""
    backbone: str | None
    weights: str | None
    stride: int
    augment: str
    dtype: str
    seed: int
    shard_size: int
    patch_size: int
    window: int
    feature_dim: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    min_side: int
    multiple: int
    decode: str = LEGACY_DECODE
    decode_version: str | None = None
    augment_scale: float = 1.0
    teacher: str = "sliding"
    format: str = FORMAT
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON form, as in ``store.json``."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _OPTIONAL_CONFIG}
        out.update(mean=[float(v) for v in self.mean], std=[float(v) for v in self.std])
        if self.decode != LEGACY_DECODE:
            out["decode"] = self.decode
        if self.decode_version is not None:
            out["decode_version"] = self.decode_version
        if self.augment_scale != 1.0:
            out["augment_scale"] = float(self.augment_scale)
        if self.teacher != "sliding":
            out["teacher"] = self.teacher
        return {**self.extra, **out}

    @classmethod
    def from_dict(cls, d: dict, where: str = CONFIG_NAME) -> "StoreConfig":
        """From the JSON form, every field checked (type, range); a one-line
        :class:`MalformedFile` (also a ``ValueError``) naming a missing or malformed field."""
        f = Fields(d, where)
        known = {fl.name for fl in fields(cls)} - {"extra"}
        values = dict(
            backbone=f.str("backbone", optional=True), weights=f.str("weights", optional=True),
            stride=f.int("stride", 1, 1 << 16), augment=f.str("augment", choices=VARIANTS),
            dtype=f.str("dtype", choices=tuple(DTYPES)), seed=f.int("seed", 0),
            shard_size=f.int("shard_size", 1, 1 << 20), patch_size=f.int("patch_size", 1, 1 << 12),
            window=f.int("window", 1, 1 << 16), feature_dim=f.int("feature_dim", 1, 1 << 20),
            mean=f.nums("mean", 3), std=f.nums("std", 3), min_side=f.int("min_side", 1, 1 << 20),
            multiple=f.int("multiple", 1, 1 << 12),
            decode=f.str("decode", optional=True) or LEGACY_DECODE,
            decode_version=f.str("decode_version", optional=True),
            format=f.str("format", optional=True) or FORMAT)
        scale = f.num("augment_scale", optional=True)
        if scale is not None:
            if not 0 < scale <= 64:
                raise f.bad("augment_scale", "a number in (0, 64]")
            values["augment_scale"] = scale
        values["teacher"] = f.str("teacher", optional=True, choices=TEACHERS) or "sliding"
        return cls(**values, extra={k: v for k, v in d.items() if k not in known})

    @classmethod
    def read(cls, store_path: str) -> "StoreConfig | None":
        """The ``store.json`` of ``store_path``; None when it is missing; a one-line
        :class:`MalformedFile` when it is unreadable or malformed."""
        path = os.path.join(store_path, CONFIG_NAME)
        try:
            doc = read_json_file(path, CONFIG_NAME)
        except FileNotFoundError:
            return None
        return cls.from_dict(doc, path)

    def write_once(self, store_path: str) -> None:
        """Create ``store.json`` with this config unless it exists (atomic, exclusive: of two
        jobs creating a store at once, one config wins and both read it back)."""
        create_exclusive(os.path.join(store_path, CONFIG_NAME), json_bytes(self.to_dict()))

    def differences(self, other: "StoreConfig") -> list[tuple[str, Any, Any]]:
        """``(key, self's value, other's value)`` for every ``store.json`` key that differs."""
        a, b = self.to_dict(), other.to_dict()
        return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


_OPTIONAL_CONFIG = ("decode", "decode_version", "augment_scale", "teacher", "extra")
TEACHERS = ("sliding", "single")


class ChunkItem(NamedTuple):
    """An image of a chunk: its id, source path and position in the store."""
    image_id: str
    source: str
    index: int


@dataclass(frozen=True)
class Chunk:
    """A manifest entry: chunk ``name`` (``r{rank}-{n}``, the stem of its shard and index files),
    the ``rank`` that computes it and its images in order."""
    name: str
    rank: int
    items: tuple[ChunkItem, ...]

    @property
    def ids(self) -> list[str]:
        return [item.image_id for item in self.items]

    def to_dict(self) -> dict:
        """JSON form, as in ``manifest.json`` (items as ``[id, source, index]``)."""
        return {"name": self.name, "rank": self.rank, "items": [list(item) for item in self.items]}

    @classmethod
    def from_dict(cls, d: dict, where: str = MANIFEST_NAME) -> "Chunk":
        """From the JSON form; a one-line :class:`MalformedFile` when a field is malformed, the
        name is not ``r{rank:03d}-{n:06d}`` of its own rank (it becomes a file name) or an item
        is not ``[id, source, index]``."""
        f = Fields(d, where)
        name = plain_name(f.obj.get("name"), CHUNK_NAME, where, "chunk name")
        rank = f.int("rank", 0, 999)
        if int(name[1:4]) != rank:
            raise f.bad("rank", f"the rank in the chunk name {name!r}")
        items = []
        for k, item in enumerate(f.list("items", max_len=1 << 20)):
            if (not isinstance(item, list) or len(item) != 3 or not _text(item[0], MAX_ID)
                    or not _text(item[1], MAX_TEXT) or not check_int(item[2], 0, MAX_INDEX)):
                raise MalformedFile(f"{where}: chunk {name} item {k} must be [id, source, index], "
                                    f"got {str(item)[:60]!r}")
            items.append(ChunkItem(*item))
        return cls(name, rank, tuple(items))


def _text(value, max_len: int) -> bool:
    return isinstance(value, str) and 0 < len(value) <= max_len and "\0" not in value


def read_manifest(store_path: str) -> list[Chunk]:
    """The chunks of the store's manifest, ``[]`` for a store without one yet. A one-line
    :class:`MalformedFile` when it is unreadable, malformed, lists a chunk or an image twice, or
    its image indexes are not ``0 .. n-1``."""
    full = os.path.join(store_path, MANIFEST_NAME)
    try:
        doc = read_json_file(full, MANIFEST_NAME)
    except FileNotFoundError:
        return []
    f = Fields(doc, full)
    f.str("format", choices=(FORMAT,))
    chunks = [Chunk.from_dict(c, f"{full}: chunk {k}") for k, c in enumerate(f.list("chunks"))]
    names = [c.name for c in chunks]
    ids = [i for c in chunks for i in c.ids]
    indexes = sorted(item.index for c in chunks for item in c.items)
    for what, values in (("chunk", names), ("image id", ids)):
        if len(set(values)) != len(values):
            twice = next(v for k, v in enumerate(sorted(values)) if k and sorted(values)[k - 1] == v)
            raise MalformedFile(f"{full}: {what} {twice!r} is listed twice")
    if indexes != list(range(len(indexes))):
        raise MalformedFile(f"{full}: image indexes are not 0 .. {len(indexes) - 1}, each once")
    return chunks


def write_manifest(store_path: str, chunks: list[Chunk]) -> None:
    """Replace the manifest with ``chunks`` (atomically)."""
    atomic_write(os.path.join(store_path, MANIFEST_NAME),
                 json_bytes({"format": FORMAT, "chunks": [c.to_dict() for c in chunks]}))
