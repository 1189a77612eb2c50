"""SA-1B style ``.tar`` shards as image sources, read in place (spar_fast.data.members)."""
import io
import json
import os
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from spar_fast.cli import main
from spar_fast.data import apply_augment, list_images, read_rgb
from spar_fast.data.decode import decode_rgb
from spar_fast.data.members import parse_member
from spar_fast.store import FeatureStore
from spar_fast.store.verify import verify
from spar_fast.train import train

TINY = ["--backbone", "siglip2-tiny", "--weights", "random:0", "--augment", "none", "--device", "cpu",
        "--no-progress"]


def jpeg_bytes(seed, h=48, w=64):
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_shard(path, numbers, damaged=(), prefix="./"):
    """An SA-1B-like shard: ``sa_<n>.jpg`` + ``sa_<n>.json`` per number, in the given (archive)
    order; ``damaged`` numbers get bytes that are no JPEG. Returns {id: jpeg bytes}."""
    images = {}
    with tarfile.open(path, "w") as tar:
        for n in numbers:
            data = b"\xff\xd8\xff" + os.urandom(200) if n in damaged else jpeg_bytes(n, 40 + n, 56 + 2 * n)
            add(tar, f"{prefix}sa_{n}.jpg", data)
            add(tar, f"{prefix}sa_{n}.json", json.dumps({"image": {"image_id": n}, "annotations": []}).encode())
            images[f"sa_{n}"] = data
    return images


def test_list_and_read_members_in_archive_order(tmp_path):
    images = make_shard(tmp_path / "sa_000001.tar", [3, 1, 2])
    items = list_images(str(tmp_path / "sa_000001.tar"))
    assert [it.id for it in items] == ["sa_3", "sa_1", "sa_2"]  # archive order, JSON left out
    member = parse_member(items[1].path)
    assert member.archive == str(tmp_path / "sa_000001.tar") and member.name == "./sa_1.jpg"
    with open(member.archive, "rb") as f:  # the recorded offset and size are the member's bytes
        f.seek(member.offset)
        assert f.read(member.size) == images["sa_1"]
    expected = np.asarray(Image.open(io.BytesIO(images["sa_1"])).convert("RGB"))
    np.testing.assert_array_equal(read_rgb(items[1].path), expected)
    np.testing.assert_array_equal(decode_rgb(items[1].path, "pil").numpy(), expected)
    # a folder of shards: each shard, sorted by name; several shards as a list
    make_shard(tmp_path / "sa_000000.tar", [7, 5], prefix="")
    folder = [it.id for it in list_images(str(tmp_path))]
    assert folder == ["sa_7", "sa_5", "sa_3", "sa_1", "sa_2"]
    listed = [it.id for it in list_images([str(tmp_path / "sa_000001.tar"), str(tmp_path / "sa_000000.tar")])]
    assert listed == ["sa_3", "sa_1", "sa_2", "sa_7", "sa_5"]


def test_a_cut_archive_keeps_the_members_before_the_cut(tmp_path):
    path = tmp_path / "cut.tar"
    make_shard(path, [1, 2, 3])
    data = path.read_bytes()
    member = parse_member(list_images(str(path))[2].path)
    path.write_bytes(data[:member.offset + member.size // 2])  # the last image cut in half
    with pytest.warns(UserWarning, match="archive damaged after 3 images"):
        items = list_images(str(path))
    assert [it.id for it in items] == ["sa_1", "sa_2", "sa_3"]
    read_rgb(items[1].path)
    with pytest.raises(Exception, match=r"truncated archive member \(\d+ of \d+ bytes\)"):
        read_rgb(items[2].path)


def test_features_on_tars_limit_resume_damage_sources_and_training(tmp_path, capsys):
    a, b = tmp_path / "sa_000000.tar", tmp_path / "sa_000001.tar"
    images = make_shard(a, [4, 2, 9], damaged={9})
    images.update(make_shard(b, [6, 8]))
    store = str(tmp_path / "store")
    assert main(["features", str(a), str(b), "--out", store, "--limit", "2", *TINY]) == 0
    fs = FeatureStore(store)
    assert [r.image_id for r in fs.records] == ["sa_4", "sa_2"]  # the first 2 in archive order
    # resumable: a larger limit keeps the two done and adds the next ones; the damaged member is
    # skipped with its reason
    assert main(["features", str(a), str(b), "--out", store, "--limit", "4", *TINY]) == 0
    out = capsys.readouterr().out
    fs = FeatureStore(store)
    assert [r.image_id for r in fs.records] == ["sa_4", "sa_2", "sa_6"]
    assert [(r.image_id, r.reason) for r in fs.skipped] == [("sa_9", fs.skipped[0].reason)]
    assert "sa_9" in out and "image" in fs.skipped[0].reason
    rec = fs.record("sa_2")
    member = parse_member(rec.source)
    assert member.archive == str(a) and rec.source_bytes == len(images["sa_2"]) == member.size
    assert rec.source_mtime_ns == os.stat(a).st_mtime_ns
    # the pixels the store rebuilds come from the tar
    expected = np.array(Image.open(io.BytesIO(images["sa_2"])).convert("RGB"))
    assert torch.equal(fs.input_image("sa_2"), apply_augment(expected, rec.augment))
    # source checks cover members: a touched archive with the same bytes is fine, changed member
    # bytes are reported
    assert verify(store)["state"] == "complete"
    os.utime(a, ns=(1, 1))
    assert verify(store)["state"] == "complete"
    data = bytearray(a.read_bytes())
    data[member.offset + member.size // 2] ^= 0xFF
    a.write_bytes(bytes(data))
    report = verify(store)
    assert report["state"] == "sources changed" and "sa_2" in report["sources"][0]
    assert "source image changed" in report["sources"][0]
    a.write_bytes(bytes(data[:member.offset]))  # the archive cut before the member
    assert "sa_2" in verify(store)["sources"][0]


def test_training_reads_pixels_back_from_the_tar(tmp_path):
    make_shard(tmp_path / "sa_000000.tar", [1, 2])
    store = str(tmp_path / "store")
    assert main(["features", str(tmp_path / "sa_000000.tar"), "--out", store, *TINY]) == 0
    final = train(store, str(tmp_path / "run"), epochs=1, device="cpu", workers=0, progress=False)
    # the delta student loads in segment without naming its backbone
    image = tmp_path / "x.png"
    Image.open(io.BytesIO(jpeg_bytes(5))).save(image)
    assert main(["segment", str(image), "--weights", final, "--classes", "a; b", "-o",
                 str(tmp_path / "o.png"), "--device", "cpu"]) == 0
    os.remove(tmp_path / "sa_000000.tar")  # without the tar, training cannot rebuild the pixels
    with pytest.raises(Exception, match="source image missing"):
        train(store, str(tmp_path / "run2"), epochs=1, device="cpu", workers=0, progress=False)
