"""Test-wide settings: Triton kernels run through the interpreter when no GPU is present; the
world's CI checks share one world backbone and one world folder per session."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def world_ci():
    """The cached world backbone (pretrained on first use; tests/world_settings.py)."""
    from spar_fast.world.backbone import world_backbone

    return world_backbone(progress=False)


@pytest.fixture(scope="session")
def world_root(world_ci, tmp_path_factory):
    """The world of the CI checks on disk: 12 held-out 512 px scenes, 120 unlabelled images."""
    from spar_fast.world.dataset import write_world
    from world_settings import CI_LAYOUT

    return write_world(tmp_path_factory.mktemp("world"), CI_LAYOUT)
