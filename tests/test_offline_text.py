"""Offline text side through the CLI with the hub blocked (HF_HUB_OFFLINE=1, every socket connect
fails): ``queries`` -> ``segment/eval --queries`` without a tokenizer, ``--tokenizer PATH``, the
stand-in tokenizer for random weights only, one-line errors naming flags that exist."""
import json
import shutil
import socket

import numpy as np
import pytest
import torch
from PIL import Image

import spar_fast as sf
from spar_fast.backbones import registry, text
from spar_fast.cli import main
from spar_fast.segmentation.queries import TEMPLATES_SHA256
from spar_fast.segmentation.query_file import load_query_set
from test_datasets import make_dataset

CPU = ["--device", "cpu"]


def weights_argv(weights: str) -> list[str]:
    """The CLI spelling of "which weights": hub, random[:SEED] or a weights file path."""
    return ["--weights", weights]


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """No hub: HF_HUB_OFFLINE=1 and any socket connection attempt fails (and is counted)."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network blocked by the test")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SPAR_FAST_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    text._hub_reachable.cache_clear()
    yield attempts
    text._hub_reachable.cache_clear()


@pytest.fixture
def photo(tmp_path):
    from skimage import data
    path = tmp_path / "photo.png"
    Image.fromarray(data.astronaut()).resize((75, 50)).save(path)
    return str(path)


@pytest.fixture
def hf_tiny(tmp_path_factory, monkeypatch):
    """``siglip2-tiny`` rebuilt from a config whose tokenizer is a Hugging Face one (as SigLIP2's),
    not in the cache; returns a matching local tokenizer folder (a 9-word vocabulary)."""
    import open_clip
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    registry.ensure_registered()
    root = tmp_path_factory.mktemp("hf_tiny")
    cfg = open_clip.get_model_config("SPAR-Tiny-Sig2")
    cfg["text_cfg"].update(hf_tokenizer_name="spar-fast-test/not-cached", tokenizer_kwargs={"clean": "canonicalize"})
    (root / "configs").mkdir()
    (root / "configs" / "SPAR-Tiny-Sig2-HF.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(root / "configs")
    monkeypatch.setitem(registry.KNOWN, "siglip2-tiny", registry.ModelEntry("SPAR-Tiny-Sig2-HF", None))

    words = ["<pad>", "<eos>", "<unk>", "a", "photo", "of", "the", "person", "sky"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    fast.save_pretrained(root / "tokenizer")
    return root / "tokenizer"


def tiny_weights_file(tmp_path, name="siglip2-tiny") -> str:
    """A weights file (real weights as far as spar_fast can tell) of a tiny backbone."""
    from safetensors.torch import save_file
    bb = sf.Backbone.from_pretrained(name, weights="random")
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in bb.model.state_dict().items()}, path)
    return str(path)


def run(capsys, argv):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def never_tokenize(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a tokenizer was built")
    monkeypatch.setattr(text, "load_tokenizer", fail)
    monkeypatch.setattr(sf.Backbone, "encode_text", fail)


def read_mask(path):
    return np.array(Image.open(path))


@pytest.mark.parametrize("name", ["siglip2-tiny", "openclip-tiny"])
def test_queries_then_segment_needs_no_tokenizer(tmp_path, photo, capsys, monkeypatch, name):
    q = tmp_path / "q.safetensors"
    classes = "person, astronaut; flag; sky"
    # a weights file: the same weights in every command (the masks are compared)
    model = ["--backbone", name, *weights_argv(tiny_weights_file(tmp_path, name)), *CPU]
    rc, out, err = run(capsys, ["queries", "--classes", classes, *model, "-o", str(q)])
    assert rc == 0, err
    assert "3 classes, 4 queries" in out
    qs = load_query_set(q)
    assert qs.lines == ("person, astronaut", "flag", "sky") and qs.query_to_class.tolist() == [0, 0, 1, 2]
    assert qs.backbone == name and qs.tokenizer == "default" and qs.templates_sha256 == TEMPLATES_SHA256
    assert qs.weights_id and not qs.weights_id.startswith("random")
    assert torch.allclose(qs.queries.norm(dim=-1), torch.ones(4))
    rc, _, err = run(capsys, ["segment", photo, "--classes", classes, *model, "-o", str(tmp_path / "a.png"),
                              "--save-mask", str(tmp_path / "a_mask.png")])
    assert rc == 0, err

    never_tokenize(monkeypatch)
    rc, out, err = run(capsys, ["segment", photo, "--queries", str(q), *model, "-o", str(tmp_path / "b.png"),
                                "--save-mask", str(tmp_path / "b_mask.png")])
    assert rc == 0, err
    assert np.array_equal(read_mask(tmp_path / "a_mask.png"), read_mask(tmp_path / "b_mask.png"))


def test_queries_file_is_checked(tmp_path, photo, capsys):
    q = tmp_path / "q.safetensors"
    assert main(["queries", "--classes", "a; b", "--backbone", "siglip2-tiny", *weights_argv("random"),
                 *CPU, "-o", str(q)]) == 0
    capsys.readouterr()
    not_queries = tmp_path / "x.safetensors"
    from safetensors.torch import save_file
    save_file({"features": torch.zeros(2)}, not_queries)
    for queries, message in [(q, "made for backbone siglip2-tiny, not openclip-tiny"),
                             (tmp_path / "missing.safetensors", "query file not found"),
                             (not_queries, "not a spar_fast query file")]:
        rc, _, err = run(capsys, ["segment", photo, "--queries", str(queries), "--backbone", "openclip-tiny",
                                  *weights_argv("random"), *CPU, "-o", str(tmp_path / "o.png")])
        assert rc == 2 and message in err and err.count("\n") == 1, err


def test_eval_with_queries_and_display_names(tmp_path, capsys, monkeypatch):
    make_dataset(tmp_path, "voc21")
    model = ["--backbone", "siglip2-tiny", *weights_argv("random"), *CPU]
    q21, q2 = tmp_path / "voc21.safetensors", tmp_path / "two.safetensors"
    assert main(["queries", "--dataset", "voc21", *model, "-o", str(q21)]) == 0
    assert main(["queries", "--classes", "a; b", *model, "-o", str(q2)]) == 0
    capsys.readouterr()
    never_tokenize(monkeypatch)
    rc, out, err = run(capsys, ["eval", "--dataset", "voc21", "--root", str(tmp_path), *model, "--queries",
                                str(q21), "--per-class", "--limit", "1"])
    assert rc == 0, err
    rows = out.split("per-class IoU (%):")[1].splitlines()
    assert rows[1].split()[-1] == "background" and rows[2].split()[-1] == "aeroplane"
    rc, _, err = run(capsys, ["eval", "--dataset", "voc21", "--root", str(tmp_path), *model, "--queries", str(q2)])
    assert rc == 2 and "21 classes but 2 class lines" in err and err.count("\n") == 1


def test_stand_in_tokenizer_only_for_random_weights(tmp_path, photo, capsys, hf_tiny):
    model = ["--backbone", "siglip2-tiny", *CPU]
    out_png = str(tmp_path / "o.png")
    rc, _, err = run(capsys, ["segment", photo, "--classes", "person; sky", *model, *weights_argv("random"),
                              "-o", out_png])
    assert rc == 0, err
    assert "stand-in byte tokenizer" in err and "weights are random" in err

    weights = tiny_weights_file(tmp_path)
    rc, _, err = run(capsys, ["segment", photo, "--classes", "person; sky", *model, *weights_argv(weights),
                              "-o", out_png])
    assert rc == 2 and err.count("\n") == 1 and "stand-in" not in err
    assert "--tokenizer PATH" in err and "--queries FILE" in err and "Hugging Face cache" in err


def test_local_tokenizer_folder_and_file(tmp_path, photo, capsys, hf_tiny):
    weights = tiny_weights_file(tmp_path)
    model = ["--backbone", "siglip2-tiny", *weights_argv(weights), *CPU]
    q_folder, q_file = tmp_path / "q1.safetensors", tmp_path / "q2.safetensors"
    for q, tok in ((q_folder, hf_tiny), (q_file, hf_tiny / "tokenizer.json")):
        rc, out, err = run(capsys, ["queries", "--classes", "person; sky", *model, "--tokenizer", str(tok),
                                    "-o", str(q)])
        assert rc == 0, err
        assert f"tokenizer {tok}" in out
    assert torch.equal(load_query_set(q_folder).queries, load_query_set(q_file).queries)
    rc, _, err = run(capsys, ["segment", photo, "--queries", str(q_folder), *model, "-o", str(tmp_path / "o.png")])
    assert rc == 0, err
    rc, _, err = run(capsys, ["segment", photo, "--classes", "person; sky", *model, "--tokenizer",
                              str(hf_tiny), "-o", str(tmp_path / "o.png")])
    assert rc == 0 and "stand-in" not in err, err
    rc, _, err = run(capsys, ["segment", photo, "--classes", "a", *model, "--tokenizer",
                              str(tmp_path / "nope"), "-o", str(tmp_path / "o.png")])
    assert rc == 2 and "tokenizer not found" in err and err.count("\n") == 1


def test_bpe_tokenizer_file_matches_bundled(tmp_path, capsys):
    from open_clip.tokenizer import default_bpe
    bpe = tmp_path / "bpe.txt.gz"
    shutil.copy(default_bpe(), bpe)
    model = ["--backbone", "openclip-tiny", *weights_argv(tiny_weights_file(tmp_path, "openclip-tiny")), *CPU]
    default, local = tmp_path / "q1.safetensors", tmp_path / "q2.safetensors"
    assert main(["queries", "--classes", "sky, cloud; road", *model, "-o", str(default)]) == 0
    assert main(["queries", "--classes", "sky, cloud; road", *model, "--tokenizer", str(bpe), "-o", str(local)]) == 0
    assert torch.equal(load_query_set(default).queries, load_query_set(local).queries)
    capsys.readouterr()
    rc, _, err = run(capsys, ["queries", "--classes", "a", *model, "--tokenizer", str(tmp_path), "-o", str(local)])
    assert rc == 2 and "gzipped CLIP BPE merges file" in err and err.count("\n") == 1


def test_api_queries_and_tokenizer(tmp_path):
    from open_clip.tokenizer import default_bpe

    from spar_fast.segmentation.query_file import compute_query_set, save_query_set
    bb = sf.Backbone.from_pretrained("openclip-tiny", weights="random").eval()
    image = torch.randn(3, 48, 80)
    want = sf.segment(bb, image, ["sky, cloud", "road"])
    save_query_set(compute_query_set(bb, ["sky, cloud", "road"]), tmp_path / "q.safetensors")
    assert torch.equal(sf.segment(bb, image, queries=str(tmp_path / "q.safetensors")), want)
    assert torch.equal(sf.segment(bb, image, ["sky, cloud", "road"], tokenizer=default_bpe()), want)
    assert bb.tokenizer_path == default_bpe()


def test_hub_reachability_is_checked_once(monkeypatch, offline):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert text.hub_offline() and text.hub_offline()
    assert len(offline) == 1  # one connection attempt, no retries


@pytest.mark.slow
def test_default_backbone_segments_offline_with_random_weights(tmp_path, photo, capsys):
    """Issue 9 item 1: the default SigLIP2 B/16-512, random weights, no hub: a stand-in
    tokenizer instead of a minute of retries."""
    rc, out, err = run(capsys, ["segment", photo, "--classes", "person; flag; sky", *weights_argv("random"),
                                *CPU, "--no-resize", "-o", str(tmp_path / "seg.png")])
    assert rc == 0, err
    assert "stand-in byte tokenizer" in err and "wrote" in out
