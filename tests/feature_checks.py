"""The relative max-error check of dense features against a reference (backbone tests)."""
from __future__ import annotations


def assert_features_close(out, ref, rel):
    """``max |out - ref| <= rel * max |ref|`` (same shapes); the message gives both sides."""
    assert out.shape == ref.shape, (out.shape, ref.shape)
    scale = max(ref.abs().max().item(), 1e-12)
    err = (out - ref).abs().max().item()
    assert err <= rel * scale, f"max error {err:.3g} > {rel} * {scale:.3g}"
