"""Images in: CIFAR-10 and image folders, normalisation, augmentation, the shipped subset (assets/)."""
from .datasets import (SUBSET_PATH, DataError, Dataset, Split, cache_dir, load_dataset, load_image_folder,  # noqa: F401
                       make_subset, read_image)
from .transforms import augment, channel_stats, mix_batch, normalize  # noqa: F401
