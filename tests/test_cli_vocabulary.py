"""One weights vocabulary, options declared once, arguments checked at the edge (issues 7, 8, 9),
driven through the CLI (`spar_fast.cli.main`) with the tiny backbone, offline."""
import dataclasses
import os

import numpy as np
import pytest
import torch
from PIL import Image

from spar_fast.cli import main
from spar_fast.errors import UserError
from spar_fast.train.config import TrainConfig

CPU = ["--device", "cpu"]


def one_line_error(capsys, rc, *words):
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    return err


@pytest.fixture
def photos(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, (h, w) in enumerate([(40, 56), (48, 40)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return str(folder)


@pytest.mark.parametrize("option,value,words", [
    ("--lr", "inf", ("lr", "finite")),
    ("--lr", "0", ("lr", "> 0")),
    ("--weight-decay", "nan", ("weight_decay", "finite")),
    ("--weight-decay", "-1", ("weight_decay", ">= 0")),
    ("--epochs", "0", ("epochs", ">= 1")),
    ("--accumulate", "0", ("accumulate", ">= 1")),
    ("--workers", "-1", ("workers", ">= 0")),
    ("--epochs", "two", ("--epochs", "invalid int")),
])
@pytest.mark.parametrize("command", ["train", "distill"])
def test_training_numbers_are_checked(tmp_path, capsys, command, option, value, words):
    rc = main([command, str(tmp_path), "--out", str(tmp_path / "run"), option, value, *CPU])
    one_line_error(capsys, rc, *words)
    assert not (tmp_path / "run").exists()


def test_bad_device_and_output_paths(tmp_path, capsys):
    if not torch.cuda.is_available():
        one_line_error(capsys, main(["train", str(tmp_path), "--out", str(tmp_path / "r"), "--device", "cuda"]),
                       "no CUDA GPU")
    one_line_error(capsys, main(["train", str(tmp_path), "--out", str(tmp_path / "r"), "--device", "tpu"]),
                   "tpu")
    afile = tmp_path / "file"
    afile.write_text("x")
    one_line_error(capsys, main(["train", str(tmp_path), "--out", str(afile), *CPU]), "is a file")
    one_line_error(capsys, main(["train", str(tmp_path), "--out", str(afile / "run"), *CPU]), "is a file")
    one_line_error(capsys, main(["demo", "--out", str(afile), *CPU]), "is a file")
    one_line_error(capsys, main(["embed", str(afile), "-o", str(tmp_path / "no" / "f.npy"), *CPU]),
                   "does not exist")


@pytest.mark.parametrize("args,words", [
    (["--limit", "0"], ("--limit", ">= 1")),
    (["--batch-size", "0"], ("--batch-size", ">= 1")),
    (["--prob-thd", "1.5"], ("--prob-thd", "[0, 1]")),
    (["--logit-scale", "inf"], ("--logit-scale", "finite")),
    (["--out", "r.txt"], ("must end with", ".json")),
])
def test_eval_ranges(tmp_path, capsys, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    rc = main(["eval", "--dataset", "voc21", "--root", str(tmp_path), "--backbone", "siglip2-tiny",
               "--weights", "random", *CPU, *args])
    one_line_error(capsys, rc, *words)


def test_eval_all_with_queries_is_a_one_line_error(tmp_path, capsys):
    """--queries holds one dataset's classes: with --all it is refused before any work."""
    rc = main(["eval", "--all", "--queries", "x", "--root", str(tmp_path)])
    one_line_error(capsys, rc, "--queries", "--dataset")


def test_training_options_generated_from_config(capsys):
    """Every CLI field of TrainConfig is an option of train and distill, with its default shown,
    and parsing nothing gives the dataclass defaults."""
    from spar_fast.cli import build_parser
    from spar_fast.commands.train import config_from_args

    cli_fields = [f for f in dataclasses.fields(TrainConfig) if f.metadata["cli"]]
    for command in ("train", "distill"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        for f in cli_fields:
            flag = f.metadata["flag"] or "--" + f.name.replace("_", "-")
            assert flag in text, (command, flag)
        assert "(default: 2e-05)" in text and "(default: blk_-1,blk_-2)" in text
        args = build_parser().parse_args([command, "x", "--out", "y"])
        assert config_from_args(args) == TrainConfig()
    with pytest.raises(UserError, match="unknown training option"):  # the older pretrained=: CLI only
        TrainConfig().replace(pretrained=False)
    with pytest.raises(UserError, match="unknown training option"):
        TrainConfig().replace(learning_rate=1.0)


def test_store_recorded_weights_forms(tmp_path):
    """train reads the store's record in the new form and in the older pretrained forms."""
    from spar_fast.store.records import StoreConfig
    from spar_fast.train.trainer import _store_weights

    base = {"format": "spar_fast.store/2", "backbone": "siglip2-tiny", "stride": 24, "augment": "none",
            "dtype": "fp16", "seed": 0, "shard_size": 32, "patch_size": 16, "window": 64,
            "feature_dim": 32, "mean": [0.5] * 3, "std": [0.5] * 3, "min_side": 512, "multiple": 16}

    def recorded(**keys):
        return StoreConfig.from_dict(dict(base, **keys))

    path = tmp_path / "w.safetensors"
    path.write_bytes(b"")
    assert _store_weights("s", recorded(weights="random:3")) == "random:3"
    assert _store_weights("s", recorded(pretrained="random:3")) == "random:3"
    assert _store_weights("s", recorded(pretrained=True)) == "hub"
    assert _store_weights("s", recorded(pretrained=False)) == "random:0"
    assert _store_weights("s", recorded(pretrained=None)) == "random:0"
    assert _store_weights("s", recorded(pretrained=str(path))) == str(path)
    with pytest.raises(UserError, match="--weights"):
        _store_weights("s", recorded(pretrained=str(tmp_path / "gone.pt")))


def test_random_store_then_train_without_init_file(tmp_path, photos, capsys):
    """A store made with random:SEED weights records them; train starts the student from the same
    seeded weights, and nothing but the store and the run is written."""
    from spar_fast.backbones import Backbone
    from spar_fast.jobs.extract import extract_features
    from spar_fast.store import FeatureStore
    from spar_fast.train import checkpoint as ckpt

    store = str(tmp_path / "store")
    extract_features(photos, store, backbone="siglip2-tiny", weights="random:3", augment="none",
                     device="cpu", progress=False, workers=0)
    assert FeatureStore(store).config.weights == "random:3"
    run = str(tmp_path / "run")
    rc = main(["train", store, "--out", run, "--epochs", "1", "--unfreeze", "blk_-1", "--lr", "1e-3",
               "--workers", "0", "--quiet", *CPU])
    assert rc == 0, capsys.readouterr().err
    state = ckpt.load_checkpoint(run)
    assert state["config"]["weights"] == "random:3" and state["config"]["backbone"] == "siglip2-tiny"
    from spar_fast.backbones import full_state_dict_of
    trained = full_state_dict_of(os.path.join(run, "final.safetensors"))
    init = Backbone.from_pretrained("siglip2-tiny", weights="random:3").model.state_dict()
    frozen = "visual.trunk.patch_embed.proj.weight"  # not unfrozen: still the random:3 init
    assert torch.equal(trained[frozen], init[frozen])
    assert sorted(os.listdir(tmp_path)) == ["photos", "run", "store"]


def test_distill_cli_random_weights_and_deprecated_alias(tmp_path, photos, capsys):
    run = str(tmp_path / "run")
    rc = main(["distill", photos, "--out", run, "--backbone", "siglip2-tiny", "--pretrained", "false",
               "--augment", "none", "--epochs", "1", "--workers", "0", "--quiet", *CPU])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "--pretrained is deprecated; use --weights random:0" in captured.err
    assert "final weights:" in captured.out
    assert not [n for n in os.listdir(run) if n.startswith("init")]


def test_deprecated_inference_aliases(tmp_path, capsys):
    from skimage import data

    photo = tmp_path / "p.png"
    Image.fromarray(data.astronaut()).resize((40, 32)).save(photo)
    out = tmp_path / "f.npy"
    tiny = ["--backbone", "siglip2-tiny", *CPU, "--no-resize", "-o", str(out)]
    assert main(["embed", str(photo), "--random-init", *tiny]) == 0
    assert "--random-init is deprecated; use --weights random:0" in capsys.readouterr().err
    a = np.load(out)
    assert main(["embed", str(photo), "--weights", "random:0", *tiny]) == 0
    np.testing.assert_array_equal(np.load(out), a)  # the same seeded weights
    assert main(["embed", str(photo), "--weights", "random:1", *tiny]) == 0
    assert not np.array_equal(np.load(out), a)
