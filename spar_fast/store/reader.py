"""Reading a feature store: the manifest's chunks, checked; every target verified as it is read."""
from __future__ import annotations

import os

import torch

from ..data.augment import apply_augment
from ..data.images import printable_id, read_rgb
from ..errors import UserError
from ..jsonfile import MalformedFile, read_json_file
from .codec import StoredTarget, read_stored_target
from .index import MISSING_SOURCE, read_index, source_changed  # noqa: F401  (source_changed: re-exported)
from .layout import CONFIG_NAME, DTYPES, FORMAT, SHARD_DIR, target_digest
from .records import StoreConfig, StoreRecord, read_manifest

_REPAIR = "rerun `spar-fast features` with the store's options to recompute it"
_RECREATE = "recreate the store with `spar-fast features` in a new folder"


class CorruptStoreError(UserError):
    """A target or index of a feature store does not match its checksum or its manifest."""


class FeatureStore:
    """A feature store, merged over all ranks and chunks.

    ``records``: ok records sorted by their index; ``skipped``: skipped records (with
    ``reason``); ``config``: ``store.json`` (a :class:`StoreConfig`); ``missing``: manifest chunks without a complete
    index. Opening refuses (``CorruptStoreError``, one line) a store whose indexes do not hold
    every image its manifest lists, unless ``partial=True`` (then ``records`` holds what is
    there). ``get(image_id) -> (target [h, w, C] stored dtype, record)`` reads lazily through
    ``spar_fast.store.codec`` (zero-copy views of memory-mapped shards) and checks the
    target's XXH3-128 checksum, shape and dtype against its record on every read
    (``verify_reads=False`` skips the checksum).
    """

    def __init__(self, path: str | os.PathLike, partial: bool = False, verify_reads: bool = True):
        self.path = os.fspath(path)
        self.verify_reads = verify_reads
        try:
            raw = read_json_file(os.path.join(self.path, CONFIG_NAME), CONFIG_NAME)
        except (OSError, MalformedFile):
            raw = None
        if not isinstance(raw, dict):
            raise UserError(f"{self.path}: not a feature store (missing or unreadable {CONFIG_NAME})")
        manifest = os.path.lexists(os.path.join(self.path, "manifest.json"))
        if raw.get("format") != FORMAT and not manifest:
            raise UserError(f"{self.path}: feature store format {str(raw.get('format'))[:40]!r}; "
                            "rerun `spar-fast features` with its options once to upgrade it")
        try:
            self.config = StoreConfig.from_dict(raw, os.path.join(self.path, CONFIG_NAME))
            if self.config.format != FORMAT:
                raise MalformedFile(f"{CONFIG_NAME} says format {self.config.format!r} over a "
                                    f"{FORMAT} store")
            chunks = read_manifest(self.path)
        except MalformedFile as exc:
            raise CorruptStoreError(f"{self.path}: {exc}; {_RECREATE}") from None
        records, skipped, self.missing = [], [], []
        shard_dir = os.path.join(self.path, SHARD_DIR)
        for chunk in chunks:
            try:
                index = read_index(shard_dir, chunk)
            except (OSError, MalformedFile):
                self.missing.append(chunk.name)
                continue
            for rec in index.records:
                (records if rec.ok else skipped).append(rec)
        wanted = sum(len(c.items) for c in chunks)
        if not wanted:
            raise CorruptStoreError(f"{self.path}: unfinished store without images yet; rerun "
                                    "`spar-fast features` to fill it")
        if self.missing and not partial:
            held = len(records) + len(skipped)
            shown = ", ".join(self.missing[:3]) + (" ..." if len(self.missing) > 3 else "")
            raise CorruptStoreError(
                f"{self.path}: holds {held} of the {wanted} images its manifest lists "
                f"(chunks without a valid index: {shown or 'all'}); {_REPAIR}, or read the "
                "images it holds with partial=True (train --allow-partial)")
        self.records = sorted(records, key=lambda r: r.index)
        self.skipped = sorted(skipped, key=lambda r: r.index)
        self._by_id = {r.image_id: r for r in self.records}

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

    def get(self, image_id: str, decoded: bool = True) -> tuple[torch.Tensor | StoredTarget, StoreRecord]:
        """``(target [h, w, C], record)`` for one ok image, verified against its record (shape,
        dtype, XXH3-128 of the stored bytes, fp8 scale included): the stored dtype (fp8 targets
        decoded to fp32); ``decoded=False``: the :class:`StoredTarget` itself (zero-copy views of
        the memory-mapped shard), for decoding on the training device."""
        rec = self.record(image_id)
        where = f"{self.path}: target of image {printable_id(image_id)!r} in shard {rec.shard}"
        try:
            stored = read_stored_target(os.path.join(self.path, SHARD_DIR, rec.shard), rec.key)
        except Exception as exc:  # missing file, bad header, truncated data
            first = (str(exc).splitlines() or [exc.__class__.__name__])[0][:160]
            raise CorruptStoreError(f"{where} is unreadable ({first}); {_REPAIR}") from None
        want = (*rec.grid_hw, rec.channels)
        if tuple(stored.data.shape) != want or stored.data.dtype != DTYPES.get(rec.dtype):
            raise CorruptStoreError(f"{where} is {stored.data.dtype} {list(stored.data.shape)}, its "
                                    f"index says {rec.dtype} {list(want)}; {_REPAIR}")
        if self.verify_reads and target_digest(stored) != rec.checksum:
            raise CorruptStoreError(f"{where} is corrupt (checksum mismatch); {_REPAIR}")
        return (stored.decode() if decoded else stored), rec

    def input_image(self, image_id: str, check_source: bool = True) -> torch.Tensor:
        """The augmented input the target was computed from: float32 ``[3, H, W]`` in [0, 1]
        (not normalized), rebuilt from the source file and the stored augmentation parameters.
        With ``check_source`` (a ``stat`` per call; the file is hashed only when its size or
        mtime changed), a source changed since extraction raises a one-line ``UserError``."""
        rec = self.record(image_id)
        problem = source_changed(rec) if check_source else None
        if problem:
            advice = ("restore it" if problem == MISSING_SOURCE else
                      "rerun `spar-fast features` with the store's options to recompute its target")
            raise UserError(f"{self.path}: {problem} for {printable_id(image_id)!r} "
                            f"({printable_id(rec.source)}); {advice}")
        return apply_augment(read_rgb(rec.source, max_pixels=None), rec.augment)
