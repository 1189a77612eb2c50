"""A damaged or contested feature store: every case is a one-line error naming what is wrong (or
a skip), ``verify`` tells the states apart with its exit codes, and a rerun of the job repairs the
store to the bytes of an undamaged run. Fake teacher of test_store.py (fast)."""
import json
import os
import shutil
import stat
import subprocess
import threading

import torch

import numpy as np
import pytest
from PIL import Image

from spar_fast.atomic import create_exclusive
from spar_fast.cli import main
from spar_fast.errors import UserError
from spar_fast.lock import exclusive_lock
from spar_fast.store import CorruptStoreError, FeatureStore, verify
from test_store import make_images, run_job, store_files


@pytest.fixture()
def built(tmp_path):
    images = make_images(tmp_path / "img")
    run_job(images, tmp_path / "clean")
    run_job(images, tmp_path / "s")
    return images, tmp_path / "s", tmp_path / "clean"


def _verify_cli(store, capsys):
    code = main(["verify", str(store)])
    return code, capsys.readouterr()


def _one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text
    return text


def test_bit_flip_inside_a_target_is_caught_on_read_and_repaired(built, capsys):
    images, store, clean = built
    shard = store / "shards" / "r000-000001.safetensors"
    data = bytearray(shard.read_bytes())
    for k in range(16):  # XOR 16 bytes inside the tensor data (the header stays valid)
        data[-40 + k] ^= 0x5A
    shard.write_bytes(bytes(data))
    fs = FeatureStore(store)
    with pytest.raises(CorruptStoreError) as info:
        for image_id in fs.ids:
            fs.get(image_id)
    text = _one_line(info)
    assert "im1" in text and "r000-000001.safetensors" in text and "checksum" in text
    code, out = _verify_cli(store, capsys)
    assert code == 1 and "corrupt" in out.out
    summary = run_job(images, store)  # the damaged chunk is recomputed, not counted as done
    assert summary["computed"] == 2
    assert store_files(store) == store_files(clean)


def test_truncated_index_refused_unless_partial(built, capsys):
    images, store, clean = built
    index = store / "shards" / "r000-000002.json"
    index.write_bytes(index.read_bytes()[:50])
    with pytest.raises(CorruptStoreError) as info:
        FeatureStore(store)
    assert "holds 5 of the 7 images" in _one_line(info) and "r000-000002" in str(info.value)
    assert len(FeatureStore(store, partial=True)) == 3
    assert _verify_cli(store, capsys)[0] == 1
    run_job(images, store)
    assert store_files(store) == store_files(clean)


@pytest.mark.parametrize("damage", ["delete", "bad_header", "pickle"])
def test_unreadable_shard_is_a_one_line_error(built, damage, capsys):
    images, store, clean = built
    shard = store / "shards" / "r000-000003.safetensors"
    if damage == "delete":
        shard.unlink()
    elif damage == "bad_header":
        shard.write_bytes(b"\xff" * 8 + shard.read_bytes()[8:])
    else:
        import pickle
        shard.write_bytes(pickle.dumps({"not": "tensors"}))
    fs = FeatureStore(store)
    with pytest.raises(CorruptStoreError) as info:
        fs.get("im4")
    assert "'im4'" in _one_line(info) and "r000-000003.safetensors" in str(info.value)
    assert _verify_cli(store, capsys)[0] == 1
    run_job(images, store)
    assert store_files(store) == store_files(clean)


def test_replaced_or_missing_source_image(built, capsys):
    images, store, _ = built
    other = np.random.default_rng(9).integers(0, 256, (30 + 7 * 2, 45 + 11 * 2, 3), dtype=np.uint8)
    size = os.path.getsize(images / "im2.png")
    Image.fromarray(other).save(images / "im2.png")
    os.truncate(images / "im2.png", min(size, os.path.getsize(images / "im2.png")))
    (images / "im3.png").unlink()
    code, out = _verify_cli(store, capsys)
    assert code == 4 and "sources changed" in out.out
    assert "'im2'" in out.out and "changed since extraction" in out.out
    assert "'im3'" in out.out and "missing" in out.out
    with pytest.raises(UserError, match="changed since extraction"):
        FeatureStore(store).input_image("im2")


