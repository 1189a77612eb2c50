"""The paper's timing protocol (SPEC §5.8) with an instrumented forward and a virtual clock:
warm-up passes, the timed pass, sub-batches of 60 windows summed; spar_fast's paths timed by the
same rule; ``spar-fast timing`` end to end."""
import json
import math

import pytest
import torch
from test_segment import FakeBackbone
from test_segment_cli import TINY, _cache_in_tmp  # noqa: F401 (fixture)
from test_sweep import write_folder

from spar_fast.cli import main
from spar_fast.jobs import timing
from spar_fast.jobs.fig1 import fig1, format_table
from spar_fast.jobs.sweep import SweepRow
from spar_fast.segmentation import segment


class Clocked(FakeBackbone):
    """A fake backbone whose forward takes "one second per input" on a virtual clock, and logs
    each call's batch size; nothing else advances the clock."""

    def __init__(self, seed=0):
        super().__init__(seed)
        self.now, self.calls = 0.0, []

    def clock(self):
        return self.now

    def forward(self, images):
        self.calls.append(images.shape[0])
        self.now += images.shape[0]
        return super().forward(images)


def image(h, w):
    return torch.randn(3, h, w)


@pytest.mark.parametrize("warmup", [10, 0, 3])
def test_protocol_slide_sums_sub_batches(warmup):
    bb = Clocked()  # window 32: a 32 x 1230 image at stride 8 has 150 windows
    x = image(32, 32 + 149 * 8)
    t = timing.protocol_slide(bb, x, stride=8, warmup=warmup, clock=bb.clock)
    assert t.windows == 150 and t.spans == 3 and t.warmup == warmup
    assert bb.calls == [60, 60, 30] * (warmup + 1)  # warm-up passes, then the timed one
    assert t.seconds == 150  # the timed pass only, its three sub-batches summed


def test_protocol_single_and_repeats():
    bb = Clocked()
    t = timing.protocol_single(bb, image(40, 56), clock=bb.clock)
    assert bb.calls == [1] * 11 and t.seconds == 1 and t.spans == 1 and t.warmup == 10
    bb = Clocked()
    t = timing.protocol_slide(bb, image(40, 40), stride=8, warmup=2, repeats=3, clock=bb.clock)
    assert t.windows == 4 and bb.calls == [4] * 5 and t.all_seconds == (4, 4, 4) and t.seconds == 4


def test_protocol_windows_are_the_segmentations():
    """The timed windows are the ones sliding-window segmentation runs (same sub-batches)."""
    for hw, stride in [((70, 130), 24), ((32, 300), 8), ((20, 90), 16)]:  # incl. a side < window
        bb = Clocked()
        segment(bb, image(*hw), ["a", "b"], mode="slide", stride=stride)
        seg_calls = list(bb.calls)
        bb.calls.clear()
        t = timing.protocol_slide(bb, image(*hw), stride=stride, warmup=0, clock=bb.clock)
        assert bb.calls == seg_calls and t.windows == sum(seg_calls)
        assert t.windows == len(timing.slide_windows(bb, *hw, stride))


def test_fast_paths_time_one_call_per_pass():
    bb = Clocked()
    x = image(64, 96)
    t = timing.fast_teacher(bb, x, stride=16, warmup=2, clock=bb.clock)
    windows = 3 * 5  # origins 0, 16, 32 x 0, 16, ..., 64
    assert t.windows == windows and t.spans == 1 and t.seconds == windows
    per_pass = len(bb.calls) // 3
    assert len(bb.calls) == 3 * per_pass and sum(bb.calls) == 3 * windows
    bb = Clocked()
    q = timing.random_queries(bb, 5, "cpu")
    assert torch.allclose(q.norm(dim=-1), torch.ones(5))
    t = timing.fast_single(bb, x, q, warmup=4, clock=bb.clock)
    assert bb.calls == [1] * 5 and t.seconds == 1


def test_run_protocol_counts_and_rejects():
    seen = []

    def one_pass(timed):
        seen.append(timed is timing._untimed)
        timed(lambda: None)
        timed(lambda: None)
        return 7

    t = timing.run_protocol(one_pass, "cpu", warmup=10)
    assert seen == [True] * 10 + [False] and t.spans == 2 and t.windows == 7
    with pytest.raises(ValueError):
        timing.run_protocol(one_pass, "cpu", warmup=-1)


