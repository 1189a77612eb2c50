"""``spar-fast embed``: raw dense features ``[h, w, C]`` of one image (not normalized)."""
from __future__ import annotations


def add_parser(subparsers) -> None:
    from .model_args import add_model_args, add_resize_arg

    p = subparsers.add_parser(
        "embed", help="dense features of an image to .safetensors or .npy",
        description="Single-pass dense features [h, w, C] of one image (fp32, not normalized), "
                    "saved as safetensors (key 'features') or .npy.")
    p.add_argument("image", help="input image file")
    add_model_args(p)
    add_resize_arg(p)
    p.add_argument("-o", "--output", required=True, help="output .safetensors or .npy file")
    p.set_defaults(run=run)


def run(args) -> int:
    import numpy as np

    from ..backbones import dense_features
    from ..runtime import check_output_file
    from ..segmentation.preprocess import as_rgb, model_input
    from .model_args import load_model

    check_output_file(args.output, (".safetensors", ".npy"))
    image = as_rgb(args.image)
    bb = load_model(args)
    x = model_input(image, bb, resize=None if args.no_resize else "test")
    feats = dense_features(bb, x, "auto").float().cpu().contiguous()
    from ..atomic import atomic_write_with
    if args.output.lower().endswith(".npy"):
        def write(tmp):
            with open(tmp, "wb") as f:  # a file object: np.save would append .npy to a name
                np.save(f, feats.numpy())
    else:
        from safetensors.torch import save_file
        meta = {"backbone": str(bb.name or args.backbone), "weights": str(bb.weights_id), "image": str(args.image),
                "input_hw": f"{x.shape[1]}x{x.shape[2]}",
                **({"max_patches": str(bb.max_patches or "image")} if bb.family == "naflex" else {})}

        def write(tmp):
            save_file({"features": feats}, tmp, metadata=meta)
    atomic_write_with(args.output, write)
    print(f"wrote {args.output}: features {tuple(feats.shape)}")
    return 0
