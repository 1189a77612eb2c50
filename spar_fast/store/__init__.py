"""Feature store: safetensors shards of teacher targets with JSON indexes and a manifest
(``layout``), the writer, the reader (every target checked as it is read), the consistency
check (``spar-fast verify``) and the in-place upgrade of format-1 stores. The extraction job that
fills a store is :func:`spar_fast.jobs.extract_features` (a job, above the stages: the store
imports no teacher).

Stored precision (``dtype``), measured on the stitched 512x512 output of the real SigLIP2 B/16
architecture (random init, a real photo; |y| <= 1.9): fp16 max abs error 4.9e-4, relative L2
2.1e-4, worst per-position cosine 0.99999982; bf16 max abs 3.9e-3, relative L2 1.7e-3, worst
cosine 0.9999983. fp16 (the default) is 8x more precise at the same size; values beyond its range
(65504) stop the job with a hint to use bf16 or fp32.
"""
from .reader import CorruptStoreError, FeatureStore
from .records import StoreRecord
from .verify import verify

__all__ = ["CorruptStoreError", "FeatureStore", "StoreRecord", "verify"]
