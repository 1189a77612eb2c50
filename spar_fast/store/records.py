"""The typed records of a feature store (file layout in ``layout.py``): ``StoreConfig``
(``store.json``), ``Chunk`` (a ``manifest.json`` entry) and ``StoreRecord`` (an image's entry in
a chunk index), each with its JSON form; other packages read a store through these only."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, NamedTuple

from ..atomic import atomic_write, create_exclusive
from ..data.augment import AugmentParams
from ..data.decode import LEGACY_DECODE
from .layout import CONFIG_NAME, FORMAT, MANIFEST_NAME, json_bytes, read_json


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
    def from_dict(cls, d: dict) -> "StoreRecord":
        def pair(v):
            return tuple(int(x) for x in v) if v is not None else None
        augment = d.get("augment")
        return cls(image_id=d["image_id"], index=int(d["index"]), source=d["source"],
                   status=d["status"], source_checksum=d.get("source_checksum"),
                   source_bytes=d.get("source_bytes"), source_mtime_ns=d.get("source_mtime_ns"),
                   reason=d.get("reason"),
                   augment=AugmentParams.from_dict(augment) if augment is not None else None,
                   image_hw=pair(d.get("image_hw")), grid_hw=pair(d.get("grid_hw")),
                   channels=d.get("channels"), dtype=d.get("dtype"), shard=d.get("shard"),
                   key=d.get("key"), checksum=d.get("checksum"))


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
    def from_dict(cls, d: dict) -> "StoreConfig":
        """From the JSON form; ``ValueError`` naming a missing or malformed field."""
        if not isinstance(d, dict):
            raise ValueError(f"not a JSON object: {type(d).__name__}")
        known = {f.name for f in fields(cls)} - {"extra"}
        missing = sorted(n for n in known - set(_OPTIONAL_CONFIG) - {"format", "weights"} if n not in d)
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        try:
            values = {"weights": None, **{n: d[n] for n in known if n in d}}
            values.update(mean=tuple(float(v) for v in d["mean"]), std=tuple(float(v) for v in d["std"]))
            for name in ("stride", "seed", "shard_size", "patch_size", "window", "feature_dim",
                         "min_side", "multiple"):
                values[name] = int(values[name])
            if "augment_scale" in values:
                values["augment_scale"] = float(values["augment_scale"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"malformed field ({exc})") from None
        return cls(**values, extra={k: v for k, v in d.items() if k not in known})

    @classmethod
    def read(cls, store_path: str) -> "StoreConfig | None":
        """The ``store.json`` of ``store_path``; None when it is missing, unreadable or malformed."""
        try:
            return cls.from_dict(read_json(os.path.join(store_path, CONFIG_NAME)))
        except ValueError:
            return None

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
    def from_dict(cls, d: dict) -> "Chunk":
        """From the JSON form; ``ValueError`` when malformed."""
        try:
            items = tuple(ChunkItem(str(i), str(s), int(n)) for i, s, n in d["items"])
            return cls(str(d["name"]), int(d["rank"]), items)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed chunk ({exc!r})") from None


def read_manifest(store_path: str) -> list[Chunk] | None:
    """The chunks of the store's manifest, ``[]`` for a store without one yet, ``None`` when it is
    unreadable or malformed."""
    full = os.path.join(store_path, MANIFEST_NAME)
    if not os.path.exists(full):
        return []
    doc = read_json(full)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("chunks"), list):
        return None
    try:
        return [Chunk.from_dict(c) for c in doc["chunks"]]
    except ValueError:
        return None


def write_manifest(store_path: str, chunks: list[Chunk]) -> None:
    """Replace the manifest with ``chunks`` (atomically)."""
    atomic_write(os.path.join(store_path, MANIFEST_NAME),
                 json_bytes({"format": FORMAT, "chunks": [c.to_dict() for c in chunks]}))
