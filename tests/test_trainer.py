"""The distillation loop: reference loss, packing, frozen prefix, outputs, checkpoints, errors."""
import json
import os

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from spar_fast.backbones import Backbone, full_state_dict_of, registry
from spar_fast.errors import UserError
from spar_fast.train import train
from spar_fast.train.loader import StoreDataset
from spar_fast.train.sampler import PackingSampler
from spar_fast.train.step import chunk_loss

# Source sizes; the store upscales to a 512 short side -> grids 32x32, 32x48, 45x32 (odd sizes).
SIZES = [(64, 64), (60, 90), (100, 70)]


def make_tiny_store(root, backbone="siglip2-tiny", sizes=SIZES, seed=0):
    """Random-pixel images + a seeded random teacher -> (store path, its weights "random:SEED")."""
    from spar_fast.jobs.extract import extract_features

    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "img"), exist_ok=True)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(os.path.join(root, "img", f"{i}.png"))
    init = f"random:{seed}"
    store = os.path.join(root, "store")
    extract_features(os.path.join(root, "img"), store, backbone=backbone, weights=init,
                     augment="none", device="cpu", progress=False, workers=0)
    return store, init


def recode_store(store, dtype, poison=None):
    """Rewrite every chunk of ``store`` with its targets encoded as ``dtype`` (records' dtype and
    checksum updated, so the store stays self-consistent); ``poison``: an image id whose target
    becomes NaN (a store whose recorded checksum matches NaN data: only the loss can catch it)."""
    from dataclasses import replace

    from spar_fast.store import FeatureStore
    from spar_fast.store.codec import encode_target, stored_tensors
    from spar_fast.store.layout import SHARD_DIR, read_json, target_digest
    from spar_fast.store.records import StoreRecord
    from spar_fast.store.records import read_manifest
    from spar_fast.store.writer import write_chunk

    fs = FeatureStore(store)
    shard_dir = os.path.join(store, SHARD_DIR)
    for chunk in read_manifest(store):
        index = read_json(os.path.join(shard_dir, chunk.name + ".json"))
        records, tensors = [], {}
        for rec in map(StoreRecord.from_dict, index["records"]):
            if rec.ok:
                target = fs.get(rec.image_id)[0].float()
                if rec.image_id == poison:
                    target = torch.full_like(target, float("nan"))
                stored = encode_target(target, dtype)
                tensors.update(stored_tensors(rec.key, stored))
                rec = replace(rec, dtype=dtype, checksum=target_digest(stored))
            records.append(rec)
        write_chunk(shard_dir, chunk.name, records, tensors)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_store(str(tmp_path_factory.mktemp("tiny")))


def _items(store, bb):
    ds = StoreDataset(store, bb.mean, bb.std)
    return [(s.image, s.target.decode(), s.index) for s in (ds[i] for i in range(len(ds)))]


def test_step_loss_is_reference_mse_and_mean_over_images(tiny):
    store, init = tiny
    bb = Backbone.from_pretrained("siglip2-tiny", weights=init)
    items = _items(store, bb)
    with torch.no_grad():
        # one image: exactly the reference loss (single image forward, target upcast to fp32)
        x, t, _ = items[1]
        ref = F.mse_loss(bb(x[None])[0], t.float())
        one = chunk_loss(bb, [x], [t], 0, 1, "fp32")[0]
        # packed: the mean of per-image MSEs; fp32 packed vs per-image attention differ by
        # summation order only (~1e-7 relative)
        per = [F.mse_loss(bb(x[None])[0], t.float()) for x, t, _ in items]
        packed = chunk_loss(bb, [i[0] for i in items], [i[1] for i in items], 0, len(items), "fp32")[0]
    torch.testing.assert_close(one, ref, rtol=1e-5, atol=0)
    torch.testing.assert_close(packed, torch.stack(per).mean(), rtol=1e-5, atol=0)


def test_packed_gradient_is_mean_of_single_gradients(tiny):
    store, init = tiny
    bb = Backbone.from_pretrained("siglip2-tiny", weights=init)
    items = _items(store, bb)
    params = [p for n, p in bb.model.named_parameters() if n.startswith(bb.block_param_prefix(-1))]
    chunk_loss(bb, [i[0] for i in items], [i[1] for i in items], 2, len(items), "fp32")[0].backward()
    packed = [p.grad.clone() for p in params]
    bb.zero_grad(set_to_none=True)
    for x, t, _ in items:  # accumulate (1/N) * grad of each image alone
        chunk_loss(bb, [x], [t], 2, len(items), "fp32")[0].backward()
    for a, b in zip(packed, [p.grad for p in params]):
        # fp32 sums in another order: relative error ~1e-6 of the gradient scale
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6 * b.abs().max().item())


