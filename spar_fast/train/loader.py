"""Training data: source images decoded and re-augmented, targets read from the store.

The store keeps features and augmentation parameters, not augmented pixels, so each item is
rebuilt from its source file. Where that work runs is the ``stage``:

* ``cpu`` — a worker decodes (the store's decode path), augments and normalizes; the item's image
  is float32 ``[3, H, W]``. For CPU training, where there is no faster place.
* ``device`` — a worker only reads: the JPEG's bytes (``nvjpeg``) or its decoded ``uint8`` pixels
  (``pil`` / ``torchvision``) and the target's stored bytes; the training device decodes the JPEG
  batch, augments and normalizes (:func:`prepare_chunk`). For GPU training: a worker's work per
  image drops from decode + float resize (≈60-100 ms on one core for an SA-1B-size JPEG) to a
  file read, and the GPU does the rest in well under a millisecond.

Targets travel as :class:`spar_fast.store.codec.StoredTarget` (views of the memory-mapped shard,
fp8 with its scale) and are decoded on the device. :func:`device_chunks` prepares the next chunk
(pinned, non-blocking copies and decoding on a side CUDA stream) while the current one trains.
docs/DATAPATH.md has the measurements behind these choices.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset

from ..data.augment import AugmentParams, apply_augment, normalize
from ..data.decode import EncodedImage, finish_decode, read_encoded
from ..errors import UserError
from ..data.images import printable_id
from ..store.codec import StoredTarget
from ..store.index import MISSING_SOURCE, source_changed

STAGES = ("cpu", "device")


class Sample(NamedTuple):
    """One item: ``image`` (float ``[3, H, W]`` normalized, stage cpu; :class:`EncodedImage`,
    stage device), its ``augment`` parameters, the stored ``target``, the dataset ``index``."""
    image: torch.Tensor | EncodedImage
    augment: AugmentParams
    target: StoredTarget
    index: int


class Chunk(NamedTuple):
    """Samples of one forward pass, field by field (lists of equal length)."""
    images: list
    augments: list
    targets: list
    indices: list


def augment_normalize(pixels: torch.Tensor, params: AugmentParams, mean, std) -> torch.Tensor:
    """``uint8 [H, W, 3]`` source pixels -> the normalized augmented input ``[3, H', W']`` fp32,
    on the pixels' device (the computation extraction made, SPEC §3)."""
    return normalize(apply_augment(pixels, params), mean, std)


class StoreDataset(Dataset):
    """The records of a feature store as training items (:class:`Sample`).

    ``store_path``: a store directory; ``mean``/``std``: the backbone's normalization;
    ``decode``: the image decode path (:mod:`spar_fast.data.decode`; training passes the store's);
    ``stage``: ``cpu`` or ``device`` (module docstring). The store is opened lazily in each
    worker process (file handles are not shared across forks).
    """

    def __init__(self, store_path: str, mean, std, decode: str = "pil", stage: str = "cpu",
                 partial: bool = False):
        from ..store import FeatureStore

        if stage not in STAGES:
            raise UserError(f"loader stage must be one of {', '.join(STAGES)}, got {stage!r}")
        if decode == "nvjpeg" and stage != "device":
            raise UserError("the nvjpeg decode path decodes on the GPU: use the device stage")
        self.store_path = os.fspath(store_path)
        self.mean, self.std = tuple(mean), tuple(std)
        self.decode, self.stage, self.partial = decode, stage, partial
        store = FeatureStore(self.store_path, partial=partial)
        self.records = list(store.records)
        self._store = None

    def __len__(self) -> int:
        return len(self.records)

    def tokens(self) -> list[int]:
        """Token count (grid ``h*w``) of every item, in dataset order."""
        return [r.grid_hw[0] * r.grid_hw[1] for r in self.records]

    def image_ids(self, indices: Iterable[int]) -> list[str]:
        return [self.records[i].image_id for i in indices]

    def _open(self):
        if self._store is None:
            from ..store import FeatureStore

            self._store = FeatureStore(self.store_path, partial=self.partial)
        return self._store

    def __getitem__(self, index: int) -> Sample:
        rec = self.records[index]
        target, _ = self._open().get(rec.image_id, decoded=False)  # checksum-verified
        changed = source_changed(rec)  # one stat; the file is hashed only when size or mtime moved
        if changed:
            advice = ("restore it (its target is kept)" if changed == MISSING_SOURCE else
                      "its target no longer matches, rerun `spar-fast features` to recompute it")
            raise UserError(f"{self.store_path}: {changed} for image {printable_id(rec.image_id)!r} "
                            f"({printable_id(rec.source)}); {advice}")
        image = read_encoded(rec.source, self.decode)
        if self.stage == "cpu":
            image = augment_normalize(finish_decode([image], "cpu")[0], rec.augment, self.mean, self.std)
        return Sample(image, rec.augment, target, index)


