"""Peak memory of one case, measured in a fresh process (so earlier work does not count).

    python benchmarks/memory_probe.py teacher|train_step [--device cpu|cuda] [--size 4096] [--stride 24]

Prints one JSON line: ``peak_rss_mb`` (the process's peak resident memory minus its resident
memory just before the case ran, i.e. after imports and model load), ``cuda_peak_mb``
(``torch.cuda.max_memory_allocated`` during the case, CUDA only), ``seconds``, and the case's facts.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def teacher_case(bb, device, size, stride):
    image = torch.randn(3, size, size, device=device)

    def run():
        with torch.inference_mode():
            out = __import__("spar_fast").teacher_features(bb, image, stride=stride)
        return {"target_shape": list(out.shape)}
    return run


def train_step_case(bb, device, size, stride):
    from spar_fast.train.step import TrainStep, make_optimizer
    from spar_fast.train.unfreeze import apply_unfreeze

    trainable = apply_unfreeze("blk_-1,blk_-2", bb)
    bb.train()
    params = [p for p in bb.model.parameters() if p.requires_grad]
    h, w = size, size * 3 // 2  # an SA-1B-like 2:3 augmented image
    image = torch.randn(3, h, w, device=device)
    gh, gw = bb.grid(h, w)
    target = torch.randn(gh, gw, bb.feature_dim, device=device)
    precision = "bf16" if device.type == "cuda" else "fp32"
    step = TrainStep(bb, params, make_optimizer(params, 2e-5, 1e-4), torch.amp.GradScaler(device.type, enabled=False),
                     trainable.first_block, precision)

    def run():
        step([([image], [target])], 1, 2e-5)
        losses, _, _ = step.read()
        return {"tokens": gh * gw, "loss_finite": all(v == v for v in losses)}
    return run


CASES = {"teacher": teacher_case, "train_step": train_step_case}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("case", choices=sorted(CASES))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backbone", default=None)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--stride", type=int, default=24)
    args = p.parse_args(argv)
    import spar_fast as sf

    device = torch.device(args.device)
    name = args.backbone or ("siglip2-b16-512" if device.type == "cuda" else "siglip2-tiny")
    bb = sf.Backbone.from_pretrained(name, weights="random").to(device).eval()
    run = CASES[args.case](bb, device, args.size, args.stride)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before_cuda = torch.cuda.memory_allocated()
    before = _rss_mb()
    start = time.perf_counter()
    facts = run()
    if device.type == "cuda":
        torch.cuda.synchronize()
        facts["cuda_peak_mb"] = round((torch.cuda.max_memory_allocated() - before_cuda) / 2**20, 1)
    facts.update(case=args.case, backbone=name, device=str(device), size=args.size, stride=args.stride,
                 seconds=round(time.perf_counter() - start, 3), peak_rss_mb=round(_peak_rss_mb() - before, 1))
    print(json.dumps(facts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
