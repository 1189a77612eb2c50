"""The paper's timing protocol (SPEC §5.8; the paper's §8) and spar_fast's own paths timed alike.

Protocol (the "eager" numbers):
* only forward passes are timed: ``bb(batch) -> [B, h, w, C]`` under the run's autocast; cutting
  windows, logits, stitching and the head are outside the timed spans;
* a pass is one image. Single pass: one forward of ``[1, 3, H, W]``. Sliding window: the
  image's windows (``bb.window`` at ``stride``, the origins of SPEC §2, a side shorter than the
  window gets one window spanning it, as :func:`spar_fast.segment` does) in sub-batches of
  :data:`SUB_BATCH` = 60, each sub-batch's forward timed and the times summed;
* ``warmup`` (10) untimed passes, then the next one (the 11th) is timed (``repeats`` > 1, not
  the protocol: that many timed passes, their median reported -- for noisy shared machines);
* timing: CUDA events around each forward on a GPU (read once, after the pass synchronizes),
  ``time.perf_counter`` around each forward on the CPU.

spar_fast's own paths (the second column), timed by the same rule with the whole call as one
span: the single pass / a student through the segmentation path (one forward, cosine logits,
the fused seg head up to a full-size label map), the teacher through
:func:`spar_fast.teacher_features` (window batches of ``TOKENS_PER_BATCH`` tokens, the fused
upsample-stitch; features ``[H/P, W/P, C]``).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..ops.seg_head import HeadSettings
from ..runtime import autocast
from ..segmentation.infer import SLIDE_BATCH, postprocess, single_logits
from ..segmentation.preprocess import resize_to, teacher_hw
from ..teacher import teacher_features
from ..teacher.window_plan import window_origins

WARMUP = 10           # untimed passes before the timed one (the paper's 11th pass)
SUB_BATCH = SLIDE_BATCH  # windows per forward in sliding mode (60), as the segmentation runs it


@dataclass(frozen=True)
class PassTime:
    """The timed pass: ``seconds`` (the sum of its timed spans; the median over ``repeats``
    timed passes), ``spans`` (timed calls per pass: forwards, or 1 for a whole-call path),
    ``windows`` (images or windows a pass covers), ``warmup`` passes before, ``all_seconds``
    (each timed pass)."""
    seconds: float
    spans: int
    windows: int
    warmup: int
    all_seconds: tuple = ()


class _Spans:
    """Times ``fn()`` calls and sums them: CUDA events on a GPU, ``clock`` on the CPU."""

    def __init__(self, device: torch.device, clock: Callable[[], float] = time.perf_counter):
        self.cuda = device.type == "cuda"
        self.clock = clock
        self.events, self.seconds, self.count = [], 0.0, 0

    def __call__(self, fn):
        self.count += 1
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            self.events.append((start, end))
            return out
        start = self.clock()
        out = fn()
        self.seconds += self.clock() - start
        return out

    def total(self) -> float:
        if self.events:
            self.events[-1][1].synchronize()  # the stream is in order: every span has ended
            return self.seconds + sum(s.elapsed_time(e) for s, e in self.events) / 1e3
        return self.seconds


def _untimed(fn):
    return fn()


def run_protocol(one_pass: Callable[[Callable], int], device, warmup: int = WARMUP,
                 clock: Callable[[], float] = time.perf_counter, repeats: int = 1) -> PassTime:
    """``warmup`` untimed passes then ``repeats`` (the protocol: 1) timed passes.
    ``one_pass(timed)`` runs one image, calling ``timed(fn)`` around each piece of work to time,
    and returns the windows it covered."""
    if warmup < 0 or repeats < 1:
        raise ValueError(f"warmup must be >= 0 and repeats >= 1, got {warmup}, {repeats}")
    device = torch.device(device)
    for _ in range(warmup):
        one_pass(_untimed)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times = []
    for _ in range(repeats):
        spans = _Spans(device, clock)
        windows = one_pass(spans)
        times.append(spans.total())
    return PassTime(statistics.median(times), spans.count, windows, warmup, tuple(times))


def slide_windows(bb, height: int, width: int, stride: int) -> list[tuple[int, int, int, int]]:
    """``(y, x, win_h, win_w)`` of every window the sliding-window segmentation runs."""
    win_h, win_w = min(bb.window, height), min(bb.window, width)
    return [(y, x, win_h, win_w) for y in window_origins(height, win_h, stride)
            for x in window_origins(width, win_w, stride)]


def protocol_single(bb, image: torch.Tensor, warmup: int = WARMUP, precision: str | None = None,
                    clock=time.perf_counter, repeats: int = 1) -> PassTime:
    """The protocol's single pass of a normalized ``[3, H, W]`` image: one forward per pass."""
    def one_pass(timed):
        with autocast(image.device, precision):
            timed(lambda: bb(image[None]))
        return 1
    return run_protocol(one_pass, image.device, warmup, clock, repeats)


