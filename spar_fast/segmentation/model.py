"""Backbone loading for the segmentation and evaluation commands."""
from __future__ import annotations

import os

import torch

from ..errors import UserError


def pick_device(device: str | None) -> torch.device:
    """``None``/"auto" -> cuda when available else cpu; otherwise the named device, checked."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r} (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but no GPU is available")
    return dev


def load_backbone(name: str, checkpoint: str | None = None, device=None, random_init: bool = False):
    """A :class:`spar_fast.Backbone` in eval mode on ``device``.

    ``checkpoint``: SPAR Lightning ``.ckpt``, ``model.``-prefixed state dict, open_clip checkpoint
    or spar_fast safetensors; else the pretrained weights (``random_init``: random weights, for
    checking a pipeline without weights). Backbones with known weights get ``weights_name``, the
    identity used as the key of the on-disk text-embedding cache.
    """
    from ..backbones import Backbone

    if checkpoint is not None and not os.path.isfile(checkpoint):
        raise UserError(f"checkpoint not found: {checkpoint}")
    if checkpoint is not None:
        bb = Backbone.from_pretrained(name, pretrained=checkpoint)
        stat = os.stat(checkpoint)
        bb.weights_name = f"{name}|{os.path.abspath(checkpoint)}|{stat.st_size}|{stat.st_mtime_ns}"
    else:
        bb = Backbone.from_pretrained(name, pretrained=not random_init)
        if not random_init:
            bb.weights_name = f"{name}|pretrained"
    return bb.to(pick_device(device)).eval()
