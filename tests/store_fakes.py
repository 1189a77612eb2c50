"""A stand-in backbone and teacher for the feature-store tests (deterministic and cheap).

Imported by the tests and by the scripts they run in subprocesses (with ``tests/`` on the path).
"""
import torch


class FakeBackbone:
    """The attributes the job reads from a Backbone."""
    name, patch_size, window, feature_dim = "fake", 16, 64, 6
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


_W = torch.linspace(-2.0, 2.0, 18).reshape(3, 6)


def fake_teacher(x):
    """[3, H, W] -> [H/16, W/16, 6]: patch means times a fixed matrix."""
    pooled = torch.nn.functional.avg_pool2d(x[None], 16)[0]
    return torch.einsum("chw,cd->hwd", pooled, _W) * 10.0
