"""Open-vocabulary segmentation head: patch logits -> label map (SPEC §5, steps 2-3).

``logits [h, w, Q]`` are cosine similarities of the dense features with ``Q`` text queries;
``query_to_class [Q]`` gives the class of each query (several queries of one class are synonyms;
classes ``0..K-1`` with ``K = max(query_to_class) + 1``). The label map ``[H, W]`` (int64) is for
the ORIGINAL image size ``out_hw``.

:func:`seg_head_reference` is the specification, written as the reference postprocess: bilinear
upsample to ``[Q, H, W]`` fp32, ``* logit_scale + logit_bias``, softmax over queries, per-class max
probability ``[K, H, W]``, the optional ``area_thd`` filter, argmax, ``prob_thd``.

:func:`seg_head` computes the same labels without materializing ``[Q, H, W]``: per output pixel
the bilinear value of every query (4 taps), the max ``m`` and, only when ``prob_thd > 0``, the
sum ``s = sum_q exp(z_q - m)`` over the scaled logits ``z``. Softmax is monotonic, so the class
with the highest per-class probability is the class of the highest ``z`` and that probability is
``exp(z_best - m) / s``. Queries are sorted by class first (stable), so the first maximal query is
also the lowest class among exact ties, as ``argmax`` over classes picks. With ``area_thd`` a
first pass (argmax only) gives the per-class areas; a second pass restricted to the allowed
classes runs only when a present class is filtered out or ``prob_thd > 0``.

Backends (op ``seg_head`` of ``spar_fast._backend``): ``torch`` (the reference), ``cpp``
(``csrc/seg_head_cpu.cpp``; CPU order: ``cpp`` then the reference, measured 4-22x faster) and
``triton`` (``kernels/seg_head.py``; CUDA order: ``triton`` then the reference, unmeasured: no GPU).
Both fused backends read the host taps of ``spar_fast.ops.bilinear``. They agree with the
reference except at near-ties: they compare scaled logits where the reference compares rounded
probabilities, and they sum ``exp`` in a different order.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F

from .. import _backend
from ..errors import UserError
from .bilinear import bilinear_taps
from .triton_kernels import triton_kernels

LOGIT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

SEG_HEAD = _backend.op("seg_head", cpu=("cpp",), cuda=("triton",))


@dataclass(frozen=True)
class HeadSettings:
    """The head's four settings (SPEC §5 step 3): ``logits * logit_scale + logit_bias``, softmax
    over queries, the optional ``area_thd`` filter, then pixels whose best probability is below
    ``prob_thd`` become class 0. One record from ``segment`` / ``evaluate`` down to the kernel
    call; the defaults are SPEC §5.4's (scale 40, bias 0 as in the reference, no thresholds)."""
    logit_scale: float = 40.0
    logit_bias: float = 0.0
    prob_thd: float = 0.0
    area_thd: float | None = None

    def with_overrides(self, **values) -> "HeadSettings":
        """A copy with the given fields replaced, ``None`` values ignored (an option not set).
        ``area_thd`` cannot be switched off this way; build a new record for that."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})

    def summary(self) -> dict:
        """``{logit_scale, prob_thd, area_thd}``: the settings an evaluation reports."""
        return {"logit_scale": self.logit_scale, "prob_thd": self.prob_thd, "area_thd": self.area_thd}

    def check(self) -> None:
        """One-line ``UserError`` for a non-finite number or a negative ``area_thd``."""
        for name in ("logit_scale", "logit_bias", "prob_thd"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
                raise UserError(f"seg_head {name} must be a finite number, got {value!r}")
        area_thd = self.area_thd
        if area_thd is not None and (not isinstance(area_thd, (int, float)) or not area_thd >= 0):
            raise UserError(f"seg_head area_thd must be None or a number >= 0, got {area_thd!r}")


HEAD_FIELDS = tuple(f.name for f in fields(HeadSettings))


def head_settings(head: HeadSettings | None = None, **values) -> HeadSettings:
    """``head`` (default :class:`HeadSettings`) with keyword fields (``logit_scale=...``)
    replacing its values; the keyword form of the public calls."""
    unknown = sorted(set(values) - set(HEAD_FIELDS))
    if unknown:
        raise TypeError(f"unknown head setting(s): {', '.join(unknown)}")
    return replace(head or HeadSettings(), **values)


def _check(logits, query_to_class, out_hw, head: HeadSettings) -> tuple[int, int]:
    """Validate the arguments (one-line ``UserError`` each); returns ``(H, W)``."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise UserError(f"seg_head logits must be a [h, w, Q] tensor, got "
                        f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}")
    if logits.dtype not in LOGIT_DTYPES:
        raise UserError(f"seg_head logits dtype must be float32, float16 or bfloat16, got {logits.dtype}")
    h, w, Q = logits.shape
    if min(h, w, Q) < 1:
        raise UserError(f"seg_head logits must be non-empty [h, w, Q], got {tuple(logits.shape)}")
    if (not isinstance(query_to_class, torch.Tensor) or query_to_class.dim() != 1
            or query_to_class.dtype.is_floating_point or query_to_class.dtype.is_complex
            or query_to_class.dtype == torch.bool):
        raise UserError("seg_head query_to_class must be a 1-D integer tensor")
    if query_to_class.shape[0] != Q:
        raise UserError(f"seg_head query_to_class has {query_to_class.shape[0]} entries but logits "
                        f"have Q={Q} queries")
    if int(query_to_class.min()) < 0:
        raise UserError(f"seg_head query_to_class must be >= 0, got min {int(query_to_class.min())}")
    try:
        H, W = (int(v) for v in out_hw)
    except (TypeError, ValueError):
        raise UserError(f"seg_head out_hw must be (H, W), got {out_hw!r}") from None
    if H < 1 or W < 1 or H * W >= 2 ** 31:
        raise UserError(f"seg_head out_hw must be positive with H*W < 2**31, got {(H, W)}")
    head.check()
    if not bool(torch.isfinite(logits).all()):
        raise UserError("seg_head logits contain NaN or infinity")
    return H, W


