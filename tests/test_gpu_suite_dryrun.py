"""The GPU suite's plumbing: script syntax and usage, and the summary built from its outputs.

The suite itself runs in CI as ``benchmarks/gpu_suite.sh OUT --dry-run`` (.ci/run); here only the
parts that need no benchmark run are checked, on a fabricated output folder."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITE = os.path.join(ROOT, "benchmarks", "gpu_suite.sh")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def test_script_parses_and_needs_an_output_folder():
    subprocess.run(["bash", "-n", SUITE], check=True)
    out = subprocess.run(["bash", SUITE], capture_output=True, text=True)
    assert out.returncode == 2 and "usage" in out.stderr


def _bench(group, variant, median, **extra):
    return {"group": group, "name": f"t[{variant}]", "params": {"variant": variant},
            "stats": {"median": median}, "extra_info": {"variant": variant, **extra}}


@pytest.fixture
def suite_dir(tmp_path):
    (tmp_path / "env.json").write_text(json.dumps({"device": "cpu", "dry_run": True}))
    (tmp_path / "steps.tsv").write_text("build\t0\t3\ntests\t0\t10\n")
    stitch = "stitch 512x768 win256 C64"
    (tmp_path / "bench-a.json").write_text(json.dumps({"benchmarks": [
        _bench(stitch, "reference", 0.4, windows=100), _bench(stitch, "cpp", 0.1, windows=100)]}))
    (tmp_path / "bench-b.json").write_text(json.dumps({"benchmarks": [
        _bench("train step x", "reference", 2.0, images_per_s=1.5), _bench("train step x", "packed", 0.5)]}))
    return tmp_path


def test_summary_merges_files_and_derives_ratios_and_stitch_bandwidth(suite_dir):
    from suite_report import main, summarize

    summary = summarize(str(suite_dir))
    stitch = {r["variant"]: r for r in summary["groups"]["stitch 512x768 win256 C64"]}
    assert stitch["cpp"]["x_reference"] == 4.0
    # 100 windows of 16x16 fp16 C64 features read once + the 32x48 fp32 C64 result written once
    moved = 100 * 16 * 16 * 64 * 2 + 32 * 48 * 64 * 4
    assert stitch["cpp"]["gb_per_s"] == pytest.approx(moved / 0.1 / 1e9)
    assert summary["groups"]["train step x"][1]["x_reference"] == 4.0
    assert main([str(suite_dir)]) == 0
    text = (suite_dir / "summary.md").read_text()
    assert "## stitch 512x768 win256 C64" in text and "| cpp | 100 |" in text
    assert json.loads((suite_dir / "summary.json").read_text())["steps"][1] == {"step": "tests", "exit": 0,
                                                                                "seconds": 10}


def test_a_failed_step_fails_the_summary(suite_dir):
    from suite_report import main

    (suite_dir / "steps.tsv").write_text("build\t0\t3\nbench_teacher\t124\t60\n")
    assert main([str(suite_dir)]) == 1
    assert "| bench_teacher | 124 | 60 |" in (suite_dir / "summary.md").read_text()