def test_verify_tells_states_apart(tmp_path, capsys):
    assert main(["verify", str(tmp_path / "nowhere")]) == 2
    (tmp_path / "random").mkdir()
    (tmp_path / "random" / "notes.txt").write_text("hello")
    assert main(["verify", str(tmp_path / "random")]) == 2
    err = capsys.readouterr().err
    assert "not a feature store" in err and len(err.strip().splitlines()) == 2
    killed = tmp_path / "killed"  # a job killed before store.json existed
    (killed / "shards").mkdir(parents=True)
    (killed / ".lock").write_bytes(b"")
    (killed / ".spar_fast~abcd1234.tmp").mkdir()  # a write killed while staging store.json
    (killed / ".spar_fast~abcd1234.tmp" / "out").write_text("{")
    (killed / "store.json.abc1234x.tmp").write_text("{")  # ... or by an older version
    code, out = _verify_cli(killed, capsys)
    assert code == 3 and "unfinished" in out.out
    images = make_images(tmp_path / "img", bad=False)
    run_job(images, tmp_path / "s")
    (tmp_path / "s" / "shards" / "r000-000002.json").unlink()
    assert _verify_cli(tmp_path / "s", capsys)[0] == 3
    run_job(images, tmp_path / "s")
    assert _verify_cli(tmp_path / "s", capsys)[0] == 0


def test_stale_temp_files_removed_on_resume(built):
    """Only the package's own temporaries go: its private folders and older versions' temporary
    files of the names it writes; a user's *.tmp / .tmpXXXXXX files stay (test_hostile_files.py)."""
    images, store, clean = built
    (store / "shards" / ".spar_fast~x1y2z3w4.tmp").mkdir()
    (store / "shards" / ".spar_fast~x1y2z3w4.tmp" / "out").write_bytes(b"partial")
    (store / "shards" / "r000-000001.safetensors.x1y2z3w4.tmp").write_bytes(b"partial")
    (store / "manifest.json.q1w2e3r4.tmp").write_bytes(b"partial")
    run_job(images, store)
    assert store_files(store) == store_files(clean)


def test_store_grows_and_folder_spelling_does_not_matter(tmp_path, monkeypatch):
    images = make_images(tmp_path / "img", n=3, bad=False)
    first = run_job(images, tmp_path / "s")
    monkeypatch.chdir(tmp_path)
    same = run_job("img", tmp_path / "s")  # relative spelling of the same folder
    assert (same["computed"], same["resumed"]) == (0, first["images"])
    rng = np.random.default_rng(5)
    for name in ("a_new.png", "z_new.png"):
        Image.fromarray(rng.integers(0, 256, (33, 44, 3), dtype=np.uint8)).save(images / name)
    before = {r.image_id: r.index for r in FeatureStore(tmp_path / "s").records}
    grown = run_job(images, tmp_path / "s")
    assert (grown["images"], grown["computed"], grown["resumed"]) == (5, 2, 3)
    fs = FeatureStore(tmp_path / "s")
    assert {i: fs.record(i).index for i in before} == before  # ids and positions kept
    assert fs.ids[-2:] == ["a_new", "z_new"] and verify(tmp_path / "s")["complete"]


def test_second_writer_gets_a_one_line_error(tmp_path):
    images = make_images(tmp_path / "img", n=1, bad=False)
    with exclusive_lock(str(tmp_path / "s"), "feature store"):
        with pytest.raises(UserError, match="another process is writing this feature store"):
            run_job(images, tmp_path / "s")
    assert run_job(images, tmp_path / "s")["ok"] == 1  # released when the holder is done