def protocol_slide(bb, image: torch.Tensor, stride: int, warmup: int = WARMUP,
                   sub_batch: int = SUB_BATCH, precision: str | None = None,
                   clock=time.perf_counter, repeats: int = 1) -> PassTime:
    """The protocol's sliding window: the summed forwards of sub-batches of ``sub_batch`` windows."""
    boxes = slide_windows(bb, image.shape[1], image.shape[2], stride)

    def one_pass(timed):
        for start in range(0, len(boxes), sub_batch):
            windows = torch.stack([image[:, y:y + h, x:x + w] for y, x, h, w in boxes[start:start + sub_batch]])
            with autocast(image.device, precision):
                timed(lambda: bb(windows))
        return len(boxes)
    return run_protocol(one_pass, image.device, warmup, clock, repeats)


def fast_single(bb, image: torch.Tensor, queries: torch.Tensor, warmup: int = WARMUP,
                precision: str | None = None, clock=time.perf_counter, repeats: int = 1) -> PassTime:
    """spar_fast's single-pass segmentation of ``[3, H, W]`` with unit ``queries [Q, C]`` (one
    query per class): forward, cosine logits, fused head -> ``[H, W]`` labels, one span."""
    q2c = torch.arange(queries.shape[0], device=image.device)
    out_hw = tuple(image.shape[1:])

    def one_pass(timed):
        timed(lambda: postprocess(single_logits(bb, [image], queries, precision)[0], q2c, out_hw,
                                  HeadSettings()))
        return 1
    return run_protocol(one_pass, image.device, warmup, clock, repeats)


def fast_teacher(bb, image: torch.Tensor, stride: int, warmup: int = WARMUP,
                 precision: str | None = None, clock=time.perf_counter, repeats: int = 1) -> PassTime:
    """spar_fast's batched teacher (:func:`spar_fast.teacher_features`) on ``[3, H, W]``, one span;
    the image is first brought to the teacher's geometry (:func:`teacher_hw`, untimed)."""
    hw = teacher_hw(image.shape[1], image.shape[2], bb.patch_size, bb.window)
    image = resize_to(image, hw)
    windows = len(window_origins(hw[0], bb.window, stride)) * len(window_origins(hw[1], bb.window, stride))

    def one_pass(timed):
        timed(lambda: teacher_features(bb, image, stride=stride, precision=precision))
        return windows
    return run_protocol(one_pass, image.device, warmup, clock, repeats)


def timing_image(bb, height: int, width: int, device, seed: int = 0) -> torch.Tensor:
    """A normalized ``[3, H, W]`` input (seeded noise: the time of a forward does not depend on
    the pixels)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, height, width, generator=g).to(device)


def random_queries(bb, num: int, device, seed: int = 0) -> torch.Tensor:
    """``num`` unit queries ``[num, C]`` of the backbone's feature width (for timing only)."""
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(num, bb.feature_dim, generator=g), dim=-1).to(device)
