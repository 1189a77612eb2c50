"""The ideal LPOSS graph of the world (spar_fast.world.grouping): segment codes per window, and
their blend with a model's features."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spar_fast.world.grouping import blend, segment_grids


def _label():
    # 32x48: background 0, two class-1 squares (two segments), one class-2 bar, a 255 band
    label = np.zeros((32, 48), np.uint8)
    label[0:16, 0:16] = 1
    label[16:32, 32:48] = 1
    label[16:32, 0:16] = 2
    label[:, 16] = 255  # a column of ignore: the cells it covers stay in their majority segment
    return label


def test_codes_are_the_majority_segment_of_each_cell_and_agree_across_windows():
    label = _label()
    full, = segment_grids(label, [(0, 0, 32, 48)], 8)
    assert full.shape == (4, 6, 4)  # segments: the background, 2 squares, 1 bar
    ids = full.argmax(-1)
    assert torch.equal(full.sum(-1), torch.ones(4, 6))  # one-hot everywhere
    assert ids[0, 0] == ids[1, 1] and ids[2, 0] == ids[3, 1]  # each square / bar one segment
    assert len({int(ids[0, 0]), int(ids[2, 0]), int(ids[3, 5]), int(ids[0, 3])}) == 4
    # a window of the same scene gives each cell the same code
    win, = segment_grids(label, [(8, 16, 16, 24)], 8)
    assert torch.equal(win, full[1:3, 2:5])
    with pytest.raises(ValueError, match="multiple of the patch"):
        segment_grids(label, [(0, 0, 12, 16)], 8)


def test_ignore_cells_have_no_code():
    label = np.full((16, 16), 255, np.uint8)
    label[:8, :8] = 1
    grid, = segment_grids(label, [(0, 0, 16, 16)], 8)
    assert torch.equal(grid.sum(-1), torch.tensor([[1.0, 0.0], [0.0, 0.0]]))


def test_blend_divides_cross_segment_cosines():
    g = torch.Generator().manual_seed(0)
    codes = [torch.eye(3)[torch.tensor([[0, 1], [2, 0]])]]                     # [2, 2, 3]
    values = [torch.randn(2, 2, 7, generator=g)]
    unit = F.normalize(values[0].reshape(4, 7), dim=-1)
    for strength in (0.0, 1.0, 3.0):
        f = F.normalize(blend(codes, values, strength)[0].reshape(4, -1), dim=-1)
        cos = f @ f.t()
        torch.testing.assert_close(cos[0, 1], (unit[0] @ unit[1]) / (1 + strength ** 2))   # other segments
        torch.testing.assert_close(cos[0, 3], (strength ** 2 + unit[0] @ unit[3]) / (1 + strength ** 2))
    assert blend(codes, values, math.inf) is codes
