"""Backbones: open_clip models run with spar_fast's own batched / packed dense forward."""
from __future__ import annotations

import torch

from ..errors import UserError
from ..runtime import autocast
from .backbone import Backbone, export_weights, full_state_dict_of
from .weights import load_weights, read_state_dict, save_weights

__all__ = ["Backbone", "dense_features", "export_weights", "full_state_dict_of", "load_weights", "read_state_dict", "save_weights"]


def dense_features(bb: Backbone, image_or_list, precision: str = "fp32"):
    """Single-pass dense features under ``torch.no_grad()``.

    ``[3, H, W]`` (normalized, e.g. from :func:`spar_fast.model_input`) -> ``[h, w, C]``; a list
    of ``[3, Hi, Wi]`` -> list of ``[hi, wi, C]`` (one packed forward). Images are moved to the
    model's device. ``precision``: ``fp32`` (default, the model's dtype), ``bf16`` / ``fp16``
    autocast, or ``auto`` (bf16 on CUDA, fp32 on CPU); see :func:`spar_fast.runtime.autocast`.
    """
    device = next(bb.model.parameters()).device
    with torch.no_grad(), autocast(device, precision):
        if isinstance(image_or_list, torch.Tensor):
            if image_or_list.dim() != 3:
                raise UserError(f"dense_features expects one image [3, H, W] or a list of them, "
                                f"got a tensor of shape {list(image_or_list.shape)}")
            return bb(image_or_list.to(device)[None])[0]
        if isinstance(image_or_list, (list, tuple)):
            return bb.forward_packed([img.to(device) for img in image_or_list])
        raise UserError(f"dense_features expects a tensor or a list of tensors, got {type(image_or_list).__name__}")
