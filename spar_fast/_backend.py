"""The op table: every fast op's implementations, when each can run, and the one dispatch rule.

An op is declared once with its automatic order per device type (``torch``, the reference, is
appended last by the table itself), and each implementation registers itself under a backend
name with its availability predicate (and, for compiled code, the ``torch.ops.spar_fast`` op it
calls, which tests/test_build.py checks)::

    STITCH = _backend.op("stitch", cpu=("cpp",), cuda=("cuda",))

    @STITCH.register("cpp", available=_backend.cpu_extension, compiled="upsample_stitch_")
    def _stitch_cpp(canvas, count, feats, origins, r, bbox): ...

    STITCH.run(canvas.device, canvas, count, feats, origins, r, bbox)   # after validation

This module sits at the runtime level: it imports nothing of spar_fast but ``errors``. The ops
fill the table when ``spar_fast.ops`` is imported (``spar_fast.ops.table()`` returns it filled),
register what must happen once ``_C`` loads (:func:`on_extension_load`), and load their Triton
kernels themselves (``spar_fast.ops.triton_kernels``).

Backends: ``torch`` (the op's pure-PyTorch reference; always available, always last),
``cpp`` / ``cuda`` (``spar_fast._C``), ``triton`` (``kernels/<op>.py``; on CPU tensors only under
``TRITON_INTERPRET=1``), and for varlen_attention ``torch_varlen`` / ``flash_attn``.
``accepts`` (optional) rejects inputs an implementation cannot take (returns the reason).

Environment override, read at each call:
* ``SPAR_FAST_BACKEND_<OP>=name`` (e.g. ``SPAR_FAST_BACKEND_STITCH_FINALIZE=torch``): that op
  must run ``name``; an unknown or unavailable backend is a one-line ``UserError``.
* ``SPAR_FAST_BACKEND=name``: every op that has ``name`` runs it (unavailable: ``UserError``);
  ops without it keep their automatic order (said once per op).
* unset or ``auto``: the first available implementation in the op's order for the device.
A forced implementation that does not accept the inputs falls back to the automatic order with a
one-time warning. Importing spar_fast needs none of Triton, a GPU or ``_C``: they load lazily here,
and a missing piece falls back to the reference with a one-time message.
"""
from __future__ import annotations

import functools
import importlib
import os
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from .errors import UserError

BACKENDS = ("torch", "cpp", "cuda", "triton", "torch_varlen", "flash_attn")
_warned: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """A ``RuntimeWarning`` the first time ``key`` is seen in this process."""
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


@functools.lru_cache(maxsize=None)
def extension():
    """The compiled extension ``spar_fast._C`` (its ops registered, with their fake
    implementations), or ``None`` with a one-time message."""
    try:
        module = importlib.import_module("spar_fast._C")
    except Exception as exc:  # missing build, ABI mismatch, missing CUDA runtime ...
        warn_once("_C", f"spar_fast._C not available ({exc.__class__.__name__}: {exc}); "
                        "using torch reference ops on CPU")
        return None
    for hook in _ON_EXTENSION_LOAD:
        hook()
    return module


_ON_EXTENSION_LOAD: list[Callable[[], None]] = []


def compiled_op_exists(name: str) -> bool:
    """Whether the loaded ``spar_fast._C`` registers ``torch.ops.spar_fast.<name>``. False for a
    build older than the sources (after a ``git pull`` without ``pip install -e .``), with a
    one-time message: the op then runs its next implementation instead of failing."""
    if extension() is None:
        return False
    try:
        getattr(torch.ops.spar_fast, name)
        return True
    except (AttributeError, RuntimeError):
        warn_once(f"_C-{name}", f"spar_fast._C has no op {name!r} (built from older sources; rebuild "
                                "with `pip install -e . --no-build-isolation`); using the next "
                                "implementation")
        return False


def _with_compiled_op(available: Callable[[torch.device], bool], name: str) -> Callable[[torch.device], bool]:
    return lambda device: available(device) and compiled_op_exists(name)


def on_extension_load(hook: Callable[[], None]) -> None:
    """Run ``hook()`` once ``spar_fast._C`` has loaded (now, if it already has): the ops register
    the fake implementations of the compiled ops this way."""
    _ON_EXTENSION_LOAD.append(hook)
    if extension.cache_info().currsize and extension() is not None:
        hook()


