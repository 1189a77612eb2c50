"""Decode paths and the training loader: same pixels as extraction, stages agree, prefetch order."""
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from spar_fast.data import read_rgb
from spar_fast.data.decode import (EncodedImage, available, decode_rgb, decode_signature, default_decode,
                                   read_encoded, training_decode)
from spar_fast.data.images import ImageLoadError
from spar_fast.errors import UserError
from spar_fast.train.loader import (StoreDataset, collate_chunk, device_chunks, make_loader,
                                    prepare_chunk)

needs_torchvision = pytest.mark.skipif(not available("torchvision"), reason="torchvision cannot decode here")


def _photo(h, w, seed):
    """A photo-like image: a skimage photo crop resized, plus fresh noise (not a flat test card)."""
    from skimage import data

    rng = np.random.default_rng(seed)
    base = Image.fromarray(data.astronaut()).resize((w, h), Image.BILINEAR)
    noisy = np.asarray(base).astype(np.int16) + rng.integers(-12, 13, (h, w, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _save(path, pixels, **kw):
    Image.fromarray(pixels).save(path, **kw)
    return str(path)


@needs_torchvision
@pytest.mark.parametrize("hw, subsampling", [((97, 131), 2), ((64, 48), 0), ((33, 515), 1)])
def test_torchvision_path_gives_pillow_pixels(tmp_path, hw, subsampling):
    """Plain JPEGs (odd sizes, every chroma subsampling): torchvision's libjpeg-turbo decode equals
    Pillow's bit for bit, so ``torchvision`` only changes speed."""
    seed = int(torch.randint(0, 10**6, ()))
    path = _save(tmp_path / "a.jpg", _photo(*hw, seed), quality=90, subsampling=subsampling)
    enc = read_encoded(path, "torchvision")
    assert enc.kind == "pixels"
    assert np.array_equal(enc.data.numpy(), read_rgb(path))
    gray = _save(tmp_path / "g.jpg", _photo(*hw, seed)[..., 0], quality=85)
    assert np.array_equal(decode_rgb(gray, "torchvision").numpy(), read_rgb(gray))


@needs_torchvision
def test_odd_files_fall_back_to_pillow(tmp_path):
    pixels = _photo(40, 60, 1)
    png = _save(tmp_path / "a.png", pixels)
    assert np.array_equal(decode_rgb(png, "torchvision").numpy(), pixels)
    # EXIF-rotated JPEG: decoded by read_rgb (upright), for every path
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = str(tmp_path / "r.jpg")
    Image.fromarray(pixels).save(rotated, quality=90, exif=exif.tobytes())
    for decode in ("torchvision", "nvjpeg"):
        enc = read_encoded(rotated, decode)
        assert enc.kind == "pixels" and np.array_equal(enc.data.numpy(), read_rgb(rotated))
    # nvjpeg path: a plain JPEG travels as its bytes
    plain = _save(tmp_path / "p.jpg", pixels, quality=90)
    enc = read_encoded(plain, "nvjpeg")
    assert enc.kind == "jpeg" and bytes(enc.data.numpy()) == open(plain, "rb").read()
    # truncated JPEG: the same one-line error as read_rgb
    data = open(plain, "rb").read()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="truncated"):
        read_encoded(str(tmp_path / "t.jpg"), "torchvision")


# a store.json written before the decode path was recorded
STORE_JSON = {"format": "spar_fast.store/2", "backbone": "siglip2-tiny", "weights": "random:0",
              "stride": 24, "augment": "default", "dtype": "fp16", "seed": 0, "shard_size": 32,
              "patch_size": 16, "window": 64, "feature_dim": 32, "mean": [0.5] * 3, "std": [0.5] * 3,
              "min_side": 512, "multiple": 16}


def test_store_config_round_trip():
    """The typed store.json: the same JSON back (decode left out when it is the original path),
    keys of older versions kept, a missing field named."""
    from spar_fast.store.records import StoreConfig

    config = StoreConfig.from_dict(STORE_JSON)
    assert config.to_dict() == STORE_JSON and config.mean == (0.5, 0.5, 0.5)
    assert StoreConfig.from_dict(dict(STORE_JSON, decode="nvjpeg")).to_dict()["decode"] == "nvjpeg"
    old = {k: v for k, v in STORE_JSON.items() if k != "weights"} | {"pretrained": True}
    assert StoreConfig.from_dict(old).extra == {"pretrained": True}
    assert StoreConfig.from_dict(old).to_dict() == dict(old, weights=None)
    with pytest.raises(ValueError, match="missing field 'stride'"):
        StoreConfig.from_dict({k: v for k, v in STORE_JSON.items() if k != "stride"})


def test_decode_choice_and_store_mismatch():
    from spar_fast.store.records import StoreConfig

    cpu = torch.device("cpu")
    assert default_decode(cpu) in ("torchvision", "pil")
    assert not available("nvjpeg", cpu) or torch.cuda.is_available()
    assert StoreConfig.from_dict(STORE_JSON).decode == "pil"  # stores without the key: read_rgb
    assert training_decode("pil", None, cpu) == "pil"
    with pytest.raises(UserError, match="cannot run on cpu"):
        training_decode("nvjpeg", None, cpu)
    with pytest.warns(UserWarning, match="other pixels"):
        assert training_decode("nvjpeg", "pil", cpu) == "pil"
    if available("torchvision"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # same pixels: no warning
            assert training_decode("pil", "torchvision", cpu) == "torchvision"
    with pytest.warns(UserWarning, match="decoded with"):
        training_decode("pil", None, cpu, "pil, Pillow 0.1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        training_decode("pil", None, cpu, decode_signature("pil"))
    with pytest.raises(UserError, match="decode must be one of"):
        training_decode("pil", "opencv", cpu)
    with pytest.raises(UserError, match="needs a CUDA device"):
        decode_rgb(__file__, "nvjpeg", "cpu")


@pytest.fixture(scope="module")
def jpeg_store(tmp_path_factory):
    from test_trainer import make_tiny_store

    root = tmp_path_factory.mktemp("jpeg_store")
    (root / "img").mkdir()
    for i, hw in enumerate([(80, 120), (70, 50)]):
        _save(root / "img" / f"{i}.jpg", _photo(*hw, i), quality=90)
    store, _ = make_tiny_store(str(root), sizes=[])
    return store


def test_device_stage_equals_cpu_stage(jpeg_store):
    """Worker-decoded-and-augmented items == items decoded and augmented by prepare_chunk (on the
    CPU here both run the same ops in the same order: bit-equal)."""
    from spar_fast.backbones import Backbone

    bb = Backbone.from_pretrained("siglip2-tiny", weights="random")
    cpu = torch.device("cpu")
    out = {}
    # the device stage through a worker process: mapped target views and bytes cross processes
    for stage, workers in (("cpu", 0), ("device", 1)):
        ds = StoreDataset(jpeg_store, bb.mean, bb.std, decode="pil", stage=stage)
        chunks = make_loader(ds, [[0, 1], [1]], num_workers=workers)
        out[stage] = list(device_chunks(chunks, lambda c: prepare_chunk(c, bb.mean, bb.std, cpu), cpu))
    assert [c[2] for c in out["cpu"]] == [[0, 1], [1]]
    for a, b in zip(out["cpu"], out["device"]):
        for x, y in zip(a[0] + a[1], b[0] + b[1]):
            assert torch.equal(x, y)
    assert isinstance(StoreDataset(jpeg_store, bb.mean, bb.std, stage="device")[0].image, EncodedImage)
    with pytest.raises(UserError, match="device stage"):
        StoreDataset(jpeg_store, bb.mean, bb.std, decode="nvjpeg", stage="cpu")


def test_device_chunks_prepares_one_ahead():
    seen = []

    def prepare(c):
        seen.append(c)
        return [torch.tensor(c)], [], [c]

    it = device_chunks(iter(range(4)), prepare, torch.device("cpu"))
    assert next(it)[2] == [0] and seen == [0, 1]  # chunk 1 is prepared before chunk 0 is handed out
    assert [c[2] for c in it] == [[1], [2], [3]]
    assert list(device_chunks(iter([]), prepare, torch.device("cpu"))) == []


def test_collate_keeps_lists():
    chunk = collate_chunk([("a", 1, "t", 0), ("b", 2, "u", 1)])
    assert chunk.images == ["a", "b"] and chunk.indices == [0, 1]


@pytest.mark.skipif(not available("nvjpeg", "cuda"), reason="nvjpeg needs CUDA and torchvision")
def test_nvjpeg_batch_equals_extraction_decode_and_is_close_to_libjpeg(tmp_path):
    """The training loader's batched nvJPEG decode gives the pixels extraction's decode_rgb gave
    (exactly: the student sees the teacher's pixels); against libjpeg they differ by IDCT and
    chroma-upsampling rounding only."""
    from spar_fast.data.decode import finish_decode

    paths = [_save(tmp_path / f"{i}.jpg", _photo(97 + 31 * i, 131 + 17 * i, i), quality=90) for i in range(3)]
    batch = finish_decode([read_encoded(p, "nvjpeg") for p in paths], "cuda")
    for path, pixels in zip(paths, batch):
        single = decode_rgb(path, "nvjpeg", "cuda")
        assert torch.equal(pixels, single)
        diff = (pixels.cpu().int() - torch.from_numpy(read_rgb(path)).int()).abs()
        # nvJPEG vs libjpeg-turbo ISLOW: a few levels at most, about zero on average
        assert diff.max() <= 8 and diff.float().mean() < 1.0
