"""The features job: images -> SPAR augmentation -> sliding-window teacher -> feature store.

Deterministic and resumable (layout in ``spar_fast.store.layout``): the store's manifest fixes
every chunk (its images and their order) before any target is computed; a chunk whose index and
shard are complete and match their checksums is kept, any other chunk is computed from scratch.
Every image's augmentation comes from ``(seed, image id)`` only. A resumed run therefore writes
the same bytes as an uninterrupted one. A rerun with more images appends them in new chunks.

Bad input never stops the job: a file that is not a regular file, not an image, damaged, or whose
source or augmented size exceeds ``max_pixels`` (checked from the header, before decoding) is
recorded as skipped with its reason. One writer at a time (``spar_fast.lock`` on the store).
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist

from ..atomic import remove_temp_files
from ..data.decode import DECODES, LEGACY_DECODE, decode_rgb
from ..data.augment import (MIN_SIDE, MULTIPLE, VARIANTS, apply_augment, image_seed, normalize,
                            sample_augment)
from ..data.images import (DEFAULT_MAX_PIXELS, ImageItem, ImageLoadError, check_image_size,
                           list_images, read_rgb, read_image_size, source_stat)
from ..data.members import parse_member
from ..errors import UserError
from ..lock import exclusive_lock
from ..runtime import Weights, resolve_device
from ..store.check import check_chunk
from ..store.codec import StoredTarget, encode_target, stored_tensors, tensor_key
from ..store.layout import DTYPES, SHARD_DIR, source_digest, target_digest
from ..store.verify import SHARD_FILES, STORE_FILES
from ..store.records import TEACHERS, Chunk, StoreConfig, StoreRecord
from ..store.upgrade import upgrade_if_format_1
from ..store.writer import open_store, plan_chunks, write_chunk
from ..teacher.window_plan import upsample_factor
from .extract_dist import all_agree, dist_env, gather_summaries, join_group

MAX_UPSAMPLE = 4  # stride rule: stitch cells of at least patch/4 px (canvas <= 16x the target grid)


def load_teacher(name: str, weights: Weights):
    """The registry backbone ``name`` with ``weights`` (``random:SEED``: a seeded init that
    every process and a later ``train`` rebuild identically)."""
    from ..backbones import Backbone

    return Backbone.from_pretrained(name, weights=weights)


def _backbone(backbone, weights, device):
    """``(module, name, weights-as-recorded)`` for a registry name or a Backbone object."""
    if isinstance(backbone, str):
        bb = load_teacher(backbone, weights)
        return bb.to(device).eval(), backbone, str(weights)
    for attr in ("patch_size", "window", "feature_dim", "mean", "std"):
        if not hasattr(backbone, attr):
            raise UserError(f"backbone object has no {attr!r}; pass a name or a spar_fast.Backbone")
    if isinstance(backbone, torch.nn.Module):
        backbone = backbone.to(device).eval()
    return backbone, getattr(backbone, "name", None) or type(backbone).__name__, None


def check_stride(stride: int, window: int, patch: int) -> None:
    """The stride rule: ``1 <= stride <= window`` (windows overlap or touch, so every target cell
    is covered) and the stitch cell ``patch / upsample_factor(patch, stride)`` is at least
    ``patch / MAX_UPSAMPLE`` px (P=16: strides that are multiples of 4; the canvas holds
    ``upsample_factor**2`` cells per target position)."""
    if not isinstance(stride, int) or not 1 <= stride <= window:
        raise UserError(f"stride must be an integer in [1, {window}] (the window): a larger stride "
                        f"leaves gaps between windows; got {stride!r}")
    if upsample_factor(patch, stride) > MAX_UPSAMPLE:
        raise UserError(f"stride {stride} needs {patch // upsample_factor(patch, stride)}-px stitch "
                        f"cells; use a multiple of {patch // MAX_UPSAMPLE} (patch {patch})")


def _store_config(bb, name, weights, opts: "ExtractOptions") -> StoreConfig:
    multiple = math.lcm(MULTIPLE, int(bb.patch_size))
    min_side = -(-max(round(MIN_SIDE * opts.augment_scale), int(bb.window)) // multiple) * multiple
    return StoreConfig(backbone=name, weights=weights, stride=opts.stride, augment=opts.augment,
                       dtype=opts.dtype, seed=opts.seed, shard_size=opts.shard_size,
                       patch_size=int(bb.patch_size), window=int(bb.window),
                       feature_dim=int(bb.feature_dim), mean=tuple(float(v) for v in bb.mean),
                       std=tuple(float(v) for v in bb.std), min_side=min_side, multiple=multiple,
                       decode=opts.decode, augment_scale=float(opts.augment_scale),
                       teacher=opts.teacher)


class _Prepared:
    """A decoded, augmented, normalized image (``image`` [3, H, W] fp32) or a skip reason."""

    def __init__(self, record: StoreRecord, image: torch.Tensor | None = None):
        self.record, self.image = record, image


def _prepare(item: ImageItem, position: int, config: StoreConfig, max_pixels: int | None) -> _Prepared:
    """Check, decode, augment and normalize one image; any problem becomes a skipped record."""
    base = dict(image_id=item.id, index=position, source=item.path)
    try:
        size, mtime_ns = source_stat(item.path)  # a tar member: its size, the archive's mtime
        source = dict(source_bytes=size, source_mtime_ns=mtime_ns, source_checksum=source_digest(item.path))
        H, W = read_image_size(item.path)
        check_image_size((H, W), max_pixels, what="source image")
        params = sample_augment(H, W, image_seed(config.seed, item.id), config.augment,
                                min_side=config.min_side, multiple=config.multiple,
                                scale=config.augment_scale)
        check_image_size(params.final_hw, max_pixels, what="augmented image")
        decode = config.decode
        if decode == LEGACY_DECODE:
            img = read_rgb(item.path, max_pixels=max_pixels)
        else:  # the same path training decodes with (spar_fast/data/decode.py)
            img = decode_rgb(item.path, decode, "cuda" if decode == "nvjpeg" else "cpu")
    except (UserError, OSError) as exc:
        reason = str(exc).split(": ", 1)[-1] if isinstance(exc, ImageLoadError) else str(exc)
        if isinstance(exc, OSError):
            reason = f"unreadable file ({exc.strerror})"
        return _Prepared(StoreRecord(status="skipped", reason=reason, **base))
    x = normalize(apply_augment(img, params), config.mean, config.std)
    rec = StoreRecord(status="ok", augment=params, image_hw=params.final_hw, **source, **base)
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


def _target(teacher_fn, prepared: _Prepared, config: StoreConfig, device) -> StoredTarget:
    """Teacher output for one prepared image, checked, encoded in the stored dtype on the CPU."""
    x = prepared.image.to(device, non_blocking=True)
    out = teacher_fn(x)
    H, W = prepared.record.image_hw
    P = config.patch_size
    want = (H // P, W // P, config.feature_dim)
    if tuple(out.shape) != want:
        raise RuntimeError(f"teacher returned {tuple(out.shape)} for {prepared.record.image_id!r}, "
                           f"expected {want}")
    stored = encode_target(out.detach().cpu(), config.dtype)
    if not torch.isfinite(stored.data.float()).all():
        hint = " (exceeds the fp16 range; use --dtype bf16 or fp32)" if torch.isfinite(out).all() else ""
        raise UserError(f"non-finite teacher features for {prepared.record.image_id!r}{hint}")
    return stored


def _compute_chunk(chunk: Chunk, config: StoreConfig, teacher_fn, device, workers, max_pixels, bar):
    """Records and ``{key: target}`` of one manifest chunk."""
    records, tensors = [], {}
    shard = chunk.name + ".safetensors"
    args = [(ImageItem(i, path), pos, config, max_pixels) for i, path, pos in chunk.items]
    for prepared in _prefetch(_prepare, args, workers):
        rec = prepared.record
        if rec.ok:
            stored = _target(teacher_fn, prepared, config, device)
            rec = replace(rec, grid_hw=tuple(stored.data.shape[:2]), channels=int(stored.data.shape[2]),
                          dtype=config.dtype, shard=shard, key=tensor_key(rec.image_id, rec.index),
                          checksum=target_digest(stored))
            tensors.update(stored_tensors(rec.key, stored))
        records.append(rec)
        if bar is not None:
            bar.update(1)
    return records, tensors


@dataclass(frozen=True)
class ExtractOptions:
    """The settings of a features run. Recorded in ``store.json`` (a rerun with other values is
    an error): ``stride`` (:func:`check_stride`), ``augment`` ("default" | "extended" | "none"),
    ``dtype`` ("fp16" | "bf16" | "fp32" | "fp8_e4m3"), ``seed``, ``shard_size`` (images per
    chunk), ``decode`` (image decode path "pil" | "torchvision" | "nvjpeg", docs/DATAPATH.md, so
    training decodes the same pixels). How the job runs: ``device`` (None / "auto":
    ``cuda:LOCAL_RANK`` if available, else CPU; "cpu", "cuda", "cuda:N"), ``limit`` (only the first
    images), ``workers`` (threads decoding and augmenting ahead of the teacher; default
    min(4, cpus)), ``max_pixels`` (images whose source or augmented size exceeds it are skipped;
    None: no limit), ``progress`` (a progress bar on rank 0). ``augment_scale`` (recorded)
    multiplies the augmentation's sizes, the RandomResize scale and the 512-pixel minimum side
    (1: SPEC §3; a model with a 128-pixel window, the synthetic world's, uses a scale below 1).
    ``teacher`` (recorded): ``sliding`` (SPEC §2, at ``stride``) or ``single`` (one single pass:
    the targets of multi-resolution distillation, docs/SCHEMES.md)."""
    stride: int = 24
    augment: str = "default"
    augment_scale: float = 1.0
    teacher: str = "sliding"
    dtype: str = "fp16"
    seed: int = 0
    shard_size: int = 32
    decode: str = LEGACY_DECODE
    device: str | torch.device | None = None
    limit: int | None = None
    workers: int | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    progress: bool = True

    def check(self) -> None:
        """One-line ``UserError`` for a value out of its range (the stride is checked against the
        backbone later, :func:`check_stride`)."""
        for name, allowed in (("augment", VARIANTS), ("dtype", DTYPES), ("decode", DECODES),
                              ("teacher", TEACHERS)):
            if getattr(self, name) not in allowed:
                raise UserError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name, low in (("shard_size", 1), ("seed", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise UserError(f"{name} must be an integer >= {low}, got {value!r}")
        if not (isinstance(self.augment_scale, (int, float)) and 0 < self.augment_scale <= 4):
            raise UserError(f"augment scale must be a number in (0, 4], got {self.augment_scale!r}")
        for name in ("limit", "max_pixels"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise UserError(f"{name} must be a positive integer, got {value!r}")


def extract_features(images, store_path, backbone="siglip2-b16-512", weights="hub",
                     options: ExtractOptions | None = None, *, teacher_fn=None, **option_fields) -> dict:
    """Compute teacher targets for ``images`` into the feature store at ``store_path``.

    Args:
        images: a directory, an image-list file, or a list of paths / ``(id, path)`` pairs
            (:func:`spar_fast.data.list_images`). Images the store already holds (same id) are
            kept; the others are appended.
        backbone: a registry name, loaded with ``weights`` (``hub`` (default), ``random[:SEED]``
            or a file; :class:`spar_fast.runtime.Weights`), or a Backbone object
            (``patch_size``, ``window``, ``feature_dim``, ``mean``, ``std``).
        options: an :class:`ExtractOptions`; its fields may also be given as keywords
            (``stride=``, ``dtype=``, ``device=``, ``limit=``, ...).
        teacher_fn: ``normalized image [3, H, W] -> [H/P, W/P, C]``; default
            ``teacher_features(backbone, image, stride)``.
    Under torchrun each rank computes the chunks of rank ``rank`` (new images: ``rank::world``).

    Returns the summary of the whole run (all ranks): ``images`` (all the store lists), ``ok``
    (targets held), ``skipped`` (list of ``(image_id, reason)``), ``computed`` (targets
    computed by this run), ``resumed`` (images found done), ``seconds``, ``store_bytes``,
    ``store``, ``world_size``.
    """
    start = time.perf_counter()
    opts = replace(options or ExtractOptions(), **option_fields)
    opts.check()
    rank, world, local_rank = dist_env()
    device = resolve_device(opts.device, local_rank if world > 1 else None)
    items = list_images(images)
    items = [ImageItem(it.id, it.path if parse_member(it.path) else os.path.abspath(it.path))
             for it in items[:opts.limit]]
    bb, name, recorded_weights = _backbone(backbone, Weights.parse(weights), device)
    check_stride(opts.stride, int(bb.window), int(bb.patch_size))
    if teacher_fn is None and opts.teacher == "single":
        from ..backbones import dense_features

        def teacher_fn(x):
            return dense_features(bb, x, precision="auto").float()
    elif teacher_fn is None:
        from ..teacher import teacher_features

        def teacher_fn(x):
            return teacher_features(bb, x, stride=opts.stride)
    config = _store_config(bb, name, recorded_weights, opts)
    store_path = os.fspath(store_path)
    created = join_group(world)
    try:
        with contextlib.ExitStack() as stack:
            _lock_store(stack, store_path, rank, world)
            shard_dir = open_store(store_path, config)
            chunks = plan_chunks(store_path, items, opts.shard_size, world, write=rank == 0)
            mine = [c for c in chunks if c.rank % world == rank]
            counts = _run_chunks(mine, shard_dir, config, teacher_fn, device,
                                 opts.workers or _default_workers(), opts.max_pixels,
                                 opts.progress and rank == 0)
            parts = gather_summaries(counts, world)
            if rank == 0:
                remove_temp_files(shard_dir, SHARD_FILES)
    finally:
        if created:
            dist.destroy_process_group()
    summary = {key: sum(p[key] for p in parts) for key in ("images", "ok", "resumed", "computed")}
    summary["skipped"] = [(i, r) for _, i, r in sorted(s for p in parts for s in p["skipped"])]
    summary.update(seconds=time.perf_counter() - start, store=store_path, world_size=world,
                   store_bytes=_folder_bytes(store_path))
    return summary


def _lock_store(stack: contextlib.ExitStack, path: str, rank: int, world: int) -> None:
    """Rank 0 takes the store's writer lock into ``stack``, removes temporary files of killed
    writes and upgrades a format-1 store, before any rank writes; every rank stops if that
    failed."""
    failure = None
    if rank == 0:
        try:
            stack.enter_context(exclusive_lock(path, "feature store"))
            remove_temp_files(path, STORE_FILES)
            remove_temp_files(os.path.join(path, SHARD_DIR), SHARD_FILES)
            upgrade_if_format_1(path)
        except UserError as exc:
            failure = exc
    if not all_agree(failure is None, world):
        raise failure or UserError(f"{path}: rank 0 could not take the store's writer lock")


def _run_chunks(chunks, shard_dir, config, teacher_fn, device, workers, max_pixels, progress) -> dict:
    """Compute every chunk of ``chunks`` that is not done (``store.check.check_chunk``: the same
    check as ``verify``, so whatever it reports as damaged or changed is recomputed here); this
    process's counts. ``computed`` counts images whose target this run computed."""
    checks = {c.name: check_chunk(shard_dir, c, config) for c in chunks}
    total = sum(len(c.items) for c in chunks)
    resumed = sum(len(c.items) for c in chunks if checks[c.name].done)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, initial=resumed, unit="img", dynamic_ncols=True, desc="features")
    ok = computed = 0
    skipped = []
    with torch.inference_mode():
        for chunk in chunks:
            check = checks[chunk.name]
            if check.done:
                records = list(check.index.records)
            else:
                records, tensors = _compute_chunk(chunk, config, teacher_fn, device, workers,
                                                  max_pixels, bar)
                write_chunk(shard_dir, chunk.name, records, tensors)
                computed += sum(r.ok for r in records)
            ok += sum(r.ok for r in records)
            skipped += [(r.index, r.image_id, r.reason) for r in records if not r.ok]
    if bar is not None:
        bar.close()
    return {"images": total, "ok": ok, "skipped": skipped, "resumed": resumed, "computed": computed}


def _default_workers() -> int:
    """``min(4, usable cpus)``: decoding and resizing threads ahead of the teacher."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(4, cpus)


def _folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
