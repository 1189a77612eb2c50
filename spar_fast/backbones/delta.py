"""Delta checkpoints: a student file holding only its trained tensors plus the identity of its base.

SPAR trains a few blocks of a frozen model (SPEC §4, default the last two); the rest of the open_clip
state dict is the base's, unchanged. A delta file is a safetensors file whose tensors are the
trained ones (full state-dict names, their own dtype) and whose metadata names the base:

=====================  =====================================================================
``format``             ``spar_fast.delta/1``
``backbone``           the backbone name (``siglip2-b16-512``, ``world-s16``, ...)
``base_weights``       the base's canonical weights string (``hub``, ``random:SEED``, a path,
                       a model folder or hub id)
``base_replaced``      XXH3-128 of the base's values of the tensors the delta replaces
``base_relied``        XXH3-128 of every other tensor of the base state dict (what it relies on)
``unfreeze``           the unfreeze string that chose the tensors (when trained)
``training``/``store`` JSON: the training settings and the feature store's identity (when trained)
=====================  =====================================================================

Loading rebuilds the base from ``base_weights`` (or a base the caller names), checks both
checksums, then copies the delta's tensors in; a different base is a one-line ``UserError`` that
names what differs. Checksums cover each tensor's name, dtype, shape and bytes, in name order.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import UserError

FORMAT = "spar_fast.delta/1"


def state_digest(state: dict[str, torch.Tensor], names) -> str:
    """XXH3-128 (hex) of the tensors ``names`` of ``state``: name, dtype, shape, bytes, in name order."""
    import xxhash

    h = xxhash.xxh3_128()
    for name in sorted(names):
        t = state[name].detach()
        h.update(f"{name}|{str(t.dtype)}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(memoryview(t.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


@dataclass(frozen=True)
class BaseIdentity:
    """What a delta was made from: ``backbone``, ``weights`` (canonical string) and the checksums
    of the base tensors it replaces (``replaced``) and of the others (``relied``)."""

    backbone: str
    weights: str
    replaced: str
    relied: str

    @classmethod
    def of(cls, model: nn.Module, names, backbone: str, weights: str) -> "BaseIdentity":
        """The identity of ``model``'s current state as the base of a delta over ``names``."""
        state = model.state_dict()
        names = set(names)
        missing = sorted(names - set(state))
        if missing:
            raise UserError(f"delta tensor {missing[0]} is not in the {backbone} model")
        return cls(backbone, str(weights), state_digest(state, names),
                   state_digest(state, [n for n in state if n not in names]))

    def metadata(self) -> dict[str, str]:
        return {"format": FORMAT, "backbone": self.backbone, "base_weights": self.weights,
                "base_replaced": self.replaced, "base_relied": self.relied}


def read_delta_metadata(path: str) -> dict[str, str] | None:
    """The metadata of the delta file ``path``, or ``None`` when it is not a delta (any other
    file, including a full safetensors state dict)."""
    path = os.fspath(path)
    if not path.endswith(".safetensors") or not os.path.isfile(path):
        return None
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:
        raise UserError(f"{path}: not a readable safetensors file ({exc})") from None
    return dict(meta) if meta.get("format") == FORMAT else None


def delta_tensors(model: nn.Module, names) -> dict[str, torch.Tensor]:
    """The tensors ``names`` of ``model``'s state dict, on CPU, contiguous and unshared."""
    state = model.state_dict()
    return {n: state[n].detach().to("cpu").contiguous().clone() for n in names}


def save_delta(model: nn.Module, names, path: str, base: BaseIdentity,
               extra: dict[str, str] | None = None, dtype: torch.dtype | None = None) -> None:
    """Write ``model``'s tensors ``names`` with ``base``'s identity (plus ``extra`` metadata) to
    ``path`` atomically. ``dtype`` (e.g. ``torch.float16``) casts floating tensors for sharing;
    the default keeps them exact (what training resumes from)."""
    from safetensors.torch import save_file

    from ..atomic import atomic_write_with

    tensors = delta_tensors(model, names)
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    meta = dict(extra or {}, **base.metadata())
    atomic_write_with(os.fspath(path), lambda tmp: save_file(tensors, tmp, metadata=meta))


@dataclass(frozen=True)
class DeltaInfo:
    """A loaded delta: its metadata (``meta``) and the names of the tensors it replaces."""

    meta: dict
    names: tuple


def read_delta_names(path: str) -> list[str]:
    """The tensor names stored in the safetensors file ``path`` (no tensor is read)."""
    from safetensors import safe_open

    with safe_open(os.fspath(path), framework="pt") as f:
        return list(f.keys())


def check_backbone(meta: dict[str, str], backbone: str | None, source: str) -> None:
    """One-line ``UserError`` when the caller's ``backbone`` is not the one the delta records."""
    if backbone is not None and backbone != meta.get("backbone"):
        raise UserError(f"{source} is a delta of backbone {meta.get('backbone')!r}, not {backbone!r} "
                        f"(use --backbone {meta.get('backbone')} or leave --backbone out)")


def check_base(model: nn.Module, meta: dict[str, str], names, source: str, backbone: str | None = None,
               given: str | None = None) -> None:
    """One-line ``UserError`` naming what differs when ``model`` (the base ``given``, when known)
    is not the base ``meta`` records."""
    check_backbone(meta, backbone, source)
    state = model.state_dict()
    missing = sorted(set(names) - set(state))
    if missing:
        raise UserError(f"{source}: tensor {missing[0]} is not in the {backbone or meta.get('backbone')} model")
    replaced = state_digest(state, names)
    relied = state_digest(state, [n for n in state if n not in set(names)])
    differs = [what for what, key, value in (("the tensors it replaces", "base_replaced", replaced),
                                             ("the tensors it keeps", "base_relied", relied))
               if meta.get(key) != value]
    if differs:
        raise UserError(f"{source} was trained from {meta.get('backbone')} weights "
                        f"{meta.get('base_weights')}, but the base given{f' ({given})' if given else ''} differs in "
                        f"{' and '.join(differs)} (checksums); load it over that base (base=..., "
                        "--base-weights)")


def apply_delta(model: nn.Module, path: str, backbone: str | None = None,
                meta: dict[str, str] | None = None, given: str | None = None) -> nn.Module:
    """Check that ``model`` holds the base of the delta file ``path``, then copy its tensors in
    (cast to the model's dtypes). ``backbone``: the caller's backbone name, checked too."""
    from safetensors.torch import load_file

    path = os.fspath(path)
    meta = meta or read_delta_metadata(path)
    if meta is None:
        raise UserError(f"{path}: not a spar_fast delta file")
    try:
        tensors = load_file(path, device="cpu")
    except Exception as exc:
        raise UserError(f"{path}: not a readable safetensors file ({exc})") from None
    check_base(model, meta, list(tensors), path, backbone, given)
    state = model.state_dict()
    bad = sorted(k for k, v in tensors.items() if tuple(v.shape) != tuple(state[k].shape))
    if bad:
        raise UserError(f"{path}: tensor {bad[0]} has shape {tuple(tensors[bad[0]].shape)}, the model "
                        f"{tuple(state[bad[0]].shape)}")
    with torch.no_grad():
        for name, value in tensors.items():
            state[name].copy_(value)
    return model


def recorded_json(meta: dict[str, str], key: str):
    """A JSON metadata entry of a delta (``training``, ``store``), parsed; None when absent."""
    text = meta.get(key)
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None
