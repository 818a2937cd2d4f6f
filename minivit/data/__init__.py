"""Images in: CIFAR-10 and image folders, normalisation, augmentation, the shipped subset (assets/)."""
from .datasets import SUBSET_PATH, load_dataset  # noqa: F401
from .image_folder import load_image_folder, make_subset, read_image  # noqa: F401
from .splits import DataError, Dataset, Split, cache_dir, hold_out  # noqa: F401
from .transforms import augment, channel_stats, mix_batch, normalize  # noqa: F401
