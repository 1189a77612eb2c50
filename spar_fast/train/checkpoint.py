"""Checkpoints: weights and trainer state as safetensors + JSON (no pickle), atomically.

Layout in a run directory:

* ``weights-<step>.safetensors`` — the latest periodic weights: a delta file
  (:mod:`spar_fast.backbones.delta`: the trained tensors + the base's identity), or the full
  open_clip state dict (``full_weights``, and runs of older versions);
* ``final.safetensors`` — the weights after the last step (replaces the periodic file);
* ``state-<step>.safetensors`` / ``state-final.safetensors`` — every tensor of the trainer state:
  optimizer moments and steps, RNG states (torch, CUDA, numpy's MT19937 key, Python's
  ``random`` state as int64 tensors);
* ``trainer_state.json`` — everything else (step / epoch / position, settings, optimizer
  hyperparameters, grad-scaler numbers), the tree with ``{"__tensor__": key}`` where a tensor
  was, and the names, sizes and xxh3-128 checksums of the weights and state files it belongs to.

Nothing is unpickled: a file can hold only numbers, text and tensors, so no file can run code.
Write order: weights, tensor state, then the JSON (its ``os.replace`` is the commit point); so
after a kill at any point the JSON names a complete pair of the same step. Only files the state
records as the package's are ever removed: the JSON lists the pair it supersedes
(``superseded``), which is removed after each commit and when a run is opened
(:func:`run_lock`), with the package's own temporaries; a user's ``weights-best.safetensors`` or
``notes.tmp`` in the folder stays. ``trainer_state.json`` is read through its schema
(``spar_fast.jsonfile``): file names must be the package's own names in the run folder. A ``trainer_state.pt`` of an older version is read only with
``torch.load(weights_only=True)`` (tensors, plain containers and numpy arrays; any other object
is refused), so such a run still resumes.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import re

import numpy as np
import torch

from ..atomic import atomic_write, atomic_write_with, remove_temp_files
from ..backbones.weights import load_weights, save_weights, torch_load  # noqa: F401  (re-exported)
from ..errors import UserError
from ..jsonfile import Fields, MalformedFile, plain_name, read_json_file
from ..lock import exclusive_lock

STATE_FILE = "trainer_state.json"
LEGACY_STATE_FILE = "trainer_state.pt"
FINAL_WEIGHTS = "final.safetensors"
STATE_FORMAT = "spar_fast.trainer_state/1"
WEIGHTS_NAME = r"final\.safetensors|weights-[0-9]{8}\.safetensors"
TENSORS_NAME = r"state-(final|[0-9]{8})\.safetensors"
# every name the package writes in a run folder (older versions' temporaries of these are its own)
RUN_FILES = re.compile(rf"{WEIGHTS_NAME}|{TENSORS_NAME}|trainer_state\.json|summary\.json|"
                       r"metrics\.jsonl|loss\.png")


def rng_state() -> dict:
    """Every RNG the loop draws from, as tensors (and two small ints for numpy's position)."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                        "gauss_next": gauss_next}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    if isinstance(n, dict):
        np.random.set_state((n["kind"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                             n["gauss"]))
        p = state["python"]
        random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))
    else:  # legacy trainer_state.pt
        np.random.set_state(n)
        random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _encode(obj, tensors: dict, path: str):
    """JSON-able tree of ``obj``; tensors move to ``tensors`` under their tree path."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": path}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _encode(v, tensors, f"{path}.{k}") for k, v in obj.items()}
        return {"__items__": [[_encode(k, tensors, f"{path}.k{i}"), _encode(v, tensors, f"{path}.{i}")]
                              for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {path} in a checkpoint")


def _decode(obj, tensors: dict):
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__items__"]}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def _file_entry(run_dir: str, name: str) -> dict:
    from ..store.layout import file_digest

    full = os.path.join(run_dir, name)
    return {"name": name, "bytes": os.path.getsize(full), "xxh3_128": file_digest(full)}


def save_checkpoint(run_dir: str, model: torch.nn.Module, state: dict, final: bool = False,
                    delta: tuple | None = None) -> str:
    """Write weights, the tensor state, then ``trainer_state.json``; remove the pair it supersedes.

    ``state``: the trainer state (nested dicts / lists / tuples of tensors, numbers, strings;
    must hold ``global_step``). ``delta``: ``(names, BaseIdentity, metadata)`` to write only the
    tensors ``names`` over that base; None writes the full state dict. Returns the weights path."""
    from safetensors.torch import save_file

    from ..backbones.delta import save_delta

    tag = "final" if final else f"{state['global_step']:08d}"
    name = FINAL_WEIGHTS if final else f"weights-{tag}.safetensors"
    state_name = f"state-{tag}.safetensors"
    superseded = sorted((set(_recorded(run_dir, "superseded")) | set(_recorded(run_dir, "pair")))
                        - {name, state_name})
    step = {"global_step": str(state["global_step"])}
    if delta is None:
        save_weights(model, os.path.join(run_dir, name), metadata=step)
    else:
        names, base, extra = delta
        save_delta(model, names, os.path.join(run_dir, name), base, dict(extra, **step))
    tensors: dict = {}
    tree = _encode(dict(state, rng=rng_state()), tensors, "s")
    atomic_write_with(os.path.join(run_dir, state_name), lambda tmp: save_file(tensors, tmp))
    doc = {"format": STATE_FORMAT, "state": tree, "superseded": superseded,
           "weights": _file_entry(run_dir, name), "tensors": _file_entry(run_dir, state_name)}
    atomic_write(os.path.join(run_dir, STATE_FILE), (json.dumps(doc, indent=1) + "\n").encode())
    prune(run_dir)
    return os.path.join(run_dir, name)


def _read_state_doc(run_dir: str) -> Fields:
    """``trainer_state.json`` checked against its schema (``FileNotFoundError`` when absent)."""
    path = os.path.join(run_dir, STATE_FILE)
    f = Fields(read_json_file(path, "trainer state"), path)
    f.str("format", choices=(STATE_FORMAT,))
    f.child("state")
    for key, pattern in (("weights", WEIGHTS_NAME), ("tensors", TENSORS_NAME)):
        entry = f.child(key)
        plain_name(entry.obj.get("name"), pattern, f"{path}: field {key!r}", "file name")
        entry.int("bytes", 0)
        entry.str("xxh3_128", max_len=64)
    for name in f.list("superseded", optional=True) or ():
        plain_name(name, f"{WEIGHTS_NAME}|{TENSORS_NAME}", path, "superseded file")
    return f


def _recorded(run_dir: str, what: str) -> list[str]:
    """File names the readable state records: ``pair`` (its weights and tensor files) or
    ``superseded``; ``[]`` when there is no readable state."""
    try:
        f = _read_state_doc(run_dir)
    except (OSError, UserError):
        return []
    if what == "pair":
        return [f.obj["weights"]["name"], f.obj["tensors"]["name"]]
    return list(f.obj.get("superseded") or ())


def prune(run_dir: str) -> None:
    """Remove the files the state records as superseded (never the pair it names), the legacy
    pickle state once a JSON state exists, and the package's own temporaries."""
    keep = set(_recorded(run_dir, "pair"))
    for other in _recorded(run_dir, "superseded"):
        if other not in keep and os.path.isfile(os.path.join(run_dir, other)):
            os.remove(os.path.join(run_dir, other))
    if keep and os.path.isfile(os.path.join(run_dir, LEGACY_STATE_FILE)):
        os.remove(os.path.join(run_dir, LEGACY_STATE_FILE))
    remove_temp_files(run_dir, RUN_FILES)


