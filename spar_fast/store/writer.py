"""Writing a feature store: creation with one config, the manifest of chunks, chunk files.

Creation: ``store.json`` is created with :func:`spar_fast.atomic.create_exclusive`, then re-read;
two jobs creating the same store at the same instant therefore agree on one config, and the
loser stops with a one-line error if its settings differ. The image listing is not part of the
config: a later run with the same settings appends the images the store does not hold yet
(:func:`plan_chunks`), in new chunks, keeping every id and index already stored.
"""
from __future__ import annotations

import os

import torch
from safetensors.torch import save as safetensors_save

from ..atomic import atomic_write, create_exclusive
from ..errors import UserError
from .layout import (CONFIG_NAME, FORMAT, MANIFEST_NAME, SHARD_DIR, bytes_digest, chunk_name,
                     json_bytes, read_json)
from .records import StoreRecord


def open_store(path: str, config: dict) -> str:
    """Create the store with ``config`` or check that an existing one has the same config.

    Returns the shard folder. Raises ``UserError`` when ``path`` holds another config."""
    shard_dir = os.path.join(path, SHARD_DIR)
    os.makedirs(shard_dir, exist_ok=True)
    cfg_path = os.path.join(path, CONFIG_NAME)
    create_exclusive(cfg_path, json_bytes(config))
    old = read_json(cfg_path)
    if not isinstance(old, dict):
        raise UserError(f"{cfg_path} is unreadable; use a new --out folder")
    diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
    if diff:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {config.get(k)!r}" for k in diff[:3])
        raise UserError(f"{path} was started with another config ({shown}); "
                        "rerun with the original options or use a new --out folder")
    return shard_dir


def read_manifest(path: str) -> list[dict] | None:
    """The chunks of the store's manifest (``name``, ``rank``, ``items``: ``[id, source,
    index]``), ``[]`` for a store without one yet, ``None`` when it is unreadable."""
    full = os.path.join(path, MANIFEST_NAME)
    if not os.path.exists(full):
        return []
    doc = read_json(full)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("chunks"), list):
        return None
    return doc["chunks"]


def plan_chunks(path: str, items, shard_size: int, world: int, write: bool) -> list[dict]:
    """Every chunk of the store after adding ``items`` (``ImageItem``s; ids already stored are
    kept as they are). New images get the next indexes; image ``j`` of the new ones goes to rank
    ``j % world``, each rank's share cut into chunks of ``shard_size`` numbered after the rank's
    last chunk. ``write``: save the new manifest (atomically; one process per job)."""
    chunks = read_manifest(path)
    if chunks is None:
        raise UserError(f"{os.path.join(path, MANIFEST_NAME)} is unreadable; use a new --out folder")
    known = {entry[0] for c in chunks for entry in c["items"]}
    new = [it for it in items if it.id not in known]
    if not new:
        return chunks
    start = sum(len(c["items"]) for c in chunks)
    for rank in range(world):
        mine = [[it.id, it.path, start + j] for j, it in enumerate(new) if j % world == rank]
        last = max((int(c["name"].split("-")[1]) for c in chunks if c["rank"] == rank), default=-1)
        for k in range(0, len(mine), shard_size):
            chunks.append({"name": chunk_name(rank, last + 1 + k // shard_size), "rank": rank,
                           "items": mine[k:k + shard_size]})
    if write:
        atomic_write(os.path.join(path, MANIFEST_NAME), json_bytes({"format": FORMAT, "chunks": chunks}))
    return chunks


def write_chunk(shard_dir: str, name: str, records: list[StoreRecord],
                tensors: dict[str, torch.Tensor]) -> dict:
    """Write one chunk: the safetensors shard, then its index (both atomic). Returns the index.

    ``tensors``: key -> target ``[h, w, C]`` in the stored dtype, on the CPU.
    """
    data = safetensors_save({k: v.contiguous() for k, v in tensors.items()}, metadata={"format": FORMAT})
    atomic_write(os.path.join(shard_dir, name + ".safetensors"), data)
    index = {"format": FORMAT, "chunk": name, "shard": name + ".safetensors",
             "shard_bytes": len(data), "shard_checksum": bytes_digest(data),
             "records": [r.to_dict() for r in records]}
    atomic_write(os.path.join(shard_dir, name + ".json"), json_bytes(index))
    return index
