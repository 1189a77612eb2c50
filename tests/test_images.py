"""Image loading of real-world files (every kind generated with PIL here) and image lists."""
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from spar_fast.data import ImageLoadError, list_images, read_rgb
from spar_fast.errors import UserError

# JPEG is lossy: inside flat color blocks (away from the block edges, where the 8x8 DCT rings)
# a quality-95 re-decode stays within a few levels; 12 of 255 is far below the differences the
# tests look for (a wrong rotation or channel order moves whole quadrants by ~100 levels).
JPEG_ATOL = 12


def _interior_diff(out, expected, margin=5):
    """Max abs difference away from the quadrant edges of ``_blocks`` images."""
    h, w = expected.shape[:2]
    keep = np.ones((h, w), bool)
    keep[h // 2 - margin: h // 2 + margin] = False
    keep[:, w // 2 - margin: w // 2 + margin] = False
    return np.abs(out.astype(int) - expected.astype(int))[keep].max()


def _blocks(h=24, w=40, seed=0):
    """uint8 [h, w, 3]: four flat color quadrants (JPEG keeps flat blocks nearly exact)."""
    rng = np.random.default_rng(seed)
    colors = rng.integers(0, 256, (4, 3), dtype=np.uint8)
    img = np.empty((h, w, 3), np.uint8)
    img[: h // 2, : w // 2], img[: h // 2, w // 2:] = colors[0], colors[1]
    img[h // 2:, : w // 2], img[h // 2:, w // 2:] = colors[2], colors[3]
    return img


def _png16_rgb(a: np.ndarray) -> bytes:
    """A 16-bit RGB PNG of ``a`` (uint16 [h, w, 3]), written by hand (Pillow cannot)."""
    h, w, _ = a.shape
    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def test_rgb_png_exact(tmp_path):
    img = np.random.default_rng(1).integers(0, 256, (7, 13, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    out = read_rgb(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.flags.c_contiguous and out.flags.writeable
    np.testing.assert_array_equal(out, img)


@pytest.mark.parametrize("orientation,rot", [(6, -1), (8, 1), (3, 2)])
def test_exif_orientation_applied(tmp_path, orientation, rot):
    img = _blocks()
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(img).save(tmp_path / "r.jpg", quality=95, exif=exif.tobytes())
    out = read_rgb(tmp_path / "r.jpg")
    expected = np.rot90(img, k=rot)  # 6: viewer turns 90° clockwise, 8: counter-clockwise
    assert out.shape == expected.shape
    assert _interior_diff(out, expected) <= JPEG_ATOL


def test_grayscale_and_bilevel(tmp_path):
    gray = np.random.default_rng(2).integers(0, 256, (9, 5), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "g.png"), np.repeat(gray[..., None], 3, 2))
    Image.fromarray(gray > 127).save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "b.png")[..., 0], (gray > 127) * 255)


def test_16bit_gray_png_and_tiff_scaled_not_clipped(tmp_path):
    values = np.array([[0, 1, 128, 129, 257], [30000, 40000, 65279, 65534, 65535]], np.uint16)
    for name in ("g16.png", "g16.tif"):
        Image.fromarray(values).save(tmp_path / name)
        out = read_rgb(tmp_path / name)
        np.testing.assert_array_equal(out[..., 0], np.rint(values / 257.0).astype(np.uint8))
        assert (out[..., 0] == out[..., 2]).all()


def test_16bit_rgb_png(tmp_path):
    a = np.random.default_rng(3).integers(0, 65536, (6, 7, 3)).astype(np.uint16)
    a[0, 0] = (0, 65535, 32768)
    (tmp_path / "c16.png").write_bytes(_png16_rgb(a))
    out = read_rgb(tmp_path / "c16.png").astype(int)
    # Pillow keeps the high byte (v >> 8): within one level of round(v / 257), full range kept
    assert np.abs(out - np.rint(a / 257.0)).max() <= 1
    assert tuple(out[0, 0]) == (0, 255, 128)


def test_cmyk_jpeg(tmp_path):
    img = _blocks(seed=4)
    Image.fromarray(img).convert("CMYK").save(tmp_path / "k.jpg", quality=95)
    assert Image.open(tmp_path / "k.jpg").mode == "CMYK"
    out = read_rgb(tmp_path / "k.jpg")
    assert _interior_diff(out, img) <= JPEG_ATOL


def test_palette_png_with_and_without_transparency(tmp_path):
    img = _blocks(seed=5)
    pal = Image.fromarray(img).quantize(colors=4)
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "p.png"), np.asarray(pal.convert("RGB")))
    idx = np.asarray(pal)
    pal.save(tmp_path / "pt.png", transparency=int(idx[0, 0]))
    out = read_rgb(tmp_path / "pt.png")
    clear = idx == idx[0, 0]
    assert (out[clear] == 0).all()
    np.testing.assert_array_equal(out[~clear], np.asarray(pal.convert("RGB"))[~clear])


def test_rgba_and_la_composited_on_black(tmp_path):
    rgba = np.random.default_rng(6).integers(0, 256, (5, 8, 4), dtype=np.uint8)
    rgba[0, 0, 3], rgba[0, 1, 3] = 0, 255
    Image.fromarray(rgba).save(tmp_path / "a.png")
    out = read_rgb(tmp_path / "a.png")
    expected = np.rint(rgba[..., :3].astype(float) * rgba[..., 3:] / 255.0)
    np.testing.assert_array_equal(out, expected.astype(np.uint8))
    assert (out[0, 0] == 0).all() and (out[0, 1] == rgba[0, 1, :3]).all()
    Image.fromarray(rgba[..., [0, 3]], "LA").save(tmp_path / "la.png")
    la = read_rgb(tmp_path / "la.png")
    gray = np.rint(rgba[..., 0].astype(float) * rgba[..., 3] / 255.0).astype(np.uint8)
    np.testing.assert_array_equal(la, np.repeat(gray[..., None], 3, 2))


def test_bad_files_raise_one_line_errors(tmp_path):
    Image.fromarray(_blocks(64, 64)).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.jpg").write_text("this is not an image\n")
    (tmp_path / "empty.png").write_bytes(b"")
    Image.fromarray(_blocks()).save(tmp_path / "full.png")
    (tmp_path / "trunc.png").write_bytes((tmp_path / "full.png").read_bytes()[:60])
    cases = {"trunc.jpg": "truncated", "text.jpg": "not an image", "empty.png": "empty file",
             "missing.jpg": "not found", "trunc.png": "truncated|corrupt"}
    for name, words in cases.items():
        with pytest.raises(ImageLoadError, match=words) as info:
            read_rgb(tmp_path / name)
        assert isinstance(info.value, UserError)
        assert "\n" not in str(info.value) and name in str(info.value)


def _touch_images(root, names):
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_list_directory_recursive_sorted_ids(tmp_path):
    _touch_images(tmp_path, ["b.JPG", "a.png", "sub/c.jpeg", "sub/deep/d.TIFF", "notes.txt",
                             ".hidden.jpg", ".cache/e.jpg", "x.webp"])
    items = list_images(tmp_path)
    assert [it.id for it in items] == ["a", "b", "sub/c", "sub/deep/d", "x"]
    assert items[2].path == str(tmp_path / "sub" / "c.jpeg")
    assert list_images(str(tmp_path)) == items


def test_list_directory_id_collision_keeps_extension(tmp_path):
    _touch_images(tmp_path, ["a.jpg", "a.png", "b.png"])
    assert [it.id for it in list_images(tmp_path)] == ["a.jpg", "a.png", "b"]


def test_list_file_relative_comments_and_ids(tmp_path):
    _touch_images(tmp_path / "data", ["x.jpg", "y.png"])
    lst = tmp_path / "data" / "list.txt"
    lst.write_text("# images\n\ny.png\nx.jpg\tcustom-id\n" + str(tmp_path / "data" / "x.jpg") + "\n")
    items = list_images(lst)
    assert [it.id for it in items] == ["y", "custom-id", (tmp_path / "data" / "x").as_posix()]
    assert items[0].path == str(tmp_path / "data" / "y.png")
    dup = tmp_path / "dup.txt"
    dup.write_text("data/x.jpg\tsame\ndata/y.png\tsame\n")
    with pytest.raises(UserError, match="occurs twice"):
        list_images(dup)


def test_list_python_paths_and_pairs(tmp_path):
    items = list_images([str(tmp_path / "q.jpg"), ("given", tmp_path / "r.png")])
    assert items[0].id == (tmp_path / "q").as_posix() and items[1].id == "given"


def test_list_errors(tmp_path):
    with pytest.raises(UserError, match="no such directory"):
        list_images(tmp_path / "missing")
    with pytest.raises(UserError, match="no images found"):
        list_images(tmp_path)
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(UserError, match="empty"):
        list_images(tmp_path / "empty.txt")


def test_special_files_refused_before_opening(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe.jpg")
    os.symlink("/dev/zero", tmp_path / "zero.png")
    (tmp_path / "dir.jpg").mkdir()
    for name, kind in (("pipe.jpg", "a FIFO"), ("zero.png", "a character device"), ("dir.jpg", "a folder")):
        with pytest.raises(ImageLoadError, match=f"not a regular file \\({kind}\\)"):
            read_rgb(tmp_path / name)  # would block (FIFO) or never end (/dev/zero) if opened


def test_header_size_is_upright_and_checked_before_decoding(tmp_path):
    from spar_fast.data.images import read_image_size

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: the decoded image is 40 x 16
    Image.fromarray(_blocks(16, 40)).save(tmp_path / "r.jpg", exif=exif)
    assert read_image_size(tmp_path / "r.jpg") == read_rgb(tmp_path / "r.jpg").shape[:2] == (40, 16)
    with pytest.raises(ImageLoadError, match="exceeds the limit"):
        read_rgb(tmp_path / "r.jpg", max_pixels=639)
    assert read_rgb(tmp_path / "r.jpg", max_pixels=640).shape == (40, 16, 3)


def test_undecodable_file_names_get_printable_ids(tmp_path):
    import json
    import os

    name = os.fsdecode(b"caf\xe9.png")  # latin-1 bytes: not UTF-8
    Image.fromarray(_blocks()).save(tmp_path / name)
    (item,) = list_images(tmp_path)
    assert item.id == "caf\\xe9" and json.dumps(item.id).encode("utf-8")
    assert read_rgb(item.path).shape == (24, 40, 3)  # the file is read through its real name
    (tmp_path / "list.txt").write_bytes(b"caf\xe9.png\n")  # a list file in latin-1
    (listed,) = list_images(tmp_path / "list.txt")
    assert listed.id == "caf\\xe9" and read_rgb(listed.path).shape == (24, 40, 3)
