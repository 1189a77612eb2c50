"""Text queries: class lines, the 80 templates, template averaging, caches (SPEC §1 text side)."""
import pytest
import torch
import torch.nn.functional as F

from spar_fast.errors import UserError
from spar_fast.segmentation import BUILTIN, TEMPLATES, parse_classes, text_queries
from spar_fast.segmentation.queries import class_names, embed_names
from test_segment import FakeBackbone


def test_templates_are_openai_imagenet_80():
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
    assert list(TEMPLATES) == [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]


def test_builtin_class_counts():
    counts = {k: len(v) for k, v in BUILTIN.items()}
    assert counts == {"voc21": 21, "voc20": 20, "context60": 60, "context59": 59,
                      "cityscapes": 19, "ade20k": 150}
    assert BUILTIN["voc21"][1:] == BUILTIN["voc20"]
    assert BUILTIN["context60"][1:] == BUILTIN["context59"]
    for lines in BUILTIN.values():
        parse_classes(lines)  # no empty names


def test_parse_classes_forms(tmp_path):
    f = tmp_path / "classes.txt"
    f.write_text("road, street\n\ncar\n  sky \n")
    assert parse_classes(str(f)) == ["road, street", "car", "sky"]
    assert parse_classes(f) == ["road, street", "car", "sky"]
    assert parse_classes("road, street; car;sky") == ["road, street", "car", "sky"]
    assert parse_classes(["a", "b, c"]) == ["a", "b, c"]
    with pytest.raises(UserError, match="no classes"):
        parse_classes(" ; ")
    with pytest.raises(UserError, match="empty name"):
        parse_classes(["road,,street"])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(UserError, match="class file"):
        parse_classes(str(empty))


def test_class_names_mapping():
    names, q2c = class_names(["sky, cloud", "road", "car, truck, van"])
    assert names == ["sky", "cloud", "road", "car", "truck", "van"]
    assert q2c.tolist() == [0, 0, 1, 2, 2, 2]


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


def test_embed_names_normalizes_each_prompt():
    # an encoder returning unnormalized rows: each prompt must be normalized before averaging
    base = FakeBackbone()

    def encode(texts):
        e = base.encode_text(texts)
        scale = torch.tensor([1.0 + 9.0 * (len(t) % 2) for t in texts])[:, None]
        return e * scale

    got = embed_names(encode, ["cat"])
    want = embed_names(base.encode_text, ["cat"])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


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
    bb.weights_name = "fake|pretrained"
    q, _, _ = text_queries(bb, ["car", "tree"], cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.pt"))) == 1
    other = FakeBackbone(seed=5)  # new object: empty memory cache
    other.weights_name = "fake|pretrained"
    other.encode_text = None  # must not be called: the disk cache answers
    q2, _, _ = text_queries(other, ["car", "tree"], cache_dir=tmp_path)
    assert torch.equal(q, q2)
    third = FakeBackbone()  # no weights_name: never cached on disk
    text_queries(third, ["car", "bus"], cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.pt"))) == 1


def test_queries_unit_norm_and_distinct():
    bb = FakeBackbone()
    q, _, _ = text_queries(bb, BUILTIN["cityscapes"])
    assert torch.allclose(q.norm(dim=-1), torch.ones(len(q)), atol=1e-6)
    sim = q @ q.t() - 2 * torch.eye(len(q))
    assert float(sim.max()) < 0.999
    assert F.normalize(q, dim=-1).shape == (19, bb.feature_dim)
