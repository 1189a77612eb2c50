"""Writing a feature store: creation with one config, the manifest of chunks, chunk files.

Creation: ``store.json`` is created exclusively (:meth:`StoreConfig.write_once`), then re-read;
two jobs creating the same store at the same instant therefore agree on one config, and the
loser stops with a one-line error if its settings differ. The image listing is not part of the
config: a later run with the same settings appends the images the store does not hold yet
(:func:`plan_chunks`), in new chunks, keeping every id and index already stored.
"""
from __future__ import annotations

import os

import torch
from safetensors.torch import save as safetensors_save

from ..atomic import atomic_write
from ..errors import UserError
from ..jsonfile import MalformedFile
from .layout import CONFIG_NAME, FORMAT, SHARD_DIR, bytes_digest, chunk_name, json_bytes
from .records import Chunk, ChunkItem, StoreConfig, StoreRecord, read_manifest, write_manifest


def open_store(path: str, config: StoreConfig) -> str:
    """Create the store with ``config`` or check that an existing one has the same config.

    Returns the shard folder. Raises ``UserError`` when ``path`` holds another config."""
    shard_dir = os.path.join(path, SHARD_DIR)
    os.makedirs(shard_dir, exist_ok=True)
    config.write_once(path)
    try:
        old = StoreConfig.read(path)
    except MalformedFile as exc:
        raise UserError(f"{exc}; use a new --out folder") from None
    if old is None:
        raise UserError(f"{os.path.join(path, CONFIG_NAME)} is missing; use a new --out folder")
    if old.format != FORMAT:
        raise UserError(f"{os.path.join(path, CONFIG_NAME)} says format {old.format!r} over a "
                        f"{FORMAT} store; use a new --out folder")
    diff = old.differences(config)
    if diff:
        shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diff[:3])
        raise UserError(f"{path} was started with another config ({shown}); "
                        "rerun with the original options or use a new --out folder")
    return shard_dir


def plan_chunks(path: str, items, shard_size: int, world: int, write: bool) -> list[Chunk]:
    """Every chunk of the store after adding ``items`` (``ImageItem``s; ids already stored are
    kept as they are). New images get the next indexes; image ``j`` of the new ones goes to rank
    ``j % world``, each rank's share cut into chunks of ``shard_size`` numbered after the rank's
    last chunk. ``write``: save the new manifest (atomically; one process per job)."""
    try:
        chunks = read_manifest(path)
    except MalformedFile as exc:
        raise UserError(f"{exc}; use a new --out folder") from None
    known = {image_id for c in chunks for image_id in c.ids}
    new = [it for it in items if it.id not in known]
    if not new:
        return chunks
    start = sum(len(c.items) for c in chunks)
    for rank in range(world):
        mine = [ChunkItem(it.id, it.path, start + j) for j, it in enumerate(new) if j % world == rank]
        last = max((int(c.name.split("-")[1]) for c in chunks if c.rank == rank), default=-1)
        for k in range(0, len(mine), shard_size):
            chunks.append(Chunk(chunk_name(rank, last + 1 + k // shard_size), rank,
                                tuple(mine[k:k + shard_size])))
    if write:
        write_manifest(path, chunks)
    return chunks


def _clear_way(path: str) -> None:
    """Make room for a chunk file at ``path``: an empty folder or a link there (nothing the
    store holds) is removed; a folder with content is the user's: one-line error."""
    if os.path.islink(path):
        os.remove(path)
    elif os.path.isdir(path):
        try:
            os.rmdir(path)
        except OSError:
            raise UserError(f"{path} is a folder with content where a chunk file of the store "
                            "belongs; move it away, then rerun `spar-fast features`") from None
    elif os.path.lexists(path) and not os.path.isfile(path):
        raise UserError(f"{path} is not a regular file where a chunk file of the store belongs; "
                        "move it away, then rerun `spar-fast features`")


def write_chunk(shard_dir: str, name: str, records: list[StoreRecord],
                tensors: dict[str, torch.Tensor]) -> dict:
    """Write one chunk: the safetensors shard, then its index (both atomic). Returns the index.

    ``tensors``: key -> target ``[h, w, C]`` in the stored dtype, on the CPU.
    """
    for path in (os.path.join(shard_dir, name + ".safetensors"), os.path.join(shard_dir, name + ".json")):
        _clear_way(path)
    data = safetensors_save({k: v.contiguous() for k, v in tensors.items()}, metadata={"format": FORMAT})
    atomic_write(os.path.join(shard_dir, name + ".safetensors"), data)
    index = {"format": FORMAT, "chunk": name, "shard": name + ".safetensors",
             "shard_bytes": len(data), "shard_checksum": bytes_digest(data),
             "records": [r.to_dict() for r in records]}
    atomic_write(os.path.join(shard_dir, name + ".json"), json_bytes(index))
    return index
