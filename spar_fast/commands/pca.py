"""``spar-fast pca``: dense features of one or more models shown as RGB on one shared PCA basis."""
from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "pca", help="PCA (3 components -> RGB) of dense features of one or more models",
        description="Projects the dense features of each model on ONE shared 3-component PCA "
                    "basis (fit on the features of all models together) and writes the input "
                    "image followed by one RGB panel per model.")
    p.add_argument("image", help="input image file")
    from ..segmentation.cli_args import add_model_args, add_resize_arg
    add_model_args(p, multi_checkpoint=True)
    add_resize_arg(p)
    p.add_argument("-o", "--output", required=True, help="output .png")
    p.set_defaults(run=run)


def run(args) -> int:
    import torch
    from PIL import Image

    from ..segmentation.cli_args import check_output, load_model, model_input, read_image
    from ..segmentation.infer import autocast
    from ..segmentation.pca import pca_rgb

    check_output(args.output, (".png",))
    image = read_image(args.image)
    feats = []
    for ckpt in args.checkpoint or [None]:
        bb = load_model(args, checkpoint=ckpt)
        x = model_input(image, bb, args.no_resize)
        with torch.no_grad(), autocast(x.device, "auto"):
            feats.append(bb(x[None])[0].float().cpu())
        del bb
    panels = pca_rgb(feats)
    h, w = image.shape[:2]
    tiles = [Image.fromarray(image)] + [
        Image.fromarray(p).resize((w, h), Image.NEAREST) for p in panels]
    sheet = Image.new("RGB", (w * len(tiles), h))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, (i * w, 0))
    sheet.save(args.output)
    print(f"wrote {args.output}: {len(panels)} model(s), grid {tuple(feats[0].shape[:2])}")
    return 0
