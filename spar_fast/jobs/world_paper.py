"""The paper in miniature, offline: SPAR's experiments on the synthetic world (:mod:`spar_fast.world`).

1. The world backbone (pretrained at its native 128 px only; cached) and the world on disk.
2. Teacher targets of the unlabelled images (sliding window at stride 24, SPAR augmentation with
   sizes scaled by :data:`AUGMENT_SCALE`), then one distillation per unfreeze setting.
3. Held-out mIoU at each image side (the ``folder`` dataset, MMSeg mIoU) for the pretrained
   single pass, the sliding-window teacher and the students -- Fig. 3 in miniature; mIoU against
   time per image at the largest side with the teacher at several strides -- Fig. 1; and the
   unfreeze settings -- Table 5.

Writes ``OUT/report.json``, ``OUT/fig3.png``, ``OUT/fig1.png``; a rerun reuses the world, the store,
finished runs and finished evaluations (``OUT/evals.json``). ``OUT/settings.json`` records what the
folder was run with and the world key; a rerun with other settings (images, epochs, ...) or after a
change of the world's code is refused, since its store, runs and evaluations would belong to the
first.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field

from ..atomic import atomic_write
from ..train.config import TrainConfig
from ..world.backbone import world_backbone
from ..world.dataset import WorldLayout, val_split, write_world
from ..world.pretrain import PretrainConfig

# The world's recipe trains the dense head (final norm + attn_pool) with the last two blocks:
# with the head frozen, feature regression lowers the student below the single pass in this
# world (docs/WORLD.md, "Second round", item 4).
DEFAULT_UNFREEZE = "blk_-1,blk_-2,head"
# The SPAR augmentation's sizes times 0.5: training images of 256-768 px (2-6 windows a side)
# whose objects keep about their size (the resize factor of a 384x576 source is 1.33 rho, rho in
# [0.5, 1]); the world's objects have a fixed pixel size, so a smaller scale would train on
# shrunken objects that no held-out scene contains.
AUGMENT_SCALE = 0.5
UNFREEZE_NAMES = {"blk_-1": "last block", "blk_-1,blk_-2": "last 2 blocks",
                  "blk_-1,blk_-2,head": "last 2 blocks + head", "all": "all"}


@dataclass(frozen=True)
class PaperSettings:
    """What the miniature runs (defaults: the full miniature: four held-out sides, four teacher
    strides, four unfreeze settings)."""
    layout: WorldLayout = WorldLayout()
    pretrain: PretrainConfig = PretrainConfig()
    stride: int = 24
    strides: tuple[int, ...] = (24, 48, 64, 128)
    unfreeze: tuple[str, ...] = ("blk_-1", "blk_-1,blk_-2", DEFAULT_UNFREEZE, "all")
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=4, lr=1e-4, progress=True))


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


class _Evals:
    """Evaluation results cached by a key in ``OUT/evals.json`` (a rerun skips done ones)."""

    def __init__(self, path: str):
        self.path = path
        self.done = {}
        if os.path.lexists(path):  # a damaged cache is one line (it can be deleted to recompute)
            from ..jsonfile import Fields, MalformedFile, read_json_file

            f = Fields(read_json_file(path, "evaluation cache"), path)
            if not all(isinstance(v, dict) for v in f.obj.values()):
                raise MalformedFile(f"{path}: every entry must be a JSON object; delete the file "
                                    "to evaluate again")
            self.done = f.obj

    def get(self, key: str, compute) -> dict:
        if key not in self.done:
            self.done[key] = compute()
            atomic_write(self.path, (json.dumps(self.done, indent=1) + "\n").encode())
        return self.done[key]


def evaluate_split(bb, root: str, split: str, queries, mode: str = "single", stride: int = 24) -> dict:
    """MMSeg mIoU (percent) of ``bb`` on one split of the world folder and the wall time per
    image of the whole segmentation (forward, head, label map), after one warm-up image."""
    from ..evaluation import evaluate

    evaluate(bb, "folder", root, split=split, queries=queries, mode=mode, stride=stride, limit=1)
    result, seconds = _timed(lambda: evaluate(bb, "folder", root, split=split, queries=queries,
                                              mode=mode, stride=stride))
    return {"mIoU": result["mIoU"], "mIoU_torchmetrics": result["mIoU_torchmetrics"],
            "images": result["num_images"], "seconds_per_image": seconds / result["num_images"]}


def distill_world(world, images: str, out: str, unfreeze: tuple[str, ...], train_cfg: TrainConfig, *,
                  stride: int = 24, teacher_fn=None, augment_scale: float | None = None,
                  log=print) -> dict[str, str]:
    """Teacher targets of ``images`` into ``out/store`` then one student per unfreeze setting:
    ``{unfreeze: final weights path}``. ``teacher_fn`` replaces the teacher (see
    :func:`spar_fast.jobs.extract.extract_features`)."""
    from .extract import extract_features
    from ..train import train

    store = os.path.join(out, "store")
    summary = extract_features(images, store, backbone=world.name, weights=world.weights, stride=stride,
                               augment="default", augment_scale=augment_scale or AUGMENT_SCALE, dtype="fp32",
                               teacher_fn=teacher_fn, progress=train_cfg.progress)
    log(f"teacher targets: {summary['ok']} images ({summary['computed']} computed now, "
        f"{summary['seconds']:.0f} s)")
    students = {}
    for setting in unfreeze:
        run = os.path.join(out, "run-" + setting.replace(",", "_"))
        students[setting], seconds = _timed(lambda: train(store, run, train_cfg.replace(unfreeze=setting)))
        log(f"student ({UNFREEZE_NAMES.get(setting, setting)}): {seconds:.0f} s")
    return students


def run_paper(out: str, settings: PaperSettings = PaperSettings(), log=print) -> dict:
    """Run the miniature into ``out`` and return the report (also ``out/report.json``)."""
    from ..backbones import Backbone

    os.makedirs(out, exist_ok=True)
    _claim(out, settings)
    world = world_backbone(settings.pretrain, progress=settings.train.progress, log=log)
    root = write_world(os.path.join(out, "world"), settings.layout, progress=settings.train.progress)
    students = distill_world(world, os.path.join(root, "unlabelled"), out, settings.unfreeze,
                             settings.train, stride=settings.stride, log=log)
    evals = _Evals(os.path.join(out, "evals.json"))
    queries = world.query_set()
    pretrained = world.load()
    models = {"pretrained single pass": pretrained}
    models.update({f"SPAR student ({UNFREEZE_NAMES.get(u, u)})": Backbone.from_pretrained(world.name, weights=p)
                   for u, p in students.items()})
    sides = settings.layout.val_sides
    fig3 = {name: {} for name in [*models, f"teacher (s={settings.stride})"]}
    for side in sides:
        split = val_split(side)
        for name, bb in models.items():
            fig3[name][side] = evals.get(f"{name}|{side}", lambda: evaluate_split(bb, root, split, queries))
        fig3[f"teacher (s={settings.stride})"][side] = evals.get(
            f"teacher|{settings.stride}|{side}",
            lambda: evaluate_split(pretrained, root, split, queries, "slide", settings.stride))
        log(f"side {side}: " + ", ".join(f"{n} {r[side]['mIoU']:.1f}" for n, r in fig3.items()))
    largest = max(sides)
    fig1 = {"pretrained single pass": fig3["pretrained single pass"][largest],
            "SPAR student": fig3[f"SPAR student ({UNFREEZE_NAMES.get(DEFAULT_UNFREEZE, DEFAULT_UNFREEZE)})"][largest]
            if DEFAULT_UNFREEZE in students else None}
    for s in settings.strides:
        fig1[f"teacher s={s}"] = evals.get(f"teacher|{s}|{largest}", lambda: evaluate_split(
            pretrained, root, val_split(largest), queries, "slide", s))
    table5 = {UNFREEZE_NAMES.get(u, u): {side: fig3[f"SPAR student ({UNFREEZE_NAMES.get(u, u)})"][side]["mIoU"]
                                         for side in sides} for u in students}
    report = {"world_key": world.key, "settings": _settings_dict(settings), "fig3_miou_vs_side": fig3,
              "fig1_miou_vs_time": {k: v for k, v in fig1.items() if v is not None}, "table5_unfreeze": table5,
              "units": "mIoU in percent (MMSeg), seconds per image on this machine"}
    atomic_write(os.path.join(out, "report.json"), (json.dumps(report, indent=1) + "\n").encode())
    _plots(out, report)
    return report


def _claim(out: str, settings: PaperSettings) -> None:
    """Record ``settings`` and the world key in ``out/settings.json``, or refuse if the folder holds
    a run with others (another budget, or a world backbone the code no longer builds)."""
    from ..world.backbone import world_key

    claim_folder(out, {**_settings_dict(settings), "world_key": world_key(settings.pretrain)}, "miniature")


def claim_folder(out: str, record: dict, what: str) -> None:
    """Record ``record`` (JSON-able: the settings and the keys of the cached models) in
    ``out/settings.json``, or refuse in one line if the folder holds a ``what`` run with another."""
    from ..errors import UserError
    from ..jsonfile import read_json_file

    path = os.path.join(out, "settings.json")
    wanted = json.loads(json.dumps(record))
    if os.path.lexists(path):
        held = read_json_file(path, f"{what} settings")
        if held != wanted:
            diff = ", ".join(f"{k} {a} -> {b}" for k, a, b in _differences(held, wanted)) or "its format"
            raise UserError(f"{out} holds a {what} run with other settings ({diff}); pass another --out")
        return
    atomic_write(path, (json.dumps(wanted, indent=1) + "\n").encode())


def _differences(a, b, prefix: str = ""):
    """``(dotted key, value in a, value in b)`` for each leaf where two JSON objects differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            yield from _differences(a.get(key), b.get(key), f"{prefix}{key}.")
    elif a != b:
        yield prefix.rstrip("."), a, b


def _settings_dict(settings) -> dict:
    """A world job's settings (a dataclass with a ``train`` field) as JSON-able data, with only the
    training fields that change the result."""
    d = asdict(settings)
    d["train"] = {k: v for k, v in asdict(settings.train).items() if k in ("epochs", "lr", "unfreeze", "seed")}
    return d


def _plots(out: str, report: dict) -> None:
    """``fig3.png`` (mIoU against image side) and ``fig1.png`` (mIoU against time per image)."""
    from .plots import Panel, save_figure

    lines = {name: [(int(side), r["mIoU"]) for side, r in by_side.items()]
             for name, by_side in report["fig3_miou_vs_side"].items()}
    save_figure(os.path.join(out, "fig3.png"), [Panel(
        "The world: mIoU against image size (Fig. 3 in miniature)",
        "image side (px); the backbone was trained at 128", "mIoU (%)", lines=lines, xlog=2)])
    points = {name: (r["seconds_per_image"], r["mIoU"]) for name, r in report["fig1_miou_vs_time"].items()}
    save_figure(os.path.join(out, "fig1.png"), [Panel(
        "mIoU against time per image (Fig. 1 in miniature)", "seconds per image (CPU)", "mIoU (%)",
        points=points, xlog=10)])
