"""FLOP counts of SPEC §7, the one place benchmarks and the GPU suite take them from.

Per token per block ≈ 24·d² FLOP (qkv, projection, 4x MLP) plus 4·n·d for attention over the
image's n tokens; a forward of one image of n tokens through B blocks is B·(24·d²·n + 4·n²·d).
Training: the frozen prefix runs forward only; trainable blocks cost 3 forwards (forward, and a
backward of twice the forward).
"""
from __future__ import annotations

PEAK_BF16 = 989e12  # H100/H200 SXM dense bf16 FLOP/s (datasheet), the MFU denominator


def width(bb) -> int:
    """Transformer width d of a spar_fast Backbone (its feature_dim may be a projection's)."""
    visual = bb.model.visual
    return visual.trunk.embed_dim if bb.family == "siglip2" else visual.transformer.width


def block_flop(d: int, n: int) -> float:
    """One transformer block over one image of ``n`` tokens (SPEC §7)."""
    return 24.0 * d * d * n + 4.0 * n * n * d


def forward_flop(bb, tokens: list[int]) -> float:
    """Forward of every block over images of ``tokens`` each (one window = one image)."""
    d = width(bb)
    return bb.num_blocks * sum(block_flop(d, n) for n in tokens)


def teacher_flop(bb, windows: int) -> float:
    """Sliding-window teacher: ``windows`` forwards of (window/P)² tokens."""
    n = (bb.window // bb.patch_size) ** 2
    return windows * bb.num_blocks * block_flop(width(bb), n)


def train_flop(bb, first_block: int, tokens: list[int]) -> float:
    """One pass of training over images of ``tokens``: blocks before ``first_block`` forward
    only, the others 3x (forward + backward)."""
    d = width(bb)
    per_block = sum(block_flop(d, n) for n in tokens)
    return per_block * (first_block + 3 * (bb.num_blocks - first_block))


def mfu(flop: float, seconds: float) -> float:
    """Model FLOP utilization against :data:`PEAK_BF16`."""
    return flop / seconds / PEAK_BF16
