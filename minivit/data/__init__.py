"""Images in: CIFAR-10 and image folders, normalisation, augmentation, the shipped subset (assets/)."""
from .datasets import (SUBSET_PATH, DataError, Dataset, Split, cache_dir, hold_out, load_dataset,  # noqa: F401
                       load_image_folder, make_subset, read_image)
from .transforms import augment, channel_stats, mix_batch, normalize  # noqa: F401
