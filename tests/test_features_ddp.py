"""The features job under torchrun: 2 CPU processes (gloo) write the same store as 1 process."""
import json
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spar_fast.store import FeatureStore, verify

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    from spar_fast.jobs.extract import extract_features
    from spar_fast.jobs.extract_dist import dist_env

    class FakeBackbone:
        name, patch_size, window, feature_dim = "fake", 16, 64, 5
        mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)

    def teacher(x):
        pooled = torch.nn.functional.avg_pool2d(x[None], 16)[0]
        return torch.cat([pooled, pooled[:2] ** 2]).permute(1, 2, 0)

    summary = extract_features(sys.argv[1], sys.argv[2], backbone=FakeBackbone(), teacher_fn=teacher,
                               shard_size=2, progress=False)
    if dist_env()[0] == 0:
        print("SUMMARY " + json.dumps(summary))
''')


def _run(cmd, env):
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("SUMMARY ")]
    assert len(lines) == 1, proc.stdout  # only rank 0 prints the merged summary
    return json.loads(lines[0][len("SUMMARY "):])


@pytest.mark.parametrize("source", ["folder", "tar"])
def test_two_process_store_equals_one_process(tmp_path, source):
    images = tmp_path / "img"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(7):
        Image.fromarray(rng.integers(0, 256, (20 + 5 * i, 33, 3), dtype=np.uint8)).save(images / f"x{i}.png")
    (images / "x7.jpg").write_text("broken")
    if source == "tar":  # the same images as members of one shard, read in place
        with tarfile.open(tmp_path / "shard.tar", "w") as tar:
            for name in sorted(os.listdir(images)):
                tar.add(images / name, arcname=name)
        images = tmp_path / "shard.tar"
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    one = _run([sys.executable, str(script), str(images), str(tmp_path / "one")], env)
    two = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                str(script), str(images), str(tmp_path / "two")], env)
    for key in ("images", "ok", "skipped", "computed"):
        assert one[key] == two[key], key
    assert two["world_size"] == 2 and two["images"] == 8 and two["ok"] == 7
    names = sorted(os.listdir(tmp_path / "two" / "shards"))
    assert names == [f"r00{r}-00000{k}.{e}" for r in (0, 1) for k in (0, 1) for e in ("json", "safetensors")]
    a, b = FeatureStore(tmp_path / "one"), FeatureStore(tmp_path / "two")
    assert a.ids == b.ids and [r.image_id for r in a.skipped] == [r.image_id for r in b.skipped] == ["x7"]
    for ra, rb in zip(a.records, b.records):
        da, db = ra.to_dict(), rb.to_dict()
        da.pop("shard"), db.pop("shard")  # file names depend on the rank count, nothing else may
        assert da == db
        torch.testing.assert_close(a.get(ra.image_id)[0], b.get(rb.image_id)[0], rtol=0, atol=0)
    assert {k: v for k, v in a.config.to_dict().items() if k != "world_size"} == \
        {k: v for k, v in b.config.to_dict().items() if k != "world_size"}
    assert verify(tmp_path / "two")["complete"]
