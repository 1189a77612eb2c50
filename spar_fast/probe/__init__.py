"""Feature-quality probes (paper Tables 7 and 8): linear probe, kNN retrieval segmentation and
mask-oracle panoptic quality on frozen dense features (docs/PROBES.md)."""
from .runner import PROBES, ProbeOptions, run_probes

__all__ = ["PROBES", "ProbeOptions", "run_probes"]
