"""``python -m spar_fast.commands.dinov3txt BACKBONE.pth HEAD_AND_TEXT.pth OUT.safetensors``:
combine the official DINOv3.txt files into one weights file for ``--weights`` /
``from_pretrained("dinov3txt-l16", PATH)``."""
from __future__ import annotations

import argparse

from ..backbones.dinov3txt import BACKBONE_FILE, HEAD_AND_TEXT_FILE, convert_official
from ..errors import UserError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m spar_fast.commands.dinov3txt",
                                description="Combine the official DINOv3.txt files into one weights file "
                                            "for --weights / from_pretrained('dinov3txt-l16', PATH).")
    p.add_argument("backbone", help=BACKBONE_FILE)
    p.add_argument("head_and_text", help=HEAD_AND_TEXT_FILE)
    p.add_argument("out", help="output .safetensors path")
    args = p.parse_args(argv)
    try:
        convert_official(args.backbone, args.head_and_text, args.out)
    except UserError as exc:
        print(f"error: {exc}")
        return 2
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