def extension_has_cuda() -> bool:
    ext = extension()
    return bool(ext is not None and ext.has_cuda())


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
        return True
    except Exception as exc:
        warn_once("triton", f"Triton not available ({exc}); using other backends")
        return False


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# availability predicates: device -> bool
def anywhere(device: torch.device) -> bool:
    return True


def cpu_extension(device: torch.device) -> bool:
    return device.type == "cpu" and extension() is not None


def cuda_extension(device: torch.device) -> bool:
    return device.type == "cuda" and extension_has_cuda()


def triton_device(device: torch.device) -> bool:
    if not triton_available():
        return False
    return device.type == "cuda" or (device.type == "cpu" and triton_interpret())


def cuda_module(name: str) -> Callable[[torch.device], bool]:
    """Predicate: a CUDA device and ``name`` importable (e.g. ``flash_attn``)."""
    def available(device: torch.device) -> bool:
        return device.type == "cuda" and _importable(name)
    return available


@functools.lru_cache(maxsize=None)
def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
        return True
    except Exception:
        return False


@dataclass(frozen=True)
class Impl:
    """One implementation of an op: ``fn(*args)``; ``available(device)``; ``accepts(*args)`` ->
    None or the reason it cannot take them; ``compiled``: the ``torch.ops.spar_fast`` op it runs."""
    backend: str
    fn: Callable
    available: Callable[[torch.device], bool]
    accepts: Callable[..., str | None] | None = None
    compiled: str | None = None


class Op:
    """A row of the table: the op's implementations and its automatic order per device type."""

    def __init__(self, name: str, order: dict[str, tuple[str, ...]]):
        self.name = name
        self.order = order
        self.impls: dict[str, Impl] = {}

    def register(self, backend: str, *, available: Callable[[torch.device], bool],
                 accepts: Callable[..., str | None] | None = None, compiled: str | None = None):
        """Decorator registering ``fn`` as this op's ``backend`` implementation."""
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")

        def add(fn):
            usable = available if compiled is None else _with_compiled_op(available, compiled)
            self.impls[backend] = Impl(backend, fn, usable, accepts, compiled)
            return fn
        return add

    def requested(self) -> tuple[str, bool]:
        """``(backend or "auto", strict)`` from the environment; strict for the per-op variable."""
        own = os.environ.get(f"SPAR_FAST_BACKEND_{self.name.upper()}", "").strip().lower()
        value = own or os.environ.get("SPAR_FAST_BACKEND", "").strip().lower() or "auto"
        if value != "auto" and value not in BACKENDS:
            raise UserError(f"SPAR_FAST_BACKEND for op {self.name!r} is {value!r}; expected auto or "
                            f"one of {', '.join(BACKENDS)}")
        return value, bool(own)

    def pick(self, device: torch.device, *args) -> Impl:
        """The implementation to run for tensors on ``device`` (``args``: the validated inputs)."""
        device = torch.device(device)
        want, strict = self.requested()
        if want != "auto":
            impl = self.impls.get(want)
            if impl is None and strict:
                raise UserError(f"op {self.name!r} has no {want!r} implementation "
                                f"(has: {', '.join(self.impls)})")
            if impl is None:
                warn_once(f"{self.name}-no-{want}", f"SPAR_FAST_BACKEND={want}: op {self.name!r} has "
                                                    f"no {want!r} implementation; using its automatic order")
            elif not impl.available(device):
                raise UserError(f"backend {want!r} requested for op {self.name!r} is not available "
                                f"on {device.type}")
            else:
                reason = impl.accepts(*args) if impl.accepts else None
                if reason is None:
                    return impl
                warn_once(f"{self.name}-{want}-{reason}", f"{self.name}: {want} {reason}; "
                                                          "using the automatic order")
        for backend in self.order.get(device.type, ()) + ("torch",):
            impl = self.impls.get(backend)
            if impl is not None and impl.available(device) and (impl.accepts is None or impl.accepts(*args) is None):
                return impl
        raise AssertionError(f"op {self.name!r} registers no torch implementation")

    def run(self, device: torch.device, *args):
        """Run the picked implementation on ``args``."""
        return self.pick(device, *args).fn(*args)


OPS: dict[str, Op] = {}


def op(name: str, **order: tuple[str, ...]) -> Op:
    """Declare op ``name`` with its automatic order per device type (``cpu=(...)``, ``cuda=(...)``);
    ``torch`` is appended as the last resort."""
    if name in OPS:
        raise ValueError(f"op {name!r} is declared twice")
    OPS[name] = Op(name, order)
    return OPS[name]

