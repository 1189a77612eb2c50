"""Text queries: class lines, the 80 templates, template averaging, caches (SPEC §1 text side)."""
import hashlib

import pytest
import torch
import torch.nn.functional as F

import spar_fast as sf
from spar_fast.errors import UserError
from spar_fast.segmentation import BUILTIN, TEMPLATES, parse_classes, text_queries
from spar_fast.segmentation.classes import display_name
from spar_fast.segmentation.queries import TEMPLATES_SHA256, class_names, embed_names
from test_segment import FakeBackbone


def test_templates_are_openai_imagenet_80():
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
    assert list(TEMPLATES) == [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]
    # sha256 of the reference's prompts/imagenet_template.py list, formatted with "{}"
    assert TEMPLATES_SHA256 == "4f976686fb651bb5803d4689dcd849f75efe0ef19a3c801355bc9a6f03c8a5af"


# sha256 of the official class files configs/siglip2/cls_<dataset>.txt of the reference
# repository (naomikombol/SPAR at 0f63ff2; the maskclip and dinov3txt copies are identical).
# The files have no final newline, so each is its lines joined by "\n".
OFFICIAL_SHA256 = {
    "voc21": "80e643a9a143966800cd4a49324fd0be2f94c0d7bac817ea16a5f66ed706bc38",
    "voc20": "c68f65a2b342397cdfe05ff5289517e1e370b1d574a218ff1a17db27f2576db1",
    "context60": "5e620446a8699f292a4c2e37fa8918a33dd4f14713dc1b3f22884d2be68b45a1",
    "context59": "cd808465f06a16169edc25580073f0eda347e64f06cc1c2e24acd0b237f6497d",
    "cityscapes": "6f6782fc1bf92bfd9f5562192e92045e0e093870e613f387f6c98fc66d4ceba4",
    "ade20k": "e53ded02c488bdb903ef000a2d207e4ac4f2bb4502a72572e4aab7c2504aef3a",
}


@pytest.mark.parametrize("dataset", sorted(OFFICIAL_SHA256))
def test_builtin_classes_equal_official_files(dataset):
    text = "\n".join(BUILTIN[dataset])
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == OFFICIAL_SHA256[dataset]


def test_builtin_class_counts_and_samples():
    counts = {k: len(v) for k, v in BUILTIN.items()}
    assert counts == {"voc21": 21, "voc20": 20, "context60": 60, "context59": 59,
                      "cityscapes": 19, "ade20k": 150}
    assert BUILTIN["voc21"][1:] == BUILTIN["voc20"]
    # the official Context60 file ends with "wood " (trailing space), Context59's with "wood"
    assert BUILTIN["context60"][-1] == "wood " and BUILTIN["context59"][-1] == "wood"
    assert BUILTIN["context60"][1:-1] == BUILTIN["context59"][:-1]
    assert BUILTIN["voc21"][15] == ("person, person in shirt, person in jeans, person in dress, "
                                    "person in sweater, person in skirt, person in jacket")
    for lines in BUILTIN.values():
        assert parse_classes(lines) == list(lines)  # no empty names, kept as written


def test_display_names():
    assert display_name(BUILTIN["voc21"][0]) == "background"
    assert display_name(BUILTIN["voc21"][15]) == "person"
    assert display_name(BUILTIN["voc21"][20]) == "television monitor"
    assert display_name(BUILTIN["context60"][0]) == "background"
    assert display_name(BUILTIN["context60"][-1]) == "wood"
    assert display_name("sky, wall") == "sky"


def test_parse_classes_forms(tmp_path):
    f = tmp_path / "classes.txt"
    f.write_text("road, street\ncar\n  sky \nroad,street\n\n")
    want = ["road, street", "car", "  sky ", "road,street"]  # kept as written, trailing blanks dropped
    assert parse_classes(str(f)) == want
    assert parse_classes(f) == want
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(b"road, street\r\nwood \r\n")
    assert parse_classes(crlf) == ["road, street", "wood "]
    assert parse_classes("road, street; car;sky ") == ["road, street", "car", "sky"]
    assert parse_classes(["a", "b, c", "d "]) == ["a", "b, c", "d "]
    with pytest.raises(UserError, match="no classes"):
        parse_classes(" ; ")
    for bad in (["road, , street"], ["road, "], [" "]):
        with pytest.raises(UserError, match="empty name"):
            parse_classes(bad)
    with pytest.raises(UserError, match="one line"):
        parse_classes(["a\nb"])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(UserError, match="class file"):
        parse_classes(str(empty))
    gap = tmp_path / "gap.txt"
    gap.write_text("a\n\nb\n")
    with pytest.raises(UserError, match="line 2 is blank"):
        parse_classes(gap)


def test_class_names_mapping():
    names, q2c = class_names(["sky, cloud", "road", "car, truck, van", "a,b", "wood "])
    assert names == ["sky", "cloud", "road", "car", "truck", "van", "a,b", "wood "]
    assert q2c.tolist() == [0, 0, 1, 2, 2, 2, 3, 4]