def _check_entry(run_dir: str, entry: dict, what: str) -> str:
    from ..store.layout import file_digest

    full = os.path.join(run_dir, entry["name"])
    if not os.path.isfile(full):
        raise UserError(f"{run_dir}/{STATE_FILE}: its {what} file is missing; start the run over "
                        "in a new --out folder")
    if os.path.getsize(full) != entry["bytes"] or file_digest(full) != entry["xxh3_128"]:
        raise UserError(f"{full}: corrupt (size or checksum differs from {STATE_FILE}); start the "
                        "run over in a new --out folder")
    return full


def _load_json_state(run_dir: str) -> dict:
    from safetensors.torch import load_file

    try:
        doc = _read_state_doc(run_dir).obj
    except (OSError, MalformedFile) as exc:
        text = str(exc) if isinstance(exc, MalformedFile) else f"{run_dir}: {exc}"
        raise UserError(f"unreadable trainer state: {text}; start the run over in a new --out "
                        "folder") from None
    weights = _check_entry(run_dir, doc["weights"], "weights")
    tensors_path = _check_entry(run_dir, doc["tensors"], "tensor state")
    try:
        state = _decode(doc["state"], load_file(tensors_path, device="cpu"))
        if not isinstance(state.get("global_step"), int):
            raise ValueError("no global_step")
    except Exception as exc:  # a malformed tree or tensor file
        raise UserError(f"{tensors_path}: unreadable trainer state ({exc.__class__.__name__})") from None
    state["weights"] = weights
    return state


def _load_legacy_state(run_dir: str) -> dict:
    path = os.path.join(run_dir, LEGACY_STATE_FILE)
    # numpy's RNG state is a uint32 array: allow exactly the globals that rebuild plain arrays
    arrays = [np.ndarray, np.dtype, type(np.dtype(np.uint32)), np.zeros(1).__reduce__()[0]]
    try:
        with torch.serialization.safe_globals(arrays):
            state = torch_load(path)
        weights = os.path.join(run_dir, os.path.basename(state["weights"]))
    except Exception as exc:  # refused global (possible code), truncated file, wrong content
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserError(f"{path}: refused ({exc.__class__.__name__}: {first[:120]}); it is not "
                        "loaded because it could run code or is damaged; start the run over in "
                        "a new --out folder") from None
    if not os.path.isfile(weights):
        raise UserError(f"{path}: names weights {weights}, which is missing")
    state["weights"] = weights
    return state


def load_checkpoint(run_dir: str) -> dict | None:
    """The saved trainer state of ``run_dir`` (``weights``: the weights file's full path), or
    ``None`` when the folder holds no state. Damaged or refused files raise a one-line
    ``UserError``."""
    if os.path.exists(os.path.join(run_dir, STATE_FILE)):
        return _load_json_state(run_dir)
    if os.path.exists(os.path.join(run_dir, LEGACY_STATE_FILE)):
        return _load_legacy_state(run_dir)
    return None


@contextlib.contextmanager
def run_lock(run_dir: str, writer: bool = True):
    """Hold the run directory's writer lock (``writer``: the process that saves checkpoints;
    others pass False and take nothing). On entry, the files the state records as superseded
    and the package's own temporaries are removed (:func:`prune`); nothing else."""
    if not writer:
        yield
        return
    with exclusive_lock(run_dir, "training run"):
        prune(run_dir)
        yield
