"""Jobs: orchestration across stages, above the stage libraries and below the commands.

``extract.extract_features`` (images -> augmentation -> teacher -> feature store, one process or
under torchrun with ``extract_dist``), ``distill.distill`` (extraction, then training),
``demo.run_demo`` (the demo job), ``evaluate.evaluate_datasets`` (one backbone over several
benchmark datasets) and ``serve`` (the local segmentation page of ``spar-fast serve``). A job may import any stage; no stage imports a job.
"""
