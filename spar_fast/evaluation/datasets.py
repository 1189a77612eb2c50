"""Readers of the six evaluation datasets in their standard MMSeg layouts (SPEC §5.5), PIL only.

``root`` may be the dataset folder itself or a parent holding it under its standard name, so one
data folder serves all six (``--all``)::

    voc21, voc20         VOC2012/{JPEGImages, SegmentationClass, ImageSets/Segmentation/val.txt}
                         (also under VOCdevkit/)
    context60, context59 VOC2010/{JPEGImages, SegmentationClassContext,
                         ImageSets/SegmentationContext/val.txt} (also under VOCdevkit/)
    cityscapes           cityscapes/{leftImg8bit/val/*/*_leftImg8bit.png,
                         gtFine/val/*/*_gtFine_labelTrainIds.png}
    ade20k               ADEChallengeData2016/{images, annotations}/validation (also under ade/)

``folder`` is any labelled folder (the user's own data, the synthetic world of
:mod:`spar_fast.world`)::

    folder               ROOT/{images/<id>.<ext>, labels/<id>.png, classes.txt (one class line per
                         label value), splits/<split>.txt (optional: ids to use; default every
                         image under images/)}

Its images are segmented at their stored size (no test resize) and its label values must be
class indices or 255.

Labels are read as stored (palette indices for VOC PNGs). ``reduce_zero_label`` (voc20,
context59, ade20k) maps 0 -> 255 and k -> k - 1, 255 stays ignored.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError
from ..segmentation.classes import BUILTIN
from ..segmentation.preprocess import CITYSCAPES_SCALE, TEST_SCALE


@dataclass(frozen=True)
class Sample:
    """One evaluation image: its id, image path and label path."""
    id: str
    image: str
    label: str


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    folder: str            # the dataset folder's standard name
    parents: tuple         # standard parents of that folder under a data root
    reduce_zero_label: bool
    scale: tuple | None    # test resize (long, short); None: the stored size

    @property
    def classes(self) -> tuple | None:
        """The built-in class lines (None for ``folder``: its own ``classes.txt``)."""
        return BUILTIN.get(self.name)

    @property
    def num_classes(self) -> int | None:
        return None if self.classes is None else len(self.classes)


DATASETS = {
    "voc21": DatasetSpec("voc21", "VOC2012", ("VOCdevkit",), False, TEST_SCALE),
    "voc20": DatasetSpec("voc20", "VOC2012", ("VOCdevkit",), True, TEST_SCALE),
    "context60": DatasetSpec("context60", "VOC2010", ("VOCdevkit",), False, TEST_SCALE),
    "context59": DatasetSpec("context59", "VOC2010", ("VOCdevkit",), True, TEST_SCALE),
    "cityscapes": DatasetSpec("cityscapes", "cityscapes", (), False, CITYSCAPES_SCALE),
    "ade20k": DatasetSpec("ade20k", "ADEChallengeData2016", ("ade",), True, TEST_SCALE),
    "folder": DatasetSpec("folder", "", (), False, None),
}
BENCHMARKS = tuple(name for name in DATASETS if name != "folder")  # the six of Mean6
FOLDER_CLASSES = "classes.txt"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# Files/folders (relative to the dataset folder) whose presence identifies it.
_MARKERS = {
    "VOC2012": ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation/val.txt"),
    "VOC2010": ("JPEGImages", "SegmentationClassContext", "ImageSets/SegmentationContext/val.txt"),
    "cityscapes": ("leftImg8bit/val", "gtFine/val"),
    "ADEChallengeData2016": ("images/validation", "annotations/validation"),
    "": ("images", "labels"),
}


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    return DATASETS[name]


def find_dataset_dir(spec: DatasetSpec, root) -> Path:
    """The dataset folder under ``root`` (itself, ``root/<folder>`` or ``root/<parent>/<folder>``)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{spec.name}: data root {root} is not a directory")
    if not spec.folder:
        if not all((root / m).is_dir() for m in _MARKERS[""]):
            raise UserError(f"folder dataset: {root} needs images/ and labels/ subfolders")
        return root
    candidates = [root, root / spec.folder] + [root / p / spec.folder for p in spec.parents]
    markers = _MARKERS[spec.folder]
    for cand in candidates:
        if all((cand / m).exists() for m in markers):
            return cand
    expected = root / (spec.parents[0] if spec.parents else "") / spec.folder
    raise UserError(f"{spec.name}: no dataset under {root}; expected {expected}/"
                    f"{{{', '.join(markers)}}}")


def _split_ids(path: Path) -> list[str]:
    """The ids of a split list; each becomes part of a path inside the dataset folder, so an
    absolute id or one with a ``..`` component is refused."""
    from ..jsonfile import read_text

    ids = [ln.strip() for ln in read_text(path, "split file").split("\n") if ln.strip()]
    if not ids:
        raise UserError(f"split file {path} lists no images")
    for i in ids:
        if i.startswith(("/", "\\")) or ".." in i.replace("\\", "/").split("/"):
            raise UserError(f"split file {path}: id {i[:60]!r} points outside the dataset folder")
    return ids