def seg_head_reference(logits: torch.Tensor, query_to_class: torch.Tensor, out_hw: tuple[int, int],
                       head: HeadSettings | None = None, **settings) -> torch.Tensor:
    """The reference postprocess, unfused: ``[h, w, Q]`` logits -> LongTensor ``[H, W]``.

    ``head``: a :class:`HeadSettings` (default SPEC §5.4's), its fields also accepted as keywords
    (``logit_scale=``, ``logit_bias=``, ``prob_thd=``, ``area_thd=``). Materializes
    ``[Q, H, W]`` and ``[K, H, W]`` fp32 (K = number of classes).
    """
    head = head_settings(head, **settings)
    H, W = _check(logits, query_to_class, out_hw, head)
    return _reference(logits, query_to_class, (H, W), head)


def _reference(logits, query_to_class, out_hw, head: HeadSettings) -> torch.Tensor:
    H, W = out_hw
    logit_scale, logit_bias, prob_thd, area_thd = head.logit_scale, head.logit_bias, head.prob_thd, head.area_thd
    q2c = query_to_class.to(logits.device, torch.int64)
    K = int(q2c.max()) + 1
    x = logits.float().permute(2, 0, 1).unsqueeze(0).contiguous()  # [1, Q, h, w]
    up = F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False, antialias=False)[0]
    probs = (up * logit_scale + logit_bias).softmax(0)  # [Q, H, W]
    # per class the max probability over its queries (0 for a class without queries)
    index = q2c[:, None, None].expand(probs.shape)
    cls_probs = probs.new_zeros((K, H, W)).scatter_reduce_(0, index, probs, "amax")  # [K, H, W]
    if area_thd is not None:
        area = torch.bincount(cls_probs.argmax(0).flatten(), minlength=K)[1:].to(cls_probs.dtype)
        keep = (area > area_thd * area.sum()).to(cls_probs.dtype)  # [K-1]
        cls_probs[1:] *= keep[:, None, None]
    pred = cls_probs.argmax(0)
    pred[cls_probs.amax(0) < prob_thd] = 0
    return pred


@SEG_HEAD.register("torch", available=_backend.anywhere)
def _seg_head_torch(logits, query_to_class, out_hw, head: HeadSettings):
    return _reference(logits, query_to_class, out_hw, head)


def _fused(fused_pass):
    """The fused algorithm around one kernel ``fused_pass(x, qcls, qallowed, *taps, scale, bias,
    prob_thd) -> [H, W]``: sort queries by class, one pass, or two with the area filter."""
    def run(logits, query_to_class, out_hw, head: HeadSettings):
        (H, W), Q, device = out_hw, logits.shape[2], logits.device
        prob_thd, area_thd = head.prob_thd, head.area_thd
        qcls = query_to_class.to(device, torch.int64).contiguous()
        x = logits.contiguous()  # [h, w, Q]
        if Q > 1 and not bool((qcls[1:] >= qcls[:-1]).all()):  # sort queries by class, stably
            qcls, order = torch.sort(qcls, stable=True)
            x = x.index_select(2, order)
        taps = (*bilinear_taps(logits.shape[0], H, device), *bilinear_taps(logits.shape[1], W, device))

        def one_pass(allowed, thd):
            return fused_pass(x, qcls, allowed, *taps, float(head.logit_scale), float(head.logit_bias),
                              float(thd))
        if area_thd is None:
            return one_pass(None, prob_thd)
        raw = one_pass(None, 0.0)  # argmax only
        K = int(qcls[-1]) + 1
        hist = torch.bincount(raw.flatten(), minlength=K)
        area = hist[1:].float()
        allowed = torch.cat([area.new_ones(1, dtype=torch.bool), area > area_thd * area.sum()])  # [K]
        if bool(((hist > 0) & ~allowed).any()):
            return one_pass(allowed[qcls].contiguous(), prob_thd)
        if prob_thd > 0:
            return one_pass(None, prob_thd)
        return raw
    return run


SEG_HEAD.register("cpp", available=_backend.cpu_extension, compiled="seg_head_pass")(
    _fused(lambda *args: torch.ops.spar_fast.seg_head_pass(*args)))
SEG_HEAD.register("triton", available=_backend.triton_device)(
    _fused(lambda *args: triton_kernels("seg_head").seg_head_pass(*args)))


def seg_head(logits: torch.Tensor, query_to_class: torch.Tensor, out_hw: tuple[int, int],
             head: HeadSettings | None = None, **settings) -> torch.Tensor:
    """Label map LongTensor ``[H, W]`` of ``logits [h, w, Q]`` (fp32 / fp16 / bf16) with classes
    ``query_to_class [Q]``, at ``out_hw = (H, W)``, under ``head`` (fields also as keywords, as
    in :func:`seg_head_reference`); same result as the reference (up to near-ties) without the
    ``[Q, H, W]`` intermediate."""
    head = head_settings(head, **settings)
    H, W = _check(logits, query_to_class, out_hw, head)
    return SEG_HEAD.run(logits.device, logits, query_to_class, (H, W), head)
