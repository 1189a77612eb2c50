"""Target encodings: fp8 e4m3 with per-channel scales, zero-copy shard reads, store round trips."""
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from spar_fast.errors import UserError
from spar_fast.store.codec import (E4M3_MAX, FP8, SCALE_SUFFIX, encode_target, read_stored_target,
                                   stored_tensors)


def _features(h=13, w=7, c=48):
    """Random features with ViT-like outlier channels (a few channels 100x larger)."""
    t = torch.randn(h, w, c)
    t[..., torch.randperm(c)[:3]] *= 100.0
    return t


def test_fp8_error_is_bounded_per_element():
    t = _features()
    stored = encode_target(t, FP8)
    assert stored.data.dtype == torch.float8_e4m3fn and stored.scale.shape == (t.shape[-1],)
    back = stored.decode()
    assert back.dtype == torch.float32
    # e4m3 keeps 3 mantissa bits: round-to-nearest error <= 2^-4 of the value in the normal
    # range; below the smallest normal (2^-6 after scaling) the absolute step is 2^-9 * scale
    bound = torch.maximum(t.abs() * 2.0 ** -4, 2.0 ** -10 * stored.scale)
    assert ((back - t).abs() <= bound * (1 + 1e-6)).all()
    # each channel's largest magnitude maps onto e4m3's largest finite value exactly
    assert torch.equal(stored.data.float().abs().amax(dim=(0, 1)), torch.full((t.shape[-1],), E4M3_MAX))


def test_zero_channel_and_plain_dtypes():
    t = _features(4, 5, 6)
    t[..., 2] = 0
    stored = encode_target(t, FP8)
    assert stored.scale[2] == 1 and torch.equal(stored.decode()[..., 2], torch.zeros(4, 5))
    for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        plain = encode_target(t, name)
        assert plain.scale is None and plain.data.dtype == dtype
        assert torch.equal(plain.decode(), t.to(dtype))
    with pytest.raises(UserError, match="target dtype"):
        encode_target(t, "int8")


def test_shard_read_is_zero_copy_and_matches_safetensors(tmp_path):
    path = str(tmp_path / "s.safetensors")
    a, b = _features(), _features(3, 9, 48)
    tensors = {**stored_tensors("a", encode_target(a, FP8)), **stored_tensors("b", encode_target(b, "fp16"))}
    save_file(tensors, path)
    ref = load_file(path)
    sa, sb = read_stored_target(path, "a"), read_stored_target(path, "b")
    assert torch.equal(sa.data.view(torch.uint8), ref["a"].view(torch.uint8))
    assert torch.equal(sa.scale, ref["a" + SCALE_SUFFIX]) and sb.scale is None
    assert torch.equal(sb.data, ref["b"])
    # a view of the mapping: its storage holds exactly the tensor's bytes, no larger copy
    assert sa.data.untyped_storage().nbytes() == sa.data.numel()
    with pytest.raises(UserError, match="no tensor"):
        read_stored_target(path, "missing")


def test_corrupt_shard_header_is_user_error(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes((10**9).to_bytes(8, "little") + b"{}")
    with pytest.raises(UserError, match="corrupt shard header"):
        read_stored_target(str(path), "a")
    with pytest.raises(UserError, match="cannot read shard"):
        read_stored_target(str(tmp_path / "none.safetensors"), "a")


def test_fp8_store_round_trip(tmp_path):
    """A store chunk written with fp8 targets reads back through FeatureStore.get (decoded) and as
    the stored encoding (decoded=False), equal to the encoder's output."""
    from test_trainer import make_tiny_store, recode_store
    from spar_fast.store import FeatureStore

    store, _ = make_tiny_store(str(tmp_path), sizes=[(64, 64), (40, 70)])
    before = {r.image_id: FeatureStore(store).get(r.image_id)[0].float() for r in FeatureStore(store).records}
    recode_store(store, FP8)
    fs = FeatureStore(store)
    for rec in fs.records:
        target, rec2 = fs.get(rec.image_id)
        assert rec2.dtype == FP8 and target.dtype == torch.float32
        expected = encode_target(before[rec.image_id], FP8)
        assert torch.equal(target, expected.decode())
        raw, _ = fs.get(rec.image_id, decoded=False)
        assert torch.equal(raw.scale, expected.scale)
    assert os.path.isfile(os.path.join(store, "store.json"))


def test_cpu_table_decode_equals_the_cast():
    """The CPU decode looks codes up in a 256-entry table; every code (NaN codes included) must
    give the value of torch's own cast."""
    codes = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn)
    data = codes[torch.randint(0, 256, (5, 7, 11))]
    from spar_fast.store.codec import StoredTarget

    scale = torch.rand(11) + 0.5
    got = StoredTarget(data, scale).decode()
    want = data.float() * scale
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got.nan_to_num(), want.nan_to_num())
