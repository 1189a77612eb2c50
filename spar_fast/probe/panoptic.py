"""Mask-oracle panoptic segmentation (paper Table 8) and the panoptic layouts it reads.

Oracle: every ground-truth segment is kept as the predicted mask; only its class is predicted.
The backbone's dense features ``[h, w, C]``, L2-normalized per patch, are averaged inside the
mask (the mask area-averaged to the patch grid gives each patch's weight), normalized again and
compared with the text queries by cosine; the class is the argmax over classes of the max over
each class's queries. The prediction is scored by panoptic quality (:mod:`.pq`): a right class
is a true positive of IoU 1, a wrong one a false positive of the predicted class and a false
negative of the true class. Each ground-truth segment stays its own predicted segment (two stuff
masks given the same class are not merged).

Layouts (a :class:`PanopticSample` per image: image path, segment id map, categories):

* ``folder`` — the folder dataset (``ROOT/{images, labels, classes.txt, splits}``) plus
  ``ROOT/instances/<id>.png`` (8- or 16-bit instance ids, 0 = none). A segment is the pixels of
  one (label, instance) pair with label != 255; instance 0 is the class's "stuff" region (one
  segment per class per image). Without ``instances/`` (``instances="components"``), the
  instances of each class not listed in ``stuff`` are the connected components (4-connected) of
  its label; ``stuff`` classes are one segment per image. Things: classes with instances.
* ``coco`` — COCO panoptic format (PNG ids ``R + 256 G + 256² B``, a JSON with ``categories``,
  ``images`` and ``annotations[].segments_info``): the Cityscapes panoptic layout
  (``gtFine/cityscapes_panoptic_val.json`` and ``gtFine/cityscapes_panoptic_val/``, images in
  ``leftImg8bit/val/<city>/``) and ADE20K panoptic (``ade20k_panoptic_val.json`` and
  ``ade20k_panoptic_val/``, images in ``images/validation/``). Categories are numbered in the
  JSON's order and named by its ``name`` fields (the class lines).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from .pq import PanopticQuality

PANOPTIC_LAYOUTS = ("folder", "cityscapes", "ade20k")


@dataclass(frozen=True)
class PanopticSample:
    """One image: ``image`` path and a ``load()`` of ``(segments int64 [H, W], {id: class},
    crowd ids)``."""
    id: str
    image: str
    segments: str
    source: str            # "folder:<instances|components>" or "coco:<json>"
    info: tuple = ()       # coco: ((segment id, class index, iscrowd), ...)


def folder_segments(label: np.ndarray, instances: np.ndarray | None, stuff: set[int]):
    """``(segments int64 [H, W], {id: class})`` of a semantic label and instance ids (None:
    connected components of the classes not in ``stuff``)."""
    lab = label.astype(np.int64)
    if instances is None:
        from scipy import ndimage

        instances = np.zeros_like(lab)
        for c in np.unique(lab):
            if c == 255 or int(c) in stuff:
                continue
            comp, _ = ndimage.label(lab == c)
            instances[lab == c] = comp[lab == c]
    inst = instances.astype(np.int64)
    key = np.where(lab == 255, -1, lab * (int(inst.max()) + 1) + inst)
    uniq, seg = np.unique(key, return_inverse=True)
    seg = seg.reshape(lab.shape)
    cats = {}
    out = np.zeros(lab.shape, np.int64)
    next_id = 1
    for j, k in enumerate(uniq.tolist()):
        if k < 0:
            continue
        out[seg == j] = next_id
        cats[next_id] = int(k // (int(inst.max()) + 1))
        next_id += 1
    return out, cats


def _read_png(path: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return np.array(img)
    except (OSError, SyntaxError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None


def load_panoptic(sample: PanopticSample, stuff: set[int] = frozenset()):
    """``(segments torch.int64 [H, W], {id: class}, crowd ids)`` of ``sample``."""
    if sample.source.startswith("folder"):
        from ..evaluation.datasets import load_label

        label = load_label(sample.segments, False)
        inst = None if sample.source == "folder:components" else _read_png(
            str(Path(sample.segments).parent.parent / "instances" / Path(sample.segments).name))
        if inst is not None and inst.shape != label.shape:
            raise UserError(f"instances of {sample.id} are {inst.shape[::-1]}, its label {label.shape[::-1]}")
        seg, cats = folder_segments(label, inst, stuff)
        return torch.from_numpy(seg), cats, set()
    rgb = _read_png(sample.segments).astype(np.int64)
    if rgb.ndim != 3:
        raise UserError(f"{sample.segments} is not an RGB panoptic PNG")
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
    cats = {sid: c for sid, c, _ in sample.info}
    crowd = {sid for sid, _, is_crowd in sample.info if is_crowd}
    ids = np.where(np.isin(ids, list(cats)), ids, 0)
    return torch.from_numpy(ids), cats, crowd


def folder_panoptic_samples(root, split: str, instances: str = "auto"):
    """Samples of a folder dataset split; ``instances``: ``folder`` (ROOT/instances/),
    ``components`` or ``auto`` (``folder`` when ROOT/instances/ exists)."""
    from ..evaluation.datasets import list_samples

    has = (Path(root) / "instances").is_dir()
    mode = ("folder" if has else "components") if instances == "auto" else instances
    if mode == "folder" and not has:
        raise UserError(f"folder dataset {root} has no instances/ folder; use instances 'components'")
    return [PanopticSample(s.id, s.image, s.label, f"folder:{mode}") for s in list_samples("folder", root, split)]


def coco_panoptic_samples(root, layout: str):
    """``(samples, class lines, thing classes)`` of the Cityscapes or ADE20K panoptic val set."""
    root = Path(root)
    if layout == "cityscapes":
        base = root / "gtFine" if (root / "gtFine").is_dir() else root / "cityscapes" / "gtFine"
        json_path, png_dir = base / "cityscapes_panoptic_val.json", base / "cityscapes_panoptic_val"
        images = base.parent / "leftImg8bit" / "val"

        def image_of(entry):
            return images / entry["file_name"].split("_")[0] / entry["file_name"]
    else:
        base = root if (root / "ade20k_panoptic_val.json").is_file() else root / "ADEChallengeData2016"
        json_path, png_dir = base / "ade20k_panoptic_val.json", base / "ade20k_panoptic_val"

        def image_of(entry):
            return base / "images" / "validation" / entry["file_name"]
    if not json_path.is_file() or not png_dir.is_dir():
        raise UserError(f"{layout} panoptic: expected {json_path} and {png_dir}/")
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
        index = {c["id"]: i for i, c in enumerate(doc["categories"])}
        lines = [c["name"] for c in doc["categories"]]
        things = {i for i, c in enumerate(doc["categories"]) if c.get("isthing")}
        entries = {e["id"]: e for e in doc["images"]}
        samples = []
        for ann in doc["annotations"]:
            info = tuple((s["id"], index[s["category_id"]], bool(s.get("iscrowd", 0)))
                         for s in ann["segments_info"])
            image = image_of(entries[ann["image_id"]])
            samples.append(PanopticSample(str(ann["image_id"]), str(image), str(png_dir / ann["file_name"]),
                                          f"coco:{json_path}", info))
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{json_path}: not a COCO panoptic file ({exc!r})") from None
    return samples, lines, things


def pooled_features(feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unit mean of the unit patch features ``[h, w, C]`` weighted by the area of ``mask``
    (bool ``[H, W]``) in each patch -> ``[C]``."""
    unit = F.normalize(feats.float(), dim=-1)
    weight = F.interpolate(mask[None, None].float(), size=tuple(feats.shape[:2]), mode="area")[0, 0]
    return F.normalize((weight[..., None] * unit).sum((0, 1)), dim=0)


