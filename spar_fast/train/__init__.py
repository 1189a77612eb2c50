"""Distillation training (SPEC §4): unfreeze strings, token-budget packing, the loop, checkpoints.

``train(store, out_dir, config=None, **overrides)`` trains from a feature store;
``distill(images, out_dir, backbone, weights, ..., config=None, **overrides)`` extracts the
teacher features first. Both take a :class:`TrainConfig` (every training option, declared once)
and return the final weights path (safetensors of the full open_clip state dict).
"""
from .config import TrainConfig
from .distill import distill
from .trainer import train

__all__ = ["TrainConfig", "distill", "train"]