def test_one_image_per_step_matches_hand_written_reference(tiny, tmp_path):
    """train() with defaults == the reference loop: AdamW(2e-5, wd 1e-4), per-image MSE, constant lr."""
    store, init = tiny
    final = train(store, str(tmp_path / "run"), epochs=2, device="cpu", workers=0, progress=False)
    bb = Backbone.from_pretrained("siglip2-tiny", weights=init)
    n = bb.num_blocks
    prefixes = (bb.block_param_prefix(n - 1), bb.block_param_prefix(n - 2))
    names = [k for k, _ in bb.model.named_parameters() if k.startswith(prefixes)]
    named = dict(bb.model.named_parameters())
    opt = torch.optim.AdamW([named[k] for k in names], lr=2e-5, weight_decay=1e-4)
    items = _items(store, bb)
    sampler = PackingSampler([1] * len(items), None, seed=0)
    for epoch in range(2):
        for step in sampler.epoch_plan(epoch):
            (i,), = step
            opt.zero_grad()
            F.mse_loss(bb(items[i][0][None])[0], items[i][1].float()).backward()
            opt.step()
    trained = full_state_dict_of(final)  # a delta: base rebuilt, trained tensors applied
    initial = Backbone.from_pretrained("siglip2-tiny", weights=init).model.state_dict()
    for k, v in bb.model.state_dict().items():
        if k in names:
            assert not torch.equal(trained[k], initial[k]), k
            # single-image vs packed forward: fp32 reorderings; each Adam step moves <= ~lr
            torch.testing.assert_close(trained[k], v, rtol=0, atol=2e-7)
        else:
            assert torch.equal(trained[k], initial[k]), f"frozen {k} changed"


def test_run_outputs_and_checkpoint_loads_into_open_clip(tiny, tmp_path):
    store, _ = tiny
    run = tmp_path / "run"
    final = train(store, str(run), epochs=2, tokens_per_step=2600, lr=1e-4, schedule="cosine",
                  warmup_steps=2, device="cpu", workers=0, progress=False)
    records = [json.loads(line) for line in open(run / "metrics.jsonl")]
    sampler = PackingSampler([1024, 1536, 1440], 2600, seed=0)
    assert len(records) == len(sampler.epoch_plan(0)) + len(sampler.epoch_plan(1))
    assert [r["step"] for r in records] == list(range(1, len(records) + 1))
    assert set(records[0]) == {"step", "epoch", "loss", "lr", "images_per_s", "tokens"}
    assert records[0]["lr"] == pytest.approx(5e-5)  # warmup 1/2
    assert (run / "loss.png").stat().st_size > 0
    assert sorted(p.name for p in run.iterdir() if p.suffix == ".safetensors") == ["final.safetensors",
                                                                                "state-final.safetensors"]
    model = open_clip.create_model(registry.resolve("siglip2-tiny").open_clip_name, pretrained=None)
    model.load_state_dict(full_state_dict_of(final), strict=True)
    # a second call finds the finished run and returns it without training
    mtime = os.path.getmtime(final)
    assert train(store, str(run), epochs=2, tokens_per_step=2600, lr=1e-4, schedule="cosine",
                 warmup_steps=2, device="cpu", workers=0, progress=False) == final
    assert os.path.getmtime(final) == mtime


@pytest.mark.parametrize("unfreeze, first", [("blk_-1", 2), ("posembed,blk_-1", 0), ("attn_pool_kv", 3),
                                             ("head", 3), ("blk_-1,head", 2)])
def test_frozen_prefix_runs_without_grad(tiny, tmp_path, monkeypatch, unfreeze, first):
    store, _ = tiny
    seen = []
    original = Backbone.forward_packed

    def spy(self, images, grad_from_block=0):
        seen.append(grad_from_block)
        return original(self, images, grad_from_block=grad_from_block)

    monkeypatch.setattr(Backbone, "forward_packed", spy)
    train(store, str(tmp_path / "run"), epochs=1, unfreeze=unfreeze, tokens_per_step=10**6,
          device="cpu", workers=0, progress=False)
    assert seen == [first]


