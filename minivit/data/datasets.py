"""load_dataset: the shipped CIFAR-10 subset (the default), the official CIFAR-10 (data/cifar10.py), or an
image folder or archive (data/image_folder.py), chosen from one --data string.

Every loader returns a `Dataset` (data/splits.py): uint8 images (N, C, H, W), integer labels (N,)
and class names, for a train and a test split. Decoding happens once; the arrays
are cached as .npz in the cache folder (MINIVIT_CACHE, default ~/.cache/minivit).
"""
from pathlib import Path

from .cifar10 import load_cifar10
from .image_folder import IMAGE_SUFFIXES, load_image_folder
from .splits import DataError

SUBSET_PATH = Path(__file__).parent / "assets" / "cifar10-subset.tar.gz"


def load_dataset(spec=None):
    """'subset' (default, shipped in the package), 'cifar10' (official, downloaded once) or a PATH
    to the official archive/folder or to an image folder/archive."""
    if spec in (None, "subset"):
        if not SUBSET_PATH.exists():
            raise DataError(f"the shipped CIFAR-10 subset is missing ({SUBSET_PATH}); reinstall minivit")
        return load_image_folder(SUBSET_PATH)
    if spec == "cifar10" and not Path(spec).exists():  # a ./cifar10 folder or file of the user's wins
        return load_cifar10()
    p = Path(spec)
    if not p.exists():
        raise DataError(f"--data {spec}: no such file or folder (use 'subset', 'cifar10' or a path)")
    if not (p.is_dir() or p.is_file()):
        raise DataError(f"--data {spec}: not a regular file or folder (a device or a pipe); give an image folder, "
                        "its .tar.gz/.zip, or cifar-10-python.tar.gz")
    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
        raise DataError(f"--data {spec}: a single image, not a dataset; give a folder with train/<class>/ and "
                        "test/<class>/ (or its .tar.gz/.zip); `minivit predict` classifies single images")
    is_official = (p.is_dir() and ((p / "cifar-10-batches-py").is_dir() or (p / "data_batch_1").is_file())) \
        or p.name.startswith("cifar-10-python")
    return load_cifar10(p) if is_official else load_image_folder(p)
