"""Print a pytest-benchmark JSON as per-group tables: each variant's median and speed vs reference.

    pytest benchmarks --benchmark-only --benchmark-json=benchmarks/results/run.json
    python benchmarks/report.py benchmarks/results/run.json

A benchmark's variant is its ``variant`` parameter (or ``extra_info["variant"]``); the ratio is
``median(reference) / median(variant)``, i.e. how many times faster than the reference. On GPU
the CUDA-event median (``extra_info["gpu_ms"]``) is shown beside the wall-clock median.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict


def variant_of(bench: dict) -> str:
    params = bench.get("params") or {}
    return str(params.get("variant") or bench.get("extra_info", {}).get("variant") or bench["name"])


def rows(data: dict) -> dict[str, list[tuple[str, float, float | None]]]:
    """group -> [(variant, median seconds, gpu ms or None)] in file order."""
    groups: dict[str, list] = defaultdict(list)
    for bench in data.get("benchmarks", []):
        groups[bench.get("group") or bench["name"]].append(
            (variant_of(bench), bench["stats"]["median"], bench.get("extra_info", {}).get("gpu_ms")))
    return groups


def format_report(data: dict) -> str:
    machine = data.get("machine_info", {})
    lines = [f"machine: {machine.get('node', '?')} {machine.get('cpu', {}).get('brand_raw', '')}".rstrip()]
    for group, entries in rows(data).items():
        ref = next((median for variant, median, _ in entries if variant == "reference"), None)
        lines += ["", group, f"  {'variant':<12} {'median':>12} {'gpu_ms':>10} {'x reference':>12}"]
        for variant, median, gpu_ms in entries:
            ratio = f"{ref / median:.2f}" if ref else "-"
            gpu = f"{gpu_ms:.3f}" if gpu_ms is not None else "-"
            lines.append(f"  {variant:<12} {median * 1e3:>10.3f}ms {gpu:>10} {ratio:>12}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="file written by pytest --benchmark-json")
    args = parser.parse_args(argv)
    try:
        with open(args.json) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        print(f"report.py: cannot read {args.json}: {exc}", file=sys.stderr)
        return 2
    print(format_report(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