def test_head_token_trains_the_dense_head_only(tiny, tmp_path):
    """``unfreeze="head"``: the student differs from its init exactly in the dense head."""
    from spar_fast.train.unfreeze import resolve_unfreeze

    store, init = tiny
    final = train(store, str(tmp_path / "run"), epochs=1, unfreeze="head", lr=1e-3, device="cpu",
                  workers=0, progress=False)
    base = Backbone.from_pretrained("siglip2-tiny", weights=init)
    student = Backbone.from_pretrained("siglip2-tiny", weights=final)
    head = set(resolve_unfreeze("head", base).names)
    assert set(student.delta.names) == head
    before, after = dict(base.model.named_parameters()), dict(student.model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and changed <= head


def test_bad_input_is_user_error(tiny, tmp_path):
    store, _ = tiny
    kw = dict(device="cpu", workers=0, progress=False)
    with pytest.raises(UserError, match="does not exist"):
        train(str(tmp_path / "nope"), str(tmp_path / "a"), **kw)
    with pytest.raises(UserError, match="needs a CUDA device"):
        train(store, str(tmp_path / "a"), precision="bf16", **kw)
    with pytest.raises(UserError, match="bad unfreeze token"):
        train(store, str(tmp_path / "a"), unfreeze="blk_-1,heads", **kw)
    with pytest.raises(UserError, match="epochs"):
        train(store, str(tmp_path / "a"), epochs=0, **kw)
    train(store, str(tmp_path / "b"), epochs=1, **kw)
    with pytest.raises(UserError, match="other settings .*lr"):
        train(store, str(tmp_path / "b"), epochs=2, lr=1e-3, **kw)


def test_config_passed_whole_equals_keywords(tiny, tmp_path):
    """train(store, out, TrainConfig(...)) and train(store, out, **same fields) are one run: the
    second call finds the first's finished run (same resume key) instead of another config."""
    from spar_fast.train import TrainConfig

    store, init = tiny
    cfg = TrainConfig(epochs=1, unfreeze="blk_-1", lr=1e-4, device="cpu", workers=0, progress=False)
    final = train(store, str(tmp_path / "run"), cfg)
    assert train(store, str(tmp_path / "run"), epochs=1, unfreeze="blk_-1", lr=1e-4, weights=init,
                 device="cpu", workers=0, progress=False) == final
    with pytest.raises(UserError, match="other settings .*weights"):
        train(store, str(tmp_path / "run"), cfg, weights="random:5")


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory):
    """The tiny store with image "1"'s target NaN (fp16, hash consistent)."""
    store, init = make_tiny_store(str(tmp_path_factory.mktemp("poisoned")))
    recode_store(store, "fp16", poison="1")
    return store, init


def test_nonfinite_target_stops_with_step_and_image_and_keeps_last_good_checkpoint(poisoned, tmp_path):
    store, init = poisoned
    run = tmp_path / "run"
    with pytest.raises(UserError, match=r"non-finite loss or gradient at step (\d+) \(images 1\)") as err:
        train(store, str(run), epochs=1, checkpoint_every=1, log_every=10, device="cpu", num_workers=0,
              progress=False)
    assert "\n" not in str(err.value)
    bad_step = int(err.value.args[0].split("step ")[1].split(" ")[0])
    from spar_fast.train.checkpoint import load_checkpoint

    state = load_checkpoint(str(run))
    # the checkpoint before the bad step is kept (checkpoints are written only after a finite read)
    assert state["global_step"] == bad_step - 1
    if bad_step > 1:
        weights = load_file(state["weights"])
        assert all(torch.isfinite(v).all() for v in weights.values())
    assert not (run / "final.safetensors").exists()
    # the steps before the bad one are logged, the bad one is not
    records = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert [r["step"] for r in records] == list(range(1, bad_step))


def test_skip_nonfinite_equals_training_without_the_bad_image(poisoned, tmp_path):
    """One image per step: skipping the NaN image's step leaves weights exactly as the reference
    loop that never trains on it (fused AdamW's device-side skip touches no state)."""
    store, init = poisoned
    run = tmp_path / "run"
    with pytest.warns(UserWarning, match="1 image"):
        final = train(store, str(run), epochs=1, skip_nonfinite=True, log_every=2, device="cpu",
                      num_workers=0, progress=False)
    assert json.load(open(run / "summary.json"))["skipped_images"] == 1
    bb = Backbone.from_pretrained("siglip2-tiny", weights=init)
    n = bb.num_blocks
    names = [k for k, _ in bb.model.named_parameters()
             if k.startswith((bb.block_param_prefix(n - 1), bb.block_param_prefix(n - 2)))]
    named = dict(bb.model.named_parameters())
    opt = torch.optim.AdamW([named[k] for k in names], lr=2e-5, weight_decay=1e-4)
    items = _items(store, bb)
    for (i,), in PackingSampler([1] * len(items), None, seed=0).epoch_plan(0):
        if i == 1:
            continue
        opt.zero_grad()
        F.mse_loss(bb(items[i][0][None])[0], items[i][1].float()).backward()
        opt.step()
    trained = load_file(final)
    for k in names:
        # single-image vs packed forward and fused vs foreach AdamW: fp32 reorderings only
        torch.testing.assert_close(trained[k], named[k].detach(), rtol=0, atol=2e-7)
    records = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert sum(r["loss"] is None for r in records) == 0  # the skipped step's loss is the kept images' (0)


