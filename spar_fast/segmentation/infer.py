"""Open-vocabulary segmentation: single pass (default) and sliding window (SPEC §5 steps 2-3, 7).

Single pass: dense features of the whole image ``[h, w, C]``, L2-normalized per position, cosine
logits against the text queries ``[h, w, Q]``, then the fused postprocess
``spar_fast.ops.seg_head`` (bilinear upsample to the output size, scale, softmax, synonym max,
area / probability thresholds, argmax). Lists of images of mixed sizes go through the backbone's
packed forward in one call.

Sliding window (the baseline the paper compares against): windows of the backbone's native size
at ``stride`` (origins as in SPEC §2 step 1), run in sub-batches of 60; per-window logits are
upsampled bilinearly to the window size and summed into a full-resolution canvas ``[Q, H, W]``,
divided by the coverage count, then the reference postprocess. An image side shorter than the
window gets a single window spanning that whole side (no padding, no upscaling): the window
never reaches outside the image, exactly as the single pass sees that side.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..ops.seg_head import HeadSettings, head_settings, seg_head, seg_head_reference
from ..runtime import autocast, precision_or_amp
from ..teacher.features import check_image
from ..teacher.window_plan import window_origins
from .query_file import resolve_queries

# Windows per forward in sliding mode: the sub-batch of the paper's timing protocol (SPEC §5.8).
SLIDE_BATCH = 60

def cosine_logits(feats: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """``feats [..., C]`` (any dtype), ``queries [Q, C]`` unit-norm -> fp32 ``[..., Q]``."""
    feats = F.normalize(feats.float(), dim=-1)
    return feats @ queries.t()


def postprocess(logits, query_to_class, out_hw, head: HeadSettings, fused: bool = True) -> torch.Tensor:
    """SPEC §5 step 3 on ``logits [h, w, Q]`` -> LongTensor ``out_hw``; ``fused`` picks the op."""
    fn = seg_head if fused else seg_head_reference
    return fn(logits, query_to_class, tuple(out_hw), head)


@torch.no_grad()
def single_logits(bb, images: list[torch.Tensor], queries: torch.Tensor, precision: str | None = None) -> list:
    """Cosine logits ``[h_i, w_i, Q]`` of each image; one packed forward for several images."""
    device = images[0].device
    with autocast(device, precision):
        if len(images) == 1:
            feats = [bb(images[0][None])[0]]
        else:
            feats = bb.forward_packed(images)
    return [cosine_logits(f, queries) for f in feats]


@torch.no_grad()
def slide_logits(bb, image: torch.Tensor, queries: torch.Tensor, stride: int = 24,
                 batch_size: int = SLIDE_BATCH, precision: str | None = None) -> torch.Tensor:
    """Sliding-window logits at full resolution, fp32 ``[H, W, Q]`` (SPEC §5 step 7)."""
    if stride <= 0:
        raise UserError(f"stride must be a positive number of pixels, got {stride}")
    _, height, width = image.shape
    win_h, win_w = min(bb.window, height), min(bb.window, width)
    origins = [(y, x) for y in window_origins(height, win_h, stride)
               for x in window_origins(width, win_w, stride)]
    num_q = queries.shape[0]
    canvas = torch.zeros(num_q, height, width, dtype=torch.float32, device=image.device)
    count = torch.zeros(height, width, dtype=torch.float32, device=image.device)
    for start in range(0, len(origins), batch_size):
        chunk = origins[start:start + batch_size]
        windows = torch.stack([image[:, y:y + win_h, x:x + win_w] for y, x in chunk])
        with autocast(image.device, precision):
            feats = bb(windows)
        logits = cosine_logits(feats, queries).permute(0, 3, 1, 2)
        logits = F.interpolate(logits, size=(win_h, win_w), mode="bilinear", align_corners=False)
        for (y, x), win_logits in zip(chunk, logits):
            canvas[:, y:y + win_h, x:x + win_w] += win_logits
            count[y:y + win_h, x:x + win_w] += 1
    return (canvas / count).permute(1, 2, 0)


def _out_hw(image: torch.Tensor, out_hw) -> tuple[int, int]:
    if out_hw is None:
        return int(image.shape[1]), int(image.shape[2])
    if len(out_hw) != 2 or min(out_hw) <= 0:
        raise UserError(f"out_hw must be (height, width) > 0, got {out_hw}")
    return int(out_hw[0]), int(out_hw[1])


def segment(bb, image: torch.Tensor, classes=None, mode: str = "single", logit_scale: float = 40.0,
            prob_thd: float = 0.0, area_thd: float | None = None, logit_bias: float = 0.0,
            out_hw=None, stride: int = 24, precision: str | None = None, fused: bool = True,
            cache_dir=None, queries=None, tokenizer=None, head: HeadSettings | None = None,
            amp: str | None = None, refine: str | None = None, lposs=None) -> torch.Tensor:
    """Label map of one image.

    Args:
        bb: a :class:`spar_fast.Backbone`.
        image: normalized ``[3, H, W]`` (already test-resized if wanted).
        classes: class lines (synonyms joined by ", "), a class-file path or a ";"-joined string.
        mode: "single" (one dense forward) or "slide" (windows of ``bb.window`` at ``stride``).
        logit_scale, logit_bias, prob_thd, area_thd: SPEC §5 step 3 (bias 0 as in the reference);
            or ``head``, a :class:`~spar_fast.ops.seg_head.HeadSettings` holding all four
            (then these keywords are ignored).
        out_hw: size of the label map (default ``(H, W)``); logits are upsampled to it.
        precision: a precision name of :func:`spar_fast.runtime.autocast`: "auto" (default;
            bf16 on GPU, fp32 on CPU), "bf16", "fp16" or "fp32" (``amp=``: its older, deprecated
            spelling).
        fused: single mode only; False runs the unfused reference postprocess.
        queries: a precomputed query file or ``QuerySet`` (``spar-fast queries``) used instead of
            encoding ``classes`` (then None): no tokenizer, no text tower.
        tokenizer: a local tokenizer path for ``bb`` (``Backbone.set_tokenizer``).
        refine: None, "lposs" or "lposs+": label propagation of the class scores over patches
            (and pixels) before the postprocess (:mod:`spar_fast.segmentation.lposs`).
        lposs: a :class:`~spar_fast.segmentation.lposs.LpossSettings` (default: LPOSS's).
    Returns:
        int64 ``[out_h, out_w]`` class indices (line numbers of ``classes``), on the image's device.
    """
    check_image(image)
    precision = precision_or_amp(precision, amp, "segment")
    head = head or head_settings(logit_scale=logit_scale, logit_bias=logit_bias, prob_thd=prob_thd,
                                 area_thd=area_thd)
    queries, q2c, _ = resolve_queries(bb, classes, queries, image.device, cache_dir, tokenizer)
    out = _out_hw(image, out_hw)
    if refine is not None:
        from .lposs import lposs_logits
        logits = lposs_logits(bb, image, queries, refine, mode, lposs, stride, precision)
        return postprocess(logits, q2c, out, head, fused)
    if mode == "single":
        logits = single_logits(bb, [image], queries, precision)[0]
        return postprocess(logits, q2c, out, head, fused)
    if mode == "slide":
        logits = slide_logits(bb, image, queries, stride=stride, precision=precision)
        return postprocess(logits, q2c, out, head, False)
    raise UserError(f"mode must be 'single' or 'slide', got {mode!r}")


def segment_batch(bb, images: list[torch.Tensor], classes=None, out_hws=None,
                  head: HeadSettings | None = None, precision: str | None = None, fused=True, cache_dir=None,
                  queries=None, tokenizer=None) -> list[torch.Tensor]:
    """Single-pass label maps of images of mixed sizes (one packed forward).

    ``images``: list of normalized ``[3, H_i, W_i]``; ``out_hws``: list of output sizes (default
    each image's size); ``head``: the head settings (default :class:`HeadSettings`);
    ``queries`` / ``tokenizer`` as in :func:`segment`. Returns a list of int64
    ``[out_h_i, out_w_i]``.
    """
    head = head or HeadSettings()
    if not images:
        return []
    for image in images:
        check_image(image)
    out_hws = [None] * len(images) if out_hws is None else list(out_hws)
    if len(out_hws) != len(images):
        raise UserError(f"{len(images)} images but {len(out_hws)} output sizes")
    queries, q2c, _ = resolve_queries(bb, classes, queries, images[0].device, cache_dir, tokenizer)
    logits = single_logits(bb, images, queries, precision)
    return [postprocess(lg, q2c, _out_hw(im, hw), head, fused)
            for lg, im, hw in zip(logits, images, out_hws)]
