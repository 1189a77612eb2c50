"""The one check of a chunk, shared by ``verify`` and by the features job's "is this chunk done?",
so whatever ``verify`` calls damaged a rerun of ``spar-fast features`` recomputes.

A chunk is done when its index passes its schema (``store.index``), its shard is a regular file
of the recorded size and XXH3-128 checksum, holds exactly the index's tensors, each of the
recorded shape, dtype and checksum, and no source image changed since extraction (a *missing*
source keeps the chunk: its target is still the one of the original image, and recomputing it
would only turn it into a skip). A shard resealed after tampering (index checksums updated)
is caught by the per-target checksums.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from safetensors import safe_open

from ..data.images import printable_id
from ..jsonfile import MalformedFile
from .codec import FP8, SCALE_SUFFIX, StoredTarget
from .index import MISSING_SOURCE, ChunkIndex, index_path, read_index, shard_keys, source_changed
from .layout import DTYPES, SHARD_SUFFIX, file_digest, target_digest
from .records import Chunk, StoreConfig, StoreRecord

@dataclass
class ChunkCheck:
    """What :func:`check_chunk` found: ``written`` (its index exists), ``index`` (parsed, or
    None), ``errors`` (damage: the chunk must be recomputed), ``blocked`` (paths of the chunk
    taken by something that is not a regular file), ``sources`` (``(record, problem)`` for
    sources missing or changed)."""
    written: bool = False
    index: ChunkIndex | None = None
    errors: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    sources: list[tuple[StoreRecord, str]] = field(default_factory=list)

    @property
    def done(self) -> bool:
        """Complete and current: nothing to recompute."""
        return (self.index is not None and not self.errors
                and all(problem == MISSING_SOURCE for _, problem in self.sources))


def _not_a_file(path: str) -> str | None:
    """What sits at ``path`` when it exists but is not a regular file (``None`` otherwise)."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    return "a folder" if stat.S_ISDIR(mode) else "a link" if stat.S_ISLNK(mode) else "not a regular file"


def _check_record(rec: StoreRecord, name: str, config: StoreConfig, handle, errors: list[str]) -> None:
    where = f"{name} {printable_id(rec.image_id)!r}"
    try:
        t = handle.get_tensor(rec.key)
        scale = handle.get_tensor(rec.key + SCALE_SUFFIX) if rec.dtype == FP8 else None
    except Exception as exc:  # missing key, unreadable data
        errors.append(f"{where}: tensor {rec.key!r} unreadable ({str(exc)[:120]})")
        return
    want = [*rec.grid_hw, rec.channels]
    if list(t.shape) != want or DTYPES.get(rec.dtype) != t.dtype:
        errors.append(f"{where}: stored {t.dtype} {list(t.shape)} but the index says {rec.dtype} {want}")
        return
    if [d // config.patch_size for d in rec.image_hw] != list(rec.grid_hw):
        errors.append(f"{where}: grid {rec.grid_hw} does not match image {rec.image_hw} / {config.patch_size}")
    if target_digest(StoredTarget(t, scale)) != rec.checksum:
        errors.append(f"{where}: tensor checksum mismatch")


def check_chunk(shard_dir: str, chunk: Chunk, config: StoreConfig, check_sources: bool = True) -> ChunkCheck:
    """Check manifest chunk ``chunk`` completely (see the module docstring)."""
    name, out = chunk.name, ChunkCheck()
    shard = os.path.join(shard_dir, name + SHARD_SUFFIX)
    for path in (index_path(shard_dir, chunk), shard):
        kind = _not_a_file(path)
        if kind:
            out.blocked.append(path)
            out.errors.append(f"{os.path.basename(path)} is {kind}, not a file; move it away, then "
                              "rerun `spar-fast features`")
    if out.blocked:
        out.written = True
        return out
    try:
        out.index = index = read_index(shard_dir, chunk)
        out.written = True
    except FileNotFoundError:
        return out
    except MalformedFile as exc:
        out.written = True
        out.errors.append(str(exc).replace(shard_dir + os.sep, ""))
        return out
    if not os.path.exists(shard):
        out.errors.append(f"{name}: shard file missing")
        return out
    if os.path.getsize(shard) != index.shard_bytes or file_digest(shard) != index.shard_checksum:
        out.errors.append(f"{name}: shard file size or checksum differs from its index")
    ok = [r for r in index.records if r.ok]
    try:
        with safe_open(shard, framework="pt") as handle:
            if set(handle.keys()) != {k for r in ok for k in shard_keys(r)}:
                out.errors.append(f"{name}: shard tensors do not match the index's ok records")
            for rec in ok:
                _check_record(rec, name, config, handle, out.errors)
    except Exception as exc:  # not a safetensors file at all
        out.errors.append(f"{name}: shard unreadable ({exc.__class__.__name__}: {str(exc)[:120]})")
    for rec in ok if check_sources else ():
        problem = source_changed(rec)
        if problem:
            out.sources.append((rec, problem))
    return out
