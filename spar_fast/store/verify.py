"""Full consistency check of a feature store: every checksum, every index against its shard and
the manifest, every source image against what it was at extraction.

States (and the exit codes of ``spar-fast verify``, ``EXIT_CODES``): ``complete`` 0; ``corrupt``
1 (an unreadable index or shard, a checksum / size / shape / dtype mismatch, indexes out of step
with the manifest); ``not a store`` 2 (also the code of usage errors); ``unfinished`` 3 (chunks
not written yet, leftovers of an interrupted write, or a store killed before its first chunk: a
rerun of ``spar-fast features`` finishes it); ``sources changed`` 4 (the store is intact but
source images are missing or changed since extraction, so their targets no longer match).
"""
from __future__ import annotations

import os

from safetensors import safe_open

from ..atomic import TEMP_SUFFIX
from ..data.images import printable_id
from ..lock import LOCK_NAME
from .codec import FP8, SCALE_SUFFIX, StoredTarget
from .layout import (CONFIG_NAME, DTYPES, FORMAT, MANIFEST_NAME, SHARD_DIR, file_digest, read_json,
                     target_digest)
from .reader import source_changed
from .records import Chunk, StoreConfig, StoreRecord, read_manifest

EXIT_CODES = {"complete": 0, "corrupt": 1, "not a store": 2, "unfinished": 3, "sources changed": 4}


def _shard_keys(rec: dict) -> tuple[str, ...]:
    """The shard entries of an ok record: its target, and its scale for fp8."""
    return (rec["key"], rec["key"] + SCALE_SUFFIX) if rec.get("dtype") == FP8 else (rec["key"],)


