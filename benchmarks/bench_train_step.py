"""Distillation training throughput (images/s), reference recipe vs the packed fast path.

Variants (group ``train ...``, same images, last 2 blocks trainable, AdamW):
* ``reference`` — the official execution: one image per step, image decoded and augmented in
  the training process, target read from an fp32 pickle, single-image forward, fp16 autocast +
  GradScaler on GPU (fp32 on CPU).
* ``fast`` — the trainer's path: targets from the store's shards, images rebuilt by DataLoader
  workers (pinned memory on GPU), images packed under a token budget into one forward
  (``forward_packed``, frozen prefix without activations), bf16 autocast on GPU.
Group ``loader ...``: the data loading alone (``reference``: in-process pickle + decode;
``fast``: DataLoader workers over the store), images/s.
GPU: SigLIP2 B/16-512 (random init) on SA-1B-like images (1500x2250 JPEGs, default SPAR
augmentation: 512..2048 px sides); MFU from SPEC §7 (frozen prefix forward + 3x forward of the
trainable blocks). CPU: the tiny SigLIP2-family config, a few images, so it runs in seconds.
Targets come from a cheap stand-in teacher (random features of the right shape): the step cost
does not depend on their values.
"""
import os
import pickle
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import spar_fast as sf
from spar_fast.data import normalize
from spar_fast.train.loader import StoreDataset, make_loader
from spar_fast.train.sampler import PackingSampler
from spar_fast.train.trainer import step_loss
from spar_fast.train.unfreeze import apply_unfreeze

from conftest import ON_GPU, QUICK, pick, sync  # noqa: E402

PEAK_BF16 = 989e12  # H100/H200 SXM dense bf16 FLOP/s (datasheet), for MFU
if ON_GPU:
    BACKBONE, N_IMAGES, SOURCE_HW, AUGMENT, BUDGET = "siglip2-b16-512", pick(8, 32), (1500, 2250), "default", 16384
