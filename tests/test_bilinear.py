"""The one bilinear-tap definition (spar_fast.ops.bilinear) against ATen, bit for bit.

ATen's taps are read back from F.interpolate itself: interpolating one-hot rows gives each output
position's two weights at its two source indices exactly (w0 * 1 + w1 * 0 = w0). The probe runs
ATen's channels-last CPU kernel (at least 4 channels), the kernel of the stitch reference.
"""
import pytest
import torch
import torch.nn.functional as F

from spar_fast.ops.bilinear import bilinear_taps

MIN_CHANNELS = 4  # ATen runs fewer channels through its channels-first kernel


def _aten_matrix(n_in, n_out, scale_factor, axis):
    """[n_out, n_in] interpolation matrix of ATen's channels-last bilinear kernel along ``axis``."""
    channels = max(n_in, MIN_CHANNELS)
    probe = torch.zeros(channels, n_in)
    probe[:n_in] = torch.eye(n_in)
    shape = (1, channels, 1, n_in) if axis == "x" else (1, channels, n_in, 1)
    x = probe.reshape(shape).contiguous(memory_format=torch.channels_last)
    if scale_factor is None:
        size = (1, n_out) if axis == "x" else (n_out, 1)
        out = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    else:
        factors = (1, scale_factor) if axis == "x" else (scale_factor, 1)
        out = F.interpolate(x, scale_factor=factors, mode="bilinear", align_corners=False)
    return out.reshape(channels, n_out)[:n_in].T


def _tap_matrix(n_in, n_out, scale_factor):
    index, weight = bilinear_taps(n_in, n_out, scale_factor=scale_factor)
    matrix = torch.zeros(n_out, n_in)
    rows = torch.arange(n_out)
    matrix.index_put_((rows, index[0].long()), weight[0], accumulate=True)
    matrix.index_put_((rows, index[1].long()), weight[1], accumulate=True)
    return matrix


SIZE_CASES = [(n_in, n_out) for n_in in (1, 2, 3, 5, 7, 16, 21, 32, 42, 64, 97, 128)
              for n_out in (1, 3, 4, 5, 9, 16, 23, 37, 64, 97, 128, 211, 336, 512, 672, 1024, 2048)]


@pytest.mark.parametrize("axis", ["x", "y"])
def test_size_path_matches_aten(axis):
    """``F.interpolate(size=...)``: the final resize of the stitch and the seg_head upsample."""
    bad = [(n_in, n_out) for n_in, n_out in SIZE_CASES
           if not torch.equal(_tap_matrix(n_in, n_out, None), _aten_matrix(n_in, n_out, None, axis))]
    assert not bad, f"taps differ from ATen for {bad[:10]}"


@pytest.mark.parametrize("axis", ["x", "y"])
def test_scale_factor_path_matches_aten(axis):
    """``F.interpolate(scale_factor=r)``: the window upsampling of the stitch."""
    cases = [(g, r) for g in (1, 2, 3, 4, 7, 14, 16, 24, 32, 37, 64) for r in (1, 2, 3, 4, 5, 8, 16)]
    bad = [(g, r) for g, r in cases
           if not torch.equal(_tap_matrix(g, g * r, r), _aten_matrix(g, g * r, r, axis))]
    assert not bad, f"taps differ from ATen for (g, r) in {bad[:10]}"


def test_layout_and_device_cache():
    index, weight = bilinear_taps(7, 23)
    assert index.dtype == torch.int32 and weight.dtype == torch.float32
    assert index.shape == weight.shape == (2, 23)
    assert bool((index[1] - index[0] <= 1).all()) and bool((weight.sum(0) - 1).abs().max() < 1e-6)
    assert bilinear_taps(7, 23)[0] is index  # cached: computed once per size and device
    with pytest.raises(ValueError):
        bilinear_taps(0, 4)
