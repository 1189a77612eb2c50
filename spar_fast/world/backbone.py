"""The world backbone, built once and cached: weights, query file and a record of how it was made.

``world_backbone()`` returns the cached :class:`WorldBackbone` for a :class:`PretrainConfig`,
pretraining it first when the cache lacks it. The cache folder is named by a key hashed from
the config, the trunk's registry entry and the source of the modules that define the world and
its pretraining, so a change to any of them builds a new backbone instead of reusing a stale
one. Files (written atomically, the build under a lock so parallel processes build once)::

    <cache>/world/<key>/model.safetensors    full open_clip state dict (``--weights PATH``)
    <cache>/world/<key>/queries.safetensors  class embeddings as a query file (``--queries``)
    <cache>/world/<key>/world.json           the config, the key, build time, torch version

``<cache>`` is ``$SPAR_FAST_CACHE`` or ``~/.cache/spar_fast``. Nothing is committed: the
project's code makes the weights.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import time
from dataclasses import asdict, dataclass

import torch

from ..atomic import atomic_write
from ..lock import exclusive_lock
from .pretrain import PretrainConfig, pretrain
from .scenes import CLASSES

WEIGHTS_FILE, QUERIES_FILE, RECORD_FILE = "model.safetensors", "queries.safetensors", "world.json"


@dataclass(frozen=True)
class WorldBackbone:
    """Paths of a built world backbone (``weights``: a checkpoint for ``Weights``/``--weights``)."""
    name: str
    window: int
    folder: str
    weights: str
    queries: str
    key: str

    def load(self, device=None):
        """The :class:`spar_fast.Backbone` with these weights, eval mode."""
        from ..backbones import Backbone

        return Backbone.from_pretrained(self.name, weights=self.weights, device=device)

    def query_set(self):
        from ..segmentation.query_file import load_query_set

        return load_query_set(self.queries)


def cache_root() -> str:
    return os.environ.get("SPAR_FAST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "spar_fast")


def world_key(cfg: PretrainConfig) -> str:
    """16 hex digits naming the backbone ``cfg`` builds with the code as it is now."""
    from ..backbones import registry
    from . import pretrain as pretrain_module
    from . import scenes as scenes_module

    entry = registry.KNOWN[cfg.backbone]
    config_file = registry.config_path(entry.open_clip_name)
    parts = [json.dumps(asdict(cfg), sort_keys=True), repr(registry.trunk_shape(cfg.backbone)),
             open(config_file, encoding="utf-8").read(),
             inspect.getsource(scenes_module), inspect.getsource(pretrain_module)]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _paths(cfg: PretrainConfig, root: str | None) -> WorldBackbone:
    key = world_key(cfg)
    folder = os.path.join(root or os.path.join(cache_root(), "world"), key)
    from ..backbones import registry

    return WorldBackbone(cfg.backbone, registry.trunk_shape(cfg.backbone)[0], folder, os.path.join(folder, WEIGHTS_FILE),
                         os.path.join(folder, QUERIES_FILE), key)


def is_built(world: WorldBackbone) -> bool:
    return all(os.path.isfile(os.path.join(world.folder, f)) for f in (WEIGHTS_FILE, QUERIES_FILE, RECORD_FILE))


def world_backbone(cfg: PretrainConfig = PretrainConfig(), root: str | None = None, rebuild: bool = False,
                   progress: bool = True, log=print) -> WorldBackbone:
    """The cached world backbone of ``cfg`` (pretrained now if missing or ``rebuild``)."""
    world = _paths(cfg, root)
    if is_built(world) and not rebuild:
        return world
    os.makedirs(world.folder, exist_ok=True)
    with exclusive_lock(world.folder, "world backbone"):
        if is_built(world) and not rebuild:
            return world
        _build(world, cfg, progress, log)
    return world


def _build(world: WorldBackbone, cfg: PretrainConfig, progress: bool, log) -> None:
    from ..backbones import Backbone
    from ..backbones.weights import save_weights
    from ..segmentation.query_file import QuerySet, save_query_set

    for name in (RECORD_FILE, WEIGHTS_FILE, QUERIES_FILE):  # the record last, so it marks completion
        if os.path.exists(os.path.join(world.folder, name)):
            os.remove(os.path.join(world.folder, name))
    start = time.perf_counter()
    bb = Backbone.from_pretrained(cfg.backbone, weights=f"random:{cfg.seed}")
    embeddings = pretrain(bb, cfg, progress=progress, log=log)
    save_weights(bb.model, world.weights, metadata={"world_key": world.key})
    qs = QuerySet(embeddings.contiguous(), torch.arange(len(CLASSES)), tuple(CLASSES), cfg.backbone,
                  f"world:{world.key}", "world class embeddings", "")
    save_query_set(qs, world.queries)
    record = {"key": world.key, "config": asdict(cfg), "classes": list(CLASSES),
              "seconds": round(time.perf_counter() - start, 1), "torch": torch.__version__,
              "weights": WEIGHTS_FILE, "queries": QUERIES_FILE}
    atomic_write(os.path.join(world.folder, RECORD_FILE), (json.dumps(record, indent=1) + "\n").encode())
