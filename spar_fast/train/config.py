"""``TrainConfig``: every training option, declared once (help text, default and range check
beside the field), used whole by :func:`spar_fast.train.train`, :func:`spar_fast.distill` and the
``train`` / ``distill`` commands (whose options are generated from these fields).

Defaults are the reference recipe (SPEC §4). Checks run on construction, so a bad value from the
API or the command line (``--lr inf``, ``--weight-decay nan``, ``--epochs 0``) is one line.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import UserError
from ..options import at_least, check_fields, finite_above, in_range, option
from ..data.decode import DECODES
from ..runtime import PRECISIONS, Weights
from .unfreeze import VALID_FORMS

SCHEDULES = ("constant", "cosine")
SCHEMES = ("features", "multires", "class_sim")   # docs/SCHEMES.md
CLASS_FORMS = ("softmax", "cosine")
SCHEME_FIELDS = {"multires": ("rescale_min", "rescale_max"),
                 "class_sim": ("class_queries", "class_form", "class_scale")}
SCHEME_DEFAULTS = {"rescale_min": 0.5, "rescale_max": 1.5, "class_form": "softmax"}
CLASS_SCALE_DEFAULT = {"softmax": 40.0, "cosine": 1.0}
LOADER_STAGES = ("cpu", "device")

# Settings that must equal the saved ones when a run is resumed (``epochs`` too, unless the
# schedule is constant: training longer is then the same run continued).
RESUME_FIELDS = ("backbone", "weights", "unfreeze", "tokens_per_step", "lr", "weight_decay", "schedule",
                 "warmup_steps", "precision", "seed", "epochs")


@dataclass(frozen=True)
class TrainConfig:
    """Training options. ``backbone`` / ``weights`` None: those recorded in the feature store."""

    backbone: str | None = option(None, "backbone name (default: the store's)", cli=False)
    weights: str | None = option(None, "student init, canonical weights string", cli=False)
    epochs: int = option(10, "passes over the stored images", check=at_least(1))
    unfreeze: str = option("blk_-1,blk_-2", f"trainable parameters, a comma list of: {VALID_FORMS}")
    tokens_per_step: int = option(0, "pack images into one forward pass up to this many patch tokens "
                                     "per device; 0 = one image per step per device, the reference",
                                  check=at_least(0))
    accumulate: int = option(1, "packed chunks per device per optimizer step (gradient accumulation; "
                                "1 process with --accumulate k = k processes with 1)", check=at_least(1))
    lr: float = option(2e-5, "AdamW learning rate", check=finite_above(0))
    weight_decay: float = option(1e-4, "AdamW weight decay", check=finite_above(0, inclusive=True))
    schedule: str = option("constant", "learning-rate schedule after warmup", choices=SCHEDULES)
    warmup_steps: int = option(0, "linear lr warmup steps", check=at_least(0))
    precision: str = option("auto", "auto = bf16 autocast on CUDA, fp32 on CPU; fp16 uses a grad scaler",
                            choices=PRECISIONS)
    workers: int | None = option(None, "data-loading worker processes (default: cpus - 1, at most 16, on "
                                       "GPU; 0 on CPU)", check=at_least(0), kind=int)
    checkpoint_every: int = option(0, "also checkpoint every N steps (0: only at epoch ends)", check=at_least(0))
    device: str | None = option(None, "cpu, cuda or cuda:N (default: cuda if available)", kind=str)
    seed: int = option(0, "seed of the image order (and augmentation)", check=at_least(0))
    log_every: int = option(50, "steps between reads of the loss from the device (the loop's only host "
                                "syncs, also at epoch ends and checkpoints)", check=at_least(1))
    skip_nonfinite: bool = option(False, "skip images whose target or loss is not finite (counted in "
                                         "summary.json) instead of stopping with an error",
                                  flag="--skip-nonfinite")
    decode: str | None = option(None, "image decode path (default: the one the store's targets were made "
                                      "with; docs/DATAPATH.md)", choices=DECODES, kind=str)
    loader_stage: str | None = option(None, "where images are decoded and augmented: cpu (worker "
                                            "processes) or device (default on CUDA)",
                                      choices=LOADER_STAGES, kind=str)
    allow_partial: bool = option(False, "train on an unfinished store (only the targets it holds)",
                                 flag="--allow-partial")
    full_weights: bool = option(False, "write checkpoints as the full open_clip state dict (standalone) "
                                "instead of a delta holding only the trained tensors",
                                flag="--full-weights")

    scheme: str = option("features", "distillation scheme: features (SPAR: MSE to the stored targets), "
                                     "multires (the student sees the image rescaled by a random factor, "
                                     "its features resized to the target grid; a single-pass store), "
                                     "class_sim (MSE between class-similarity maps of student and "
                                     "target; needs --class-queries); docs/SCHEMES.md", choices=SCHEMES)
    rescale_min: float | None = option(None, "multires: smallest rescale factor (default 0.5)",
                                       check=in_range(0.125, 4.0), kind=float)
    rescale_max: float | None = option(None, "multires: largest rescale factor (default 1.5)",
                                       check=in_range(0.125, 4.0), kind=float)
    class_queries: str | None = option(None, "class_sim: the class list, a query file (`spar-fast "
                                             "queries`), a class file, or class names separated by ';'",
                                       kind=str)
    class_form: str | None = option(None, "class_sim: compare softmax probabilities (default) or "
                                          "scaled cosine similarities", choices=CLASS_FORMS, kind=str)
    class_scale: float | None = option(None, "class_sim: logit scale applied to the cosines (default 40 "
                                             "for softmax, 1 for cosine)", check=finite_above(0), kind=float)
    resume: bool = option(True, "start over even if the output directory holds a checkpoint", flag="--no-resume")
    progress: bool = option(True, "no progress bar", flag="--quiet")

    def __post_init__(self):
        if self.tokens_per_step is None:  # the older spelling of "no packing"
            object.__setattr__(self, "tokens_per_step", 0)
        if self.weights is not None:  # canonical spelling, checked (a file must exist)
            object.__setattr__(self, "weights", str(Weights.parse(self.weights)))
        check_fields(self)
        self._check_scheme()

    def _check_scheme(self) -> None:
        """Scheme options only with their scheme; class_sim needs its class list; a valid range."""
        for scheme, names in SCHEME_FIELDS.items():
            given = [n for n in names if getattr(self, n) is not None]
            if given and self.scheme != scheme:
                flags = ", ".join("--" + n.replace("_", "-") for n in given)
                raise UserError(f"{flags} apply only to --scheme {scheme} (the scheme is {self.scheme})")
        if self.scheme == "class_sim" and not self.class_queries:
            raise UserError("--scheme class_sim needs the class list: --class-queries FILE | 'name; name; ...'")
        if self.scheme == "multires" and self.rescale[0] > self.rescale[1]:
            raise UserError(f"rescale_min {self.rescale[0]} is above rescale_max {self.rescale[1]}")

    @property
    def rescale(self) -> tuple[float, float]:
        """The multires factor range ``(min, max)`` with its defaults."""
        return (self.rescale_min if self.rescale_min is not None else SCHEME_DEFAULTS["rescale_min"],
                self.rescale_max if self.rescale_max is not None else SCHEME_DEFAULTS["rescale_max"])

    @property
    def class_settings(self) -> tuple[str, float]:
        """The class_sim ``(form, scale)`` with their defaults."""
        form = self.class_form or SCHEME_DEFAULTS["class_form"]
        return form, self.class_scale if self.class_scale is not None else CLASS_SCALE_DEFAULT[form]

    def scheme_record(self) -> dict:
        """The scheme and its settings (defaults filled in), as recorded in the run."""
        if self.scheme == "multires":
            return {"scheme": "multires", "rescale": list(self.rescale)}
        if self.scheme == "class_sim":
            form, scale = self.class_settings
            return {"scheme": "class_sim", "class_queries": self.class_queries, "class_form": form,
                    "class_scale": scale}
        return {"scheme": self.scheme}

    def replace(self, **changes) -> "TrainConfig":
        """A copy with ``changes`` (checked); an unknown name is a one-line error listing the
        known ones."""
        if "num_workers" in changes:  # the older name of ``workers``
            changes["workers"] = changes.pop("num_workers")
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise UserError(f"unknown training option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **changes)

    def resume_key(self, world: int) -> dict:
        """The settings a resumed run must share (saved in the trainer state); ``chunks_per_step``
        (processes x accumulation) fixes the global batch."""
        key = {name: getattr(self, name) for name in RESUME_FIELDS}
        key["chunks_per_step"] = world * self.accumulate
        if self.scheme != "features":  # left out for SPAR, so runs saved before schemes resume
            key.update(self.scheme_record())
        return key


def make_config(config: TrainConfig | None = None, **overrides) -> TrainConfig:
    """``config`` (default: the reference recipe) with keyword ``overrides``."""
    if config is not None and not isinstance(config, TrainConfig):
        raise UserError(f"config must be a TrainConfig, got {type(config).__name__}")
    return (config or TrainConfig()).replace(**overrides)
