"""`spar-fast demo --tiny` end to end: store, training, held-out report, figures."""
import json
import os
import subprocess
import sys

from PIL import Image


def test_demo_tiny_end_to_end(tmp_path):
    out = str(tmp_path / "demo")
    result = subprocess.run([sys.executable, "-m", "spar_fast", "demo", "--tiny", "--out", out, "--quiet"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"outputs: {out}" in result.stdout
    assert "mean cosine to teacher, held-out images" in result.stdout
    report = json.load(open(os.path.join(out, "report.json")))
    assert report["pretrained"] is False and report["settings"]["backbone"] == "siglip2-tiny"
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
