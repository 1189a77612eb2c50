"""Hostile corpus of the feature store: one table per file kind (store.json, manifest, chunk
indexes, shards, sources), one row per kind of damage. A row says what ``verify`` answers and
what the rerun of ``spar-fast features`` that the tool advises does: repair the store (to the
bytes of a clean one) or refuse it in one line, writing nothing outside the store. A new kind of
damage is a new row. Fake teacher of test_store.py (fast)."""
import json
import os
import shutil
import struct

import pytest

from spar_fast.cli import main
from spar_fast.errors import UserError
from spar_fast.store import FeatureStore, verify
from test_store import make_images, run_job, store_files

DEEP = "[" * 5000 + "]" * 5000  # RecursionError in a naive reader


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    images = make_images(root / "img")
    run_job(images, root / "clean")
    return images, root / "clean"


@pytest.fixture()
def store(clean, tmp_path):
    images, path = clean
    copy = tmp_path / "box" / "s"  # the store sits two folders deep: "../../x" stays in tmp_path
    shutil.copytree(path, copy)
    return images, copy, path


def _json(path):
    return json.loads(path.read_text())


def _edit(path, fn):
    doc = _json(path)
    fn(doc)
    path.write_text(json.dumps(doc))


def _set_record(field, value, chunk="r000-000001"):
    def damage(store):
        _edit(store / "shards" / f"{chunk}.json", lambda d: d["records"][0].__setitem__(field, value))
    return damage


def _escape_names(tmp_path):
    """Files a hostile name could have created outside the store."""
    return sorted(p.name for p in tmp_path.iterdir() if p.name not in ("box",))


def _verify_cli(store, capsys):
    code = main(["verify", str(store)])
    out = capsys.readouterr()
    return code, out.out + out.err


# ---- store.json: damage the store's definition; verify says corrupt (1) and that the store must be
# recreated; a rerun refuses in one line (it cannot know the intended settings)
def _config(fn):
    return lambda store: _edit(store / "store.json", fn)


STORE_JSON = [
    ("deep_nesting", lambda s: (s / "store.json").write_text(DEEP)),
    ("binary", lambda s: (s / "store.json").write_bytes(b"\x00\xff" * 50)),
    ("stride_string", _config(lambda d: d.__setitem__("stride", "24"))),
    ("stride_bool", _config(lambda d: d.__setitem__("stride", True))),
    ("mean_number", _config(lambda d: d.__setitem__("mean", 0.5))),
    ("dtype_unknown", _config(lambda d: d.__setitem__("dtype", "int4"))),
    ("teacher_unknown", _config(lambda d: d.__setitem__("teacher", "oracle"))),
    ("teacher_number", _config(lambda d: d.__setitem__("teacher", 1))),
    ("format_1_over_format_2", _config(lambda d: d.__setitem__("format", "spar_fast.store/1"))),
    ("duplicate_key", lambda s: (s / "store.json").write_text(
        (s / "store.json").read_text().replace('"seed": 0', '"seed": 0, "seed": 1'))),
    ("a_folder", lambda s: ((s / "store.json").unlink(), (s / "store.json").mkdir())),
]


# ---- manifest.json: names become paths; it is the plan of the store: refused like store.json
def _manifest(fn):
    return lambda store: _edit(store / "manifest.json", fn)


def _chunk0(field, value):
    return _manifest(lambda d: d["chunks"][0].__setitem__(field, value))


MANIFEST = [
    ("name_parent", _chunk0("name", "../../escaped")),
    ("name_absolute", lambda s: _chunk0("name", str(s.parent.parent / "escaped"))(s)),
    ("name_not_a_chunk", _chunk0("name", "notes")),
    ("rank_not_the_names", _chunk0("rank", 3)),
    ("rank_string", _chunk0("rank", "0")),
    ("chunk_twice", _manifest(lambda d: d["chunks"].append(d["chunks"][0]))),
    ("image_twice", _manifest(lambda d: d["chunks"][1]["items"].append(d["chunks"][0]["items"][0]))),
    ("index_string", _manifest(lambda d: d["chunks"][0]["items"][0].__setitem__(2, "0"))),
    ("index_gap", _manifest(lambda d: d["chunks"][0]["items"][0].__setitem__(2, 99))),
    ("items_number", _chunk0("items", 3)),
    ("item_short", _manifest(lambda d: d["chunks"][0]["items"][0].pop())),
    ("chunks_object", _manifest(lambda d: d.__setitem__("chunks", {"a": 1}))),
    ("format_other", _manifest(lambda d: d.__setitem__("format", "spar_fast.store/9"))),
    ("deep_nesting", lambda s: (s / "manifest.json").write_text('{"chunks": ' + DEEP + "}")),
    ("truncated", lambda s: (s / "manifest.json").write_bytes((s / "manifest.json").read_bytes()[:30])),
]


# store.json and manifest.json: the config and the plan of the store; damage to either cannot be
# repaired by a rerun, so both are refused in one line that says to use a new folder
PLAN_FILES = [("store.json", n, d) for n, d in STORE_JSON] + [("manifest.json", n, d) for n, d in MANIFEST]


