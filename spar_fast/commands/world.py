"""``spar-fast world``: the synthetic world -- build its backbone, write its data, run the paper
in miniature."""
from __future__ import annotations

from .model_args import POSITIVE_INT

ACTIONS = ("build", "write", "paper", "lposs")
DEFAULT_OUT = {"paper": "runs/world", "lposs": "runs/world-lposs"}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "world", help="the synthetic world: backbone, dataset, the paper in miniature (offline)",
        description="A synthetic world where SPAR's effect exists and is measured offline. "
                    "'build': pretrain (or find in the cache) the world backbone and print its "
                    "weights and query file, usable as --weights PATH and --queries PATH "
                    "(--backbone world-s16) by every command. 'write DIR': write the world as a "
                    "labelled folder (eval --dataset folder --root DIR --split val_1024) and "
                    "unlabelled training images (DIR/unlabelled). 'paper --out DIR': distill the "
                    "world backbone and report mIoU against image side (Fig. 3), against time "
                    "(Fig. 1) and per unfreeze setting (Table 5), as report.json and plots. "
                    "'lposs --out DIR': mIoU of the single pass, the teacher and the student, "
                    "unrefined and with LPOSS / LPOSS+ over the world's affinity model (LPOSS's "
                    "DINO in the world) and over the ideal graph (the labels' segments), as "
                    "report.json.")
    p.add_argument("action", choices=ACTIONS, help="what to do")
    p.add_argument("dir", nargs="?", default=None, help="output folder of 'write'")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder of 'paper' (default: runs/world) or 'lposs' (default: runs/world-lposs)")
    p.add_argument("--images", type=POSITIVE_INT, default=120, metavar="N",
                   help="'paper', 'lposs': unlabelled distillation images (default: 120)")
    p.add_argument("--epochs", type=POSITIVE_INT, default=4, metavar="E",
                   help="'paper', 'lposs': distillation epochs (default: 4; one image per step)")
    p.add_argument("--rebuild", action="store_true", help="'build': pretrain again even if cached")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..errors import UserError
    from ..runtime import check_output_dir

    progress = not args.quiet
    if args.action == "build":
        from ..world.backbone import world_backbone
        world = world_backbone(rebuild=args.rebuild, progress=progress)
        print(f"world backbone {world.name} (key {world.key})\n  --weights {world.weights}\n"
              f"  --queries {world.queries}")
        return 0
    if args.action == "write":
        if args.dir is None:
            raise UserError("spar-fast world write needs the output folder: spar-fast world write DIR")
        from ..world.dataset import write_world
        check_output_dir(args.dir)
        root = write_world(args.dir, progress=progress)
        print(f"wrote the world to {root} (eval: --dataset folder --root {root} --split val_1024; "
              f"training images: {root}/unlabelled)")
        return 0
    from dataclasses import replace

    out = args.out or DEFAULT_OUT[args.action]
    check_output_dir(out)
    if args.action == "lposs":
        from ..jobs.world_lposs import LpossWorldSettings, print_lposs_report, run_lposs_world
        base = LpossWorldSettings()
        settings = replace(base, layout=replace(base.layout, unlabelled_count=args.images),
                           train=base.train.replace(epochs=args.epochs, progress=progress))
        print_lposs_report(run_lposs_world(out, settings))
        print(f"outputs: {out} (report.json)")
        return 0
    from ..jobs.world_paper import PaperSettings, run_paper
    base = PaperSettings()
    settings = replace(base, layout=replace(base.layout, unlabelled_count=args.images),
                       train=base.train.replace(epochs=args.epochs, progress=progress))
    report = run_paper(out, settings)
    print_report(report)
    print(f"outputs: {out} (report.json, fig3.png, fig1.png)")
    return 0


def print_report(report: dict) -> None:
    """The miniature's three tables, mIoU in percent."""
    fig3 = report["fig3_miou_vs_side"]
    sides = sorted({int(s) for r in fig3.values() for s in r})
    width = max(len(name) for name in [*fig3, *report["fig1_miou_vs_time"], *report["table5_unfreeze"]]) + 2
    print("\nmIoU (%) against image side (the backbone was trained at 128 px):")
    print(f"  {'':<{width}}" + "".join(f"{s:>8}" for s in sides))
    for name, by_side in fig3.items():
        print(f"  {name:<{width}}" + "".join(f"{_at(by_side, s)['mIoU']:>8.1f}" for s in sides))
    print(f"\nmIoU (%) against time per image at side {max(sides)}:")
    for name, r in report["fig1_miou_vs_time"].items():
        print(f"  {name:<{width}}{r['mIoU']:>8.1f}{r['seconds_per_image']:>10.3f} s")
    print("\nunfreeze settings (mIoU %, single pass):")
    for name, by_side in report["table5_unfreeze"].items():
        print(f"  {name:<{width}}" + "".join(f"{_at(by_side, s):>8.1f}" for s in sides))


def _at(by_side: dict, side: int):
    return by_side[side] if side in by_side else by_side[str(side)]