def test_exclusive_creation_has_one_winner(tmp_path):
    results = []
    barrier = threading.Barrier(8)

    def create(k):
        barrier.wait()
        results.append((k, create_exclusive(str(tmp_path / "store.json"), f"config {k}".encode())))

    threads = [threading.Thread(target=create, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [k for k, won in results if won]
    assert len(winners) == 1
    assert (tmp_path / "store.json").read_text() == f"config {winners[0]}"
    assert os.listdir(tmp_path) == ["store.json"]


def test_two_jobs_racing_to_create_one_store_never_mix(tmp_path):
    """Two jobs with different seeds start on one new store at the same instant (threads: the
    lock is per open file, so it excludes them as it excludes processes)."""
    images = make_images(tmp_path / "img", n=4, bad=False)
    barrier = threading.Barrier(2)
    outcomes = {}

    def job(seed):
        barrier.wait()
        try:
            run_job(images, tmp_path / "s", seed=seed, shard_size=1)
            outcomes[seed] = "ok"
        except UserError as exc:
            outcomes[seed] = str(exc)

    threads = [threading.Thread(target=job, args=(seed,)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert "ok" in outcomes.values()
    for text in outcomes.values():
        assert text == "ok" or ("\n" not in text and ("another process is writing" in text
                                                     or "another config" in text))
    seed = json.loads((tmp_path / "s" / "store.json").read_text())["seed"]
    assert verify(tmp_path / "s")["complete"]
    assert {r.augment for r in FeatureStore(tmp_path / "s").records} == {
        r.augment for r in FeatureStore(_fresh(images, tmp_path / "ref", seed)).records}


def _fresh(images, path, seed):
    run_job(images, path, seed=seed, shard_size=1)
    return path


def test_umask_respected(tmp_path):
    images = make_images(tmp_path / "img", n=1, bad=False)
    old = os.umask(0o027)
    try:
        run_job(images, tmp_path / "s")
    finally:
        os.umask(old)
    for name in ("store.json", "manifest.json", "shards/r000-000000.safetensors", "shards/r000-000000.json"):
        assert stat.S_IMODE(os.stat(tmp_path / "s" / name).st_mode) == 0o640, name


def test_out_is_a_file_and_bad_stride(tmp_path, capsys):
    images = make_images(tmp_path / "img", n=1, bad=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="exists and is not a folder"):
        run_job(images, tmp_path / "file")
    with pytest.raises(UserError, match="leaves gaps"):
        run_job(images, tmp_path / "s", stride=100)  # window 64
    with pytest.raises(UserError, match="multiple of 4"):
        run_job(images, tmp_path / "s", stride=10)


@pytest.fixture()
def small_fs(tmp_path):
    """A 2 MiB tmpfs (root only); skipped where mounting is not allowed."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("needs root and mount(8) to create a small filesystem")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.decode().strip()[:80]})")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_disk_full_is_one_line_and_resumable(tmp_path, small_fs):
    images = tmp_path / "img"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):  # each target 32x32x6 fp32 at 512 px: ~25 KB; with 700 KB of ballast...
        Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(images / f"x{i}.png")
    ballast = small_fs / "ballast"
    ballast.write_bytes(b"\0" * (2 * 1024 * 1024 - 60 * 1024))  # leave ~60 KB free
    with pytest.raises(UserError) as info:
        run_job(images, small_fs / "s", augment="none", dtype="fp32", shard_size=1)
    text = _one_line(info)
    assert "No space left on device" in text and str(small_fs / "s") in text
    assert not [n for n in os.listdir(small_fs / "s" / "shards") if n.endswith(".tmp")]
    ballast.unlink()
    summary = run_job(images, small_fs / "s", augment="none", dtype="fp32", shard_size=1)
    assert summary["ok"] == 6 and summary["resumed"] >= 1
    assert verify(small_fs / "s")["complete"]


def _as_format_1(store):
    """Rewrite a fresh store the way spar_fast wrote format 1 (SHA-256, no manifest)."""
    import hashlib

    from safetensors import safe_open

    def sha(data):
        return hashlib.sha256(data).hexdigest()

    config = json.loads((store / "store.json").read_text())
    manifest = json.loads((store / "manifest.json").read_text())
    (store / "manifest.json").unlink()
    config.pop("weights")
    n = sum(len(c["items"]) for c in manifest["chunks"])
    config.update(format="spar_fast.store/1", pretrained=None, num_images=n, world_size=1,
                  images_sha256="0" * 64)
    (store / "store.json").write_text(json.dumps(config))
    for k, chunk in enumerate(manifest["chunks"]):
        index = json.loads((store / "shards" / (chunk["name"] + ".json")).read_text())
        shard = store / "shards" / index["shard"]
        records = []
        with safe_open(str(shard), framework="pt") as handle:
            for rec in index["records"]:
                for key in ("checksum", "source_bytes", "source_mtime_ns", "source_checksum"):
                    rec.pop(key, None)
                if rec["status"] == "ok":
                    t = handle.get_tensor(rec["key"])
                    rec["sha256"] = sha(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
                rec["source_sha256"] = sha(open(rec["source"], "rb").read())
                records.append(rec)
        old = {"format": "spar_fast.store/1", "rank": 0, "chunk": k, "shard": index["shard"],
               "shard_bytes": index["shard_bytes"], "shard_sha256": sha(shard.read_bytes()), "records": records}
        (store / "shards" / (chunk["name"] + ".json")).write_text(json.dumps(old))


def test_format_1_store_is_upgraded_in_place(built, capsys):
    images, store, clean = built
    _as_format_1(store)
    assert _verify_cli(store, capsys)[0] == 2
    with pytest.raises(UserError, match="upgrade"):
        FeatureStore(store)
    summary = run_job(images, store)
    assert summary["computed"] == 0 and summary["resumed"] == 7
    assert store_files(store) == store_files(clean)
