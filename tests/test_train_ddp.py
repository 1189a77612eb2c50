"""torchrun with 2 CPU processes (gloo) == 1 process with the same global steps (--accumulate 2).

Each global step holds 2 packed chunks; rank r runs chunk r, or in one process both run one after
the other with gradients accumulated. The loss of each chunk is divided by the GLOBAL image count,
so the summed gradients are those of the global mean loss. The last global step of an epoch with
an odd chunk count leaves rank 1 without images (it contributes zero gradients)."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from spar_fast.backbones import Backbone
from spar_fast.train.sampler import PackingSampler
from test_trainer import make_tiny_store

ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
ARGS = ["--epochs", "2", "--tokens-per-step", "2600", "--lr", "1e-3", "--unfreeze", "blk_-1,mlp_0",
        "--workers", "0", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    # tokens 1024, 1536, 1440, 1024, 1024 -> per epoch chunks of 2, 2 and 1 images: global steps
    # [[c0, c1], [c2]], the second with rank 1 idle
    sizes = [(64, 64), (60, 90), (100, 70), (80, 80), (70, 70)]
    return make_tiny_store(str(tmp_path_factory.mktemp("ddp")), sizes=sizes)


def test_two_processes_equal_one_process(store, tmp_path):
    store, weights = store
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    subprocess.run([sys.executable, "-m", "spar_fast", "train", store, "--out", one, "--accumulate", "2"] + ARGS,
                   env=ENV, check=True, capture_output=True, timeout=300)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--standalone", "-m", "spar_fast", "train", store, "--out", two] + ARGS,
                            env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    plans = [PackingSampler([1024, 1536, 1440, 1024, 1024], 2600, world_size=2).epoch_plan(e) for e in range(2)]
    assert any(len(step) == 1 for plan in plans for step in plan), "no step leaves rank 1 idle"
    a, b = load_file(os.path.join(one, "final.safetensors")), load_file(os.path.join(two, "final.safetensors"))
    init = Backbone.from_pretrained("siglip2-tiny", weights=weights).model.state_dict()
    changed = 0
    for k in a:
        # g0 + g1 (accumulation) vs all-reduce(g0, g1): the same two fp32 addends; the only
        # allowed difference is the summation order of a reduction, ~1 ulp of the update size
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-7)
        changed += not torch.equal(a[k], init[k])
    assert changed > 0
    la = [json.loads(x)["loss"] for x in open(os.path.join(one, "metrics.jsonl"))]
    lb = [json.loads(x)["loss"] for x in open(os.path.join(two, "metrics.jsonl"))]
    assert len(la) == len(lb) == sum(len(p) for p in plans)
    assert la == pytest.approx(lb, rel=1e-6)
