"""Feature store: shards + indexes, resume (byte-identical, also after SIGKILL), verify, dtypes.

The teacher is injected (a patch-average + fixed projection, deterministic and cheap), so these
tests exercise the store and the job, not the backbone; tests/test_features_cli.py runs the real
teacher of a tiny backbone.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spar_fast.errors import UserError
from spar_fast.jobs.extract import extract_features
from spar_fast.store import FeatureStore, verify
from store_fakes import FakeBackbone, fake_teacher

ROOT = Path(__file__).resolve().parents[1]

TESTS = Path(__file__).resolve().parent
# the subprocess scripts import the fakes from tests/, the package from the worktree
SUBPROCESS_PATH = os.pathsep.join((str(ROOT), str(TESTS)))


def make_images(folder: Path, n=5, bad=True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = 30 + 7 * i, 45 + 11 * i
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    if bad:
        (folder / "bad_text.jpg").write_text("not an image")
        (folder / "bad_empty.png").write_bytes(b"")
    return folder


def run_job(images, store, **kw):
    kw.setdefault("shard_size", 2)
    return extract_features(images, store, backbone=kw.pop("backbone", FakeBackbone()),
                            teacher_fn=kw.pop("teacher_fn", fake_teacher), progress=False, **kw)


def store_files(store: Path) -> dict:
    return {p.relative_to(store).as_posix(): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def test_roundtrip_records_and_targets(tmp_path):
    images = make_images(tmp_path / "img")
    seen = []

    def teacher(x):
        seen.append(x.clone())
        return fake_teacher(x)
    summary = run_job(images, tmp_path / "s", teacher_fn=teacher, seed=7)
    assert (summary["images"], summary["ok"], summary["computed"], summary["resumed"]) == (7, 5, 5, 0)  # computed counts targets, not skips
    assert [s[0] for s in summary["skipped"]] == ["bad_empty", "bad_text"]
    assert summary["store_bytes"] > 0
    fs = FeatureStore(tmp_path / "s")
    assert len(fs) == 5 and fs.ids == [f"im{i}" for i in range(5)]
    assert sorted(os.listdir(tmp_path / "s" / "shards")) == [
        f"r000-00000{k}.{ext}" for k in range(4) for ext in ("json", "safetensors")]
    assert fs.config.seed == 7 and fs.config.dtype == "fp16"
    for rec, x in zip(fs.records, seen):
        target, rec2 = fs.get(rec.image_id)
        assert rec2 is rec and target.dtype == torch.float16
        assert tuple(target.shape) == (*rec.grid_hw, 6) and rec.channels == 6
        assert rec.image_hw == tuple(x.shape[1:]) == rec.augment.final_hw
        assert rec.grid_hw == (x.shape[1] // 16, x.shape[2] // 16)
        torch.testing.assert_close(target, fake_teacher(x).half(), rtol=0, atol=0)
        rebuilt = fs.input_image(rec.image_id)
        mean = torch.tensor(FakeBackbone.mean).view(3, 1, 1)
        std = torch.tensor(FakeBackbone.std).view(3, 1, 1)
        torch.testing.assert_close((rebuilt - mean) / std, x, rtol=0, atol=0)
    assert {r.reason for r in fs.skipped} == {"empty file", "not an image file Pillow can read"}
    report = verify(tmp_path / "s")
    assert report["ok"] and report["complete"] and report["records"] == 5 and report["skipped"] == 2


@pytest.mark.parametrize("dtype,rel", [("fp16", 2.0 ** -11), ("bf16", 2.0 ** -8), ("fp32", 0.0)])
def test_dtypes_and_rounding_error(tmp_path, dtype, rel):
    images = make_images(tmp_path / "img", n=2, bad=False)
    seen = []

    def teacher(x):
        seen.append(fake_teacher(x))
        return seen[-1]
    run_job(images, tmp_path / "s", dtype=dtype, teacher_fn=teacher)
    fs = FeatureStore(tmp_path / "s")
    want = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    for rec, ref in zip(fs.records, seen):
        t = fs.get(rec.image_id)[0]
        assert rec.dtype == dtype and t.dtype == want
        # round to nearest: relative error <= half an ulp (2^-11 fp16, 2^-8 bf16), exact fp32;
        # the fake targets are normal numbers of magnitude ~1-50, far from subnormals
        assert ((t.float() - ref).abs() <= rel * ref.abs()).all()


def test_bad_teacher_output(tmp_path):
    images = make_images(tmp_path / "img", n=1, bad=False)
    with pytest.raises(UserError, match="fp16 range"):
        run_job(images, tmp_path / "a", teacher_fn=lambda x: fake_teacher(x) * 1e5)
    with pytest.raises(RuntimeError, match="expected"):
        run_job(images, tmp_path / "b", teacher_fn=lambda x: fake_teacher(x)[1:])


def test_resume_after_exception_is_byte_identical(tmp_path):
    images = make_images(tmp_path / "img")
    run_job(images, tmp_path / "clean")
    calls = []

    def failing(x):
        calls.append(1)
        if len(calls) == 4:  # inside the third chunk (chunks: [bad_empty, bad_text], [im0, im1], ...)
            raise RuntimeError("boom")
        return fake_teacher(x)
    with pytest.raises(RuntimeError, match="boom"):
        run_job(images, tmp_path / "s", teacher_fn=failing)
    done = sorted(p.name for p in (tmp_path / "s" / "shards").glob("*.json"))
    assert done == ["r000-000000.json", "r000-000001.json"]
    assert not verify(tmp_path / "s")["complete"] and verify(tmp_path / "s")["ok"]
    summary = run_job(images, tmp_path / "s")
    assert summary["resumed"] == 4 and summary["computed"] == 3
    assert store_files(tmp_path / "s") == store_files(tmp_path / "clean")


def test_resume_after_sigkill_is_byte_identical(tmp_path):
    images = make_images(tmp_path / "img", n=6, bad=False)
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent('''
        import sys, time
        from store_fakes import FakeBackbone, fake_teacher
        from spar_fast.jobs.extract import extract_features
        slow = sys.argv[3] == "slow"
        def teacher(x):
            if slow:
                time.sleep(0.4)
            return fake_teacher(x)
        extract_features(sys.argv[1], sys.argv[2], backbone=FakeBackbone(), teacher_fn=teacher,
                         shard_size=2, progress=False)
    '''))
    env = dict(os.environ, PYTHONPATH=SUBPROCESS_PATH, OMP_NUM_THREADS="1")
    run = [sys.executable, str(script), str(images)]
    subprocess.run(run + [str(tmp_path / "clean"), "fast"], env=env, check=True, timeout=120)
    proc = subprocess.Popen(run + [str(tmp_path / "s"), "slow"], env=env)
    first = tmp_path / "s" / "shards" / "r000-000000.json"
    deadline = time.time() + 60
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the job finished before it could be killed"
    assert first.exists() and not (tmp_path / "s" / "shards" / "r000-000002.json").exists()
    subprocess.run(run + [str(tmp_path / "s"), "fast"], env=env, check=True, timeout=120)
    assert store_files(tmp_path / "s") == store_files(tmp_path / "clean")


def test_damaged_chunk_is_recomputed(tmp_path):
    images = make_images(tmp_path / "img")
    run_job(images, tmp_path / "clean")
    run_job(images, tmp_path / "s")
    shards = tmp_path / "s" / "shards"
    (shards / "r000-000001.json").write_text("{ truncated")
    (shards / "r000-000002.safetensors").write_bytes(b"junk")  # size no longer matches its index
    (shards / "r000-000003.json").unlink()
    summary = run_job(images, tmp_path / "s")
    assert summary["computed"] == 5 and summary["resumed"] == 2  # chunks of 2, 2, 2, 1 images
    assert store_files(tmp_path / "s") == store_files(tmp_path / "clean")


def test_resume_with_other_config_refused(tmp_path):
    images = make_images(tmp_path / "img", n=2, bad=False)
    run_job(images, tmp_path / "s")
    for change in ({"dtype": "bf16"}, {"seed": 1}, {"shard_size": 3}, {"augment": "none"},
                   {"stride": 32}):
        with pytest.raises(UserError, match="another config"):
            run_job(images, tmp_path / "s", **change)


def test_bad_arguments(tmp_path):
    images = make_images(tmp_path / "img", n=1, bad=False)
    for kw, words in (({"dtype": "fp8"}, "dtype"), ({"augment": "big"}, "augment"),
                      ({"shard_size": 0}, "shard_size"), ({"device": "tpu"}, "device"),
                      ({"limit": 0}, "limit")):
        with pytest.raises(UserError, match=words):
            run_job(images, tmp_path / "s", **kw)
    with pytest.raises(UserError, match="no such directory"):
        run_job(tmp_path / "nope", tmp_path / "s")
    with pytest.raises(UserError, match="not a feature store"):
        FeatureStore(tmp_path)


def test_list_input_limit_and_unknown_id(tmp_path):
    images = make_images(tmp_path / "img", n=3, bad=False)
    paths = [("a", images / "im2.png"), ("b", images / "im0.png"), ("c", images / "im1.png")]
    summary = run_job(paths, tmp_path / "s", limit=2)
    fs = FeatureStore(tmp_path / "s")
    assert summary["images"] == 2 and fs.ids == ["a", "b"]
    assert fs.records[0].source == str(images / "im2.png")
    with pytest.raises(KeyError, match="no target"):
        fs.get("c")


def _flip_byte(path: Path, offset_from_end: int):
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x01
    path.write_bytes(bytes(data))


def test_verify_detects_corruption(tmp_path):
    images = make_images(tmp_path / "img")
    run_job(images, tmp_path / "s")
    shards = tmp_path / "s" / "shards"
    _flip_byte(shards / "r000-000001.safetensors", 3)
    r = verify(tmp_path / "s")
    assert not r["ok"] and any("checksum" in e for e in r["errors"])
    index = json.loads((shards / "r000-000002.json").read_text())
    index["records"][0]["grid_hw"] = [1, 1]
    (shards / "r000-000002.json").write_text(json.dumps(index))
    (shards / "r000-000003.safetensors").unlink()
    errors = verify(tmp_path / "s")["errors"]
    assert any("r000-000002" in e and "index says" in e for e in errors)
    assert any("r000-000003: shard file missing" in e for e in errors)


def test_verify_unfinished_is_not_corrupt(tmp_path):
    images = make_images(tmp_path / "img")
    run_job(images, tmp_path / "s")
    (tmp_path / "s" / "shards" / "r000-000003.json").unlink()
    r = verify(tmp_path / "s")
    assert r["ok"] and not r["complete"]
    assert r["missing_chunks"] == ["r000-000003"]
    assert r["incomplete_files"] == ["r000-000003.safetensors"]