else:
    BACKBONE, N_IMAGES, SOURCE_HW, AUGMENT, BUDGET = "siglip2-tiny", pick(3, 6), (60, 80), "none", 4096


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A store + fp32 pickles of the same targets; returns a dict of paths and the backbone."""
    from spar_fast.store import FeatureStore, extract_features

    root = tmp_path_factory.mktemp("train_bench")
    rng = np.random.default_rng(0)
    os.makedirs(root / "img")
    for i in range(N_IMAGES):
        pixels = rng.integers(0, 256, (*SOURCE_HW, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "img" / f"{i:03d}.jpg", quality=90)
    device = "cuda" if ON_GPU else "cpu"
    bb = sf.Backbone.from_pretrained(BACKBONE, pretrained=False)

    def teacher(image):  # stand-in teacher: random features on the student's grid
        h, w = bb.grid(image.shape[1], image.shape[2])
        return torch.randn(h, w, bb.feature_dim)

    store = str(root / "store")
    extract_features(str(root / "img"), store, backbone=bb, stride=24, augment=AUGMENT, device="cpu",
                     teacher_fn=teacher, progress=False)
    fs = FeatureStore(store)
    os.makedirs(root / "pkl")
    for rec in fs.records:  # the reference's target format: one fp32 pickle [1, h, w, C] per image
        with open(root / "pkl" / f"{rec.image_id}.pkl", "wb") as f:
            pickle.dump(fs.get(rec.image_id)[0].float()[None], f)
    trainable = apply_unfreeze("blk_-1,blk_-2", bb)
    bb.to(device).train()
    return dict(store=store, pkl=str(root / "pkl"), bb=bb, trainable=trainable, device=torch.device(device),
                records=fs.records, fs=fs)


def train_flop(bb, first_block: int, tokens: list[int]) -> float:
    """SPEC §7: per block and image 24·d²·n + 4·n²·d forward; trainable blocks count 3x."""
    d = bb.feature_dim if bb.family == "siglip2" else bb.model.visual.transformer.width
    per_block = sum(24 * d * d * n + 4 * n * n * d for n in tokens)
    return per_block * (first_block + 3 * (bb.num_blocks - first_block))


def _reference_epoch(s, opt, scaler):
    bb, device, fs = s["bb"], s["device"], s["fs"]
    for rec in s["records"]:
        image = normalize(fs.input_image(rec.image_id, check_source=False), bb.mean, bb.std)
        with open(os.path.join(s["pkl"], f"{rec.image_id}.pkl"), "rb") as f:
            target = pickle.load(f)[0].to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=ON_GPU):
            out = bb(image.to(device)[None])[0]
        loss = F.mse_loss(out.float(), target)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()


def _fast_epoch(s, opt, sampler, dataset, workers):
    bb, device = s["bb"], s["device"]
    plan = sampler.epoch_plan(0)
    loader = iter(make_loader(dataset, [c for step in plan for c in step], workers, pin_memory=ON_GPU))
    for step in plan:
        n = sum(len(c) for c in step)
        opt.zero_grad(set_to_none=True)
        for _ in step:
            images, targets, _ = next(loader)
            step_loss(bb, images, targets, s["trainable"].first_block, n, device,
                      "bf16" if ON_GPU else "fp32").backward()
        opt.step()


@pytest.mark.parametrize("variant", ["reference", "fast"])
def test_train_step(benchmark, setup, variant):
    s = setup
    bb = s["bb"]
    params = [p for p in bb.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-5, weight_decay=1e-4)
    tokens = [r.grid_hw[0] * r.grid_hw[1] for r in s["records"]]
    if variant == "reference":
        scaler = torch.amp.GradScaler(s["device"].type, enabled=ON_GPU)
        run = lambda: _reference_epoch(s, opt, scaler)  # noqa: E731
    else:
        dataset = StoreDataset(s["store"], bb.mean, bb.std)
        sampler = PackingSampler(tokens, BUDGET, seed=0)
        workers = 4 if ON_GPU else 0  # CPU: a worker process would compete for the same cores
        run = lambda: _fast_epoch(s, opt, sampler, dataset, workers)  # noqa: E731
    benchmark.group = f"train {BACKBONE} {len(tokens)} images"
    benchmark.extra_info.update(variant=variant, device=str(s["device"]), quick=QUICK, images=len(tokens),
                                tokens=sum(tokens), budget=BUDGET if variant == "fast" else None)
    run()  # warm-up: allocator, kernels, worker start-up paths

    def timed():
        run()
        sync()

    benchmark.pedantic(timed, rounds=pick(2, 3), iterations=1)
    seconds = benchmark.stats.stats.median
    benchmark.extra_info["images_per_s"] = len(tokens) / seconds
    if ON_GPU:
        benchmark.extra_info["mfu"] = train_flop(bb, s["trainable"].first_block, tokens) / seconds / PEAK_BF16


@pytest.mark.parametrize("variant", ["reference", "fast"])
def test_loader(benchmark, setup, variant):
    s = setup
    bb = s["bb"]
    if variant == "reference":
        def run():
            for rec in s["records"]:
                normalize(s["fs"].input_image(rec.image_id, check_source=False), bb.mean, bb.std)
                with open(os.path.join(s["pkl"], f"{rec.image_id}.pkl"), "rb") as f:
                    pickle.load(f)
    else:
        dataset = StoreDataset(s["store"], bb.mean, bb.std)
        workers = min(4, os.cpu_count() or 1) if ON_GPU else 0  # CPU: in-process, as training there

        def run():
            for _ in make_loader(dataset, [[i] for i in range(len(dataset))], workers, pin_memory=ON_GPU):
                pass
    benchmark.group = f"loader {BACKBONE} {len(s['records'])} images"
    benchmark.extra_info.update(variant=variant, quick=QUICK, images=len(s["records"]))
    t0 = time.perf_counter()
    benchmark.pedantic(run, rounds=pick(2, 3), iterations=1)
    benchmark.extra_info["images_per_s"] = len(s["records"]) / benchmark.stats.stats.median
    benchmark.extra_info["wall_s"] = time.perf_counter() - t0
