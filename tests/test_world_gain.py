"""Distillation works: on held-out world scenes at 8x the native side, the SPAR student's single
pass beats the pretrained single pass by at least half of the sliding-window teacher's lead.

The world backbone is pretrained once per cache (``spar_fast.world.backbone``, a few minutes on 2
cores) and reused. With ``SPAR_FAST_WORLD_BREAKS=1`` the same check runs on deliberately broken
pipelines (targets flipped against the student's input, targets shifted by one cell, the first
two blocks trained instead of the last two) and asserts that each one fails it.
"""
from __future__ import annotations

import os

import pytest
import torch

from spar_fast.jobs.world_paper import distill_world, evaluate_split
from spar_fast.world.backbone import world_backbone
from spar_fast.world.dataset import val_split, write_world

from world_settings import CI_LAYOUT, CI_TRAIN, SIDE, gain_holds


@pytest.fixture(scope="module")
def world():
    return world_backbone(progress=False)


@pytest.fixture(scope="module")
def root(world, tmp_path_factory):
    return write_world(tmp_path_factory.mktemp("world"), CI_LAYOUT)


@pytest.fixture(scope="module")
def baselines(world, root):
    bb, queries = world.load(), world.query_set()
    split = val_split(SIDE)
    return {"single": evaluate_split(bb, root, split, queries)["mIoU"],
            "teacher": evaluate_split(bb, root, split, queries, "slide", 24)["mIoU"]}


def _student_miou(world, root, out, unfreeze="blk_-1,blk_-2", teacher_fn=None) -> float:
    from spar_fast.backbones import Backbone

    students = distill_world(world, os.path.join(root, "unlabelled"), out, (unfreeze,), CI_TRAIN,
                             teacher_fn=teacher_fn, log=lambda *_: None)
    student = Backbone.from_pretrained(world.name, weights=students[unfreeze])
    return evaluate_split(student, root, val_split(SIDE), world.query_set())["mIoU"]


def test_world_shows_the_gap(baselines):
    """The phenomenon SPAR fixes exists in the world: the teacher leads the single pass."""
    assert baselines["teacher"] - baselines["single"] >= 3.0, baselines


def test_spar_student_recovers_the_gap(world, root, baselines, tmp_path):
    student = _student_miou(world, root, str(tmp_path))
    ok, margin = gain_holds(baselines["single"], baselines["teacher"], student)
    assert ok, f"student {student:.1f} vs single {baselines['single']:.1f} (teacher {baselines['teacher']:.1f}); {margin}"


def _flipped(fn):
    return lambda x: fn(x).flip(1)


def _shifted(fn):
    return lambda x: torch.roll(fn(x), 1, dims=1)


BREAKS = {
    "targets flipped": dict(teacher_fn=_flipped),
    "targets shifted one cell": dict(teacher_fn=_shifted),
    "first two blocks trained": dict(unfreeze="blk_0,blk_1"),
}


@pytest.mark.skipif(os.environ.get("SPAR_FAST_WORLD_BREAKS") != "1", reason="set SPAR_FAST_WORLD_BREAKS=1")
@pytest.mark.parametrize("name", list(BREAKS))
def test_broken_pipeline_fails_the_check(world, root, baselines, tmp_path, name):
    from spar_fast.teacher import teacher_features

    spec = BREAKS[name]
    wrap = spec.get("teacher_fn")
    teacher_fn = None
    if wrap is not None:
        bb = world.load()
        teacher_fn = wrap(lambda x: teacher_features(bb, x, stride=24))
    student = _student_miou(world, root, str(tmp_path), spec.get("unfreeze", "blk_-1,blk_-2"), teacher_fn)
    ok, margin = gain_holds(baselines["single"], baselines["teacher"], student)
    print(f"\n{name}: student {student:.1f}, single {baselines['single']:.1f}, teacher {baselines['teacher']:.1f}")
    assert not ok, f"{name}: the check passed ({margin})"
