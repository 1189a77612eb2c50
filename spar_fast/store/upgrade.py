"""Upgrade a finished store of format 1 (SHA-256, no manifest) in place, keeping every target.

Each chunk's shard and targets are checked against their SHA-256, then re-indexed with XXH3-128
checksums; sources unchanged since extraction (same SHA-256) get their size and mtime recorded.
New indexes are written first, then the manifest, then ``store.json`` (the commit point), all
atomically; an interrupted upgrade is simply run again. Only complete stores can be upgraded: a
format-1 index is the only record of which images a chunk holds.
"""
from __future__ import annotations

import hashlib
import os

import torch
from safetensors import safe_open

from ..atomic import atomic_write
from ..errors import UserError
from ..jsonfile import Fields, read_json_file
from .layout import (CONFIG_NAME, FORMAT, MANIFEST_NAME, SHARD_DIR, chunk_name, file_digest, json_bytes, read_json,
                     tensor_digest)
from .records import Chunk, ChunkItem, write_manifest

FORMAT_1 = "spar_fast.store/1"
_V1_ONLY = ("num_images", "images_sha256", "world_size", "pretrained")


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _source_fields(rec: dict) -> dict:
    """Size, mtime and checksum of an unchanged source (empty when it changed or is gone)."""
    try:
        if _sha256_file(rec["source"]) != rec.get("source_sha256"):
            return {}
        st = os.stat(rec["source"])
    except OSError:
        return {}
    return {"source_bytes": st.st_size, "source_mtime_ns": st.st_mtime_ns,
            "source_checksum": file_digest(rec["source"])}


def _upgrade_chunk(shard_dir: str, name: str, index: dict) -> dict:
    """The format-2 index of a format-1 chunk (``index``), after checking its SHA-256 sums."""
    shard = os.path.join(shard_dir, name + ".safetensors")
    if not os.path.isfile(shard) or _sha256_file(shard) != index.get("shard_sha256"):
        raise UserError(f"{shard}: damaged (SHA-256 differs from its index); cannot upgrade it")
    records = []
    with safe_open(shard, framework="pt") as handle:
        for rec in index["records"]:
            rec = dict(rec)
            old_source = rec.pop("source_sha256", None)
            if rec["status"] == "ok":
                t = handle.get_tensor(rec["key"])
                data = t.contiguous().reshape(-1).view(torch.uint8).numpy()
                if hashlib.sha256(memoryview(data)).hexdigest() != rec.pop("sha256"):
                    raise UserError(f"{shard}: target {rec['image_id']!r} damaged; cannot upgrade it")
                rec["checksum"] = tensor_digest(t)
                rec.update(_source_fields(dict(rec, source_sha256=old_source)))
            records.append(rec)
    return {"format": FORMAT, "chunk": name, "shard": name + ".safetensors",
            "shard_bytes": os.path.getsize(shard), "shard_checksum": file_digest(shard),
            "records": records}


def upgrade_if_format_1(path: str) -> bool:
    """Rewrite a finished format-1 store at ``path`` as format 2 (call under its writer lock).
    False (nothing done) for anything else. A malformed format-1 file, or a ``store.json`` saying
    format 1 over a store that has a format-2 manifest, is a one-line ``UserError``."""
    try:
        config = read_json_file(os.path.join(path, CONFIG_NAME), CONFIG_NAME)
    except (OSError, ValueError):
        return False
    if not isinstance(config, dict) or config.get("format") != FORMAT_1:
        return False
    if os.path.lexists(os.path.join(path, MANIFEST_NAME)):
        raise UserError(f"{os.path.join(path, CONFIG_NAME)} says format 1 over a {FORMAT} store "
                        "(it has a manifest); use a new --out folder")
    f = Fields(config, os.path.join(path, CONFIG_NAME))
    n, world, size = f.int("num_images"), f.int("world_size", 1, 999), f.int("shard_size", 1)
    try:
        _upgrade(path, config, n, world, size)
    except Exception as exc:  # a field of the wrong type, an unreadable shard tensor
        if isinstance(exc, UserError):
            raise
        raise UserError(f"{path}: malformed format-1 store ({exc.__class__.__name__}: "
                        f"{str(exc)[:80]}); cannot upgrade it, use a new --out folder") from None
    return True


def _upgrade(path: str, config: dict, n: int, world: int, size: int) -> None:
    shard_dir = os.path.join(path, SHARD_DIR)
    chunks = []
    for rank in range(world):
        count = len(range(rank, n, world))
        for k in range(-(-count // size)):
            name = chunk_name(rank, k)
            index = read_json(os.path.join(shard_dir, name + ".json"))
            if not isinstance(index, dict) or index.get("format") not in (FORMAT_1, FORMAT):
                raise UserError(f"{path}: format-1 store without a complete chunk {name}; finish it "
                                "with the spar_fast version that started it, or use a new --out folder")
            if index["format"] == FORMAT_1:
                index = _upgrade_chunk(shard_dir, name, index)
                atomic_write(os.path.join(shard_dir, name + ".json"), json_bytes(index))
            chunks.append(Chunk(name, rank, tuple(ChunkItem(str(r["image_id"]), str(r["source"]), int(r["index"]))
                                                  for r in index["records"])))
    write_manifest(path, chunks)
    pretrained = config.get("pretrained")
    weights = "hub" if pretrained is True else (pretrained if isinstance(pretrained, str) else None)
    new = {k: v for k, v in config.items() if k not in _V1_ONLY}
    new.update(format=FORMAT, weights=weights)
    atomic_write(os.path.join(path, CONFIG_NAME), json_bytes(new))
