"""LPOSS on the synthetic world: does propagation raise mIoU for the single pass, the teacher and
the student (SPAR supplementary §9, Fig. 5)?

1. The world backbone and the world's affinity model (:mod:`spar_fast.world.affinity`, a small
   DINO-layout ViT whose last-block values group objects; both cached), the held-out scenes of
   one side and the unlabelled images.
2. The recipe's student (:data:`~spar_fast.jobs.world_paper.DEFAULT_UNFREEZE`), distilled as in
   the miniature.
3. Held-out mIoU of the pretrained single pass, the sliding-window teacher and the student,
   unrefined and with LPOSS / LPOSS+ over the affinity model's graph, at the paper's gamma per
   mode (:func:`spar_fast.segmentation.lposs.default_gamma`: 1, 1 and 10) and at gamma 10 for
   all three, and with LPOSS over the backbone's own features (``affinity="backbone"``, the
   offline default) for contrast.
4. The same with the ideal graph (:mod:`spar_fast.world.grouping`: one-hot codes of the labels'
   segments, the graph of an affinity model that groups objects perfectly) at the paper's gamma,
   and the pretrained single pass's LPOSS at gamma 1 over the affinity model's values blended
   with those codes at :data:`STRENGTHS`: how clean the graph must be for gamma 1 to gain.
   docs/LPOSS.md discusses the numbers.

Writes ``OUT/report.json``; a rerun reuses the world, the store, the student and finished
evaluations (``OUT/evals.json``). ``OUT/settings.json`` records the settings and the keys of the
two cached models; a rerun with others is refused.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from functools import partial

import torch

from ..atomic import atomic_write
from ..train.config import TrainConfig
from ..world.affinity import AffinityConfig, affinity_key, world_affinity
from ..world.backbone import world_backbone, world_key
from ..world.dataset import WorldLayout, val_split, write_world
from ..world.pretrain import PretrainConfig
from .world_paper import DEFAULT_UNFREEZE, _Evals, _settings_dict, _timed, claim_folder, distill_world

# column: (refine, affinity, gamma); gamma None: the paper's per mode (default_gamma)
COLUMNS = {"none": (None, None, None), "lposs": ("lposs", "dino", None), "lposs+": ("lposs+", "dino", None),
           "lposs g10": ("lposs", "dino", 10.0), "lposs+ g10": ("lposs+", "dino", 10.0),
           "lposs, own features": ("lposs", "backbone", None),
           "lposs, ideal graph": ("lposs", "ideal", None), "lposs+, ideal graph": ("lposs+", "ideal", None)}
# weight of the segment codes blended with the affinity model's values (0: the model alone, as the
# "lposs" column; inf: the codes alone, as "lposs, ideal graph")
STRENGTHS = (1.0, 2.0, 4.0)


@dataclass(frozen=True)
class LpossWorldSettings:
    """What ``spar-fast world lposs`` runs (defaults: 12 held-out scenes of 512 px, the miniature's
    budget for the student)."""
    side: int = 512
    layout: WorldLayout = WorldLayout(val_sides=(512,))
    pretrain: PretrainConfig = PretrainConfig()
    affinity: AffinityConfig = AffinityConfig()
    stride: int = 24
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=4, lr=1e-4, progress=True))


def _record(settings: LpossWorldSettings) -> dict:
    """What ``OUT/settings.json`` holds: the settings and the keys of the two cached models."""
    return {**_settings_dict(settings), "world_key": world_key(settings.pretrain),
            "affinity_key": affinity_key(settings.affinity)}


def run_lposs_world(out: str, settings: LpossWorldSettings = LpossWorldSettings(), log=print) -> dict:
    """Run the LPOSS table into ``out`` and return the report (also ``out/report.json``):
    ``table[model][column]`` = ``{"mIoU", "seconds_per_image", "gamma"}``."""
    from ..backbones import Backbone
    from ..segmentation.lposs import LpossSettings, default_gamma

    os.makedirs(out, exist_ok=True)
    claim_folder(out, _record(settings), "world LPOSS")
    progress = settings.train.progress
    world = world_backbone(settings.pretrain, progress=progress, log=log)
    affinity = world_affinity(settings.affinity, progress=progress, log=log)
    root = write_world(os.path.join(out, "world"), settings.layout, progress=progress)
    students = distill_world(world, os.path.join(root, "unlabelled"), out, (DEFAULT_UNFREEZE,), settings.train,
                             stride=settings.stride, log=log)
    pretrained = world.load()
    student = Backbone.from_pretrained(world.name, weights=students[DEFAULT_UNFREEZE])
    runs = {"pretrained single pass": (pretrained, "single"), "teacher": (pretrained, "slide"),
            "SPAR student": (student, "single")}
    evals = _Evals(os.path.join(out, "evals.json"))
    queries, split = world.query_set(), val_split(settings.side)
    table = {}
    for name, (bb, mode) in runs.items():
        table[name] = {}
        for column, (refine, aff, gamma) in COLUMNS.items():
            lposs = LpossSettings(affinity="backbone" if aff == "backbone" else "dino", dino_weights=affinity,
                                  gamma=gamma) if aff else None
            gamma = gamma if gamma is not None or refine is None else default_gamma(mode, bb.distilled)
            args = (bb, root, split, queries, mode, settings.stride, refine, lposs)
            run = partial(evaluate_graph, *args, math.inf) if aff == "ideal" else partial(evaluate_refined, *args)
            table[name][column] = evals.get(f"{name}|{refine}|{aff}|{gamma}", run)
        log(f"{name}: " + ", ".join(f"{c} {r['mIoU']:.1f}" for c, r in table[name].items()))
    single = LpossSettings(affinity="dino", dino_weights=affinity, gamma=1.0)
    sensitivity = {str(t): evals.get(f"pretrained single pass|lposs|blend {t:g}|1.0", partial(
        evaluate_graph, pretrained, root, split, queries, "single", settings.stride, "lposs", single, t))
        for t in STRENGTHS}
    log("pretrained single pass, LPOSS at gamma 1 over blended graphs: "
        + ", ".join(f"strength {t} {r['mIoU']:.1f}" for t, r in sensitivity.items()))
    report = {"world_key": world.key, "affinity_key": affinity_key(settings.affinity), "side": settings.side,
              "affinity_weights": affinity, "table": table, "graph_sensitivity": sensitivity,
              "units": "mIoU in percent (MMSeg), seconds per image on this machine"}
    atomic_write(os.path.join(out, "report.json"), (json.dumps(report, indent=1) + "\n").encode())
    return report


def evaluate_refined(bb, root: str, split: str, queries, mode: str, stride: int, refine: str | None,
                     lposs) -> dict:
    """MMSeg mIoU (percent) of one world split with ``refine`` (None, "lposs", "lposs+"), the wall
    time per image of the whole segmentation, and the gamma the graph used (None unrefined)."""
    from ..evaluation import evaluate
    from ..segmentation.lposs import default_gamma

    result, seconds = _timed(lambda: evaluate(bb, "folder", root, split=split, queries=queries, mode=mode,
                                              stride=stride, refine=refine, lposs=lposs))
    gamma = None
    if refine is not None:
        gamma = lposs.gamma if lposs is not None and lposs.gamma is not None else default_gamma(mode, bb.distilled)
    return {"mIoU": result["mIoU"], "images": result["num_images"],
            "seconds_per_image": seconds / result["num_images"], "gamma": gamma}


@torch.no_grad()
def evaluate_graph(bb, root: str, split: str, queries, mode: str, stride: int, refine: str, lposs,
                   strength: float) -> dict:
    """As :func:`evaluate_refined`, with LPOSS's graph over the segment codes of each image's label
    blended at ``strength`` with the values of the affinity model ``lposs.dino_weights``
    (:func:`spar_fast.world.grouping.blend`; inf: the codes alone, the ideal graph). The loop is
    :func:`spar_fast.evaluation.evaluate`'s for one image at a time, at the image's size."""
    from ..evaluation.datasets import list_samples, load_sample
    from ..evaluation.metrics import ConfusionMatrix
    from ..evaluation.runner import default_settings
    from ..runtime import Weights
    from ..segmentation.dino_affinity import dino_features, load_dino, patch_size
    from ..segmentation.infer import postprocess
    from ..segmentation.lposs import default_gamma, lposs_logits
    from ..segmentation.preprocess import prepare_image
    from ..segmentation.query_file import resolve_queries
    from ..world.grouping import blend, segment_grids

    device = next(iter(bb.parameters())).device
    q, q2c, lines = resolve_queries(bb, queries=queries, device=device)
    head = default_settings(getattr(bb, "family", ""), "folder")
    weights = Weights.parse(lposs.dino_weights)
    patch = patch_size(load_dino(weights, str(device)))
    confmat = ConfusionMatrix(len(lines), device=device)
    samples = list_samples("folder", root, split)
    start = time.perf_counter()
    for sample in samples:
        image, label = load_sample(sample, False)
        x = prepare_image(image, bb.mean, bb.std, None, device)

        def graph(boxes, x=x, label=label):
            codes = segment_grids(label, boxes, patch)
            values = dino_features(bb, x, boxes, weights)[0] if not math.isinf(strength) else None
            return blend(codes, values, strength), patch
        logits = lposs_logits(bb, x, q, refine, mode, lposs, stride, affinity=graph)
        confmat.update(postprocess(logits, q2c, label.shape, head), torch.from_numpy(label).to(device))
    gamma = lposs.gamma if lposs.gamma is not None else default_gamma(mode, bb.distilled)
    return {"mIoU": 100.0 * confmat.compute()["mIoU"], "images": len(samples),
            "seconds_per_image": (time.perf_counter() - start) / len(samples), "gamma": gamma,
            "strength": None if math.isinf(strength) else strength}


def print_lposs_report(report: dict) -> None:
    """The table, mIoU in percent; the paper's gamma per row."""
    table = report["table"]
    width = max(len(n) for n in table) + 2
    print(f"\nmIoU (%) at {report['side']} px. Graph: the world's affinity model (LPOSS's DINO in the world), "
          "the backbone's own features, or the ideal graph (one-hot codes of the labels' segments); "
          "gamma: the paper's per model unless 'g10':")
    print(f"  {'':<{width}}{'gamma':>6}" + "".join(f"{c:>{len(c) + 2}}" for c in COLUMNS))
    for name, row in table.items():
        print(f"  {name:<{width}}{row['lposs']['gamma']:>6g}" + "".join(f"{row[c]['mIoU']:>{len(c) + 2}.1f}"
                                                                       for c in COLUMNS))
    row = table["pretrained single pass"]
    blends = [("0", row["lposs"])] + list(report["graph_sensitivity"].items()) + [("inf", row["lposs, ideal graph"])]
    print("pretrained single pass, LPOSS at gamma 1, the affinity model's values blended with the segment codes "
          "at strength s (0: the model alone, inf: the ideal graph): "
          + ", ".join(f"s {t}: {r['mIoU']:.1f}" for t, r in blends) + f" (unrefined {row['none']['mIoU']:.1f})")
    print(f"affinity model (--lposs-affinity dino --lposs-dino-weights): {report['affinity_weights']}")