def test_fig1_rows(tmp_path):
    root = write_folder(tmp_path / "f")
    teacher, student = FakeBackbone(0), FakeBackbone(1)
    rows = [(SweepRow("single pass", "t"), teacher)]
    rows += [(SweepRow(f"sliding window s={s}", "t", "slide", s), teacher) for s in (8, 16)]
    rows += [(SweepRow("student", "s"), student)]
    report = fig1(rows, (64, 96), warmup=1, dataset="folder", root=root)
    out = report["rows"]
    assert [r["label"] for r in out] == ["single pass", "sliding window s=8", "sliding window s=16", "student"]
    assert [r["windows"] for r in out] == [1, 5 * 9, 3 * 5, 1]
    assert [r["forwards"] for r in out] == [1, 1, 1, 1]  # <= 60 windows: one sub-batch
    assert all(r["protocol_seconds"] > 0 and r["fast_seconds"] > 0 for r in out)
    for r, stride in zip(out[1:3], (8, 16)):
        from spar_fast.evaluation import evaluate
        assert r["mIoU"] == evaluate(teacher, "folder", root, mode="slide", stride=stride)["mIoU"]
    assert report["size"] == [64, 96] and report["sub_batch"] == 60 and report["eval"]["dataset"] == "folder"
    assert "x single" in format_table(report)
    timed_only = fig1(rows[:1], (64, 96), warmup=0, fast=False)
    assert "mIoU" not in timed_only["rows"][0] and timed_only["rows"][0]["fast_seconds"] is None


def test_timing_cli(tmp_path, capsys):
    root = write_folder(tmp_path / "f")
    out = tmp_path / "t.json"
    rc = main(["timing", *TINY, "--weights", "random:1", "--weights", "random:2", "--size", "64x200",
               "--strides", "16,64", "--warmup", "1", "--dataset", "folder", "--root", str(root),
               "--limit", "2", "--resolution", "short:64", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert [r["label"] for r in rows] == ["single pass", "sliding window s=16", "sliding window s=64", "student"]
    # siglip2-tiny: window 64; 64 x 200 at stride 16 -> 1 x (0..128 step 16, 136) = 10 windows
    assert rows[1]["windows"] == 10 and rows[2]["windows"] == math.ceil(136 / 64) + 1
    assert report["warmup"] == 1 and report["eval"]["resolution"] == "short:64"
    assert all(r["num_images"] == 2 for r in rows) and "x single" in text
    assert (tmp_path / "t.png").is_file()
    rc = main(["timing", *TINY, "--weights", "random", "--size", "64x64", "--warmup", "0", "--no-fast",
               "--strides", "32"])
    assert rc == 0 and "spar_fast s" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["--size", "64"], "HxW"), (["--strides", "0"], "positive"), (["--warmup", "-1"], ">= 0"),
    (["--dataset", "folder"], "go together"),
])
def test_timing_cli_errors(capsys, args, message):
    rc = main(["timing", *TINY, "--weights", "random", *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1, err


def test_cuda_event_branch(monkeypatch):
    """The GPU branch, with fake CUDA events on the virtual clock: spans read from event pairs in
    milliseconds, summed, after one synchronization at the end of the timed pass."""
    bb = Clocked()
    synced = []

    class Event:
        def __init__(self, enable_timing=False):
            assert enable_timing
            self.t = None

        def record(self):
            self.t = bb.now

        def synchronize(self):
            synced.append(self.t)

        def elapsed_time(self, end):
            return (end.t - self.t) * 1e3  # ms

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)

    def one_pass(timed):
        for n in (60, 60, 7):
            timed(lambda n=n: bb(torch.zeros(n, 3, 8, 8)))
        bb.now += 1000  # work outside the spans is not counted
        return 127

    t = timing.run_protocol(one_pass, "cuda", warmup=2)
    assert bb.calls == [60, 60, 7] * 3 and t.seconds == pytest.approx(127) and t.spans == 3
    assert len(synced) == 1
