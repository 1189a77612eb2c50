"""One image's entry in a feature store index (see ``shards.py`` for the file layout)."""
from __future__ import annotations

from dataclasses import dataclass

from ..data.augment import AugmentParams


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
