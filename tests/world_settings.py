"""What the world's CI check runs, and its pass rule (shared by test_world_gain.py)."""
from __future__ import annotations

from spar_fast.train.config import TrainConfig
from spar_fast.world.dataset import WorldLayout

SIDE = 512  # 4x the native side: the largest evaluated side (16x the native area)
CI_LAYOUT = WorldLayout(val_sides=(SIDE,), unlabelled_count=120)
CI_TRAIN = TrainConfig(epochs=4, lr=1e-4, progress=False)


def gain_holds(single: float, teacher: float, student: float) -> tuple[bool, str]:
    """The student's single pass must recover at least half of the teacher's lead over the
    pretrained single pass (all mIoU in percent)."""
    need = single + 0.5 * (teacher - single)
    return student >= need, f"needs >= {need:.1f} (single + half the teacher's lead)"
