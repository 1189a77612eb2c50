"""``evaluate``: open-vocabulary segmentation of a validation set and its mIoU (SPEC §5).

Each image is test-resized (keep ratio into the dataset's scale), segmented, and the label map
is produced at the ORIGINAL image size and compared with the label there. Images and labels are
decoded by a small thread pool ahead of the model. With ``batch_size > 1`` (single mode) several
images of mixed sizes go through one packed forward.
"""
from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace

import torch

from ..errors import UserError
from ..ops.seg_head import HeadSettings
from ..runtime import precision_or_amp
from ..segmentation.infer import segment, segment_batch
from ..segmentation.preprocess import prepare_image
from ..segmentation.queries import parse_classes
from ..segmentation.resolution import parse_resolution
from ..segmentation.query_file import as_query_set
from .datasets import folder_class_lines, get_spec, list_samples, load_sample
from .metrics import ConfusionMatrix

# SPEC §5.4: head settings per backbone family and dataset (bias 0 everywhere).
DEFAULT_SETTINGS = HeadSettings(logit_scale=40.0, prob_thd=0.0, area_thd=None)
SETTINGS = {
    ("siglip2", "voc21"): HeadSettings(logit_scale=65.0),
    ("siglip2", "context60"): HeadSettings(logit_scale=50.0, prob_thd=0.1),
    ("naflex", "voc21"): HeadSettings(logit_scale=65.0),  # SigLIP2 weights: SigLIP2's settings
    ("naflex", "context60"): HeadSettings(logit_scale=50.0, prob_thd=0.1),
    ("openclip", "voc21"): HeadSettings(logit_scale=65.0, prob_thd=0.1, area_thd=0.1),
    ("openclip", "context60"): HeadSettings(logit_scale=50.0, prob_thd=0.1),
    ("dinov3txt", "voc21"): HeadSettings(logit_scale=65.0),  # SPAR configs/dinov3txt/cfg_*.py: as SigLIP2
    ("dinov3txt", "context60"): HeadSettings(logit_scale=50.0, prob_thd=0.1),
}

# Datasets whose label 0 is the background, described by a line of stuff names.
BACKGROUND_FIRST = ("voc21", "context60")

# Images decoded ahead of the model (bounded so memory stays a few images).
_PREFETCH = 4


def default_settings(family: str, dataset: str) -> HeadSettings:
    """The SPEC §5.4 head settings of a backbone family on a dataset."""
    return SETTINGS.get((family, dataset), DEFAULT_SETTINGS)


