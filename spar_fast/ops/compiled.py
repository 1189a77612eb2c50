"""Fake (meta) implementations of the compiled ops ``torch.ops.spar_fast.*`` (csrc/bindings.cpp).

They give output shapes without running a kernel, so ``torch.compile`` (FakeTensor tracing) and
CUDA graph capture can trace through the C++ / CUDA ops. Registered once, by
``spar_fast._backend.extension()`` right after ``spar_fast._C`` loads.
"""
from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=None)
def register_fakes() -> None:
    @torch.library.register_fake("spar_fast::upsample_stitch_")
    def _upsample_stitch_fake(canvas, count, feats, origins, win_index, win_weight, phase_index,
                              phase_weight, r, y0, y1, x0, x1):
        return None  # mutates canvas and count (declared in the schema), returns nothing

    @torch.library.register_fake("spar_fast::stitch_finalize")
    def _stitch_finalize_fake(canvas, count, y_index, y_weight, x_index, x_weight):
        return canvas.new_empty((y_index.shape[-1], x_index.shape[-1], canvas.shape[-1]))

    @torch.library.register_fake("spar_fast::seg_head_pass")
    def _seg_head_pass_fake(x, qcls, qallowed, y_index, y_weight, x_index, x_weight, scale, bias,
                            prob_thd):
        return x.new_empty((y_index.shape[-1], x_index.shape[-1]), dtype=torch.int64)

    @torch.library.register_fake("spar_fast::lab_affinity_apply")
    def _lab_affinity_apply_fake(lab, x, scale, radius):
        return torch.empty_like(x)