@pytest.mark.parametrize("kind, damage", [(k, d) for k, _, d in PLAN_FILES], ids=[f"{k}-{n}" for k, n, _ in PLAN_FILES])
def test_store_json_and_manifest(store, kind, damage, tmp_path, capsys):
    images, path, _ = store
    damage(path)
    code, text = _verify_cli(path, capsys)
    assert code == 1 and "new folder" in text and "Traceback" not in text
    with pytest.raises(UserError) as info:
        FeatureStore(path)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError) as info:
        run_job(images, path)
    assert "\n" not in str(info.value)
    if kind == "store.json":
        assert "new --out folder" in str(info.value)
    assert _escape_names(tmp_path) == []  # no chunk file was written outside the store


# ---- chunk indexes: a damaged index makes its chunk "not done"; verify says corrupt (1) and the
# rerun recomputes the chunk: the store ends byte-identical to a clean one
def _index(fn, chunk="r000-000001"):
    return lambda store: _edit(store / "shards" / f"{chunk}.json", fn)


def _reseal(store, chunk="r000-000001", flip=True):
    """Tamper with the shard's data and update the index's whole-file size and checksum."""
    from spar_fast.store.layout import file_digest

    shard = store / "shards" / f"{chunk}.safetensors"
    data = bytearray(shard.read_bytes())
    data[-20] ^= 0x41
    shard.write_bytes(bytes(data))
    _edit(store / "shards" / f"{chunk}.json",
          lambda d: d.update(shard_bytes=len(data), shard_checksum=file_digest(str(shard))))


def _folder_at(name, content=False):
    def damage(store):
        path = store / "shards" / name
        path.unlink()
        path.mkdir()
        if content:
            (path / "keep.txt").write_text("a user's file")
    return damage


INDEX = [
    ("truncated", lambda s: (s / "shards/r000-000001.json").write_bytes(
        (s / "shards/r000-000001.json").read_bytes()[:50])),
    ("deep_nesting", lambda s: (s / "shards/r000-000001.json").write_text(DEEP)),
    ("record_shard_outside", _set_record("shard", "../../outside.safetensors")),
    ("record_shard_other_chunk", _set_record("shard", "r000-000002.safetensors")),
    ("index_shard_outside", _index(lambda d: d.__setitem__("shard", "../../outside.safetensors"))),
    ("record_index_string", _set_record("index", "2")),
    ("record_grid_number", _set_record("grid_hw", 3)),
    ("record_key_reserved", _set_record("key", "__metadata__")),
    ("record_status_unknown", _set_record("status", "maybe")),
    ("record_id_other", _set_record("image_id", "im4")),
    ("records_number", _index(lambda d: d.__setitem__("records", 7))),
    ("record_dropped", _index(lambda d: d["records"].pop())),
    ("record_twice", _index(lambda d: d["records"].append(d["records"][0]))),
    ("shard_bytes_string", _index(lambda d: d.__setitem__("shard_bytes", "12"))),
    ("a_folder", _folder_at("r000-000001.json")),
]


def _damage_verify_rerun(store, damage, capsys) -> dict:
    """Damage the store, check `verify` advises the rerun in one clean message, rerun: the summary."""
    images, path, _ = store
    damage(path)
    code, text = _verify_cli(path, capsys)
    assert code == 1 and "rerun `spar-fast features`" in text and "Traceback" not in text
    return run_job(images, path)


@pytest.mark.parametrize("damage", [d for _, d in INDEX], ids=[n for n, _ in INDEX])
def test_index_damage_is_repaired_by_the_rerun(store, damage, tmp_path, capsys):
    _, path, clean = store
    summary = _damage_verify_rerun(store, damage, capsys)
    assert summary["computed"] >= 1
    assert store_files(path) == store_files(clean)
    assert verify(path)["state"] == "complete" and _escape_names(tmp_path) == []


# ---- shards
SHARD = [
    ("bit_flip", lambda s: _flip(s / "shards/r000-000001.safetensors")),
    ("tampered_and_resealed", _reseal),
    ("truncated", lambda s: os.truncate(s / "shards/r000-000001.safetensors", 100)),
    ("deleted", lambda s: (s / "shards/r000-000001.safetensors").unlink()),
    ("header_length_huge", lambda s: _patch(s / "shards/r000-000001.safetensors", 0, struct.pack("<Q", 1 << 60))),
    ("empty_folder", _folder_at("r000-000001.safetensors")),
    ("link_outside", lambda s: _link_outside(s, "r000-000001.safetensors")),
]


def _flip(path):
    _patch(path, -40, bytes(b ^ 0x5A for b in path.read_bytes()[-40:-24]))


def _patch(path, offset, data):
    raw = bytearray(path.read_bytes())
    offset %= len(raw)
    raw[offset:offset + len(data)] = data
    path.write_bytes(bytes(raw))


def _link_outside(store, name):
    outside = store.parent.parent / "outside.bin"
    outside.write_bytes(b"a user's file")
    (store / "shards" / name).unlink()
    os.symlink(outside, store / "shards" / name)


