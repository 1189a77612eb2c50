"""Full consistency check of a feature store: every checksum, every index against its shard and
the manifest, every source image against what it was at extraction.

States (and the exit codes of ``spar-fast verify``, ``EXIT_CODES``): ``complete`` 0; ``corrupt``
1 (an unreadable index or shard, a checksum / size / shape / dtype mismatch, indexes out of step
with the manifest); ``not a store`` 2 (also the code of usage errors); ``unfinished`` 3 (chunks
not written yet, leftovers of an interrupted write, or a store killed before its first chunk: a
rerun of ``spar-fast features`` finishes it); ``sources changed`` 4 (the store is intact but
source images are missing or changed since extraction, so their targets no longer match: a rerun
recomputes the chunks of changed ones, missing ones must be restored).

Chunks are checked by ``store.check.check_chunk``, the same check the features job uses to decide
what to recompute, so everything reported as damage is repaired by the rerun it advises; a
damaged ``store.json`` or manifest is reported with ``repairable`` False (recreate the store).
Files in ``shards/`` that are no chunk of the manifest are listed, left alone, and not damage.
"""
from __future__ import annotations

import os
import re

from ..atomic import is_own_temp
from ..data.images import printable_id
from ..jsonfile import MalformedFile, read_json_file
from ..lock import LOCK_NAME
from .check import MISSING_SOURCE, check_chunk
from .layout import CHUNK_NAME, CONFIG_NAME, FORMAT, MANIFEST_NAME, SHARD_DIR
from .records import StoreConfig, read_manifest

EXIT_CODES = {"complete": 0, "corrupt": 1, "not a store": 2, "unfinished": 3, "sources changed": 4}
# the names a features run writes (older versions' temporary files of these are its own too)
STORE_FILES = re.compile(f"{re.escape(CONFIG_NAME)}|{re.escape(MANIFEST_NAME)}")
SHARD_FILES = re.compile(CHUNK_NAME + r"\.(json|safetensors)")


def _only_store_leftovers(path: str) -> bool:
    """True when ``path`` holds nothing but what a features run writes before its config."""
    for name in os.listdir(path):
        full = os.path.join(path, name)
        if name == SHARD_DIR and os.path.isdir(full):
            if any(not is_own_temp(n, SHARD_FILES) for n in os.listdir(full)):
                return False
        elif name != LOCK_NAME and not is_own_temp(name, STORE_FILES):
            return False
    return True


def _config_format(path: str):
    """The ``format`` field of ``store.json`` (None when it has none or does not parse)."""
    try:
        doc = read_json_file(os.path.join(path, CONFIG_NAME), CONFIG_NAME)
    except (OSError, ValueError):
        return None
    return doc.get("format") if isinstance(doc, dict) else None


def verify(path: str | os.PathLike, check_sources: bool = True) -> dict:
    """Re-check a store. Returns a report::

        {"path", "state" (a key of EXIT_CODES), "ok" (no corruption), "complete" (state is
         "complete"), "chunks", "records", "skipped", "bytes", "errors": [str],
         "missing_chunks": [name], "incomplete_files": [name], "sources": [str],
         "foreign_files": [name] (files in shards/ that are no chunk of the manifest: left as
         they are, not damage),
         "repairable": bool (False: store.json or the manifest is damaged; a rerun of
         ``features`` refuses such a store, it must be recreated)}

    ``check_sources``: compare every ok record's source file with its recorded size and mtime,
    hashing it when they differ. Every file is read through its schema-checked reader: a
    malformed ``store.json``, manifest or index is ``corrupt`` (never an exception).
    """
    path = os.fspath(path)
    shard_dir = os.path.join(path, SHARD_DIR)
    report = {"path": path, "state": "not a store", "ok": False, "complete": False, "chunks": 0,
              "records": 0, "skipped": 0, "bytes": 0, "errors": [], "missing_chunks": [],
              "incomplete_files": [], "sources": [], "foreign_files": [], "repairable": True}
    if not os.path.isdir(path):
        report["errors"].append("no such folder")
        return report
    if not os.path.lexists(os.path.join(path, CONFIG_NAME)):
        if _only_store_leftovers(path):
            report.update(state="unfinished", ok=True)
            report["missing_chunks"].append(CONFIG_NAME)
        else:
            report["errors"].append(f"no {CONFIG_NAME}")
        return report
    fmt = _config_format(path)
    has_manifest = os.path.lexists(os.path.join(path, MANIFEST_NAME))
    if isinstance(fmt, str) and fmt != FORMAT and not has_manifest:
        report["errors"].append(f"{CONFIG_NAME} has format {fmt!r}, not {FORMAT!r} "
                                "(rerun `spar-fast features` with its options once to upgrade it)")
        return report
    report["state"] = "corrupt"
    try:
        config = StoreConfig.read(path)
        if config.format != FORMAT:
            raise MalformedFile(f"{CONFIG_NAME}: format {config.format!r} over a {FORMAT} store "
                                "(it has a manifest); recreate the store in a new folder")
        chunks = read_manifest(path)
    except MalformedFile as exc:  # the store's plan itself is damaged: no rerun can repair it
        report["errors"].append(str(exc).replace(path + os.sep, ""))
        report["repairable"] = False
        return report
    if not has_manifest:
        report["missing_chunks"].append(MANIFEST_NAME)
    for chunk in chunks:
        check = check_chunk(shard_dir, chunk, config, check_sources)
        if not check.written:
            report["missing_chunks"].append(chunk.name)
        report["errors"] += check.errors
        if check.index is None or check.errors:
            continue
        report["chunks"] += 1
        ok = sum(r.ok for r in check.index.records)
        report["records"] += ok
        report["skipped"] += len(check.index.records) - ok
        report["sources"] += [f"{printable_id(rec.image_id)!r} ({printable_id(rec.source)}): {problem}"
                              + ("; restore it" if problem == MISSING_SOURCE else "")
                              for rec, problem in check.sources]
    known = {c.name for c in chunks}
    for name in sorted(os.listdir(shard_dir)) if os.path.isdir(shard_dir) else []:
        full = os.path.join(shard_dir, name)
        report["bytes"] += os.path.getsize(full) if os.path.isfile(full) else 0
        stem = name.split(".", 1)[0]
        if is_own_temp(name, SHARD_FILES) or (stem in report["missing_chunks"] and name.endswith(".safetensors")):
            report["incomplete_files"].append(name)
        elif stem not in known:  # not the store's: reported, never counted as damage
            report["foreign_files"].append(name)
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
