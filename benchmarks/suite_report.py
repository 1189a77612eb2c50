"""Summarize a GPU-suite folder (benchmarks/gpu_suite.sh) as ``summary.json`` and ``summary.md``.

    python benchmarks/suite_report.py OUT_DIR

Reads ``OUT_DIR/env.json`` (machine facts), ``OUT_DIR/steps.tsv`` (each step's name, exit code,
seconds) and ``OUT_DIR/bench-*.json`` (pytest-benchmark, one per file). Every benchmark group becomes a table
row per variant: median (wall clock; CUDA-event median beside it on GPU), x reference, and the
facts that make the number readable (images/s, TFLOP/s, MFU, GB/s, peak memory). Stitch GB/s is
derived here from the group's sizes: the fewest bytes the op must move, each window's fp16
features read once and the fp32 ``[H/16, W/16, C]`` result written once.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys

from report import rows  # noqa: E402  (benchmarks/report.py: group -> [(variant, median, gpu_ms)])

FACTS = ("images_per_s", "images_per_s_per_core", "tflops", "mfu", "gb_per_s", "peak_rss_mb",
         "cuda_peak_mb", "reference_window_gb", "windows", "tokens")
STITCH_GROUP = re.compile(r"stitch (\d+)x(\d+) win(\d+) C(\d+)")


def stitch_gb(group: str, windows: int, seconds: float) -> float | None:
    """Minimal-traffic GB/s of a stitch benchmark group (patch 16, fp16 features, fp32 result)."""
    m = STITCH_GROUP.match(group)
    if not m or not windows:
        return None
    H, W, window, C = map(int, m.groups())
    moved = windows * (window // 16) ** 2 * C * 2 + (H // 16) * (W // 16) * C * 4
    return moved / seconds / 1e9


def _read(path, default):
    try:
        with open(path) as f:
            return json.load(f) if path.endswith(".json") else f.read()
    except (OSError, ValueError):
        return default


def summarize(out_dir: str) -> dict:
    env = _read(os.path.join(out_dir, "env.json"), {})
    steps = []
    for line in _read(os.path.join(out_dir, "steps.tsv"), "").splitlines():
        name, rc, seconds = line.split("\t")
        steps.append({"step": name, "exit": int(rc), "seconds": int(seconds)})
    bench = {"benchmarks": [b for path in sorted(glob.glob(os.path.join(out_dir, "bench-*.json")))
                            for b in _read(path, {}).get("benchmarks", [])]}
    extra = {(b.get("group"), str((b.get("params") or {}).get("variant") or b["extra_info"].get("variant"))):
             b.get("extra_info", {}) for b in bench["benchmarks"]}
    groups = {}
    for group, entries in rows(bench).items():
        ref = next((m for v, m, _ in entries if v == "reference"), None)
        out = []
        for variant, median, gpu_ms in entries:
            info = extra.get((group, variant), {})
            row = {"variant": variant, "median_ms": round(median * 1e3, 3),
                   "gpu_ms": gpu_ms, "x_reference": round(ref / median, 2) if ref else None}
            row.update({k: info[k] for k in FACTS if k in info})
            gb = stitch_gb(group, info.get("windows", 0), (gpu_ms / 1e3) if gpu_ms else median)
            if gb is not None:
                row["gb_per_s"] = gb
            out.append(row)
        groups[group] = out
    return {"env": env, "steps": steps, "groups": groups}


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def markdown(summary: dict) -> str:
    env = summary["env"]
    lines = ["# spar_fast GPU suite", "", " | ".join(f"{k}: {v}" for k, v in env.items()), "",
             "| step | exit | seconds |", "| --- | --- | --- |"]
    lines += [f"| {s['step']} | {s['exit']} | {s['seconds']} |" for s in summary["steps"]]
    for group, entries in summary["groups"].items():
        keys = [k for k in FACTS if any(k in e for e in entries)]
        header = ["variant", "median ms", "gpu ms", "x reference", *keys]
        lines += ["", f"## {group}", "", "| " + " | ".join(header) + " |", "| --- " * len(header) + "|"]
        for e in entries:
            cells = [e["variant"], e["median_ms"], e["gpu_ms"], e["x_reference"]] + [e.get(k) for k in keys]
            lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    args = parser.parse_args(argv)
    summary = summarize(args.out_dir)
    with open(os.path.join(args.out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    text = markdown(summary)
    with open(os.path.join(args.out_dir, "summary.md"), "w") as f:
        f.write(text)
    print(text)
    return 0 if summary["groups"] and all(s["exit"] == 0 for s in summary["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
