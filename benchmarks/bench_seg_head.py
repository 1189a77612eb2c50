"""Segmentation head: patch logits ``[h, w, Q]`` -> label map at the original image size.

Variants (one group per problem):
* ``reference`` — the reference postprocess (``seg_head_reference``): upsample to ``[Q, H, W]``
  fp32, softmax, per-class max over synonyms ``[K, H, W]``, area filter, argmax, prob_thd.
* ``cpp`` (CPU), ``triton`` (GPU) — the fused ``seg_head`` forced to that backend.
Problems: Cityscapes (patch grid 64x128 -> 1024x2048, 19 classes / 27 queries) and ADE20K
(42x128 -> 672x2048, 150 classes / 171 queries), with the default settings and with
prob_thd = 0.1 (which needs the softmax sum). GPU: those sizes; CPU: half the resolution (quick:
a quarter), so the file runs in about a minute on 2 cores.
"""
import pytest
import torch
import torch.nn.functional as F

from spar_fast.ops.seg_head import seg_head, seg_head_reference

from conftest import ON_GPU, pick, require_backend, run_variant  # noqa: E402

# (name, patch grid h, w, output H, W, classes K, queries Q) at full size
PROBLEMS = [("cityscapes", 64, 128, 1024, 2048, 19, 27), ("ade20k", 42, 128, 672, 2048, 150, 171)]
DIVISOR = 1 if ON_GPU else pick(4, 2)
SETTINGS = [(0.0, None), (0.1, None)]  # (prob_thd, area_thd)


def make_inputs(h, w, K, Q, device):
    """Cosine-like logits ``[h, w, Q]`` (smooth regions, values in about [-0.3, 0.3]) and
    ``query_to_class [Q]`` with every class present and the extra queries as synonyms."""
    gen = torch.Generator().manual_seed(0)
    coarse = torch.randn(Q, max(1, h // 4), max(1, w // 4), generator=gen)
    x = F.interpolate(coarse[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    logits = (0.1 * x + 0.03 * torch.randn(Q, h, w, generator=gen)).permute(1, 2, 0).contiguous()
    q2c = torch.cat([torch.arange(K), torch.randint(0, K, (Q - K,), generator=gen)])
    return logits.to(device), q2c.to(device)


@pytest.mark.parametrize("variant", ["reference", "cpp", "triton"])
@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: f"thd{s[0]}")
@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p[0])
def test_seg_head(benchmark, device, problem, setting, variant, monkeypatch):
    name, h, w, H, W, K, Q = problem
    h, w, H, W = max(1, h // DIVISOR), max(1, w // DIVISOR), H // DIVISOR, W // DIVISOR
    prob_thd, area_thd = setting
    logits, q2c = make_inputs(h, w, K, Q, device)
    if variant == "reference":
        def fn():
            return seg_head_reference(logits, q2c, (H, W), prob_thd=prob_thd, area_thd=area_thd)
    else:
        require_backend("seg_head", variant, device)
        monkeypatch.setenv("SPAR_FAST_BACKEND_SEG_HEAD", variant)

        def fn():
            return seg_head(logits, q2c, (H, W), prob_thd=prob_thd, area_thd=area_thd)
    group = f"seg_head {name} {h}x{w}x{Q} -> {H}x{W} thd{prob_thd}"
    run_variant(benchmark, fn, device=device, group=group, variant=variant,
                rounds=pick(2, 5), warmup=1, threads=torch.get_num_threads(),
                megapixels=H * W / 1e6)
