"""Full consistency check of a feature store: every checksum, every index against its shard."""
from __future__ import annotations

import glob
import os

from safetensors import safe_open

from .shards import (CONFIG_NAME, DTYPES, FORMAT, SHARD_DIR, chunk_name, file_sha256, read_json,
                     tensor_sha256)


def _expected_chunks(config: dict) -> set[tuple[int, int]]:
    """(rank, chunk) pairs a complete run of ``config`` writes."""
    n, world, size = config["num_images"], config["world_size"], config["shard_size"]
    out = set()
    for rank in range(world):
        count = len(range(rank, n, world))
        out.update((rank, k) for k in range(-(-count // size)))
    return out


def _check_record(rec: dict, rank: int, chunk: int, config: dict, handle, errors: list[str]):
    where = f"{chunk_name(rank, chunk)} {rec.get('image_id')!r}"
    world, size = config["world_size"], config["shard_size"]
    pos = rec.get("index", -1)
    if pos % world != rank or (pos // world) // size != chunk:
        errors.append(f"{where}: list position {pos} does not belong to this chunk")
    if rec.get("status") != "ok":
        if rec.get("status") != "skipped" or not rec.get("reason"):
            errors.append(f"{where}: status {rec.get('status')!r} without a reason")
        return
    try:
        t = handle.get_tensor(rec["key"])
    except Exception as exc:  # missing key, unreadable data
        errors.append(f"{where}: tensor {rec.get('key')!r} unreadable ({exc})")
        return
    h, w = rec["grid_hw"]
    if list(t.shape) != [h, w, rec["channels"]] or DTYPES.get(rec["dtype"]) != t.dtype:
        errors.append(f"{where}: stored {t.dtype} {list(t.shape)} but the index says "
                      f"{rec['dtype']} {[h, w, rec['channels']]}")
    patch = config.get("patch_size")
    if patch and [d // patch for d in rec["image_hw"]] != [h, w]:
        errors.append(f"{where}: grid {h}x{w} does not match image {rec['image_hw']} / {patch}")
    if tensor_sha256(t) != rec["sha256"]:
        errors.append(f"{where}: tensor checksum mismatch")


def _check_chunk(shard_dir: str, index_path: str, config: dict, errors: list[str]):
    """Returns ``(rank, chunk, ok_records, skipped_records)`` or ``None`` when unusable."""
    stem = os.path.basename(index_path)[:-len(".json")]
    index = read_json(index_path)
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        errors.append(f"{stem}.json: unreadable index")
        return None
    rank, chunk = index.get("rank"), index.get("chunk")
    if stem != chunk_name(rank, chunk) or index.get("shard") != stem + ".safetensors":
        errors.append(f"{stem}.json: names rank {rank} chunk {chunk} / {index.get('shard')}")
        return None
    shard = os.path.join(shard_dir, index["shard"])
    if not os.path.isfile(shard):
        errors.append(f"{stem}: shard file missing")
        return None
    if os.path.getsize(shard) != index.get("shard_bytes") or file_sha256(shard) != index.get("shard_sha256"):
        errors.append(f"{stem}: shard file size or checksum differs from its index")
    records = index.get("records", [])
    ok = [r for r in records if r.get("status") == "ok"]
    try:
        with safe_open(shard, framework="pt") as handle:
            if set(handle.keys()) != {r["key"] for r in ok}:
                errors.append(f"{stem}: shard tensors do not match the index's ok records")
            for rec in records:
                try:
                    _check_record(rec, rank, chunk, config, handle, errors)
                except (KeyError, TypeError, ValueError) as exc:
                    errors.append(f"{stem}: malformed record {rec.get('image_id')!r} ({exc!r})")
    except Exception as exc:  # not a safetensors file at all
        errors.append(f"{stem}: shard unreadable ({exc.__class__.__name__}: {exc})")
    return rank, chunk, ok, [r for r in records if r.get("status") != "ok"]


def verify(path: str | os.PathLike) -> dict:
    """Re-check a store. Returns a report::

        {"path", "ok" (no corruption), "complete" (ok and every chunk of the run present),
         "chunks", "records", "skipped", "bytes", "errors": [str], "missing_chunks": [stem],
         "incomplete_files": [name]}

    Corruption (``errors``): unreadable index or shard, checksum / size / shape / dtype mismatch,
    tensors and index out of step, duplicated ids. Not corruption: chunks not written yet and
    leftovers of an interrupted chunk (a shard without its index, temporary files), which a
    resumed run rewrites.
    """
    path = os.fspath(path)
    shard_dir = os.path.join(path, SHARD_DIR)
    report = {"path": path, "ok": False, "complete": False, "chunks": 0, "records": 0,
              "skipped": 0, "bytes": 0, "errors": [], "missing_chunks": [], "incomplete_files": []}
    config = read_json(os.path.join(path, CONFIG_NAME))
    needed = ("num_images", "world_size", "shard_size")
    if not isinstance(config, dict) or any(not isinstance(config.get(k), int) for k in needed):
        report["errors"].append(f"{CONFIG_NAME}: missing or unreadable")
        return report
    errors, seen, present = report["errors"], {}, set()
    for index_path in sorted(glob.glob(os.path.join(shard_dir, "*.json"))):
        result = _check_chunk(shard_dir, index_path, config, errors)
        if result is None:
            continue
        rank, chunk, ok, skipped = result
        present.add((rank, chunk))
        report["chunks"] += 1
        report["records"] += len(ok)
        report["skipped"] += len(skipped)
        for rec in ok + skipped:
            if rec.get("image_id") in seen:
                errors.append(f"image id {rec.get('image_id')!r} in {seen[rec.get('image_id')]} and "
                              f"{chunk_name(rank, chunk)}")
            seen[rec.get("image_id")] = chunk_name(rank, chunk)
    for name in sorted(os.listdir(shard_dir)) if os.path.isdir(shard_dir) else []:
        full = os.path.join(shard_dir, name)
        report["bytes"] += os.path.getsize(full)
        stem = name.split(".", 1)[0]
        if name.endswith(".tmp") or (name.endswith(".safetensors")
                                     and not os.path.isfile(os.path.join(shard_dir, stem + ".json"))):
            report["incomplete_files"].append(name)
    expected = _expected_chunks(config)
    errors.extend(f"{chunk_name(r, k)}: not a chunk of this run" for r, k in sorted(present - expected))
    report["missing_chunks"] = [chunk_name(r, k) for r, k in sorted(expected - present)]
    report["ok"] = not errors
    report["complete"] = report["ok"] and not report["missing_chunks"]
    return report
