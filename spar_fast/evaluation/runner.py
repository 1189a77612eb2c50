"""``evaluate``: open-vocabulary segmentation of a validation set and its mIoU (SPEC §5).

Each image is test-resized (keep ratio into the dataset's scale), segmented, and the label map
is produced at the ORIGINAL image size and compared with the label there. Images and labels are
decoded by a small thread pool ahead of the model. With ``batch_size > 1`` (single mode) several
images of mixed sizes go through one packed forward.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from ..errors import UserError
from ..segmentation.infer import segment, segment_batch
from ..segmentation.preprocess import prepare_image
from ..segmentation.queries import as_query_set, parse_classes
from .datasets import get_spec, list_samples, load_sample
from .metrics import ConfusionMatrix

# SPEC §5.4: (logit_scale, prob_thd, area_thd) per backbone family and dataset.
DEFAULT_SETTINGS = (40.0, 0.0, None)
SETTINGS = {
    ("siglip2", "voc21"): (65.0, 0.0, None),
    ("siglip2", "context60"): (50.0, 0.1, None),
    ("openclip", "voc21"): (65.0, 0.1, 0.1),
    ("openclip", "context60"): (50.0, 0.1, None),
    ("dinov3txt", "voc21"): (65.0, 0.0, None),  # SPAR configs/dinov3txt/cfg_*.py: as SigLIP2
    ("dinov3txt", "context60"): (50.0, 0.1, None),
}

# Datasets whose label 0 is the background, described by a line of stuff names.
BACKGROUND_FIRST = ("voc21", "context60")

# Images decoded ahead of the model (bounded so memory stays a few images).
_PREFETCH = 4


def default_settings(family: str, dataset: str) -> dict:
    scale, prob, area = SETTINGS.get((family, dataset), DEFAULT_SETTINGS)
    return {"logit_scale": scale, "prob_thd": prob, "area_thd": area}


def _prefetched(samples, reduce_zero_label: bool, workers: int):
    """Yield ``(sample, image, label)`` in order, decoding up to ``_PREFETCH`` ahead."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(load_sample, s, reduce_zero_label) for s in samples[:_PREFETCH]]
        for i, sample in enumerate(samples):
            image, label = futures[i].result()
            futures[i] = None
            if i + _PREFETCH < len(samples):
                futures.append(pool.submit(load_sample, samples[i + _PREFETCH], reduce_zero_label))
            yield sample, image, label