def _existing_split(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise UserError(f"{what}: no split file {path}")
    return _split_ids(path)


def _paired(ids, image_of, label_of, what: str) -> list[Sample]:
    samples = []
    for i in ids:
        image, label = image_of(i), label_of(i)
        for p in (image, label):
            if not p.is_file():
                raise UserError(f"{what}: missing file {p}")
        samples.append(Sample(i, str(image), str(label)))
    return samples


def folder_class_lines(root) -> list[str]:
    """The class lines of a folder dataset (``ROOT/classes.txt``)."""
    from ..segmentation.queries import read_class_file

    path = Path(root) / FOLDER_CLASSES
    if not path.is_file():
        raise UserError(f"folder dataset: no {path}; give the classes (--classes FILE or --queries)")
    return read_class_file(path)


def _folder_samples(d: Path, split: str) -> list[Sample]:
    by_stem = {}
    for p in sorted((d / "images").iterdir()):
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
            by_stem.setdefault(p.stem, p)
    split_file = d / "splits" / f"{split}.txt"
    ids = _split_ids(split_file) if split_file.is_file() else sorted(by_stem)
    return _paired(ids, lambda i: by_stem.get(i, d / "images" / f"{i}.png"),
                   lambda i: d / "labels" / f"{i}.png", "folder dataset")


def list_samples(name: str, root, split: str = "val") -> list[Sample]:
    """All samples of ``split`` of dataset ``name`` under ``root``, in a stable order. ``split``:
    the split file of a folder dataset (``splits/<split>.txt`` when present); for the benchmarks
    ``train`` (VOC / Context ``ImageSets/.../train.txt``, Cityscapes ``leftImg8bit/train``, ADE20K
    ``images/training``: the probes' training images), any other name the validation split."""
    spec = get_spec(name)
    d = find_dataset_dir(spec, root)
    if not spec.folder:
        samples = _folder_samples(d, split)
        if not samples:
            raise UserError(f"folder dataset: no images under {d / 'images'}")
        return samples
    split = "train" if split == "train" else "val"  # other names (a folder's splits) mean val here
    if spec.folder == "VOC2012":
        ids = _existing_split(d / f"ImageSets/Segmentation/{split}.txt", spec.name)
        return _paired(ids, lambda i: d / "JPEGImages" / f"{i}.jpg",
                       lambda i: d / "SegmentationClass" / f"{i}.png", spec.name)
    if spec.folder == "VOC2010":
        ids = _existing_split(d / f"ImageSets/SegmentationContext/{split}.txt", spec.name)
        return _paired(ids, lambda i: d / "JPEGImages" / f"{i}.jpg",
                       lambda i: d / "SegmentationClassContext" / f"{i}.png", spec.name)
    if spec.folder == "cityscapes":
        suffix = "_leftImg8bit.png"
        images = sorted((d / "leftImg8bit" / split).glob(f"*/*{suffix}"))
        ids = [str(p.relative_to(d / "leftImg8bit" / split))[:-len(suffix)] for p in images]
        samples = _paired(ids, lambda i: d / "leftImg8bit" / split / f"{i}{suffix}",
                          lambda i: d / "gtFine" / split / f"{i}_gtFine_labelTrainIds.png", spec.name)
    else:
        sub = "validation" if split == "val" else "training"
        images = sorted((d / "images" / sub).glob("*.jpg"))
        ids = [p.stem for p in images]
        samples = _paired(ids, lambda i: d / "images" / sub / f"{i}.jpg",
                          lambda i: d / "annotations" / sub / f"{i}.png", spec.name)
    if not samples:
        raise UserError(f"{spec.name}: no {'validation' if split == 'val' else 'training'} images found under {d}")
    return samples


def load_label(path: str, reduce_zero_label: bool) -> np.ndarray:
    """Label PNG -> ``uint8 [H, W]`` class indices (255 = ignore), reduced if asked."""
    from ..data.images import DEFAULT_MAX_PIXELS, check_image_size, regular_file

    try:
        regular_file(path)
        with Image.open(path) as img:
            if img.mode not in ("P", "L", "I", "I;16"):
                raise UserError(f"label {path} has mode {img.mode}; expected a single-channel PNG")
            # the header's size, before any pixel is decoded: a 20000x20000 claim is refused here
            check_image_size(img.size[::-1], DEFAULT_MAX_PIXELS, what=f"label {path}")
            label = np.array(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"cannot read label {path}: {str(exc)[:160]}") from None
    if label.dtype != np.uint8:
        if label.max() > 255 or label.min() < 0:
            raise UserError(f"label {path} has values outside 0..255")
        label = label.astype(np.uint8)
    if reduce_zero_label:
        label[label == 0] = 255
        label = label - 1
        label[label == 254] = 255
    return label


def load_sample(sample: Sample, reduce_zero_label: bool):
    """``(image uint8 [H, W, 3], label uint8 [H, W])``; a size mismatch is a ``UserError``."""
    from ..data.images import read_rgb

    image = read_rgb(sample.image)
    label = load_label(sample.label, reduce_zero_label)
    if image.shape[:2] != label.shape:
        raise UserError(f"image {sample.image} is {image.shape[1]}x{image.shape[0]} but its label "
                        f"{os.path.basename(sample.label)} is {label.shape[1]}x{label.shape[0]}")
    return image, label
