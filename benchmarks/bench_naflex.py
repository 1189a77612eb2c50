"""NaFlex dense features of mixed-size images: the timm reference per image vs spar_fast's paths.

Images have ADE-like shapes (aspect 0.6-2.0; the test resize's short side on GPU, small on CPU);
each is resized by the NaFlex input rule to ``BUDGET`` patches.
* ``reference`` — :func:`spar_fast.backbones.reference.naflex_reference` per image: timm's
  ``get_image_size_for_seq``, the resize, timm's ``forward_features``, the dense head.
* ``batched`` — ``sf.dense_features`` per image (spar_fast's embedding, SDPA blocks).
* ``packed`` — ``sf.dense_features`` on the list: one packed forward (varlen attention).
extra_info records images/s.
"""
import pytest
import torch

import spar_fast as sf
from spar_fast.backbones.reference import naflex_reference

from conftest import ON_GPU, ade_like_images, pick, run_variant  # noqa: E402

if ON_GPU:
    BACKBONE, SHORT, COUNT, BUDGET = "siglip2-b16-naflex", 672, pick(8, 32), 256
else:
    BACKBONE, SHORT, COUNT, BUDGET = "naflex-tiny", 64, pick(6, 16), 16


@pytest.fixture(scope="module")
def backbone(device):
    return sf.Backbone.from_pretrained(BACKBONE, weights="random", max_patches=BUDGET).to(device).eval()


@pytest.fixture(scope="module")
def images(device):
    return ade_like_images(COUNT, SHORT, device)


@pytest.mark.parametrize("variant", ["reference", "batched", "packed"])
def test_naflex_dense(benchmark, backbone, images, device, variant):
    def run():
        with torch.no_grad():
            if variant == "reference":
                return [naflex_reference(backbone, im) for im in images]
            if variant == "batched":
                return [sf.dense_features(backbone, im) for im in images]
            return sf.dense_features(backbone, images)

    feats = run_variant(benchmark, run, device=device, variant=variant,
                        group=f"naflex dense {len(images)} mixed images budget {BUDGET} {BACKBONE}",
                        images=len(images), budget=BUDGET)
    assert all(f.shape[0] * f.shape[1] <= BUDGET for f in feats)
    benchmark.extra_info["images_per_s"] = len(images) / benchmark.stats.stats.median
