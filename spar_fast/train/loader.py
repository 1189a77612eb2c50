"""Training data: images rebuilt from their source + stored augmentation, targets from the store.

Each item is ``(image [3,H,W] float32 normalized, target [h,w,C] store dtype, index)``; the
augmented image is recomputed from the source file and the augmentation parameters the store
recorded, so the store holds only features. A :class:`torch.utils.data.DataLoader` with workers
and pinned memory (CUDA) reads them; its ``batch_sampler`` is a rank's stream of packed chunks
(:meth:`spar_fast.train.sampler.PackingSampler.rank_batches`).
"""
from __future__ import annotations

import os
from collections.abc import Iterable

import torch
from torch.utils.data import DataLoader, Dataset


class StoreDataset(Dataset):
    """The records of a feature store as training items.

    ``store_path``: a store directory; ``mean``/``std``: the backbone's normalization. The store
    is opened lazily in each worker process (file handles are not shared across forks).
    """

    def __init__(self, store_path: str, mean, std):
        from ..store import FeatureStore

        self.store_path = os.fspath(store_path)
        self.mean, self.std = tuple(mean), tuple(std)
        store = FeatureStore(self.store_path)
        self.records = list(store.records)
        self._store = None

    def __len__(self) -> int:
        return len(self.records)

    def tokens(self) -> list[int]:
        """Token count (grid ``h*w``) of every item, in dataset order."""
        return [r.grid_hw[0] * r.grid_hw[1] for r in self.records]

    def _open(self):
        if self._store is None:
            from ..store import FeatureStore

            self._store = FeatureStore(self.store_path)
        return self._store

    def __getitem__(self, index: int):
        from ..data import normalize

        store, image_id = self._open(), self.records[index].image_id
        target, _ = store.get(image_id)
        # source hashes are checked by `spar-fast verify`, not on every read
        image = normalize(store.input_image(image_id, check_source=False), self.mean, self.std)
        return image.float(), target, index


def collate_lists(items):
    """Keep variable-size images and targets as lists: ``([3,Hi,Wi]...], [[hi,wi,C]...], [i...])``."""
    images, targets, indices = zip(*items)
    return list(images), list(targets), list(indices)


def default_workers(device: torch.device | str = "cuda") -> int:
    """``min(4, usable cpus)`` when training on a GPU; 0 on CPU, where worker processes would
    compete with the training step for the same cores."""
    if torch.device(device).type == "cpu":
        return 0
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return min(4, cpus)


def make_loader(dataset: StoreDataset, batches: Iterable[list[int]], num_workers: int | None = None,
                pin_memory: bool = False) -> DataLoader:
    """A DataLoader over ``batches`` (lists of dataset indices, one per forward pass);
    ``num_workers=None``: :func:`default_workers` for the pinned (GPU) or unpinned (CPU) case."""
    workers = default_workers("cuda" if pin_memory else "cpu") if num_workers is None else int(num_workers)
    # prefetch 4 chunks per worker: the next steps' images decode while the current one trains
    return DataLoader(dataset, batch_sampler=list(batches), num_workers=workers,
                      collate_fn=collate_lists, pin_memory=pin_memory,
                      persistent_workers=False, prefetch_factor=4 if workers > 0 else None)
