"""Fake (meta) implementations of the compiled ops ``torch.ops.spar_fast.*`` (csrc/bindings.cpp).

They give output shapes without running a kernel, so ``torch.compile`` (FakeTensor tracing) and
CUDA graph capture can trace through the C++ / CUDA ops. Registered once, by
``spar_fast._backend.extension()`` right after ``spar_fast._C`` loads.
"""
from __future__ import annotations

import functools

import torch


def _fake_upsample_stitch_(canvas, count, feats, origins, win_index, win_weight, phase_index,
                           phase_weight, r, y0, y1, x0, x1):
    return None  # mutates canvas and count (declared in the schema), returns nothing


def _fake_stitch_finalize(canvas, count, y_index, y_weight, x_index, x_weight):
    return canvas.new_empty((y_index.shape[-1], x_index.shape[-1], canvas.shape[-1]))


def _fake_seg_head_pass(x, qcls, qallowed, y_index, y_weight, x_index, x_weight, scale, bias, prob_thd):
    return x.new_empty((y_index.shape[-1], x_index.shape[-1]), dtype=torch.int64)


def _fake_lab_affinity_apply(lab, x, scale, radius):
    return torch.empty_like(x)


FAKES = {"upsample_stitch_": _fake_upsample_stitch_, "stitch_finalize": _fake_stitch_finalize,
         "seg_head_pass": _fake_seg_head_pass, "lab_affinity_apply": _fake_lab_affinity_apply}


@functools.lru_cache(maxsize=None)
def register_fakes() -> None:
    """Register the fake of every compiled op the loaded extension has (an op missing from an
    older build is skipped; its implementation then reports itself unavailable)."""
    for name, fake in FAKES.items():
        try:
            getattr(torch.ops.spar_fast, name)
        except (AttributeError, RuntimeError):
            continue
        torch.library.register_fake(f"spar_fast::{name}")(fake)
