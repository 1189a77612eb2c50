"""Input side of the pipeline: robust image loading and the SPAR augmentation (SPEC §3)."""
from .augment import (AugmentParams, apply_augment, image_seed, normalize, rescale_size,
                      sample_augment)
from .images import ImageItem, ImageLoadError, list_images, load_image, read_rgb  # noqa: F401 (load_image: deprecated)

__all__ = ["AugmentParams", "ImageItem", "ImageLoadError", "apply_augment", "image_seed",
           "list_images", "read_rgb", "normalize", "rescale_size", "sample_augment"]
