"""One dispatch point for every fast op: Triton / CUDA / C++ / torch reference.

Each op in ``spar_fast.ops`` asks :func:`choose` which implementation to run for the device of
its inputs. Selection order (``auto``):

* CUDA tensors: ``triton`` if Triton imports, else ``cuda`` if the compiled extension has CUDA
  kernels, else ``torch``.
* CPU tensors: ``cpp`` if the compiled extension ``spar_fast._C`` loads, else ``torch``.

Environment override, so tests and benchmarks can force each path:
``SPAR_FAST_BACKEND=auto|torch|cpp|cuda|triton`` (all ops) or ``SPAR_FAST_BACKEND_<OP>=...``
(one op, upper-case name, e.g. ``SPAR_FAST_BACKEND_STITCH=cpp``). A forced backend that is not
available raises a one-line ``RuntimeError``. ``triton`` on CPU tensors needs
``TRITON_INTERPRET=1`` (Triton's interpreter), which is how CPU tests exercise the kernels.

Importing ``spar_fast`` never needs Triton, a GPU or ``_C``: they load lazily here, and a missing
piece falls back to the reference with a one-time message.
"""
from __future__ import annotations

import functools
import importlib
import os
import warnings

import torch

BACKENDS = ("torch", "cpp", "cuda", "triton")
_warned: set[str] = set()


def _note_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


@functools.lru_cache(maxsize=None)
def extension():
    """The compiled extension ``spar_fast._C``, or ``None`` (with a one-time message)."""
    try:
        return importlib.import_module("spar_fast._C")
    except Exception as exc:  # missing build, ABI mismatch, missing CUDA runtime ...
        _note_once("_C", f"spar_fast._C not available ({exc.__class__.__name__}: {exc}); "
                         "using torch reference ops on CPU")
        return None


def extension_has_cuda() -> bool:
    ext = extension()
    return bool(ext is not None and getattr(ext, "has_cuda", lambda: False)())


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
        return True
    except Exception as exc:
        _note_once("triton", f"Triton not available ({exc}); using other backends")
        return False


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def available(backend: str, device: torch.device) -> bool:
    """Whether ``backend`` can run tensors on ``device``."""
    if backend == "torch":
        return True
    if backend == "cpp":
        return device.type == "cpu" and extension() is not None
    if backend == "cuda":
        return device.type == "cuda" and extension_has_cuda()
    if backend == "triton":
        if not triton_available():
            return False
        return device.type == "cuda" or (device.type == "cpu" and triton_interpret())
    raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")


def requested(op: str) -> str:
    """The backend asked for by the environment for ``op`` ("auto" when none)."""
    value = os.environ.get(f"SPAR_FAST_BACKEND_{op.upper()}") or os.environ.get("SPAR_FAST_BACKEND") or "auto"
    value = value.strip().lower()
    if value != "auto" and value not in BACKENDS:
        raise RuntimeError(f"SPAR_FAST_BACKEND for {op!r} is {value!r}; expected auto or one of {BACKENDS}")
    return value


def choose(op: str, device: torch.device, supported: tuple[str, ...] = BACKENDS) -> str:
    """Pick the implementation of ``op`` for tensors on ``device``.

    ``supported`` lists the backends this op has. Honors the environment override.
    """
    device = torch.device(device)
    want = requested(op)
    if want != "auto":
        if want not in supported:
            raise RuntimeError(f"op {op!r} has no {want!r} implementation (has: {', '.join(supported)})")
        if not available(want, device):
            raise RuntimeError(f"backend {want!r} requested for op {op!r} is not available on {device.type}")
        return want
    order = ("triton", "cuda", "torch") if device.type == "cuda" else ("cpp", "torch")
    for backend in order:
        if backend in supported and available(backend, device):
            return backend
    return "torch"


def _ensure_kernels_package() -> None:
    """Make ``spar_fast.kernels`` importable.

    An installed wheel has it at ``spar_fast/kernels/`` (``package_dir`` in setup.py); a source
    checkout (editable install, tests run from the repository) has the top-level ``kernels/``
    folder next to ``spar_fast/``, registered here under the package name.
    """
    import importlib.util
    import sys

    if "spar_fast.kernels" in sys.modules:
        return
    here = os.path.dirname(os.path.abspath(__file__))
    if os.path.isdir(os.path.join(here, "kernels")):
        return
    init = os.path.join(os.path.dirname(here), "kernels", "__init__.py")
    if not os.path.isfile(init):
        raise ImportError("spar_fast.kernels not found (neither installed nor in a source checkout)")
    spec = importlib.util.spec_from_file_location(
        "spar_fast.kernels", init, submodule_search_locations=[os.path.dirname(init)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["spar_fast.kernels"] = module
    spec.loader.exec_module(module)


def triton_kernels(name: str):
    """Import ``spar_fast.kernels.<name>`` (the Triton kernels in the top-level ``kernels/``)."""
    _ensure_kernels_package()
    return importlib.import_module(f"spar_fast.kernels.{name}")
