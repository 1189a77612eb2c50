"""The features job: images -> SPAR augmentation -> sliding-window teacher -> feature store.

Deterministic and resumable (layout and atomicity in ``shards.py``): image ``i`` of the list goes
to rank ``i % world``; each rank cuts its images into chunks of ``shard_size``; a chunk whose
index is complete is skipped, any other chunk is computed from scratch. Every image's
augmentation comes from ``(seed, image id)`` only. A resumed run therefore writes the same bytes
as an uninterrupted one. Unreadable images are recorded as skipped with their reason.
"""
from __future__ import annotations

import hashlib
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import torch
import torch.distributed as dist

from ..data.augment import (MIN_SIDE, MULTIPLE, VARIANTS, apply_augment, image_seed, normalize,
                            sample_augment)
from ..data.images import ImageItem, ImageLoadError, list_images, load_image
from ..errors import UserError
from .dist import dist_env, gather_summaries, join_group, resolve_device
from .reader import write_chunk
from .records import StoreRecord
from ..atomic import atomic_write
from ..runtime import Weights
from .shards import (CONFIG_NAME, DTYPES, FORMAT, SHARD_DIR, chunk_done, chunk_name,
                     file_sha256, json_bytes, read_json, tensor_sha256)


def _backbone(backbone, pretrained, device):
    """``(module, name, pretrained-as-recorded)`` for a registry name or a Backbone object."""
    if isinstance(backbone, str):
        from ..backbones import Backbone
        weights = str(Weights.of(pretrained))  # recorded canonical: hub, random:SEED or a path
        bb = Backbone.from_pretrained(backbone, weights=weights)
        return bb.to(device).eval(), backbone, weights
    for attr in ("patch_size", "window", "feature_dim", "mean", "std"):
        if not hasattr(backbone, attr):
            raise UserError(f"backbone object has no {attr!r}; pass a name or a spar_fast.Backbone")
    if isinstance(backbone, torch.nn.Module):
        backbone = backbone.to(device).eval()
    return backbone, getattr(backbone, "name", None) or type(backbone).__name__, None


