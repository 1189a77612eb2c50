"""Training data loading per image: the reference's per-step work vs each spar_fast data path.

Images: SA-1B-size JPEGs (a skimage photo upscaled to 1500x2250, saved at quality 90), each with
its own default SPAR augmentation; targets: SigLIP2 B/16 shape (C = 768) on the augmented grid.
Timed in-process with one thread, so ``images_per_s`` is per CPU core (a loader worker is a core).

Group ``loader ...`` (decode + augment + target read, per image):
* ``reference`` — the reference's step input: PNG decode of the stored pre-augmented image and an
  fp32 pickle load (written in setup; the product never loads pickles).
* ``cpu-pil`` / ``cpu-torchvision`` — stage ``cpu``: the worker decodes (Pillow / torchvision
  libjpeg-turbo), augments (float bilinear) and normalizes; target as a view of the mapped shard.
* ``worker-nvjpeg`` — what a worker does for a GPU run on an nvjpeg store: read the JPEG's bytes and
  map the target; decoding and augmentation happen on the GPU (``gpu-nvjpeg``, CUDA only: one chunk
  of all images through ``prepare_chunk``: batched nvJPEG, augment, normalize, target to fp32).
* ``worker-torchvision`` — a GPU run on a pil/torchvision store: the worker decodes, the GPU augments
  (``gpu-pixels``, CUDA only).
Group ``target read``: fp32 pickle (reference) vs fp16 / fp8 shard views decoded to fp32.
Group ``target hash``: candidate per-target integrity hashes (for store verification on read).
``extra_info["gpu_run_path"]`` names the path a GPU run takes.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from spar_fast.data.decode import available, default_decode
from spar_fast.store.codec import FP8, encode_target, read_stored_target, stored_tensors
from spar_fast.train.loader import StoreDataset, collate_chunk, prepare_chunk

from conftest import ON_GPU, pick, run_variant  # noqa: E402

SOURCE_HW = (1500, 2250)  # SA-1B images are 1500 px on the short side
N_IMAGES = pick(3, 8)
CHANNELS = 768
MEAN = STD = (0.5, 0.5, 0.5)
GPU_RUN_PATH = "stage device: workers read bytes, the GPU decodes (nvjpeg stores) and augments"


def sa1b_like_jpeg(path: str) -> None:
    """A skimage photo upscaled (bicubic) to 1500x2250, JPEG quality 90."""
    from skimage import data

    photo = Image.fromarray(data.astronaut()).resize((SOURCE_HW[1], SOURCE_HW[0]), Image.BICUBIC)
    photo.save(path, quality=90)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from spar_fast.jobs.extract import extract_features
    from spar_fast.store import FeatureStore

    root = tmp_path_factory.mktemp("loader_bench")
    os.makedirs(root / "img")
    sa1b_like_jpeg(str(root / "img" / "000.jpg"))
    for i in range(1, N_IMAGES):  # same pixels, other ids -> other augmentations
        os.link(root / "img" / "000.jpg", root / "img" / f"{i:03d}.jpg")
    # the store's metadata needs only these attributes; targets come from a stand-in teacher
    bb = SimpleNamespace(patch_size=16, window=512, feature_dim=CHANNELS, mean=MEAN, std=STD, name="bench")
    store = str(root / "store")
    extract_features(str(root / "img"), store, backbone=bb, augment="default", device="cpu", progress=False,
                     teacher_fn=lambda x: torch.randn(x.shape[1] // 16, x.shape[2] // 16, CHANNELS), workers=1)
    fs = FeatureStore(store)
    reference = []
    for rec in fs.records:  # the reference's files: pre-augmented PNG + fp32 pickle [1, h, w, C]
        png, pkl = str(root / f"{rec.image_id}.png"), str(root / f"{rec.image_id}.pkl")
        pixels = (fs.input_image(rec.image_id, check_source=False) * 255).round().byte().permute(1, 2, 0)
        Image.fromarray(pixels.numpy()).save(png)
        with open(pkl, "wb") as f:
            pickle.dump(fs.get(rec.image_id)[0].float()[None].numpy(), f)
        reference.append((png, pkl))
    fp8_path = str(root / "fp8.safetensors")
    from safetensors.torch import save_file

    save_file({k: v for rec in fs.records
               for k, v in stored_tensors(rec.key, encode_target(fs.get(rec.image_id)[0], FP8)).items()}, fp8_path)
    tokens = sum(r.grid_hw[0] * r.grid_hw[1] for r in fs.records) / len(fs.records)
    return dict(store=store, fs=fs, reference=reference, fp8=fp8_path, tokens=tokens)


def _per_core(benchmark, setup, group, variant, fn, **extra):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_variant(benchmark, fn, device=torch.device("cpu"), group=group, variant=variant,
                    rounds=pick(2, 5), warmup=1, images=N_IMAGES, mean_tokens=round(setup["tokens"]),
                    gpu_run_path=GPU_RUN_PATH, **extra)
    finally:
        torch.set_num_threads(threads)
    benchmark.extra_info["images_per_s_per_core"] = N_IMAGES / benchmark.stats.stats.median


LOADER_VARIANTS = ["reference", "cpu-pil", "cpu-torchvision", "worker-nvjpeg", "worker-torchvision"]


@pytest.mark.parametrize("variant", LOADER_VARIANTS)
def test_loader(benchmark, setup, variant):
    group = f"loader {SOURCE_HW[0]}x{SOURCE_HW[1]} JPEG q90 C{CHANNELS}"
    if variant == "reference":
        def run():
            for png, pkl in setup["reference"]:
                with Image.open(png) as im:
                    torch.from_numpy(np.asarray(im.convert("RGB"))).permute(2, 0, 1).float().div_(255)
                with open(pkl, "rb") as f:
                    torch.from_numpy(pickle.load(f))
        return _per_core(benchmark, setup, group, variant, run)
    stage, decode = variant.split("-")
    if decode != "pil" and not available("torchvision"):
        pytest.skip("torchvision cannot decode JPEGs here")
    ds = StoreDataset(setup["store"], MEAN, STD, decode=decode, stage="cpu" if stage == "cpu" else "device")
    _per_core(benchmark, setup, group, variant, lambda: [ds[i] for i in range(len(ds))])


@pytest.mark.skipif(not ON_GPU, reason="the GPU half of the device stage needs CUDA")
@pytest.mark.parametrize("variant", ["gpu-nvjpeg", "gpu-pixels"])
def test_loader_gpu_half(benchmark, setup, variant):
    decode = "nvjpeg" if variant == "gpu-nvjpeg" else "torchvision"
    ds = StoreDataset(setup["store"], MEAN, STD, decode=decode, stage="device")
    device = torch.device("cuda")
    chunk = collate_chunk([ds[i] for i in range(len(ds))])
    chunk = chunk._replace(images=[im._replace(data=im.data.pin_memory()) for im in chunk.images])
    run_variant(benchmark, lambda: prepare_chunk(chunk, MEAN, STD, device), device=device,
                group=f"loader GPU half {SOURCE_HW[0]}x{SOURCE_HW[1]} JPEG", variant=variant,
                images=N_IMAGES, default_decode_here=default_decode(device))
    benchmark.extra_info["images_per_s"] = N_IMAGES / benchmark.stats.stats.median


@pytest.mark.parametrize("variant", ["reference", "fp16", "fp8"])
def test_target_read(benchmark, setup, variant):
    fs = setup["fs"]
    shard_of = {r.key: os.path.join(fs.path, "shards", r.shard) for r in fs.records}
    if variant == "reference":
        def run():
            for _, pkl in setup["reference"]:
                with open(pkl, "rb") as f:
                    torch.from_numpy(pickle.load(f))
    else:
        paths = shard_of if variant == "fp16" else {k: setup["fp8"] for k in shard_of}

        def run():
            for key, path in paths.items():
                read_stored_target(path, key).decode(torch.float32)
    _per_core(benchmark, setup, f"target read C{CHANNELS} (to fp32)", variant, run)


HASHES = {"sha256": lambda b: hashlib.sha256(b).digest(), "blake2b": lambda b: hashlib.blake2b(b).digest(),
          "crc32": zlib.crc32}


@pytest.mark.parametrize("variant", list(HASHES))
def test_target_hash(benchmark, setup, variant):
    fs = setup["fs"]
    views = [memoryview(fs.get(r.image_id, decoded=False)[0].data.view(torch.uint8).numpy()) for r in fs.records]
    digest = HASHES[variant]
    _per_core(benchmark, setup, f"target hash fp16 C{CHANNELS}", variant, lambda: [digest(v) for v in views],
              mbytes=round(sum(v.nbytes for v in views) / 1e6, 2))
    benchmark.extra_info["gb_per_s"] = sum(v.nbytes for v in views) / benchmark.stats.stats.median / 1e9

