"""Distillation training (SPEC §4): unfreeze strings, token-budget packing, the loop, checkpoints.

``train(store, out_dir, config=None, **overrides)`` trains from a feature store, taking a
:class:`TrainConfig` (every training option, declared once), and returns the final weights path
(safetensors of the full open_clip state dict). ``distill`` (extraction, then training) is a job:
:func:`spar_fast.jobs.distill`, ``sf.distill``.
"""
from .config import TrainConfig
from .trainer import train

__all__ = ["TrainConfig", "train"]
