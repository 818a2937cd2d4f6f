"""Images in: CIFAR-10 and image folders, normalisation, augmentation, the shipped subset (assets/)."""
from .datasets import (SUBSET_PATH, DataError, Dataset, Split, augment, cache_dir, channel_stats,  # noqa: F401
                       load_dataset, load_image_folder, make_subset, mix_batch, normalize, read_image)
