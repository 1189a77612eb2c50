"""The op table (spar_fast._backend): declared ops, the environment override and the fallbacks."""
import pytest
import torch

from spar_fast import _backend, ops
from spar_fast.errors import UserError

CPU = torch.device("cpu")


@pytest.fixture
def clean_env(monkeypatch):
    for name in list(ops.table()):
        monkeypatch.delenv(f"SPAR_FAST_BACKEND_{name.upper()}", raising=False)
    monkeypatch.delenv("SPAR_FAST_BACKEND", raising=False)
    monkeypatch.setattr(_backend, "_warned", set())
    return monkeypatch


def test_every_op_is_declared_with_its_reference():
    declared = ops.table()
    assert set(declared) == {"stitch", "stitch_finalize", "seg_head", "varlen_attention", "lab_affinity"}
    for op in declared.values():
        assert "torch" in op.impls, f"{op.name} has no torch reference"
        for order in op.order.values():
            assert "torch" not in order  # appended last by the table itself
            assert set(order) <= set(op.impls), f"{op.name} orders an unregistered backend"
    assert set(declared["stitch"].impls) == {"torch", "cpp", "cuda"}  # one GPU stitch
    assert set(declared["stitch_finalize"].impls) == {"torch", "cpp"}


def test_automatic_order_ends_with_the_reference(clean_env):
    clean_env.setattr(_backend, "extension", lambda: None)  # no _C: the reference everywhere
    for op in ops.table().values():
        assert op.pick(CPU, torch.zeros(1, 1, 1)).backend == "torch"


@pytest.mark.parametrize("op,value,message", [
    ("stitch_finalize", "triton", "no 'triton' implementation"),
    ("stitch_finalize", "cuda", "no 'cuda' implementation"),
    ("stitch", "cuda", "not available on cpu"),
    ("stitch", "gpu", "expected auto or one of"),
])
def test_per_op_variable_is_strict(clean_env, op, value, message):
    clean_env.setenv(f"SPAR_FAST_BACKEND_{op.upper()}", value)
    with pytest.raises(UserError, match=message):
        ops.table()[op].pick(CPU)


def test_global_variable_applies_where_the_backend_exists(clean_env):
    """SPAR_FAST_BACKEND=triton forces seg_head (which has it) and leaves the stitch ops on their
    automatic order, saying so once per op; the per-op variable wins over the global one."""
    clean_env.setenv("SPAR_FAST_BACKEND", "triton")
    clean_env.setenv("TRITON_INTERPRET", "1")
    stitch = ops.table()["stitch_finalize"]
    with pytest.warns(RuntimeWarning, match="no 'triton' implementation"):
        auto = stitch.pick(CPU).backend
    assert auto in ("cpp", "torch")
    if _backend.triton_available():
        assert ops.table()["seg_head"].pick(CPU).backend == "triton"
    clean_env.setenv("SPAR_FAST_BACKEND_SEG_HEAD", "torch")
    assert ops.table()["seg_head"].pick(CPU).backend == "torch"


def test_warn_once(clean_env):
    with pytest.warns(RuntimeWarning, match="first"):
        _backend.warn_once("k", "first")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _backend.warn_once("k", "second")  # same key: silent


def test_compiled_op_missing_from_an_older_build_falls_back(clean_env):
    """A ``_C`` built from older sources lacks a newer op: its implementation is unavailable (one
    message) and the op runs the next one instead of failing."""
    row = _backend.Op("stale_probe", {"cpu": ("cpp",)})

    @row.register("torch", available=lambda device: True)
    def _reference(x):
        return x + 1

    @row.register("cpp", available=lambda device: True, compiled="op_not_in_this_build")
    def _compiled(x):
        raise AssertionError("must not run")

    with pytest.warns(RuntimeWarning, match="no op 'op_not_in_this_build'"):
        assert row.run(CPU, torch.zeros(2)).tolist() == [1.0, 1.0]
    assert not _backend.compiled_op_exists("op_not_in_this_build")
    assert _backend.extension() is None or _backend.compiled_op_exists("seg_head_pass")