def classify_segments(feats, segments: torch.Tensor, ids, queries, query_to_class, num_classes: int):
    """``{id: class}`` of each segment id in ``ids`` (module docstring)."""
    out = {}
    for sid in ids:
        pooled = pooled_features(feats, segments == sid)
        sims = queries.float() @ pooled                                              # [Q]
        per_class = torch.full((num_classes,), float("-inf")).scatter_reduce(
            0, query_to_class.long(), sims, reduce="amax")
        out[sid] = int(per_class.argmax())
    return out


@torch.no_grad()
def mask_oracle(feature_fn, samples, queries, query_to_class, num_classes: int,
                stuff: set[int] = frozenset(), things: set[int] | None = None, progress: bool = False) -> dict:
    """PQ of the mask oracle over ``samples``; ``feature_fn(sample) -> [h, w, C]``."""
    pq = PanopticQuality(num_classes)
    if progress:
        from tqdm.auto import tqdm
        samples = tqdm(samples, desc="mask oracle", unit="img")
    for sample in samples:
        segments, cats, crowd = load_panoptic(sample, stuff)
        bad = [c for c in cats.values() if not 0 <= c < num_classes]
        if bad:
            raise UserError(f"{sample.segments}: class {bad[0]} but {num_classes} classes were given")
        feats = feature_fn(sample)
        keep = [sid for sid in cats if sid not in crowd]
        pred_cats = classify_segments(feats, segments, keep, queries, query_to_class, num_classes)
        pred = torch.where(torch.isin(segments, torch.tensor(sorted(crowd), dtype=torch.int64)),
                           torch.zeros_like(segments), segments)
        pq.update(pred, pred_cats, segments, cats, crowd)
    return pq.compute(things)
