"""Runtime vocabulary shared by every stage, command and the API.

* :func:`resolve_device` — one rule for device strings (``None``/``"auto"``, ``cpu``, ``cuda``,
  ``cuda:N``; under torchrun a bare ``cuda`` means ``cuda:LOCAL_RANK``).
* :func:`resolve_precision` / :func:`autocast` — precision names ``auto | fp32 | bf16 | fp16``
  (``auto``: bf16 on CUDA, fp32 on CPU) and the matching autocast context; ``precision=`` is the
  one keyword for it (:func:`precision_or_amp` maps the older ``amp=`` of public calls).
* :class:`Weights` — the one spelling of "which weights": ``hub`` (the published weights),
  ``random[:SEED]`` (a seeded random init, reproducible in every process), a file path, or a
  saved model folder / Hugging Face hub id ``org/name`` (docs/CHECKPOINTS.md).
* :func:`check_output_dir` / :func:`check_output_file` — output locations checked before any work
  (a file where a folder is needed and vice versa, a missing parent folder, a wrong suffix).

Errors are one-line :class:`spar_fast.errors.UserError`.
"""
from __future__ import annotations

import contextlib
import os
import re
import warnings
from dataclasses import dataclass

import torch

from .errors import UserError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device=None, local_rank: int | None = None) -> torch.device:
    """A checked ``torch.device``.

    ``None`` / ``"auto"``: ``cuda`` when a GPU is visible, else ``cpu``. A bare ``cuda`` becomes
    ``cuda:LOCAL_RANK`` when ``local_rank`` is given (torchrun), else the current device.
    Malformed strings, unsupported device types, a missing GPU or an out-of-range index raise a
    one-line ``UserError``.
    """
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UserError(f"bad device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise UserError(f"unsupported device {str(dev)!r}; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise UserError(f"device {str(dev)!r} requested but no CUDA GPU is available; use --device cpu")
    if dev.index is None:
        dev = torch.device("cuda", local_rank if local_rank is not None else torch.cuda.current_device())
    if dev.index >= torch.cuda.device_count():
        raise UserError(f"device {str(dev)!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return dev


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """``auto``/None -> ``bf16`` on CUDA, ``fp32`` on CPU; other names are checked and returned."""
    name = "auto" if precision is None else str(precision).strip().lower()
    if name not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if name == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return name


def precision_or_amp(precision: str | None, amp: str | None, where: str) -> str | None:
    """``precision``, or the older ``amp=`` spelling of it (a one-line ``DeprecationWarning``)."""
    if amp is None:
        return precision
    if precision is not None:
        raise UserError(f"{where}: pass precision= (the older amp= is the same option), not both")
    warnings.warn(f"{where}(amp=...) is deprecated; use precision=", DeprecationWarning, stacklevel=3)
    return amp


def autocast(device, precision: str | None = "auto"):
    """Autocast context for ``precision`` on ``device`` (a no-op context for fp32)."""
    device = torch.device(device)
    dtype = _AMP_DTYPES[resolve_precision(precision, device)]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _first_existing(path: str) -> str:
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def check_output_dir(path) -> str:
    """An output folder (created later, parents included): not a file, and no file on its way."""
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"output {path} is a file; a folder is needed")
    existing = _first_existing(path)
    if not os.path.isdir(existing):
        raise UserError(f"output {path}: {existing} is a file, not a folder")
    return path


def check_output_file(path, suffixes: tuple[str, ...] = ()) -> str:
    """An output file: one of ``suffixes`` (when given), not a folder, in an existing folder."""
    text = os.fspath(path)
    if os.path.isdir(text):
        raise UserError(f"output {text} is a folder; a file name is needed")
    if suffixes and not text.lower().endswith(suffixes):
        raise UserError(f"output {text} must end with one of {', '.join(suffixes)}")
    parent = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(parent):
        raise UserError(f"output folder {parent} does not exist")
    from .atomic import check_writable

    check_writable(text)  # read-only folder, name too long, ...: said now, before any work
    return text


# a Hugging Face hub id: "org/name" (no path-like start, not a weights file name)
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


@dataclass(frozen=True)
class Weights:
    """Which weights a backbone gets: ``kind`` is ``hub``, ``random`` (with ``seed``), ``file``
    (with an absolute ``path``) or ``pretrained`` (a saved model folder: ``path``, or a Hugging
    Face hub id: ``repo``). ``str(w)`` is the canonical spelling, accepted by :meth:`parse`.
    """

    kind: str
    seed: int | None = None
    path: str | None = None
    repo: str | None = None

    SPELLING = "hub, random[:SEED], a weights file, a saved model folder or a hub id org/name"

    @classmethod
    def parse(cls, value) -> "Weights":
        """``"hub"``, ``"random"`` (seed 0), ``"random:SEED"``, a file or model folder path, a hub
        id ``org/name`` (a name that is no existing path), or a ``Weights``."""
        if isinstance(value, Weights):
            return value
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str) or not value.strip():
            raise UserError(f"weights must be {cls.SPELLING}, got {value!r}")
        text = value.strip()
        low = text.lower()
        if low == "hub":
            return cls("hub")
        if low == "random" or low.startswith("random:"):
            seed_text = low.partition(":")[2] or "0"
            try:
                seed = int(seed_text)
            except ValueError:
                raise UserError(f"weights {text!r}: the seed after 'random:' must be an integer") from None
            if seed < 0:
                raise UserError(f"weights {text!r}: the seed must be >= 0")
            return cls("random", seed=seed)
        path = os.path.abspath(os.path.expanduser(text))
        if os.path.isdir(path):
            if not os.path.isfile(os.path.join(path, "config.json")):
                raise UserError(f"weights folder {text} holds no config.json (a saved model folder "
                                "has config.json and model.safetensors)")
            return cls("pretrained", path=path)
        if not os.path.isfile(path):
            if _HUB_ID.match(text) and not low.endswith(_FILE_SUFFIXES):
                return cls("pretrained", repo=text)
            raise UserError(f"weights file not found: {text} (weights are {cls.SPELLING})")
        return cls("file", path=path)

    @classmethod
    def from_pretrained_arg(cls, pretrained) -> "Weights":
        """The older ``pretrained=`` argument: True -> hub, False/None -> random:0, a path -> file."""
        if pretrained is True:
            return cls("hub")
        if pretrained is False or pretrained is None:
            return cls("random", seed=0)
        return cls.parse(pretrained)

    @classmethod
    def deprecated_keyword(cls, keywords: dict, where: str) -> "Weights":
        """``{"pretrained": value}``, the older keyword of public calls: its weights, with a
        one-line ``DeprecationWarning``; any other keyword is a ``TypeError``."""
        unknown = sorted(set(keywords) - {"pretrained"})
        if unknown:
            raise TypeError(f"{where}() got unexpected keyword argument(s): {', '.join(unknown)}")
        chosen = cls.from_pretrained_arg(keywords["pretrained"])
        warnings.warn(f"{where}(pretrained=...) is deprecated; use weights={str(chosen)!r}",
                      DeprecationWarning, stacklevel=3)
        return chosen

    def identity(self) -> str:
        """A string that changes whenever the weights may change: ``hub``, ``random:SEED``,
        ``file:<abspath>:<size>:<mtime_ns>`` (of the model file for a folder) or ``hf:<org/name>``
        (keys caches derived from the weights; a loaded hub id is keyed by its resolved file)."""
        if self.kind == "pretrained" and self.path is not None:
            model = os.path.join(self.path, "model.safetensors")
            return Weights("file", path=model if os.path.isfile(model) else self.path).identity()
        if self.kind != "file":
            return f"hf:{self.repo}" if self.kind == "pretrained" else str(self)
        stat = os.stat(self.path)
        return f"file:{self.path}:{stat.st_size}:{stat.st_mtime_ns}"

    def __str__(self) -> str:
        if self.kind == "random":
            return f"random:{self.seed}"
        if self.kind == "pretrained":
            return self.path or self.repo
        return self.path if self.kind == "file" else self.kind
