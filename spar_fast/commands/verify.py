"""``spar-fast verify``: re-check every checksum of a feature store."""
from __future__ import annotations

import os

from ..errors import UserError

_SHOW = 20  # problems listed one per line; the rest are counted


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "verify", help="check a feature store's checksums and indexes",
        description="Re-read every shard of a feature store and check it against its index "
                    "(sizes, SHA-256 of every target, shapes, dtypes). Exit code 0: no corruption "
                    "(missing chunks of an unfinished run are reported, not errors); 1: corrupt.")
    p.add_argument("store", metavar="STORE", help="feature store folder")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..store import verify

    if not os.path.isdir(args.store):
        raise UserError(f"{args.store}: no such feature store folder")
    r = verify(args.store)
    state = "corrupt" if not r["ok"] else ("complete" if r["complete"] else "ok, unfinished")
    print(f"{r['path']}: {state}; {r['chunks']} chunks, {r['records']} targets, "
          f"{r['skipped']} skipped images, {r['bytes'] / 2**20:.1f} MiB")
    for label, items in (("error", r["errors"]), ("missing chunk", r["missing_chunks"]),
                         ("interrupted file", r["incomplete_files"])):
        for item in items[:_SHOW]:
            print(f"  {label}: {item}")
        if len(items) > _SHOW:
            print(f"  ... {len(items) - _SHOW} more ({label})")
    if r["missing_chunks"] or r["incomplete_files"]:
        print("  rerun `spar-fast features` with the same options to finish the store")
    return 0 if r["ok"] else 1