def collate_chunk(items: list[Sample]) -> Chunk:
    """Keep variable-size images and targets as lists."""
    return Chunk(*(list(field) for field in zip(*items)))


def prepare_chunk(chunk: Chunk, mean, std, device: torch.device) -> tuple[list, list, list]:
    """A loaded chunk -> ``(images, targets, indices)`` on ``device``: images normalized fp32
    ``[3, Hi, Wi]`` (decoded and augmented here for the device stage), targets decoded to fp32
    ``[hi, wi, C]``. Copies are non-blocking (from pinned memory when the loader pins)."""
    images = chunk.images
    if images and isinstance(images[0], EncodedImage):
        pixels = finish_decode(images, device)
        images = [augment_normalize(p, a, mean, std) for p, a in zip(pixels, chunk.augments)]
    else:
        images = [im.to(device, non_blocking=True) for im in images]
    targets = [t.to(device, non_blocking=True).decode(torch.float32) for t in chunk.targets]
    return images, targets, chunk.indices


def device_chunks(chunks: Iterable[Chunk], prepare: Callable[[Chunk], tuple], device: torch.device) -> Iterator[tuple]:
    """``prepare(chunk)`` for each chunk, one chunk ahead: when chunk k is handed out, the copies
    and decoding of chunk k+1 are already queued (on a side stream on CUDA, so they overlap the
    step's compute; the main stream waits for them only when chunk k+1 is handed out)."""
    stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def issue(chunk):
        if stream is None:
            return prepare(chunk)
        with torch.cuda.stream(stream):
            return prepare(chunk)

    def ready(prepared):
        if stream is not None:
            main = torch.cuda.current_stream(device)
            main.wait_stream(stream)
            for t in (*prepared[0], *prepared[1]):
                t.record_stream(main)  # the side stream's allocations are used on the main stream
        return prepared

    it = iter(chunks)
    first = next(it, None)
    if first is None:
        return
    pending = issue(first)
    for chunk in it:
        following = issue(chunk)
        yield ready(pending)
        pending = following
    yield ready(pending)


def default_workers(device: torch.device | str = "cuda") -> int:
    """On a GPU: every usable cpu but one (left to the training process), at most 16; on the
    CPU: 0 — worker processes would compete with the training step for the same cores."""
    if torch.device(device).type == "cpu":
        return 0
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, min(16, cpus - 1))


def make_loader(dataset: StoreDataset, batches: Iterable[list[int]], num_workers: int | None = None,
                pin_memory: bool = False) -> DataLoader:
    """A DataLoader over ``batches`` (lists of dataset indices, one per forward pass);
    ``num_workers=None``: :func:`default_workers` for the pinned (GPU) or unpinned (CPU) case."""
    workers = default_workers("cuda" if pin_memory else "cpu") if num_workers is None else int(num_workers)
    # prefetch 4 chunks per worker: the next steps' images are read while the current one trains
    return DataLoader(dataset, batch_sampler=list(batches), num_workers=workers,
                      collate_fn=collate_chunk, pin_memory=pin_memory,
                      persistent_workers=False, prefetch_factor=4 if workers > 0 else None)
