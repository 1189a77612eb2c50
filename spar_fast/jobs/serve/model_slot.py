"""One model in memory: asking for another backbone or weights replaces it."""
from __future__ import annotations

import gc
import time

import torch


class ModelSlot:
    """Holds at most one backbone (eval mode, on ``device``). Not thread-safe by itself: the
    server calls it only while a request holds its turn (:class:`Turns`)."""

    def __init__(self, device=None, tokenizer: str | None = None):
        from ...runtime import resolve_device

        self.device = resolve_device(device)
        self.tokenizer = tokenizer
        self.key: tuple[str, str] | None = None
        self.model = None

    def get(self, backbone: str, weights: str):
        """``(backbone, seconds spent loading)``; 0.0 when ``(backbone, weights)`` is the one held.
        The one held is freed before another is built, so two never share the memory."""
        from ...backbones import Backbone
        from ...runtime import Weights

        if self.key == (backbone, weights):
            return self.model, 0.0
        self.release()
        start = time.perf_counter()
        model = Backbone.from_pretrained(backbone, weights=Weights.parse(weights)).to(self.device).eval()
        if self.tokenizer is not None:
            model.set_tokenizer(self.tokenizer)
        self.model, self.key = model, (backbone, weights)
        return model, time.perf_counter() - start

    def release(self) -> None:
        self.model, self.key = None, None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
