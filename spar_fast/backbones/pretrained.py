"""Saved model folders in the Hugging Face layout, and hub ids resolved offline from its cache.

A folder written by :func:`save_pretrained` holds:

* ``config.json`` — ``format`` (``spar_fast.pretrained/1``), ``backbone``, ``family``, geometry
  (``patch_size``, ``window``, ``feature_dim``, ``mean``, ``std``), ``weights`` (``{"kind":
  "delta", "base": ..., "base_replaced": ..., "base_relied": ...}`` or ``{"kind": "full"}``),
  ``unfreeze``, ``training`` (the training settings), ``store`` (the feature store's identity),
  ``license`` (of the base weights);
* ``model.safetensors`` — the delta (:mod:`spar_fast.backbones.delta`) or the full state dict;
* ``README.md`` — a model card: what it is, how it was trained, measured numbers, the base's
  licence.

A hub id ``org/name`` resolves through ``huggingface_hub.snapshot_download`` when that package is
installed (offline with ``HF_HUB_OFFLINE=1``: from the cache only), else by reading the cache
layout the hub client writes: ``$HF_HUB_CACHE`` (default ``$HF_HOME/hub``, default
``~/.cache/huggingface/hub``) ``/models--org--name/refs/main`` names the snapshot
``snapshots/<revision>/``. Uploading is the user's ``huggingface-cli upload``.
"""
from __future__ import annotations

import json
import os

import torch

from ..errors import UserError
from ..runtime import Weights

FORMAT = "spar_fast.pretrained/1"
CONFIG, MODEL, CARD = "config.json", "model.safetensors", "README.md"
FILES = (CONFIG, MODEL, CARD)
# licence of each backbone's published base weights (model-card metadata)
LICENSES = {"siglip2-b16-512": ("apache-2.0", "SigLIP 2 weights (google), Apache 2.0"),
            "openclip-b16": ("mit", "OpenCLIP LAION-2B weights, MIT"),
            "dinov3txt-l16": ("other", "DINOv3 License (Meta), see its model card")}
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def names_a_folder_or_repo(text: str) -> bool:
    """Whether ``text`` (given where a backbone name goes) is a model folder or a hub id."""
    try:
        return Weights.parse(text).kind == "pretrained"
    except UserError:
        return False


def hub_cache() -> str:
    """The Hugging Face hub cache folder the environment names (read at each call)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
    return os.path.join(os.path.expanduser(home), "hub")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def cached_snapshot(repo: str, cache: str | None = None) -> str | None:
    """The cached snapshot folder of ``repo`` (``refs/main``), or None: the hub client's layout
    read directly."""
    root = os.path.join(cache or hub_cache(), "models--" + repo.replace("/", "--"))
    try:
        with open(os.path.join(root, "refs", "main"), encoding="utf-8") as f:
            revision = f.read().strip()
    except OSError:
        return None
    folder = os.path.join(root, "snapshots", revision)
    return folder if revision and os.path.isfile(os.path.join(folder, CONFIG)) else None


def resolve_hub_id(repo: str) -> str:
    """The local folder of hub model ``repo``: downloaded (or found in the cache) with
    ``huggingface_hub`` when installed, else read from the cache layout. One-line UserError."""
    cache = hub_cache()
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        snapshot_download = None
    if snapshot_download is not None:
        try:
            return snapshot_download(repo, cache_dir=cache, local_files_only=offline(), allow_patterns=list(FILES))
        except Exception as exc:
            reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
            found = cached_snapshot(repo, cache)
            if found is not None:
                return found
            raise UserError(f"hub model {repo}: not in the local Hugging Face cache ({cache}) and not "
                            f"downloadable ({reason[:160]}); no file or folder has that name either") from None
    found = cached_snapshot(repo, cache)
    if found is None:
        raise UserError(f"hub model {repo}: not in the local Hugging Face cache ({cache}) and no file or "
                        "folder has that name; without huggingface_hub installed only cached models load")
    return found


def resolve_folder(weights: Weights) -> str:
    """The local model folder of ``weights`` (kind ``pretrained``: a folder or a hub id)."""
    folder = weights.path or resolve_hub_id(weights.repo)
    if not os.path.isfile(os.path.join(folder, MODEL)):
        raise UserError(f"{weights}: the model folder {folder} has no {MODEL}")
    return folder


def read_config(folder: str) -> dict:
    """``config.json`` of a model folder (must name its ``backbone``)."""
    path = os.path.join(folder, CONFIG)
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable model config ({exc.__class__.__name__})") from None
    if not isinstance(config, dict) or not isinstance(config.get("backbone"), str):
        raise UserError(f"{path}: not a spar_fast model config (no backbone)")
    return config


def model_file(folder: str) -> str:
    return os.path.join(folder, MODEL)


def _config(bb, meta: dict | None, full: bool) -> dict:
    from .delta import recorded_json

    license_id, _ = LICENSES.get(bb.name, ("apache-2.0", None))
    config = {"format": FORMAT, "backbone": bb.name, "family": bb.family, "patch_size": int(bb.patch_size),
              "window": int(bb.window), "feature_dim": int(bb.feature_dim), "mean": list(bb.mean),
              "std": list(bb.std), "license": license_id, "library_name": "spar_fast"}
    if meta is None or full:
        config["weights"] = {"kind": "full", "from": bb.weights_id}
    else:
        config["weights"] = {"kind": "delta", "base": meta["base_weights"],
                             "base_replaced": meta["base_replaced"], "base_relied": meta["base_relied"]}
    config["unfreeze"] = (meta or {}).get("unfreeze")
    config["training"] = recorded_json(meta or {}, "training")
    config["store"] = recorded_json(meta or {}, "store")
    return config


def model_card(config: dict, metrics: dict | None, tensor_count: int, file_bytes: int) -> str:
    """README.md text: front matter the hub reads, then what the model is, how it was trained,
    its measured numbers and the base's licence."""
    _, license_text = LICENSES.get(config["backbone"], (None, "the base weights' licence (random or "
                                                              "local weights: the project's)"))
    weights = config["weights"]
    lines = ["---", f"license: {config['license']}", "library_name: spar_fast",
             "tags:", "- open-vocabulary-segmentation", "- spar", "- distillation", "---", "",
             f"# SPAR student of {config['backbone']}", "",
             f"A {config['family']} backbone (patch {config['patch_size']}, native {config['window']}, "
             f"{config['feature_dim']}-d features) distilled with SPAR (single-pass any-resolution "
             "ViT distillation): its single-pass dense features imitate the sliding-window teacher.", ""]
    if weights["kind"] == "delta":
        lines += [f"`model.safetensors` holds only the trained tensors ({tensor_count}, {file_bytes / 1e6:.1f} MB) "
                  f"over the base weights `{weights['base']}`; loading rebuilds the base and checks its "
                  "checksums.", ""]
    else:
        lines += [f"`model.safetensors` holds the full state dict ({file_bytes / 1e6:.1f} MB).", ""]
    lines += ["```python", "import spar_fast as sf", "bb = sf.Backbone.from_pretrained(\"ORG/NAME\")  # or this folder",
              "```", "", "## Training", ""]
    if config.get("unfreeze"):
        lines += [f"- unfreeze: `{config['unfreeze']}`"]
    if config.get("training"):
        lines += [f"- {k}: `{v}`" for k, v in sorted(config["training"].items()) if k != "unfreeze"]
    else:
        lines += ["Training settings not recorded (weights saved outside a training run)."]
    if config.get("store"):
        lines += ["", "Feature store (teacher targets):", ""]
        lines += [f"- {k}: `{v}`" for k, v in sorted(config["store"].items())]
    lines += ["", "## Measured", ""]
    lines += ([f"| {k} | {v} |" for k, v in ([("metric", "value"), ("---", "---")] + sorted((metrics or {}).items()))]
              if metrics else ["No numbers recorded; `spar-fast eval --weights FOLDER` measures mIoU."])
    lines += ["", "## Licence", "", f"Base weights: {license_text}.", ""]
    return "\n".join(lines)


