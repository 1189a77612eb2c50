"""On-disk layout of a feature store, and atomic writes.

::

    STORE/store.json                          run config (identical bytes from every rank)
    STORE/shards/r{rank:03d}-{chunk:06d}.safetensors   targets of one chunk, one tensor per image
    STORE/shards/r{rank:03d}-{chunk:06d}.json          the chunk's index (written last)

A chunk is done exactly when its index exists, parses, lists the expected image ids and its shard
file has the recorded size. Both files are written atomically (temporary file in the same folder,
fsync, ``os.replace``, fsync of the folder), the shard first, the index last; so after any crash a
chunk is either complete or recomputed from scratch.

Index record (one per image, in chunk order)::

    {"image_id", "index" (position in the full image list), "source", "source_sha256",
     "status": "ok" | "skipped", "reason" (skipped only),
     "augment" (AugmentParams.to_dict()), "image_hw" [H, W] (augmented), "grid_hw" [h, w],
     "channels", "dtype", "shard", "key", "sha256" (of the stored tensor bytes)}

Skipped records carry image_id, index, source, status and reason (plus source_sha256 when readable).
"""
from __future__ import annotations

import hashlib
import json
import os

import torch

FORMAT = "spar_fast.store/1"
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
CONFIG_NAME = "store.json"
SHARD_DIR = "shards"


def chunk_name(rank: int, chunk: int) -> str:
    """File stem of chunk ``chunk`` of rank ``rank``."""
    return f"r{rank:03d}-{chunk:06d}"


def tensor_sha256(t: torch.Tensor) -> str:
    """SHA-256 of the tensor's bytes as stored (contiguous, native byte order)."""
    data = t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
    return hashlib.sha256(memoryview(data)).hexdigest()


def file_sha256(path: str, block: int = 1 << 22) -> str:
    """SHA-256 of a file, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def json_bytes(obj) -> bytes:
    """Canonical JSON (sorted keys, fixed layout) so equal content gives equal bytes."""
    return (json.dumps(obj, sort_keys=True, indent=1) + "\n").encode()


def read_json(path: str):
    """Parsed JSON, or ``None`` when the file is missing or unreadable."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


def chunk_done(shard_dir: str, rank: int, chunk: int, expected_ids: list[str]) -> dict | None:
    """The chunk's index when the chunk is complete and lists ``expected_ids``, else ``None``."""
    stem = chunk_name(rank, chunk)
    index = read_json(os.path.join(shard_dir, stem + ".json"))
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        return None
    if [r.get("image_id") for r in index.get("records", [])] != list(expected_ids):
        return None
    shard = os.path.join(shard_dir, index.get("shard", ""))
    if not os.path.isfile(shard) or os.path.getsize(shard) != index.get("shard_bytes"):
        return None
    return index
