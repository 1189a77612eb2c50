"""Distillation training throughput (images/s): the trainer's own step vs a reference-style step.

Group ``train step ...`` (inputs already on the device, so only the step is timed; one epoch over
the same images per round, last 2 blocks trainable, AdamW):
* ``reference`` — the reference's work per image: batch 1, a single-image forward, MSE, fp16
  autocast + GradScaler on GPU (fp32 on CPU), AdamW, and the per-step loss read (``.item()``)
  that a per-step log makes.
* ``batch1`` — :class:`spar_fast.train.step.TrainStep` (the trainer's step) with one image per step:
  packed forward path, frozen prefix without activations, fused AdamW, no host sync (losses are
  read once at the end, as the trainer does every ``log_every`` steps).
* ``packed`` — the same step on chunks packed under a token budget (the recommended GPU setting;
  loss = mean of per-image MSEs, as batch 1).
Group ``train epoch ...``: the trainer's loader (GPU: device stage, workers read the JPEG bytes and
nvJPEG decodes; CPU: cpu stage, torchvision decode) + ``device_chunks`` prefetch + ``TrainStep``,
packed: images/s with data loading.
GPU: SigLIP2 B/16-512 at random init on SA-1B-like augmented sizes, bf16 (``mfu`` from SPEC §7,
benchmarks/flops.py). CPU: the tiny SigLIP2-family config on small images, fp32.
"""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import spar_fast as sf
from spar_fast.data.decode import available
from spar_fast.train.loader import StoreDataset, collate_chunk, device_chunks, make_loader, prepare_chunk
from spar_fast.train.sampler import PackingSampler
from spar_fast.train.step import TrainStep, make_optimizer
from spar_fast.train.unfreeze import apply_unfreeze

from conftest import ON_GPU, pick, sync  # noqa: E402
from flops import mfu, train_flop  # noqa: E402

if ON_GPU:
    BACKBONE, N_IMAGES, SOURCE_HW, AUGMENT, BUDGET, PRECISION = (
        "siglip2-b16-512", pick(8, 32), (1500, 2250), "default", 16384, "bf16")
else:
    BACKBONE, N_IMAGES, SOURCE_HW, AUGMENT, BUDGET, PRECISION = (
        "siglip2-tiny", pick(3, 6), (60, 80), "none", 4096, "fp32")