def _check_record(rec: dict, name: str, config: StoreConfig, handle, errors: list[str]):
    where = f"{name} {rec.get('image_id')!r}"
    if rec.get("status") != "ok":
        if rec.get("status") != "skipped" or not rec.get("reason"):
            errors.append(f"{where}: status {rec.get('status')!r} without a reason")
        return
    try:
        t = handle.get_tensor(rec["key"])
        scale = handle.get_tensor(rec["key"] + SCALE_SUFFIX) if rec["dtype"] == FP8 else None
    except Exception as exc:  # missing key, unreadable data
        errors.append(f"{where}: tensor {rec.get('key')!r} unreadable ({exc})")
        return
    h, w = rec["grid_hw"]
    if list(t.shape) != [h, w, rec["channels"]] or DTYPES.get(rec["dtype"]) != t.dtype:
        errors.append(f"{where}: stored {t.dtype} {list(t.shape)} but the index says "
                      f"{rec['dtype']} {[h, w, rec['channels']]}")
    if [d // config.patch_size for d in rec["image_hw"]] != [h, w]:
        errors.append(f"{where}: grid {h}x{w} does not match image {rec['image_hw']} / {config.patch_size}")
    if target_digest(StoredTarget(t, scale)) != rec["checksum"]:
        errors.append(f"{where}: tensor checksum mismatch")


def _check_chunk(shard_dir: str, chunk: Chunk, config: StoreConfig, report: dict) -> list[dict]:
    """Check one manifest chunk; returns its records (``[]`` when it is missing or unusable)."""
    name, errors = chunk.name, report["errors"]
    index_path = os.path.join(shard_dir, name + ".json")
    if not os.path.exists(index_path):
        report["missing_chunks"].append(name)
        return []
    index = read_json(index_path)
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        errors.append(f"{name}.json: unreadable index")
        return []
    records = index.get("records", [])
    if [r.get("image_id") for r in records] != chunk.ids:
        errors.append(f"{name}.json: lists other images than the manifest")
        return []
    shard = os.path.join(shard_dir, name + ".safetensors")
    if not os.path.isfile(shard):
        errors.append(f"{name}: shard file missing")
        return []
    if os.path.getsize(shard) != index.get("shard_bytes") or file_digest(shard) != index.get("shard_checksum"):
        errors.append(f"{name}: shard file size or checksum differs from its index")
    ok = [r for r in records if r.get("status") == "ok"]
    try:
        with safe_open(shard, framework="pt") as handle:
            if set(handle.keys()) != {k for r in ok for k in _shard_keys(r)}:
                errors.append(f"{name}: shard tensors do not match the index's ok records")
            for rec in records:
                try:
                    _check_record(rec, name, config, handle, errors)
                except (KeyError, TypeError, ValueError) as exc:
                    errors.append(f"{name}: malformed record {rec.get('image_id')!r} ({exc!r})")
    except Exception as exc:  # not a safetensors file at all
        errors.append(f"{name}: shard unreadable ({exc.__class__.__name__}: {exc})")
    return records


def _only_store_leftovers(path: str) -> bool:
    """True when ``path`` holds nothing but what a features run writes before its config."""
    for name in os.listdir(path):
        full = os.path.join(path, name)
        if name == SHARD_DIR and os.path.isdir(full):
            if any(not n.endswith(TEMP_SUFFIX) for n in os.listdir(full)):
                return False
        elif name != LOCK_NAME and not (name.startswith(CONFIG_NAME + ".") and name.endswith(TEMP_SUFFIX)):
            return False
    return True


def verify(path: str | os.PathLike, check_sources: bool = True) -> dict:
    """Re-check a store. Returns a report::

        {"path", "state" (a key of EXIT_CODES), "ok" (no corruption), "complete" (state is
         "complete"), "chunks", "records", "skipped", "bytes", "errors": [str],
         "missing_chunks": [name], "incomplete_files": [name], "sources": [str]}

    ``check_sources``: compare every ok record's source file with its recorded size and mtime,
    hashing it when they differ.
    """
    path = os.fspath(path)
    shard_dir = os.path.join(path, SHARD_DIR)
    report = {"path": path, "state": "not a store", "ok": False, "complete": False, "chunks": 0,
              "records": 0, "skipped": 0, "bytes": 0, "errors": [], "missing_chunks": [],
              "incomplete_files": [], "sources": []}
    if not os.path.isdir(path):
        report["errors"].append("no such folder")
        return report
    config = read_json(os.path.join(path, CONFIG_NAME))
    if not os.path.exists(os.path.join(path, CONFIG_NAME)):
        if _only_store_leftovers(path):
            report.update(state="unfinished", ok=True)
            report["missing_chunks"].append(CONFIG_NAME)
        else:
            report["errors"].append(f"no {CONFIG_NAME}")
        return report
    if isinstance(config, dict) and config.get("format") != FORMAT:
        report["errors"].append(f"{CONFIG_NAME} has format {config.get('format')!r}, not {FORMAT!r} "
                                "(rerun `spar-fast features` with its options once to upgrade it)")
        return report
    chunks = read_manifest(path)
    config = StoreConfig.read(path)
    if config is None or chunks is None:
        report["errors"].append(f"{CONFIG_NAME if config is None else MANIFEST_NAME}: unreadable")
        report["state"] = "corrupt"
        return report
    if not os.path.exists(os.path.join(path, MANIFEST_NAME)):
        report["missing_chunks"].append(MANIFEST_NAME)
    for chunk in chunks:
        records = _check_chunk(shard_dir, chunk, config, report)
        report["chunks"] += bool(records)
        ok = [StoreRecord.from_dict(r) for r in records if r.get("status") == "ok" and "source" in r]
        report["records"] += len(ok)
        report["skipped"] += len(records) - len(ok)
        for rec in ok if check_sources else []:
            problem = source_changed(rec)
            if problem:
                report["sources"].append(f"{rec.image_id!r} ({printable_id(rec.source)}): {problem}")
    known = {c.name for c in chunks}
    for name in sorted(os.listdir(shard_dir)) if os.path.isdir(shard_dir) else []:
        report["bytes"] += os.path.getsize(os.path.join(shard_dir, name))
        stem = name.split(".", 1)[0]
        if name.endswith(TEMP_SUFFIX) or (stem in report["missing_chunks"] and name.endswith(".safetensors")):
            report["incomplete_files"].append(name)
        elif stem not in known:
            report["errors"].append(f"{name}: not a chunk of this store's manifest")
    report["ok"] = not report["errors"]
    if not report["ok"]:
        report["state"] = "corrupt"
    elif report["sources"]:
        report["state"] = "sources changed"
    elif report["missing_chunks"] or report["incomplete_files"]:
        report["state"] = "unfinished"
    else:
        report["state"] = "complete"
    report["complete"] = report["state"] == "complete"
    return report
