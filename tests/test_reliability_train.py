"""Damaged stores and hostile run folders through ``spar-fast train``: one line, exit 2, no
payload run, nothing trained on a wrong target (tiny SigLIP2 store of test_trainer.py)."""
import shutil

import pytest

from spar_fast.cli import main
from test_reliability_files import _plant
from test_trainer import make_tiny_store


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    return make_tiny_store(str(tmp_path_factory.mktemp("tiny_rel")))[0]


def _train(store, run, capsys):
    code = main(["train", str(store), "--out", str(run), "--epochs", "1", "--workers", "0",
                 "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.fixture()
def store_copy(tiny_store, tmp_path):
    dst = tmp_path / "store"
    shutil.copytree(tiny_store, dst)
    return dst


def test_flipped_target_stops_training(store_copy, tmp_path, capsys):
    shard = sorted((store_copy / "shards").glob("*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    for k in range(16):
        data[-100 + k] ^= 0xA5
    shard.write_bytes(bytes(data))
    code, err = _train(store_copy, tmp_path / "run", capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "checksum" in err and shard.name in err
    assert not (tmp_path / "run" / "final.safetensors").exists()


def test_truncated_index_refused(store_copy, tmp_path, capsys):
    index = sorted((store_copy / "shards").glob("*.json"))[0]
    index.write_bytes(index.read_bytes()[:60])
    code, err = _train(store_copy, tmp_path / "run", capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "holds 0 of the 3 images" in err


def test_planted_trainer_state_never_runs(tiny_store, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    marker = tmp_path / "PWNED"
    _plant(run / "trainer_state.pt", marker)
    code, err = _train(tiny_store, run, capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "refused" in err
    assert not marker.exists()


def test_out_is_a_file(tiny_store, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    code, err = _train(tiny_store, tmp_path / "f", capsys)
    assert code == 2 and "is a file; a folder is needed" in err


def test_summary_written_on_resume_and_user_files_kept(tiny_store, tmp_path, capsys):
    """Killed between the final weights and summary.json: the rerun writes the summary without
    training again; a user's files in --out (look-alike names included) are never removed."""
    run = tmp_path / "run"
    run.mkdir()
    foreign = ["weights-best.safetensors", "state-x.safetensors", "notes.tmp", ".tmpAbC123"]
    for name in foreign:
        (run / name).write_text("a user's file")
    assert _train(tiny_store, run, capsys)[0] == 0
    final = (run / "final.safetensors").read_bytes()
    (run / "summary.json").unlink()
    code, err = _train(tiny_store, run, capsys)
    assert code == 0 and (run / "summary.json").exists()
    assert (run / "final.safetensors").read_bytes() == final
    assert all((run / n).read_text() == "a user's file" for n in foreign)