def _batches(items, size: int):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@torch.no_grad()
def evaluate(bb, dataset: str, root, mode: str = "single", limit: int | None = None,
             logit_scale: float | None = None, prob_thd: float | None = None,
             area_thd: float | None = None, classes=None, batch_size: int = 1, stride: int = 24,
             amp="auto", device=None, progress: bool = False, workers: int = 2,
             cache_dir=None, queries=None, tokenizer=None, refine: str | None = None,
             lposs=None) -> dict:
    """mIoU of backbone ``bb`` on the validation split of ``dataset`` under ``root``.

    Args:
        dataset: voc21, voc20, context60, context59, cityscapes or ade20k.
        mode: "single" or "slide" (sliding window at ``stride``).
        limit: evaluate only the first ``limit`` images.
        logit_scale, prob_thd, area_thd: override the SPEC §5.4 defaults of the backbone family.
        classes: class lines replacing the built-in list (same count as the dataset's classes).
        batch_size: images per packed forward (single mode).
        queries: a precomputed query file or ``QuerySet`` (``spar-fast queries``) replacing the
            class text: no tokenizer, no text tower. ``tokenizer``: a local tokenizer path.
        refine, lposs: LPOSS / LPOSS+ refinement and its settings, as in
            :func:`spar_fast.segmentation.segment` (images then go one at a time).
    Returns:
        A dict; every score is a PERCENTAGE (0-100), the unit the CLI prints:
        ``mIoU`` (MMSeg: mean over classes with a non-empty union), ``mIoU_torchmetrics``
        (torchmetrics JaccardIndex), ``mIoU_all_classes`` (absent classes count as 0), ``aAcc``
        (pixel accuracy), ``per_class`` (``{class name: IoU}``, None for a class with an empty
        union), ``IoU`` (the same values as a list in class order), and ``dataset``, ``mode``,
        ``num_images``, ``refine``, ``settings`` (logit_scale, prob_thd, area_thd used),
        ``classes`` (the class lines), ``units`` (``"percent"``).
    """
    spec = get_spec(dataset)
    if mode not in ("single", "slide"):
        raise UserError(f"mode must be 'single' or 'slide', got {mode!r}")
    if refine not in (None, "lposs", "lposs+"):
        raise UserError(f"refine must be None, 'lposs' or 'lposs+', got {refine!r}")
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    if queries is not None:
        queries = as_query_set(queries, bb, classes)
        lines = list(queries.lines)
    else:
        lines = parse_classes(classes) if classes is not None else list(spec.classes)
    if len(lines) != spec.num_classes:
        raise UserError(f"{dataset} has {spec.num_classes} classes but {len(lines)} class lines were given")
    settings = default_settings(getattr(bb, "family", ""), dataset)
    for key, value in (("logit_scale", logit_scale), ("prob_thd", prob_thd), ("area_thd", area_thd)):
        if value is not None:
            settings[key] = value
    samples = list_samples(dataset, root)
    if limit is not None:
        if limit < 1:
            raise UserError(f"limit must be >= 1, got {limit}")
        samples = samples[:limit]
    if device is None:
        device = next(iter(bb.parameters())).device
    device = torch.device(device)
    confmat = ConfusionMatrix(spec.num_classes, device=device)
    stream = _prefetched(samples, spec.reduce_zero_label, workers)
    if progress:
        from tqdm.auto import tqdm
        stream = tqdm(stream, total=len(samples), desc=f"{dataset} ({mode})", unit="img")
    for batch in _batches(stream, batch_size if mode == "single" and refine is None else 1):
        images = [prepare_image(img, bb.mean, bb.std, spec.scale, device) for _, img, _ in batch]
        sizes = [lab.shape for _, _, lab in batch]
        if mode == "slide" or refine is not None:
            preds = [segment(bb, images[0], lines, mode=mode, out_hw=sizes[0], stride=stride,
                             amp=amp, cache_dir=cache_dir, queries=queries, tokenizer=tokenizer,
                             refine=refine, lposs=lposs, **settings)]
        else:
            preds = segment_batch(bb, images, lines, out_hws=sizes, amp=amp, cache_dir=cache_dir,
                                  queries=queries, tokenizer=tokenizer, **settings)
        for pred, (_, _, label) in zip(preds, batch):
            confmat.update(pred, torch.from_numpy(label).to(device))
    return as_percent(confmat.compute(), {"dataset": dataset, "mode": mode, "num_images": len(samples),
                                          "refine": refine, "settings": settings, "classes": lines},
                      class_names(dataset, lines))


def class_names(dataset: str, lines: list[str]) -> list[str]:
    """Display name of each class line (:func:`~spar_fast.segmentation.classes.display_name`);
    label 0 of the datasets whose first line stands for the background is called "background"
    whatever lines were given."""
    from ..segmentation.classes import display_name

    names = [display_name(line) for line in lines]
    if dataset in BACKGROUND_FIRST:
        names[0] = "background"
    return names


def as_percent(scores: dict, head: dict, names: list[str]) -> dict:
    """``head`` plus the fraction ``scores`` of :func:`spar_fast.evaluation.scores` as
    percentages, and ``per_class`` ``{name: IoU %}`` (None for a class absent from prediction
    and label)."""
    out = dict(head, units="percent")
    for key in ("mIoU", "mIoU_torchmetrics", "mIoU_all_classes", "aAcc"):
        out[key] = 100.0 * scores[key]
    out["IoU"] = [None if v is None else 100.0 * v for v in scores["IoU"]]
    out["per_class"] = dict(zip(names, out["IoU"]))
    return out
