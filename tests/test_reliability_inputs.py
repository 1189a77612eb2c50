"""Bad input through ``features``: a generated corpus of broken, hostile and extreme files.

Every kind ends as a target or as a skip with its reason; nothing blocks (FIFO, /dev/zero),
nothing allocates gigabytes (thin strips that the augmentation would blow up, decompression-bomb
headers), undecodable file names do not abort the job. The teacher is the injected fake of
test_store.py, so the test exercises the job, not the backbone. The peak RSS of the whole corpus
run is measured in a subprocess.
"""
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spar_fast.data.images import DEFAULT_MAX_PIXELS, check_image_size, read_rgb, read_image_size
from spar_fast.errors import UserError
from spar_fast.store import FeatureStore, verify
from test_store import SUBPROCESS_PATH, run_job

RNG = np.random.default_rng(3)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header claims ``w x h`` RGB pixels, with one tiny (invalid) data chunk."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))


def _save(folder: Path, name: str, array: np.ndarray, **kw) -> Path:
    path = folder / name
    Image.fromarray(array).save(path, **kw)
    return path


def _photo(h, w):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def make_corpus(folder: Path) -> dict[str, str]:
    """Write the corpus; returns ``{image id: "ok" | words expected in the skip reason}``."""
    folder.mkdir(parents=True, exist_ok=True)
    expect = {}

    def bad(name, data, words):
        (folder / name).write_bytes(data)
        expect[name.rsplit(".", 1)[0]] = words

    good_png = (folder / "_tmp.png")
    Image.fromarray(_photo(40, 60)).save(good_png)
    png = good_png.read_bytes()
    Image.fromarray(_photo(40, 60)).save(good_png.with_suffix(".jpg"), quality=90)
    jpg = good_png.with_suffix(".jpg").read_bytes()
    good_png.unlink()
    good_png.with_suffix(".jpg").unlink()

    bad("empty.png", b"", "empty file")
    bad("text.jpg", b"this is not an image", "not an image")
    bad("truncated_png.png", png[: len(png) // 2], "image")
    bad("truncated_jpeg.jpg", jpg[: len(jpg) // 2], "truncated")
    bad("garbage_after_soi.jpg", b"\xff\xd8\xff\xe0" + bytes(RNG.integers(0, 256, 300, dtype=np.uint8)), "image")
    flipped = bytearray(png)
    flipped[40] ^= 0xFF  # inside IHDR/IDAT: bad CRC or bad data
    bad("bad_crc.png", bytes(flipped), "image")
    bad("bomb_header.png", _png_header_only(100_000, 100_000), "too large")
    bad("zero_width.png", _png_header_only(0, 10), "image")
    bad("bomb_bmp.bmp", b"BM" + struct.pack("<IHHI", 0, 0, 0, 54) + struct.pack(
        "<IiiHHIIiiII", 40, 60_000, 60_000, 1, 24, 0, 0, 0, 0, 0, 0), "")
    bad("tiff_junk.tif", b"II*\x00" + struct.pack("<I", 8) + b"\x01\x00" + b"\x00" * 20, "image")
    bad("webp_truncated.webp", b"RIFF\x00\x10\x00\x00WEBPVP8 " + b"\x00" * 30, "image")
    bad("png_named_gif.gif", png[:30], "image")
    expect["bomb_bmp"] = ""  # refused one way or another (too large or corrupt)

    _save(folder, "strip_3x5000.png", _photo(3, 5000))
    expect["strip_3x5000"] = "exceeds the limit"
    _save(folder, "panorama_3x100000.png", np.zeros((3, 100_000, 3), np.uint8))
    expect["panorama_3x100000"] = "exceeds the limit"
    os.mkfifo(folder / "fifo.jpg")
    expect["fifo"] = "not a regular file (a FIFO)"
    os.symlink("/dev/zero", folder / "zero.jpg")
    expect["zero"] = "not a regular file (a character device)"
    os.symlink(folder / "no_such_target.png", folder / "dangling.png")
    expect["dangling"] = "file not found"
    (folder / "folder.jpg").mkdir()  # a directory with an image name is not listed
    bad(os.fsdecode(b"broken_\xff\xfe.jpg"), b"junk", "not an image")
    expect["broken_\\xff\\xfe"] = expect.pop(os.fsdecode(b"broken_\xff\xfe"))

    for name, array, kw in (("tiny_1x1.png", _photo(1, 1), {}), ("gray.png", RNG.integers(0, 256, (30, 20), dtype=np.uint8), {}),
                            ("rgba.png", RNG.integers(0, 256, (20, 30, 4), dtype=np.uint8), {}),
                            ("cmyk.jpg", RNG.integers(0, 256, (20, 30, 4), dtype=np.uint8), {})):
        img = (Image.frombytes("CMYK", (30, 20), array.tobytes()) if name == "cmyk.jpg"
               else Image.fromarray(array))
        img.save(folder / name, **kw)
        expect[name.rsplit(".", 1)[0]] = "ok"
    Image.fromarray((RNG.integers(0, 65536, (20, 30))).astype(np.uint16)).save(folder / "gray16.png")
    expect["gray16"] = "ok"
    frames = [Image.fromarray(_photo(20, 20)) for _ in range(3)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    expect["anim"] = "ok"
    (folder / "jpeg_named_png.png").write_bytes(jpg)
    expect["jpeg_named_png"] = "ok"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the header size is swapped before the limit check
    Image.fromarray(_photo(16, 40)).save(folder / "rotated.jpg", exif=exif)
    expect["rotated"] = "ok"
    _save(folder, "strip_512x8192.png", np.zeros((512, 8192, 3), np.uint8))  # legitimately large
    expect["strip_512x8192"] = "ok"
    _save(folder, os.fsdecode(b"caf\xe9.png"), _photo(24, 24))  # latin-1 name: not UTF-8
    expect["caf\\xe9"] = "ok"
    return expect


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus") / "img"
    return folder, make_corpus(folder)


def test_corpus_has_at_least_25_kinds(corpus):
    assert len(corpus[1]) >= 25


def test_every_bad_file_is_skipped_with_its_reason(corpus, tmp_path):
    folder, expect = corpus
    summary = run_job(folder, tmp_path / "s", shard_size=4, workers=2)
    reasons = dict(summary["skipped"])
    for image_id, words in expect.items():
        if words == "ok":
            assert image_id not in reasons, (image_id, reasons.get(image_id))
        else:
            assert image_id in reasons and words in reasons[image_id], (image_id, reasons.get(image_id))
    fs = FeatureStore(tmp_path / "s")
    assert set(fs.ids) == {i for i, w in expect.items() if w == "ok"}
    assert summary["computed"] == len(fs) and summary["ok"] == len(fs)
    assert verify(tmp_path / "s")["state"] == "complete"
    again = run_job(folder, tmp_path / "s", shard_size=4)  # skips are remembered, not retried
    assert again["computed"] == 0 and again["resumed"] == len(expect)


def test_corpus_peak_rss_is_bounded(corpus, tmp_path):
    """The whole corpus in a fresh process, which reports its own peak RSS (ru_maxrss)."""
    folder, _ = corpus
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent('''
        import resource, sys
        from store_fakes import FakeBackbone, fake_teacher
        from spar_fast.jobs.extract import extract_features
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        summary = extract_features(sys.argv[1], sys.argv[2], backbone=FakeBackbone(),
                                   teacher_fn=fake_teacher, shard_size=4, progress=False, workers=2)
        print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, len(summary["skipped"]))
    '''))
    env = dict(os.environ, PYTHONPATH=SUBPROCESS_PATH, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, str(script), str(folder), str(tmp_path / "s")], env=env,
                         check=True, timeout=120, capture_output=True, text=True).stdout
    before, peak, skipped = (int(v) for v in out.split()[-3:])
    job_mib = (peak - before) / 1024
    print(f"peak RSS of features over the bad-input corpus: {peak / 1024:.0f} MiB "
          f"({before / 1024:.0f} MiB after imports, {skipped} files skipped)")
    # importing torch alone takes ~650 MiB here; the 3x5000 strip alone would need ~5 GiB after
    # augmentation and the 3x100000 panorama ~6 GiB, so any decoded bomb would break this bound
    assert job_mib < 1000, f"the job itself grew the peak RSS by {job_mib:.0f} MiB"


def test_header_size_without_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(9000, 9000))  # 81 M pixels, below Pillow's own bomb limit
    assert read_image_size(path) == (9000, 9000)
    with pytest.raises(UserError, match="exceeds the limit"):
        read_rgb(path)


def test_check_image_size_is_the_one_refusal_rule():
    check_image_size((4096, 4096))
    check_image_size((512, 8192))
    with pytest.raises(UserError, match="exceeds the limit") as info:
        check_image_size((512, 853_344), what="resized image")
    assert "resized image of 512x853344" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UserError, match="side below 16"):
        check_image_size((3, 5000), min_side=16)
    check_image_size((DEFAULT_MAX_PIXELS + 1, 1), max_pixels=None)


def test_limit_is_an_option(tmp_path):
    folder = tmp_path / "img"
    folder.mkdir()
    _save(folder, "thin.png", _photo(3, 300))  # augmented ("none") to 512 x 51200
    assert run_job(folder, tmp_path / "a", augment="none")["ok"] == 1
    summary = run_job(folder, tmp_path / "b", augment="none", max_pixels=20_000_000)
    assert summary["ok"] == 0 and "exceeds the limit" in summary["skipped"][0][1]


@pytest.mark.parametrize("name", ["bomb_header.png", "zero.jpg", "strip_3x5000.png",
                                  "panorama_3x100000.png"])
def test_segment_command_on_bad_inputs(corpus, tmp_path, capsys, monkeypatch, name):
    """``segment`` (tiny random backbone, offline): a result or one line with exit 2."""
    from spar_fast.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["segment", str(corpus[0] / name), "--classes", "sky; road", "-o", str(tmp_path / "s.png"),
                 "--backbone", "siglip2-tiny", "--random-init", "--device", "cpu"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("spar-fast")]
    assert (code, err) == (0, []) or (code == 2 and len(err) == 1), (code, err)
