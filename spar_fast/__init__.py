"""spar_fast: single-pass any-resolution ViT features distilled from a sliding-window teacher.

Public API (SPEC §6). Importing this package needs only torch: everything else (open_clip,
Triton, the compiled extension ``spar_fast._C``, a GPU) is loaded when first used.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it (imported on first access)
_EXPORTS = {
    "Backbone": "spar_fast.backbones",
    "dense_features": "spar_fast.backbones",
    "export_weights": "spar_fast.backbones",
    "teacher_features": "spar_fast.teacher",
    "segment": "spar_fast.segmentation",
    "model_input": "spar_fast.segmentation.preprocess",
    "load_image": "spar_fast.segmentation.preprocess",  # deprecated name of model_input
    "distill": "spar_fast.jobs.distill",
    "extract_features": "spar_fast.jobs.extract",
    "train": "spar_fast.train",
    "TrainConfig": "spar_fast.train",
    "evaluate": "spar_fast.evaluation",
    "Weights": "spar_fast.runtime",
    "UserError": "spar_fast.errors",
}

__all__ = sorted(_EXPORTS) + ["ops"]


def __getattr__(name: str):
    if name == "ops":
        return importlib.import_module("spar_fast.ops")
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'spar_fast' has no attribute {name!r}")


def __dir__():
    return __all__
