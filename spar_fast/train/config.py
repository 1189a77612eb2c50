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
from ..options import at_least, check_fields, finite_above, option
from ..data.decode import DECODES
from ..runtime import PRECISIONS, Weights
from .unfreeze import VALID_FORMS

SCHEDULES = ("constant", "cosine")
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
    resume: bool = option(True, "start over even if the output directory holds a checkpoint", flag="--no-resume")
    progress: bool = option(True, "no progress bar", flag="--quiet")

    def __post_init__(self):
        if self.tokens_per_step is None:  # the older spelling of "no packing"
            object.__setattr__(self, "tokens_per_step", 0)
        if self.weights is not None:  # canonical spelling, checked (a file must exist)
            object.__setattr__(self, "weights", str(Weights.parse(self.weights)))
        check_fields(self)

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
        return key


def make_config(config: TrainConfig | None = None, **overrides) -> TrainConfig:
    """``config`` (default: the reference recipe) with keyword ``overrides``."""
    if config is not None and not isinstance(config, TrainConfig):
        raise UserError(f"config must be a TrainConfig, got {type(config).__name__}")
    return (config or TrainConfig()).replace(**overrides)