def test_fp8_targets_train(tiny, tmp_path):
    store, init = make_tiny_store(str(tmp_path / "s"), sizes=[(64, 64), (60, 90)])
    recode_store(store, "fp8_e4m3")
    final = train(store, str(tmp_path / "run"), epochs=1, tokens_per_step=4000, device="cpu",
                  num_workers=0, progress=False)
    assert all(torch.isfinite(v).all() for v in load_file(final).values())


def test_log_every_writes_every_step_and_is_checked(tiny, tmp_path):
    store, _ = tiny
    run = tmp_path / "run"
    train(store, str(run), epochs=2, log_every=4, device="cpu", num_workers=0, progress=False)
    records = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert [r["step"] for r in records] == list(range(1, 7))
    assert all(r["loss"] > 0 for r in records)
    with pytest.raises(UserError, match="log_every"):
        train(store, str(tmp_path / "b"), log_every=0, device="cpu", num_workers=0, progress=False)


def _step_setup(device, skip_nonfinite=False):
    from spar_fast.train.step import TrainStep, make_optimizer
    from spar_fast.train.unfreeze import apply_unfreeze

    torch.manual_seed(0)
    bb = Backbone.from_pretrained("siglip2-tiny", weights="random")
    trainable = apply_unfreeze("blk_-1", bb)
    bb.to(device).train()
    params = [p for p in bb.model.parameters() if p.requires_grad]
    step = TrainStep(bb, params, make_optimizer(params, 1e-3, 1e-4), torch.amp.GradScaler(device.type, enabled=False),
                     trainable.first_block, "fp32", skip_nonfinite=skip_nonfinite)
    images = [torch.randn(3, 64, 80, device=device), torch.randn(3, 48, 64, device=device)]
    targets = [torch.randn(*bb.grid(*im.shape[1:]), bb.feature_dim, device=device) for im in images]
    return bb, params, step, images, targets


def test_nonfinite_step_changes_no_weight_and_no_optimizer_state():
    cpu = torch.device("cpu")
    bb, params, step, images, targets = _step_setup(cpu)
    step([(images, targets)], 2, 1e-3)  # one good step: optimizer state exists
    before = [p.detach().clone() for p in params]
    state = {k: v.clone() for k, v in step.optimizer.state[params[0]].items()}
    bad = [targets[0], torch.full_like(targets[1], float("inf"))]
    step([(images, bad)], 2, 1e-3)
    losses, flags, skipped = step.read()
    assert flags == [False, True] and skipped == 0 and not np.isfinite(losses[1])
    assert all(torch.equal(a, b) for a, b in zip(before, params))
    assert all(torch.equal(v, step.optimizer.state[params[0]][k]) for k, v in state.items())
    step([(images, targets)], 2, 1e-3)  # and the next good step trains again
    assert not all(torch.equal(a, b) for a, b in zip(before, params))


def test_skip_mode_drops_only_the_bad_image():
    """With skip_nonfinite the good image of a mixed chunk still trains, exactly as alone (its loss
    is divided by the step's image count, 2)."""
    cpu = torch.device("cpu")
    _, params, step, images, targets = _step_setup(cpu, skip_nonfinite=True)
    step([(images, [targets[0], torch.full_like(targets[1], float("nan"))])], 2, 1e-3)
    losses, flags, skipped = step.read()
    assert flags == [False] and skipped == 1 and np.isfinite(losses[0])
    mixed = [p.detach().clone() for p in params]
    _, params2, alone, _, _ = _step_setup(cpu, skip_nonfinite=True)
    alone([([images[0]], [targets[0]])], 2, 1e-3)
    for a, b in zip(mixed, params2):
        # packed (2 images) vs 1-image forward of the same image: fp32 reorderings only
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host syncs exist only with a device")
def test_step_makes_no_host_sync_on_cuda():
    """The step's claim: nothing in it waits for the GPU (torch raises on a synchronizing call)."""
    bb, params, step, images, targets = _step_setup(torch.device("cuda"))
    step([(images, targets)], 2, 1e-3)  # warm-up: lazy state creation may sync once
    torch.cuda.set_sync_debug_mode("error")
    try:
        step([(images, targets)], 2, 1e-3)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert step.read()[1] == [False, False]
