"""``spar-fast verify``: re-check every checksum of a feature store and its source images."""
from __future__ import annotations

_SHOW = 20  # problems listed one per line; the rest are counted


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "verify", help="check a feature store's checksums, indexes and source images",
        description="Re-read every shard of a feature store and check it against its index and "
                    "manifest (sizes, checksums of every target, shapes, dtypes), and every source "
                    "image against its size, mtime and checksum at extraction. Exit code 0: "
                    "complete; 1: corrupt; 2: not a feature store (or a usage error); 3: unfinished "
                    "(rerun `spar-fast features` to finish it); 4: intact, but source images are "
                    "missing or changed.")
    p.add_argument("store", metavar="STORE", help="feature store folder")
    p.add_argument("--no-sources", action="store_false", dest="sources",
                   help="do not check the source images")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..errors import UserError
    from ..store.verify import EXIT_CODES, verify

    r = verify(args.store, check_sources=args.sources)
    if r["state"] == "not a store":
        raise UserError(f"{args.store}: not a feature store ({'; '.join(r['errors'])})")
    print(f"{r['path']}: {r['state']}; {r['chunks']} chunks, {r['records']} targets, "
          f"{r['skipped']} skipped images, {r['bytes'] / 2**20:.1f} MiB")
    for label, items in (("error", r["errors"]), ("source", r["sources"]),
                         ("missing", r["missing_chunks"]), ("interrupted file", r["incomplete_files"]),
                         ("not the store's (kept)", r.get("foreign_files", []))):
        for item in items[:_SHOW]:
            print(f"  {label}: {item}")
        if len(items) > _SHOW:
            print(f"  ... {len(items) - _SHOW} more ({label})")
    if r["state"] == "unfinished":
        print("  rerun `spar-fast features` with the same options to finish the store")
    elif not r["repairable"]:
        print("  its store.json or manifest is damaged: recreate the store with `spar-fast features` "
              "in a new folder")
    elif r["state"] == "sources changed":
        print("  rerun `spar-fast features` with the same options to recompute the targets of "
              "changed sources; restore missing ones")
    elif r["state"] != "complete":
        print("  rerun `spar-fast features` with the same options to recompute what is damaged")
    return EXIT_CODES[r["state"]]