def _run_config(bb, name, pretrained, items, *, stride, augment, dtype, seed, shard_size, world):
    multiple = math.lcm(MULTIPLE, int(bb.patch_size))
    min_side = -(-max(MIN_SIDE, int(bb.window)) // multiple) * multiple
    listing = "".join(f"{it.id}\t{it.path}\n" for it in items).encode()
    return {"format": FORMAT, "backbone": name, "pretrained": pretrained, "stride": stride,
            "augment": augment, "dtype": dtype, "seed": seed, "shard_size": shard_size,
            "world_size": world, "num_images": len(items),
            "images_sha256": hashlib.sha256(listing).hexdigest(),
            "patch_size": int(bb.patch_size), "window": int(bb.window),
            "feature_dim": int(bb.feature_dim), "mean": [float(v) for v in bb.mean],
            "std": [float(v) for v in bb.std], "min_side": min_side, "multiple": multiple}


def _open_store(path: str, config: dict) -> str:
    """Create the store or check that a resumed one has the same config. Returns the shard dir.

    Every rank writes identical bytes, so concurrent creation needs no coordination."""
    shard_dir = os.path.join(path, SHARD_DIR)
    os.makedirs(shard_dir, exist_ok=True)
    cfg_path = os.path.join(path, CONFIG_NAME)
    if not os.path.exists(cfg_path):
        atomic_write(cfg_path, json_bytes(config))
    old = read_json(cfg_path)
    if not isinstance(old, dict):
        raise UserError(f"{cfg_path} is unreadable; use a new --out folder")
    diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
    if diff:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {config.get(k)!r}" for k in diff[:3])
        raise UserError(f"{path} was started with another config ({shown}); "
                        "rerun with the original options or use a new --out folder")
    return shard_dir


class _Prepared:
    """A decoded, augmented, normalized image (``image`` [3, H, W] fp32) or a skip reason."""

    def __init__(self, record: StoreRecord, image: torch.Tensor | None = None):
        self.record, self.image = record, image


def _prepare(item: ImageItem, position: int, config: dict) -> _Prepared:
    source = os.path.abspath(item.path)
    base = dict(image_id=item.id, index=position, source=source)
    try:
        digest = file_sha256(source)
    except OSError as exc:
        return _Prepared(StoreRecord(status="skipped", reason=f"unreadable file ({exc.strerror})", **base))
    try:
        img = load_image(source)
    except ImageLoadError as exc:
        reason = str(exc).split(": ", 1)[-1]
        return _Prepared(StoreRecord(status="skipped", reason=reason, source_sha256=digest, **base))
    params = sample_augment(img.shape[0], img.shape[1], image_seed(config["seed"], item.id),
                            config["augment"], min_side=config["min_side"], multiple=config["multiple"])
    x = normalize(apply_augment(img, params), config["mean"], config["std"])
    rec = StoreRecord(status="ok", source_sha256=digest, augment=params, image_hw=params.final_hw, **base)
    return _Prepared(rec, x)


def _prefetch(fn, args_list, workers: int):
    """``fn(*args)`` for each args, in order, computed ahead by ``workers`` threads (bounded)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = []
        for args in args_list:
            pending.append(pool.submit(fn, *args))
            if len(pending) > 2 * workers:
                yield pending.pop(0).result()
        for fut in pending:
            yield fut.result()


def _target(teacher_fn, prepared: _Prepared, config: dict, device) -> torch.Tensor:
    """Teacher output for one prepared image, checked, in the stored dtype on the CPU."""
    x = prepared.image.to(device, non_blocking=True)
    out = teacher_fn(x)
    H, W = prepared.record.image_hw
    P = config["patch_size"]
    want = (H // P, W // P, config["feature_dim"])
    if tuple(out.shape) != want:
        raise RuntimeError(f"teacher returned {tuple(out.shape)} for {prepared.record.image_id!r}, "
                           f"expected {want}")
    stored = out.detach().to(DTYPES[config["dtype"]]).cpu().contiguous()
    if not torch.isfinite(stored).all():
        hint = " (exceeds the fp16 range; use --dtype bf16 or fp32)" if torch.isfinite(out).all() else ""
        raise UserError(f"non-finite teacher features for {prepared.record.image_id!r}{hint}")
    return stored


def _compute_chunk(chunk_items, shard, config, teacher_fn, device, workers, bar):
    """Records and ``{key: target}`` of one chunk (list of ``(position, item)``)."""
    records, tensors = [], {}
    args = [(item, pos, config) for pos, item in chunk_items]
    for prepared in _prefetch(_prepare, args, workers):
        rec = prepared.record
        if rec.ok:
            stored = _target(teacher_fn, prepared, config, device)
            rec = replace(rec, grid_hw=tuple(stored.shape[:2]), channels=int(stored.shape[2]),
                          dtype=config["dtype"], shard=shard, key=rec.image_id, sha256=tensor_sha256(stored))
            tensors[rec.key] = stored
        records.append(rec)
        if bar is not None:
            bar.update(1)
    return records, tensors


def _validate(augment, dtype, stride, seed, shard_size, limit):
    if augment not in VARIANTS:
        raise UserError(f"augment must be one of {', '.join(VARIANTS)}, got {augment!r}")
    if dtype not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    for name, value, low in (("stride", stride, 1), ("shard_size", shard_size, 1), ("seed", seed, 0)):
        if not isinstance(value, int) or value < low:
            raise UserError(f"{name} must be an integer >= {low}, got {value!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise UserError(f"limit must be a positive integer, got {limit!r}")


def extract_features(images, store_path, backbone="siglip2-b16-512", pretrained=True, stride=24,
                     augment="default", dtype="fp16", device=None, seed=0, shard_size=32,
                     teacher_fn=None, progress=True, limit=None, workers=None) -> dict:
    """Compute teacher targets for ``images`` into the feature store at ``store_path``.

    Args:
        images: a directory, an image-list file, or a list of paths / ``(id, path)`` pairs
            (:func:`spar_fast.data.list_images`); ``limit`` keeps the first ``limit``.
        backbone: a registry name (loaded with ``pretrained``: True, False or a weights path) or
            a Backbone object (``patch_size``, ``window``, ``feature_dim``, ``mean``, ``std``).
        stride, augment ("default" | "extended" | "none"), dtype ("fp16" | "bf16" | "fp32"),
        seed, shard_size: recorded in ``store.json``; resuming with other values is an error.
        device: None (``cuda:LOCAL_RANK`` if available, else CPU), "cpu", "cuda", "cuda:N".
        teacher_fn: ``normalized image [3, H, W] -> [H/P, W/P, C]``; default
            ``teacher_features(backbone, image, stride)``.
        workers: threads decoding and augmenting ahead of the teacher (default min(4, cpus)).
    Under torchrun each rank takes images ``rank::world`` and writes its own shards.

    Returns the summary of the whole run (all ranks): ``images``, ``ok``, ``skipped``
    (list of ``(image_id, reason)``), ``computed``, ``resumed``, ``seconds``, ``store_bytes``,
    ``store``, ``world_size``.
    """
    start = time.perf_counter()
    _validate(augment, dtype, stride, seed, shard_size, limit)
    rank, world, local_rank = dist_env()
    device = resolve_device(device, local_rank, world)
    items = list_images(images)
    items = items[:limit] if limit else items
    bb, name, recorded_pretrained = _backbone(backbone, pretrained, device)
    if teacher_fn is None:
        from ..teacher import teacher_features
        def teacher_fn(x):
            return teacher_features(bb, x, stride=stride)
    config = _run_config(bb, name, recorded_pretrained, items, stride=stride, augment=augment,
                         dtype=dtype, seed=seed, shard_size=shard_size, world=world)
    store_path = os.fspath(store_path)
    shard_dir = _open_store(store_path, config)
    created = join_group(world)
    try:
        mine = list(enumerate(items))[rank::world]
        chunks = [mine[k:k + shard_size] for k in range(0, len(mine), shard_size)]
        done = {k: chunk_done(shard_dir, rank, k, [it.id for _, it in c]) for k, c in enumerate(chunks)}
        resumed = sum(len(chunks[k]) for k, idx in done.items() if idx is not None)
        bar = None
        if progress and rank == 0:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(mine), initial=resumed, unit="img", dynamic_ncols=True,
                       desc=f"features{f' (rank 0 of {world})' if world > 1 else ''}")
        workers = workers or _default_workers()
        ok = 0
        skipped = []
        with torch.inference_mode():
            for k, chunk in enumerate(chunks):
                if done[k] is not None:
                    records = [StoreRecord.from_dict(r) for r in done[k]["records"]]
                else:
                    shard = chunk_name(rank, k) + ".safetensors"
                    records, tensors = _compute_chunk(chunk, shard, config, teacher_fn, device,
                                                      workers, bar)
                    write_chunk(shard_dir, rank, k, records, tensors)
                ok += sum(r.ok for r in records)
                skipped += [(r.index, r.image_id, r.reason) for r in records if not r.ok]
        if bar is not None:
            bar.close()
        mine_summary = {"images": len(mine), "ok": ok, "skipped": skipped, "resumed": resumed,
                        "computed": len(mine) - resumed}
        parts = gather_summaries(mine_summary, world)
    finally:
        if created:
            dist.destroy_process_group()
    summary = {key: sum(p[key] for p in parts) for key in ("images", "ok", "resumed", "computed")}
    summary["skipped"] = [(i, r) for _, i, r in sorted(s for p in parts for s in p["skipped"])]
    summary.update(seconds=time.perf_counter() - start, store=store_path, world_size=world,
                   store_bytes=_folder_bytes(store_path))
    return summary


def _default_workers() -> int:
    """``min(4, usable cpus)``: decoding and resizing threads ahead of the teacher."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(4, cpus)


def _folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