def test_embed_names_matches_loop():
    bb = FakeBackbone()
    names = ["car", "person in shirt", "tree"]
    got = embed_names(bb.encode_text, names)
    for i, name in enumerate(names):
        e = bb.encode_text([t.format(name) for t in TEMPLATES]).double()
        e = e / e.norm(dim=-1, keepdim=True)
        want = e.mean(0) / e.mean(0).norm()
        # fp32 mean of 80 unit vectors vs fp64: ~1e-7 relative
        torch.testing.assert_close(got[i].double(), want, atol=1e-6, rtol=0)
    assert torch.allclose(got.norm(dim=-1), torch.ones(3))


def reference_queries(model, tokenizer, path):
    """The reference's query loop written out: readlines, split on ", ", drop newlines; per name
    its 80 prompts in one batch, normalize, mean, normalize."""
    with open(path) as f:
        lines = f.readlines()
    names = [n.replace("\n", "") for line in lines for n in line.split(", ")]
    rows = []
    with torch.no_grad():
        for name in names:
            feature = model.encode_text(tokenizer([t.format(name) for t in TEMPLATES]))
            feature /= feature.norm(dim=-1, keepdim=True)
            feature = feature.mean(dim=0)
            feature /= feature.norm()
            rows.append(feature.unsqueeze(0))
    return torch.cat(rows)


# Lines of the official files in their format: the VOC multi-name lines, Context60's last line
# "wood " with its trailing space and no final newline.
OFFICIAL_SAMPLE = BUILTIN["voc21"][14:16] + BUILTIN["voc21"][20:] + BUILTIN["context60"][-2:]


@pytest.mark.parametrize("name,lines", [
    ("siglip2-tiny", OFFICIAL_SAMPLE), ("openclip-tiny", OFFICIAL_SAMPLE),
    pytest.param("siglip2-tiny", BUILTIN["context60"], marks=pytest.mark.slow),
])
def test_official_class_file_bit_exact(tmp_path, name, lines):
    bb = sf.Backbone.from_pretrained(name, weights="random").eval()
    path = tmp_path / "cls.txt"
    path.write_text("\n".join(lines))  # as the official files (byte for byte for a full list)
    want = reference_queries(bb.model, bb.tokenizer, path)
    for classes in (str(path), lines):
        got, q2c, got_lines = text_queries(bb, classes)
        assert torch.equal(got, want)
    assert got_lines == list(lines) and int(q2c.max()) == len(lines) - 1


def test_memory_cache_encodes_once():
    bb = FakeBackbone()
    q1, c1, lines = text_queries(bb, "sky, cloud; road")
    calls = bb.text_calls
    q2, c2, _ = text_queries(bb, ["sky, cloud", "road"])
    assert bb.text_calls == calls and q1 is q2
    assert lines == ["sky, cloud", "road"] and c1.tolist() == [0, 0, 1]
    assert q1.shape == (3, bb.feature_dim)


def test_disk_cache_roundtrip(tmp_path):
    bb = FakeBackbone()
    bb.weights_id = "hub"
    q, _, _ = text_queries(bb, ["car", "tree"], cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.pt"))) == 1
    other = FakeBackbone(seed=5)  # new object: empty memory cache
    other.weights_id = "hub"
    other.encode_text = None  # must not be called: the disk cache answers
    q2, _, _ = text_queries(other, ["car", "tree"], cache_dir=tmp_path)
    assert torch.equal(q, q2)
    third = FakeBackbone()  # no weights_id: never cached on disk
    text_queries(third, ["car", "bus"], cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.pt"))) == 1


def test_queries_unit_norm_and_distinct():
    bb = FakeBackbone()
    q, _, _ = text_queries(bb, BUILTIN["cityscapes"])
    assert torch.allclose(q.norm(dim=-1), torch.ones(len(q)), atol=1e-6)
    sim = q @ q.t() - 2 * torch.eye(len(q))
    assert float(sim.max()) < 0.999
    assert F.normalize(q, dim=-1).shape == (19, bb.feature_dim)


def test_disk_cache_key_follows_weights_id_and_tokenizer(tmp_path):
    def backbone(wid, tokenizer_path=None):
        bb = FakeBackbone()
        bb.name, bb.weights_id, bb.tokenizer_path = "fake", wid, tokenizer_path
        return bb

    text_queries(backbone("random:0"), ["car"], cache_dir=tmp_path)
    text_queries(backbone(None), ["car"], cache_dir=tmp_path)
    assert not list(tmp_path.glob("*.pt"))  # random or unknown weights: never on disk
    text_queries(backbone("hub"), ["car"], cache_dir=tmp_path)
    text_queries(backbone("hub", "/tok"), ["car"], cache_dir=tmp_path)
    text_queries(backbone("/w.safetensors"), ["car"], cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.pt"))) == 3


@pytest.mark.parametrize("progress,shown", [(True, True), (False, False), (None, False)])
def test_text_progress_bar(monkeypatch, capsys, progress, shown):
    import spar_fast.segmentation.queries as queries
    monkeypatch.setattr(queries, "_PROGRESS_DELAY_S", 0.0)
    embed_names(FakeBackbone().encode_text, ["car", "tree", "sky"], progress=progress)
    err = capsys.readouterr().err  # not a terminal under pytest: None means no bar
    assert ("text queries" in err) == shown
