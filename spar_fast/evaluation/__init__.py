"""Evaluation: dataset readers, confusion matrix and mIoU, ``evaluate()``."""
from .datasets import DATASETS, list_samples, load_label  # noqa: F401
from .metrics import ConfusionMatrix, scores  # noqa: F401
from .runner import EvalOptions, default_settings, evaluate  # noqa: F401