def eval_metrics(path: str) -> dict:
    """``{"<dataset> mIoU": value, "Mean6 mIoU": value}`` from the JSON ``spar-fast eval --out``
    writes (numbers for the model card)."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        metrics = {f"{r['dataset']} mIoU ({doc.get('mode', 'single')})": round(float(r["mIoU"]), 2)
                   for r in doc["results"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: not an evaluation summary of spar-fast eval --out ({exc.__class__.__name__})") from None
    if doc.get("Mean6") is not None:
        metrics["Mean6 mIoU"] = round(float(doc["Mean6"]), 2)
    return metrics


def save_pretrained(bb, folder, full: bool = False, dtype=None, metrics: dict | None = None) -> str:
    """Write ``bb`` as a model folder (see the module docstring); see ``Backbone.save_pretrained``."""
    from ..atomic import atomic_write
    from .delta import BaseIdentity, save_delta
    from .weights import save_weights

    folder = os.fspath(folder)
    if os.path.isfile(folder):
        raise UserError(f"output {folder} is a file; a folder is needed")
    if bb.name is None:
        raise UserError("this backbone has no spar_fast name; wrap it with Backbone.from_open_clip(model, name=...)")
    if dtype is not None and dtype not in _DTYPES:
        raise UserError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    os.makedirs(folder, exist_ok=True)
    info = getattr(bb, "delta", None)
    config = _config(bb, info.meta if info else None, full)
    path = model_file(folder)
    if info is not None and not full:
        meta = info.meta
        base = BaseIdentity(meta["backbone"], meta["base_weights"], meta["base_replaced"], meta["base_relied"])
        extra = {k: v for k, v in meta.items() if k in ("unfreeze", "training", "store", "global_step")}
        save_delta(bb.model, info.names, path, base, extra, _DTYPES[dtype] if dtype else None)
        count = len(info.names)
    else:
        save_weights(cast_copy(bb.model, dtype), path)
        count = len(bb.model.state_dict())
    atomic_write(os.path.join(folder, CONFIG), (json.dumps(config, indent=1, sort_keys=True) + "\n").encode())
    card = model_card(config, metrics, count, os.path.getsize(path))
    atomic_write(os.path.join(folder, CARD), card.encode())
    return folder


def cast_copy(model, dtype: str | None):
    """``model`` itself (``dtype`` None or "fp32"), else a copy with floating tensors cast."""
    import copy

    if dtype is not None and dtype not in _DTYPES:
        raise UserError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    if dtype in (None, "fp32"):
        return model
    dtype = _DTYPES[dtype]
    other = copy.deepcopy(model)
    for p in list(other.parameters()) + list(other.buffers()):
        if p.is_floating_point():
            p.data = p.data.to(dtype)
    return other
