"""Evaluation throughput on a mixed-size ADE20K-like image set: packed batches vs one at a time.

Images have ADE-like shapes after the test resize (short side 672, aspect 0.6-2.0 on GPU; small
sizes with the tiny backbone on CPU) and the 150 ADE20K class lines.
* ``reference`` — one image per forward (``segment`` per image), as the reference evaluates.
* ``packed`` — ``segment_batch``: the images of a batch in one packed forward (varlen attention),
  then the per-image postprocess.
extra_info records images/s.
"""
import pytest

import spar_fast as sf
from spar_fast.segmentation import BUILTIN, segment_batch

from conftest import ON_GPU, ade_like_images, pick, run_variant  # noqa: E402

if ON_GPU:
    BACKBONE, SHORT, COUNT, BATCH = "siglip2-b16-512", 672, pick(8, 32), 8
else:
    BACKBONE, SHORT, COUNT, BATCH = "siglip2-tiny", 64, pick(6, 16), 4
CLASSES = list(BUILTIN["ade20k"])


@pytest.fixture(scope="module")
def backbone(device):
    return sf.Backbone.from_pretrained(BACKBONE, weights="random").to(device).eval()


@pytest.fixture(scope="module")
def images(device):
    return ade_like_images(COUNT, SHORT, device)


@pytest.mark.parametrize("variant", ["reference", "packed"])
def test_eval_packed(benchmark, backbone, images, device, variant):
    sf.segment(backbone, images[0], CLASSES)  # text queries cached outside the timing

    def run():
        if variant == "reference":
            return [sf.segment(backbone, im, CLASSES) for im in images]
        return [lab for i in range(0, len(images), BATCH)
                for lab in segment_batch(backbone, images[i:i + BATCH], CLASSES)]

    labels = run_variant(benchmark, run, device=device, variant=variant,
                         group=f"eval {len(images)} mixed images short {SHORT} {BACKBONE}",
                         images=len(images), batch=BATCH if variant == "packed" else 1)
    assert [tuple(lab.shape) for lab in labels] == [tuple(im.shape[1:]) for im in images]
    benchmark.extra_info["images_per_s"] = len(images) / benchmark.stats.stats.median