@dataclass(frozen=True)
class EvalOptions:
    """How an evaluation runs (not what it scores): ``mode`` "single" or "slide" (sliding window
    at ``stride``); ``limit``: only the first images; ``batch_size``: images per packed forward
    (single mode); ``precision`` (:func:`spar_fast.runtime.autocast`); ``device`` (default the
    model's); ``workers``: decoding threads; ``cache_dir``: text-query cache;
    ``tokenizer``: a local tokenizer path; ``progress``: a progress bar; ``split``: a folder
    dataset's split file ``splits/<split>.txt`` (used when present); ``refine`` / ``lposs``:
    LPOSS / LPOSS+ refinement (:mod:`spar_fast.segmentation.lposs`) and its settings;
    ``resolution``: a :class:`~spar_fast.segmentation.resolution.Resolution` (or its text,
    ``"short:512"``) replacing the dataset's test resize (the label map is still scored at the original size)."""
    mode: str = "single"
    limit: int | None = None
    batch_size: int = 1
    stride: int = 24
    precision: str | None = None
    device: str | torch.device | None = None
    workers: int = 2
    cache_dir: str | None = None
    tokenizer: str | None = None
    progress: bool = False
    split: str = "val"
    refine: str | None = None
    lposs: object = None  # LpossSettings (spar_fast.segmentation.lposs); None: its defaults
    resolution: object = None  # Resolution (spar_fast.segmentation.resolution); None: the dataset's

    def check(self) -> None:
        if self.mode not in ("single", "slide"):
            raise UserError(f"mode must be 'single' or 'slide', got {self.mode!r}")
        if self.refine not in (None, "lposs", "lposs+"):
            raise UserError(f"refine must be None, 'lposs' or 'lposs+', got {self.refine!r}")
        if self.batch_size < 1:
            raise UserError(f"batch size must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"limit must be >= 1, got {self.limit}")
        if self.resolution is not None and not hasattr(self.resolution, "hw"):
            raise UserError(f"resolution must be a Resolution (e.g. parse_resolution('short:512')), "
                            f"got {self.resolution!r}")


_OPTION_FIELDS = {f.name for f in fields(EvalOptions)}


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


def _options(options: EvalOptions | None, overrides: dict) -> EvalOptions:
    """``options`` with keyword overrides (the older ``amp=`` is ``precision=``), checked."""
    amp = overrides.pop("amp", None)
    unknown = sorted(set(overrides) - _OPTION_FIELDS)
    if unknown:
        raise TypeError(f"evaluate() got unexpected keyword argument(s): {', '.join(unknown)}")
    options = replace(options or EvalOptions(), **overrides)
    options = replace(options, precision=precision_or_amp(options.precision, amp, "evaluate"))
    if isinstance(options.resolution, str):  # "short:512" (the CLI's text form)
        options = replace(options, resolution=parse_resolution(options.resolution))
    options.check()
    return options


def _class_lines(bb, spec, root, classes, queries):
    """``(class lines, QuerySet or None)``: the query file's lines, ``classes``, or the built-in
    list (a folder dataset's ``classes.txt``), checked against the dataset's class count."""
    if queries is not None:
        queries = as_query_set(queries, bb, classes)
        lines = list(queries.lines)
    elif classes is not None:
        lines = parse_classes(classes)
    else:
        lines = list(spec.classes) if spec.classes is not None else folder_class_lines(root)
    if spec.classes is not None and len(lines) != len(spec.classes):
        raise UserError(f"{spec.name} has {len(spec.classes)} classes but {len(lines)} class lines were given")
    return lines, queries


def check_label_values(label, num_classes: int, where: str) -> None:
    """One-line ``UserError`` when ``label`` holds a value that is neither a class index below
    ``num_classes`` nor 255 (a label file made for another class list)."""
    import numpy as np

    bad = (label >= num_classes) & (label != 255)
    if bad.any():
        raise UserError(f"label {where} holds value {int(np.max(label[bad]))} but only "
                        f"{num_classes} classes were given (values 0..{num_classes - 1} and 255)")


@torch.no_grad()
def evaluate(bb, dataset: str, root, options: EvalOptions | None = None, *, classes=None,
             queries=None, logit_scale: float | None = None, prob_thd: float | None = None,
             area_thd: float | None = None, **option_overrides) -> dict:
    """mIoU of backbone ``bb`` on the validation split of ``dataset`` under ``root``.

    Args:
        dataset: voc21, voc20, context60, context59, cityscapes, ade20k, or "folder" (any
            labelled folder, :mod:`spar_fast.evaluation.datasets`; classes from its
            ``classes.txt`` unless ``classes`` / ``queries`` are given).
        options: an :class:`EvalOptions`; its fields may also be given as keywords (``mode=``,
            ``limit=``, ``batch_size=``, ``stride=``, ``precision=``, ``device=``, ``workers=``,
            ``cache_dir=``, ``tokenizer=``, ``progress=``; ``amp=`` is the deprecated spelling
            of ``precision=``).
        classes: class lines replacing the built-in list (same count as the dataset's classes).
        queries: a precomputed query file or ``QuerySet`` (``spar-fast queries``) replacing the
            class text: no tokenizer, no text tower.
        logit_scale, prob_thd, area_thd: override the SPEC §5.4 head settings of the backbone
            family (:func:`default_settings`).
        refine, lposs (also in ``options``): LPOSS / LPOSS+ refinement and its settings, as in
            :func:`spar_fast.segmentation.segment` (images then go one at a time).
    Returns:
        A dict; every score is a PERCENTAGE (0-100), the unit the CLI prints:
        ``mIoU`` (MMSeg: mean over classes with a non-empty union), ``mIoU_torchmetrics``
        (torchmetrics JaccardIndex), ``mIoU_all_classes`` (absent classes count as 0), ``aAcc``
        (pixel accuracy), ``per_class`` (``{class name: IoU}``, None for a class with an empty
        union), ``IoU`` (the same values as a list in class order), and ``dataset``, ``mode``,
        ``num_images``, ``refine``, ``resolution`` (None: the dataset's test resize),
        ``seconds_per_image`` (wall time from the decoded image to its label map: resize,
        forward, head; the first image, with its one-time costs, included) and its median over
        the images ``seconds_per_image_median`` (robust to a busy machine), ``settings`` (logit_scale, prob_thd, area_thd used),
        ``classes`` (the class lines), ``units`` (``"percent"``).
    """
    spec = get_spec(dataset)
    options = _options(options, option_overrides)
    lines, queries = _class_lines(bb, spec, root, classes, queries)
    head = default_settings(getattr(bb, "family", ""), dataset).with_overrides(
        logit_scale=logit_scale, prob_thd=prob_thd, area_thd=area_thd)
    samples = list_samples(dataset, root, options.split)[:options.limit]
    device = torch.device(options.device if options.device is not None else next(iter(bb.parameters())).device)
    confmat = ConfusionMatrix(len(lines), device=device)
    stream = _prefetched(samples, spec.reduce_zero_label, options.workers)
    if options.progress:
        from tqdm.auto import tqdm
        stream = tqdm(stream, total=len(samples), desc=f"{dataset} ({options.mode})", unit="img")
    one_at_a_time = options.mode == "slide" or options.refine is not None
    scale = options.resolution if options.resolution is not None else spec.scale
    seconds = []  # per image (a batch's time shared by its images)
    for batch in _batches(stream, 1 if one_at_a_time else options.batch_size):
        if spec.classes is None:  # a folder's labels are checked against its class list
            for sample, _, label in batch:
                check_label_values(label, len(lines), sample.label)
        labels = [torch.from_numpy(label).to(device) for _, _, label in batch]
        start = time.perf_counter()
        images = [prepare_image(img, bb.mean, bb.std, scale, device) for _, img, _ in batch]
        preds = _predict(bb, images, labels, lines, head, options, queries)
        _synchronize(device)
        seconds += [(time.perf_counter() - start) / len(batch)] * len(batch)
        for pred, label in zip(preds, labels):
            confmat.update(pred, label)
    resolution = None if options.resolution is None else str(options.resolution)
    return as_percent(confmat.compute(), {"dataset": dataset, "mode": options.mode,
                                          "num_images": len(samples), "refine": options.refine,
                                          "resolution": resolution,
                                          "seconds_per_image": sum(seconds) / len(seconds),
                                          "seconds_per_image_median": statistics.median(seconds),
                                          "settings": head.summary(),
                                          "classes": lines},
                      class_names(dataset, lines))


def _synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a wall-clock time includes it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _predict(bb, images, labels, lines, head: HeadSettings, options: EvalOptions, queries) -> list:
    """Label maps of a batch of prepared images, each at its label's size."""
    text = dict(precision=options.precision, cache_dir=options.cache_dir, queries=queries,
                tokenizer=options.tokenizer)
    if options.mode == "slide" or options.refine is not None:
        return [segment(bb, images[0], lines, mode=options.mode, out_hw=labels[0].shape,
                        stride=options.stride, head=head, refine=options.refine,
                        lposs=options.lposs, **text)]
    return segment_batch(bb, images, lines, out_hws=[lab.shape for lab in labels], head=head, **text)


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
