"""Checkpoints: the full open_clip state dict as safetensors + a trainer state file, atomically.

Layout in a run directory:

* ``weights-<step>.safetensors`` — the latest periodic weights (older ones are deleted once the
  state file points past them);
* ``final.safetensors`` — the weights after the last step (replaces the periodic file);
* ``trainer_state.pt`` — optimizer, grad scaler, step / epoch / position in the epoch, RNG
  states, run settings, and the NAME of the weights file it belongs to.

Every file is written to a temporary name, fsynced, then ``os.replace``d. The weights file is
written first under a new name and the state file last, so after a kill at any point the state
file names a complete weights file of the same step (a consistent pair).
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch

from ..atomic import atomic_write_with
from ..backbones.weights import load_weights, save_weights

STATE_FILE = "trainer_state.pt"
FINAL_WEIGHTS = "final.safetensors"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: str, model: torch.nn.Module, state: dict, final: bool = False) -> str:
    """Write weights then the state file (``state`` gains ``weights``); prune older weights.

    Returns the weights path."""
    name = FINAL_WEIGHTS if final else f"weights-{state['global_step']:08d}.safetensors"
    path = os.path.join(run_dir, name)
    save_weights(model, path, metadata={"global_step": str(state["global_step"])})
    state = dict(state, weights=name, rng=rng_state())
    atomic_write_with(os.path.join(run_dir, STATE_FILE), lambda tmp: torch.save(state, tmp))
    for other in os.listdir(run_dir):
        if other.startswith("weights-") and other.endswith(".safetensors") and other != name:
            os.remove(os.path.join(run_dir, other))
    return path


def load_checkpoint(run_dir: str) -> dict | None:
    """The saved trainer state of ``run_dir`` (with ``weights`` as a full path), or ``None``."""
    path = os.path.join(run_dir, STATE_FILE)
    if not os.path.exists(path):
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    state["weights"] = os.path.join(run_dir, state["weights"])
    return state
