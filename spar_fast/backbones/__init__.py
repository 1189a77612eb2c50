"""Backbones: open_clip models run with spar_fast's own batched / packed dense forward."""
from __future__ import annotations

import contextlib

import torch

from ..errors import UserError
from .backbone import Backbone
from .weights import load_weights, read_state_dict, save_weights

__all__ = ["Backbone", "dense_features", "load_weights", "read_state_dict", "save_weights"]


def dense_features(bb: Backbone, image_or_list, autocast_dtype: torch.dtype | None = None):
    """Single-pass dense features under ``torch.no_grad()``.

    ``[3, H, W]`` (normalized) -> ``[h, w, C]``; a list of ``[3, Hi, Wi]`` -> list of
    ``[hi, wi, C]`` (one packed forward). Images are moved to the model's device; features keep
    the model's dtype unless ``autocast_dtype`` (e.g. ``torch.bfloat16`` on GPU) is given.
    """
    device = next(bb.model.parameters()).device
    amp = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
           else contextlib.nullcontext())
    with torch.no_grad(), amp:
        if isinstance(image_or_list, torch.Tensor):
            if image_or_list.dim() != 3:
                raise UserError(f"dense_features expects one image [3, H, W] or a list of them, "
                                f"got a tensor of shape {list(image_or_list.shape)}")
            return bb(image_or_list.to(device)[None])[0]
        if isinstance(image_or_list, (list, tuple)):
            return bb.forward_packed([img.to(device) for img in image_or_list])
        raise UserError(f"dense_features expects a tensor or a list of tensors, got {type(image_or_list).__name__}")