@pytest.mark.parametrize("damage", [d for _, d in SHARD], ids=[n for n, _ in SHARD])
def test_shard_damage_is_repaired_by_the_rerun(store, damage, tmp_path, capsys):
    _, path, clean = store
    _damage_verify_rerun(store, damage, capsys)
    assert store_files(path) == store_files(clean) and verify(path)["state"] == "complete"
    assert _escape_names(tmp_path) in ([], ["outside.bin"])
    if (tmp_path / "outside.bin").exists():
        assert (tmp_path / "outside.bin").read_bytes() == b"a user's file"


def test_a_folder_with_content_in_place_of_a_shard_is_one_line_then_repaired(store, capsys):
    images, path, clean = store
    _folder_at("r000-000001.safetensors", content=True)(path)
    code, text = _verify_cli(path, capsys)
    assert code == 1 and "move it away" in text
    with pytest.raises(UserError, match="move it away") as info:
        run_job(images, path)
    assert "\n" not in str(info.value)
    assert (path / "shards/r000-000001.safetensors/keep.txt").exists()  # the user's file stays
    shutil.move(path / "shards/r000-000001.safetensors", path.parent / "moved")
    run_job(images, path)
    assert store_files(path) == store_files(clean)


# ---- sources: a changed source is recomputed by the rerun verify advises; a missing one is kept
def test_changed_source_is_recomputed_by_the_rerun(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    images = make_images(tmp_path / "img", bad=False)
    run_job(images, tmp_path / "s")
    Image.fromarray(np.full((40, 50, 3), 77, np.uint8)).save(images / "im2.png")
    code, text = _verify_cli(tmp_path / "s", capsys)
    assert code == 4 and "'im2'" in text and "changed since extraction" in text
    assert "rerun `spar-fast features`" in text
    with pytest.raises(UserError, match="rerun `spar-fast features`"):
        FeatureStore(tmp_path / "s").input_image("im2")
    assert run_job(images, tmp_path / "s")["computed"] == 2  # the changed image's chunk of 2
    assert verify(tmp_path / "s")["state"] == "complete"
    run_job(images, tmp_path / "fresh")
    assert store_files(tmp_path / "s") == store_files(tmp_path / "fresh")


def test_missing_source_is_kept_and_named(tmp_path, capsys):
    images = make_images(tmp_path / "img", bad=False)
    run_job(images, tmp_path / "s")
    before = store_files(tmp_path / "s")
    os.rename(images / "im3.png", tmp_path / "im3.moved")
    code, text = _verify_cli(tmp_path / "s", capsys)
    assert code == 4 and "'im3'" in text and "restore it" in text
    assert run_job(images, tmp_path / "s")["computed"] == 0  # the target of the original is kept
    assert store_files(tmp_path / "s") == before


# ---- image ids the file formats reserve
RESERVED_IDS = ["__metadata__", "a.scale", "%0", "%1"]


@pytest.mark.parametrize("dtype", ["fp16", "fp8_e4m3"])
def test_reserved_image_ids_do_not_corrupt_a_chunk(tmp_path, dtype):
    import numpy as np
    import torch
    from PIL import Image

    from store_fakes import FakeBackbone, fake_teacher

    folder = tmp_path / "img"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name in RESERVED_IDS + ["a"]:
        Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    summary = run_job(folder, tmp_path / "s", dtype=dtype, shard_size=8)
    assert summary["ok"] == 5 and summary["computed"] == 5  # images, not tensors (fp8 scales)
    assert verify(tmp_path / "s")["state"] == "complete"
    fs = FeatureStore(tmp_path / "s")
    mean = torch.tensor(FakeBackbone.mean).view(3, 1, 1)
    std = torch.tensor(FakeBackbone.std).view(3, 1, 1)
    for image_id in RESERVED_IDS + ["a"]:
        target, _ = fs.get(image_id)
        want = fake_teacher((fs.input_image(image_id) - mean) / std)
        assert torch.allclose(target.float(), want, rtol=0.07, atol=0.02)


# ---- ownership: a features run deletes only its own temporaries
FOREIGN = ["notes.tmp", ".tmpAbC123", "store.json.my.tmp", "weights-1.safetensors", ".spar_fast~x"]


def test_features_keeps_files_it_did_not_create(store):
    images, path, clean = store
    for name in FOREIGN:
        (path / name).write_text("a user's file")
    (path / ".spar_fast~abcd1234.tmp").mkdir()  # a write of this package killed mid-way
    (path / ".spar_fast~abcd1234.tmp" / "out").write_text("partial")
    run_job(images, path)
    assert sorted(n for n in os.listdir(path) if n not in store_files(clean) and n != "shards") == \
        sorted(FOREIGN)


def test_foreign_files_in_shards_are_named_not_damage(store, capsys):
    images, path, _ = store
    for name in ("notes.tmp", ".tmpAbC123", "r000-000099.json"):
        (path / "shards" / name).write_text("a user's file")
    code, text = _verify_cli(path, capsys)
    assert code == 0 and "not the store's (kept): notes.tmp" in text
    run_job(images, path)
    assert (path / "shards" / "notes.tmp").read_text() == "a user's file"
