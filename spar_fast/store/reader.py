"""Reading a feature store: merged shard indexes, lazy (memory-mapped) target reads."""
from __future__ import annotations

import glob
import hashlib
import os
from collections import OrderedDict

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_save

from ..data.augment import apply_augment
from ..data.images import load_image
from ..errors import UserError
from .codec import StoredTarget, read_stored_target
from .records import StoreRecord
from ..atomic import atomic_write
from .shards import (CONFIG_NAME, FORMAT, SHARD_DIR, chunk_name, file_sha256,
                     json_bytes, read_json)


def write_chunk(shard_dir: str, rank: int, chunk: int, records: list[StoreRecord],
                tensors: dict[str, torch.Tensor]) -> dict:
    """Write one chunk: the safetensors shard, then its index (both atomic). Returns the index.

    ``tensors``: key -> target ``[h, w, C]`` in the stored dtype, on the CPU.
    """
    stem = chunk_name(rank, chunk)
    data = safetensors_save({k: v.contiguous() for k, v in tensors.items()},
                            metadata={"format": FORMAT})
    atomic_write(os.path.join(shard_dir, stem + ".safetensors"), data)
    index = {"format": FORMAT, "rank": rank, "chunk": chunk, "shard": stem + ".safetensors",
             "shard_bytes": len(data), "shard_sha256": hashlib.sha256(data).hexdigest(),
             "records": [r.to_dict() for r in records]}
    atomic_write(os.path.join(shard_dir, stem + ".json"), json_bytes(index))
    return index


def load_indexes(path: str) -> list[dict]:
    """All parseable chunk indexes of the store at ``path``, in file-name order."""
    out = []
    for f in sorted(glob.glob(os.path.join(path, SHARD_DIR, "r*-*.json"))):
        index = read_json(f)
        if isinstance(index, dict) and index.get("format") == FORMAT:
            index["_path"] = f
            out.append(index)
    return out


class FeatureStore:
    """A finished (or partial) feature store, merged over all ranks and chunks.

    ``records``: ok records sorted by their position in the image list; ``skipped``: skipped
    records (with ``reason``); ``config``: the run config from ``store.json``.
    ``get(image_id) -> (target [h, w, C] in the stored dtype, record)`` reads lazily through
    ``safetensors.safe_open`` (memory-mapped), keeping a few shard handles open.
    """

    _MAX_OPEN = 8  # open shard handles kept (each holds one mmap); enough for sequential reads

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.config = read_json(os.path.join(self.path, CONFIG_NAME))
        if not isinstance(self.config, dict):
            raise UserError(f"{self.path}: not a feature store (missing or unreadable {CONFIG_NAME})")
        records, skipped = [], []
        for index in load_indexes(self.path):
            for rec in map(StoreRecord.from_dict, index.get("records", [])):
                (records if rec.ok else skipped).append(rec)
        self.records = sorted(records, key=lambda r: r.index)
        self.skipped = sorted(skipped, key=lambda r: r.index)
        self._by_id = {r.image_id: r for r in self.records}
        self._handles: OrderedDict[str, object] = OrderedDict()

    def __len__(self) -> int:
        return len(self.records)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._by_id

    @property
    def ids(self) -> list[str]:
        return [r.image_id for r in self.records]

    def record(self, image_id: str) -> StoreRecord:
        try:
            return self._by_id[image_id]
        except KeyError:
            raise KeyError(f"image id {image_id!r} has no target in {self.path}") from None

    def _handle(self, shard: str):
        handle = self._handles.pop(shard, None)
        if handle is None:
            handle = safe_open(os.path.join(self.path, SHARD_DIR, shard), framework="pt")
            if len(self._handles) >= self._MAX_OPEN:
                self._handles.popitem(last=False)
        self._handles[shard] = handle
        return handle

    def get(self, image_id: str, decoded: bool = True) -> tuple[torch.Tensor | StoredTarget, StoreRecord]:
        """``(target [h, w, C], record)`` for one ok image: the stored dtype (fp8 targets decoded
        to fp32); ``decoded=False``: the :class:`StoredTarget` itself (zero-copy views of the
        memory-mapped shard), for decoding on the training device."""
        rec = self.record(image_id)
        stored = read_stored_target(os.path.join(self.path, SHARD_DIR, rec.shard), rec.key)
        return (stored.decode() if decoded else stored), rec

    def input_image(self, image_id: str, check_source: bool = True) -> torch.Tensor:
        """The augmented input the target was computed from: float32 ``[3, H, W]`` in [0, 1]
        (not normalized), rebuilt from the source file and the stored augmentation parameters.
        With ``check_source``, a source file changed since extraction raises ``UserError``."""
        rec = self.record(image_id)
        if not os.path.isfile(rec.source):
            raise UserError(f"{rec.source}: source image of {image_id!r} not found")
        if check_source and rec.source_sha256 != file_sha256(rec.source):
            raise UserError(f"{rec.source}: changed since its target was extracted")
        return apply_augment(load_image(rec.source), rec.augment)