DEVICE = torch.device("cuda" if ON_GPU else "cpu")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A store of N photos (stand-in teacher: random targets of the right shape; the step's cost
    does not depend on their values), the backbone, and the items on the device."""
    from skimage import data

    from spar_fast.jobs.extract import extract_features

    root = tmp_path_factory.mktemp("train_bench")
    os.makedirs(root / "img")
    photo = Image.fromarray(data.astronaut()).resize((SOURCE_HW[1], SOURCE_HW[0]), Image.BICUBIC)
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):  # fresh noise per image so JPEGs differ
        noisy = np.clip(np.asarray(photo).astype(np.int16) + rng.integers(-8, 9, (*SOURCE_HW, 3)), 0, 255)
        Image.fromarray(noisy.astype(np.uint8)).save(root / "img" / f"{i:03d}.jpg", quality=90)
    bb = sf.Backbone.from_pretrained(BACKBONE, weights="random")

    def teacher(image):
        h, w = bb.grid(image.shape[1], image.shape[2])
        return torch.randn(h, w, bb.feature_dim)

    store = str(root / "store")
    extract_features(str(root / "img"), store, backbone=bb, stride=24, augment=AUGMENT, device="cpu",
                     teacher_fn=teacher, progress=False, workers=1)
    trainable = apply_unfreeze("blk_-1,blk_-2", bb)
    bb.to(DEVICE).train()
    ds = StoreDataset(store, bb.mean, bb.std, decode="pil", stage="cpu")
    items = [prepare_chunk(collate_chunk([ds[i]]), bb.mean, bb.std, DEVICE) for i in range(len(ds))]
    images = [im[0] for im, _, _ in items]
    targets = [t[0] for _, t, _ in items]
    return dict(store=store, bb=bb, trainable=trainable, images=images, targets=targets, tokens=ds.tokens())


def _params(bb):
    return [p for p in bb.model.parameters() if p.requires_grad]


def _reference_epoch(s, opt, scaler):
    bb = s["bb"]
    for x, t in zip(s["images"], s["targets"]):
        with torch.autocast(DEVICE.type, dtype=torch.float16, enabled=ON_GPU):
            out = bb(x[None])[0]
        loss = F.mse_loss(out.float(), t)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        loss.item()  # the reference logs the loss every step


def _step_epoch(s, step, plan):
    for chunks in plan:
        n = sum(len(c) for c in chunks)
        step(([[s["images"][i] for i in c], [s["targets"][i] for i in c]] for c in chunks), n, 2e-5)
    step.read()  # the trainer's log read: one sync per log interval


def _record(benchmark, s, variant, budget):
    seconds = benchmark.stats.stats.median
    benchmark.extra_info.update(variant=variant, device=str(DEVICE), images=N_IMAGES, tokens=sum(s["tokens"]),
                                budget=budget, precision=PRECISION if variant != "reference" else
                                ("fp16" if ON_GPU else "fp32"), images_per_s=N_IMAGES / seconds)
    if ON_GPU:
        benchmark.extra_info["mfu"] = mfu(train_flop(s["bb"], s["trainable"].first_block, s["tokens"]), seconds)


@pytest.mark.parametrize("variant", ["reference", "batch1", "packed"])
def test_train_step(benchmark, setup, variant):
    s = setup
    bb = s["bb"]
    params = _params(bb)
    if variant == "reference":
        opt = torch.optim.AdamW(params, lr=2e-5, weight_decay=1e-4)
        scaler = torch.amp.GradScaler(DEVICE.type, enabled=ON_GPU)
        run = lambda: _reference_epoch(s, opt, scaler)  # noqa: E731
    else:
        budget = BUDGET if variant == "packed" else None
        step = TrainStep(bb, params, make_optimizer(params, 2e-5, 1e-4), torch.amp.GradScaler(DEVICE.type, enabled=False),
                         s["trainable"].first_block, PRECISION)
        plan = PackingSampler(s["tokens"], budget, seed=0).epoch_plan(0)
        run = lambda: _step_epoch(s, step, plan)  # noqa: E731
    benchmark.group = f"train step {BACKBONE} {N_IMAGES} images"
    run()  # warm-up: allocator, kernels, autotuning

    def timed():
        run()
        sync()

    benchmark.pedantic(timed, rounds=pick(2, 5), iterations=1)
    _record(benchmark, s, variant, BUDGET if variant == "packed" else None)


def test_train_epoch(benchmark, setup):
    """Data loading + step, as the trainer runs them (loader, prefetch, step)."""
    s = setup
    bb = s["bb"]
    params = _params(bb)
    # GPU: the path that feeds 600 images/s (workers read bytes, nvJPEG decodes); CPU: the fastest CPU decode
    decode = next(d for d in ("nvjpeg", "torchvision", "pil") if available(d, DEVICE) and (ON_GPU or d != "nvjpeg"))
    stage = "device" if ON_GPU else "cpu"
    ds = StoreDataset(s["store"], bb.mean, bb.std, decode=decode, stage=stage)
    sampler = PackingSampler(ds.tokens(), BUDGET, seed=0)
    step = TrainStep(bb, params, make_optimizer(params, 2e-5, 1e-4), torch.amp.GradScaler(DEVICE.type, enabled=False),
                     s["trainable"].first_block, PRECISION)
    workers = min(15, (os.cpu_count() or 2) - 1) if ON_GPU else 0

    def run():
        plan = sampler.epoch_plan(0)
        loader = make_loader(ds, [c for chunks in plan for c in chunks], workers, pin_memory=ON_GPU)
        chunks = device_chunks(loader, lambda c: prepare_chunk(c, bb.mean, bb.std, DEVICE), DEVICE)
        for step_chunks in plan:
            step((next(chunks)[:2] for _ in step_chunks), sum(len(c) for c in step_chunks), 2e-5)
        step.read()

    benchmark.group = f"train epoch {BACKBONE} {N_IMAGES} images (loader + step)"
    run()

    def timed():
        run()
        sync()

    benchmark.pedantic(timed, rounds=pick(1, 3), iterations=1)
    _record(benchmark, s, "packed+loader", BUDGET)
    benchmark.extra_info.update(decode=decode, stage=stage, workers=workers)
