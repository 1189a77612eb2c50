"""Loading open_clip model weights from the checkpoint formats SPAR uses.

Accepted (SPEC §4): an open_clip checkpoint (``torch.load``; a ``state_dict`` entry or a plain
state dict; optional ``module.`` prefix), a safetensors file of the full open_clip state dict
(spar_fast's own checkpoints), an official SPAR Lightning ``.ckpt`` (``state_dict`` keys under
``segmentor.net.model.``), or a plain dict whose keys start with ``model.``. The prefix is
stripped and the model loaded strictly.
"""
from __future__ import annotations

import os
import pickle

import torch
import torch.nn as nn

from ..errors import UserError

# checked in order; the first prefix that any key carries selects (and is stripped from) those keys
_PREFIXES = ("segmentor.net.model.", "model.")


def read_state_dict(path: str, trusted: bool = False) -> dict[str, torch.Tensor]:
    """The open_clip state dict stored in ``path`` (any accepted format), on CPU.

    ``trusted=True`` allows full unpickling for checkpoints that hold Python objects besides
    tensors (some Lightning ``.ckpt`` files); only use it for files you trust.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        from .delta import read_delta_metadata

        if read_delta_metadata(path) is not None:
            raise UserError(f"{path} is a delta student (only its trained tensors); load it with "
                            "Backbone.from_pretrained(weights=PATH), or write a full file with "
                            "spar-fast export")
        try:
            return load_file(path, device="cpu")
        except Exception as exc:
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
            raise UserError(f"{path}: not a readable safetensors file ({first})") from None
    try:
        ckpt = torch_load(path, weights_only=not trusted)
    except UserError:
        raise
    except pickle.UnpicklingError as exc:
        raise UserError(f"{path}: holds Python objects besides tensors that torch.load(weights_only=True) "
                        "refuses; if you trust the file, load it with trusted=True") from exc
    except Exception as exc:
        raise UserError(f"{path}: not a readable checkpoint ({exc.__class__.__name__}: {exc})") from exc
    return extract_state_dict(ckpt, path)


MAX_EXPANSION = 2  # a torch zip stores tensors uncompressed: its content is about its file size


def check_expansion(path: str) -> None:
    """Refuse (one line), before anything is inflated, a ``torch.save`` zip whose entries
    together claim more than ``MAX_EXPANSION`` times the file's size (+1 MiB): a small file
    that would expand hugely. Files that are not zips (legacy pickles) hold their data as is."""
    import zipfile

    size = os.path.getsize(path)
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as z:
            claimed = sum(info.file_size for info in z.infolist())
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise UserError(f"{path}: not a readable checkpoint ({exc.__class__.__name__})") from None
    if claimed > MAX_EXPANSION * size + (1 << 20):
        raise UserError(f"{path}: its {size} bytes claim {claimed} bytes of content; refused "
                        "before inflating it")


def torch_load(path: str, weights_only: bool = True):
    """``torch.load`` on the CPU after :func:`check_expansion`, without torch's note about the
    pickle protocol (it says nothing a user can act on, and would break the one-line rule)."""
    import warnings

    check_expansion(path)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        return torch.load(path, map_location="cpu", weights_only=weights_only)


def check_finite(state: dict[str, torch.Tensor], source: str) -> None:
    """One-line ``UserError`` naming the first floating tensor with NaN or infinite values."""
    for name, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise UserError(f"{source}: tensor {name} holds NaN or infinite values; refused")


def extract_state_dict(ckpt, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the open_clip state dict inside a loaded checkpoint object and strip its prefix."""
    if isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict):
        ckpt = ckpt["state_dict"]
    if not isinstance(ckpt, dict) or not ckpt:
        raise UserError(f"{source}: no state dict found (got {type(ckpt).__name__})")
    if all(k.startswith("module.") for k in ckpt):
        ckpt = {k[len("module."):]: v for k, v in ckpt.items()}
    for prefix in _PREFIXES:
        if any(k.startswith(prefix) for k in ckpt):
            ckpt = {k[len(prefix):]: v for k, v in ckpt.items() if k.startswith(prefix)}
            break
    return {k: v for k, v in ckpt.items() if isinstance(v, torch.Tensor)}


def _examples(keys: list[str], n: int = 3) -> str:
    shown = ", ".join(keys[:n])
    return shown + (", ..." if len(keys) > n else "")


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(state, strict=True)`` with a one-line UserError on any mismatch."""
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    shapes = sorted(k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_examples(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_examples(unexpected)})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} with other shapes ({k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})")
        raise UserError(f"{source} does not match the model: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def load_weights(model: nn.Module, path: str, trusted: bool = False) -> nn.Module:
    """Load the checkpoint at ``path`` (any accepted format) into the open_clip ``model`` strictly;
    a delta file (:mod:`spar_fast.backbones.delta`) is applied over ``model``, which must hold
    its base (checked). Non-finite tensors are refused."""
    from .delta import apply_delta, read_delta_metadata

    meta = read_delta_metadata(path)
    if meta is not None:
        return apply_delta(model, path, meta=meta)
    state = read_state_dict(path, trusted=trusted)
    check_finite(state, os.fspath(path))
    load_state_dict_strict(model, state, os.fspath(path))
    return model


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` on CPU, contiguous, with tensors that share storage copied apart
    (safetensors refuses shared storage)."""
    out, seen = {}, set()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        if t.untyped_storage().data_ptr() in seen:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


def save_weights(model: nn.Module, path: str, metadata: dict[str, str] | None = None) -> None:
    """Write the full open_clip state dict as safetensors, atomically (loadable with
    ``model.load_state_dict(safetensors.torch.load_file(path))``)."""
    from safetensors.torch import save_file

    from ..atomic import atomic_write_with

    state = full_state_dict(model)
    atomic_write_with(os.fspath(path), lambda tmp: save_file(state, tmp, metadata=metadata))


def is_student_file(path: str) -> bool:
    """Whether the checkpoint at ``path`` is a distilled student: an official SPAR Lightning
    ``.ckpt``, or a ``.safetensors`` written by spar_fast's trainer (its metadata records
    ``global_step``; a delta student always does). A pretrained backbone saved to a file is not."""
    path = os.fspath(path)
    if path.endswith(".ckpt"):
        return True
    if not path.endswith(".safetensors"):
        return False
    try:
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            return "global_step" in (f.metadata() or {})
    except Exception:  # noqa: BLE001 - unreadable here: loading it reports the problem
        return False
