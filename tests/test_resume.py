"""kill -9 at any point, then resume: the final weights equal an uninterrupted run's, bitwise.

Training runs in subprocesses (`spar-fast train`, CPU, fp32, num_workers=0, one thread each so
the arithmetic is the same in every process)."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from spar_fast.train import checkpoint as ckpt
from test_trainer import make_tiny_store

ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
EPOCHS = 4


def _cmd(store, run):
    return [sys.executable, "-m", "spar_fast", "train", store, "--out", run, "--epochs", str(EPOCHS),
            "--tokens-per-step", "2600", "--lr", "1e-3", "--checkpoint-every", "1", "--workers", "0",
            "--device", "cpu", "--quiet"]


def _saved_step(run):
    try:
        with open(os.path.join(run, ckpt.STATE_FILE)) as f:
            return json.load(f)["state"]["global_step"]
    except (OSError, ValueError, KeyError):
        return None


def _wait_for_checkpoint(proc, run, after_step, timeout=240):
    """Block until the run's state file records a step > ``after_step`` (or the process ends)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        step = _saved_step(run)  # read without the pair check: the trainer prunes files meanwhile
        if step is not None and step > after_step:
            return step
        time.sleep(0.02)
    return None


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_tiny_store(str(tmp_path_factory.mktemp("resume")))[0]


def test_sigkill_then_resume_is_bitwise_identical(store, tmp_path):
    clean, broken = str(tmp_path / "clean"), str(tmp_path / "broken")
    subprocess.run(_cmd(store, clean), env=ENV, check=True, capture_output=True, timeout=600)
    kills, last = 0, 0
    for _ in range(2):  # two interruptions at different points
        proc = subprocess.Popen(_cmd(store, broken), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        step = _wait_for_checkpoint(proc, broken, last)
        if step is not None and proc.poll() is None:
            time.sleep(random.uniform(0, 0.3))  # land anywhere: mid-step, mid-checkpoint write
            proc.send_signal(signal.SIGKILL)
            kills += 1
            last = step
        proc.wait()
    assert kills >= 1, "training finished before it could be interrupted"
    state = ckpt.load_checkpoint(broken)
    assert state is not None and not state["done"]
    subprocess.run(_cmd(store, broken), env=ENV, check=True, capture_output=True, timeout=600)
    a, b = load_file(os.path.join(clean, "final.safetensors")), load_file(os.path.join(broken, "final.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [json.loads(line)["step"] for line in open(os.path.join(broken, "metrics.jsonl"))]
    assert steps == list(range(1, len(steps) + 1))  # no duplicated or missing steps after resume
    clean_loss = [json.loads(line)["loss"] for line in open(os.path.join(clean, "metrics.jsonl"))]
    assert [json.loads(line)["loss"] for line in open(os.path.join(broken, "metrics.jsonl"))] == clean_loss
    leftovers = [n for n in os.listdir(broken) if ".tmp" in n or n.startswith("weights-")]
    assert leftovers == []


def test_crash_between_weights_and_state_keeps_a_consistent_pair(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    run = str(tmp_path)
    ckpt.save_checkpoint(run, model, {"global_step": 1, "tag": "first"})
    first = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    real = ckpt.atomic_write

    def crash_on_state(path, data):
        if path.endswith(ckpt.STATE_FILE):
            raise KeyboardInterrupt  # the process dies before the state file is replaced
        real(path, data)

    monkeypatch.setattr(ckpt, "atomic_write", crash_on_state)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(run, model, {"global_step": 2, "tag": "second"})
    state = ckpt.load_checkpoint(run)
    assert state["tag"] == "first" and state["global_step"] == 1
    restored = torch.nn.Linear(3, 2)
    ckpt.load_weights(restored, state["weights"])
    for k, v in restored.state_dict().items():
        assert torch.equal(v, first[k])


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = str(tmp_path / "x.bin")

    def fail(tmp):
        with open(tmp, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        ckpt.atomic_write_with(target, fail)
    assert os.listdir(tmp_path) == []
