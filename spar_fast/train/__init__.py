"""Distillation training (SPEC §4): unfreeze strings, token-budget packing, the loop, checkpoints.

``train(store, out_dir, ...)`` trains from a feature store; ``distill(images, out_dir, ...)``
extracts the teacher features first. Both return the final weights path (safetensors of the
full open_clip state dict).
"""
from .distill import distill
from .trainer import train

__all__ = ["distill", "train"]
