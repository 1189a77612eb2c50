"""`spar-fast demo --tiny` end to end: store, training, held-out report, figures, rerun reuse."""
import json
import os
import subprocess
import sys

from PIL import Image


def _demo(out):
    result = subprocess.run([sys.executable, "-m", "spar_fast", "demo", "--tiny", "--out", out, "--quiet"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_demo_tiny_end_to_end(tmp_path):
    out = str(tmp_path / "demo")
    stdout = _demo(out)
    assert f"outputs: {out}" in stdout
    # the fit on the training images comes first, then the held-out numbers, then why they are small
    fit = stdout.index("fit on the training images")
    assert fit < stdout.index("held-out chelsea.png") < stdout.index("mean cosine to teacher, held-out")
    assert "why the change is small: these are random weights" in stdout
    report = json.load(open(os.path.join(out, "report.json")))
    assert report["pretrained"] is False and report["weights"] == "random:0"
    assert report["settings"]["backbone"] == "siglip2-tiny"
    assert set(report["stages"]) == {"prepare_s", "teacher_features_s", "train_s", "evaluate_s"}
    assert len(report["heldout"]) == 2
    # distillation fits its targets and moves the held-out student toward the teacher
    assert report["train_cos_after"] > report["train_cos_before"]
    assert report["cos_after"] > report["cos_before"]
    for row in report["heldout"]:
        assert row["cos_after"] > row["cos_before"]
        assert row["single_pass_s"] > 0 and row["sliding_window_s"] > 0
    with Image.open(report["figure"]) as fig:
        assert fig.width > 3 * fig.height // 2  # 4 panels per held-out image, 2 rows
    run = report["run_dir"]
    for name in ("final.safetensors", "trainer_state.json", "metrics.jsonl", "loss.png"):
        assert os.path.getsize(os.path.join(run, name)) > 0, name
    # random weights are rebuilt from their seed: no init file is written
    assert not [n for n in os.listdir(run) if n.startswith("init")]

    # a rerun finds the store, the run and the evaluation finished and recomputes none of them
    again = _demo(out)
    assert "reusing" in again and json.load(open(os.path.join(out, "report.json")))["heldout"] == report["heldout"]
