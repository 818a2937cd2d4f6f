"""What every loader returns: a Dataset of a train and a test Split (uint8 images (N, C, H, W), integer labels
(N,)) with its class names, the error for data minivit cannot read, the cache folder, and hold_out (a
validation split taken from the training images)."""
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class DataError(ValueError):
    """Data that is missing, corrupted or not in a format minivit reads."""


@dataclass
class Split:
    images: np.ndarray  # (N, C, H, W) uint8
    labels: np.ndarray  # (N,) int64


@dataclass
class Dataset:
    train: Split
    test: Split
    classes: tuple
    name: str

    @property
    def image_shape(self):
        return tuple(self.train.images.shape[1:])  # (C, H, W)


def cache_dir():
    """The folder for decoded datasets and downloads: $MINIVIT_CACHE, else ~/.cache/minivit (an empty
    MINIVIT_CACHE counts as unset, never as the working directory)."""
    env = os.environ.get("MINIVIT_CACHE", "").strip()
    d = Path(env) if env else Path.home() / ".cache" / "minivit"
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file in the way, no permission, a read-only disk
        what = f"MINIVIT_CACHE={env}" if env else f"the cache folder {d}"
        raise DataError(f"cannot use {what} as the cache folder ({e.strerror or e}); "
                        "set MINIVIT_CACHE to a folder minivit can write") from None
    return d


def file_md5(path, chunk=1 << 20):
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()



def hold_out(split, n, seed=0):
    """(the rest, the held-out): `n` images of `split` taken class by class, as evenly as the classes
    allow (the first n % K classes give one more), drawn from default_rng(seed). The seed is not the
    training run's, so every run that holds out `n` images of the same data holds out the same ones,
    and recipes are compared on one validation set."""
    labels = np.asarray(split.labels)
    classes = np.unique(labels)
    if not 0 < n < len(labels):
        raise DataError(f"--val-split {n}: hold out between 1 and {len(labels) - 1} of the {len(labels)} training images")
    quota = [n // len(classes) + (i < n % len(classes)) for i in range(len(classes))]
    rng = np.random.default_rng(seed)
    held = []
    for c, q in zip(classes, quota):
        idx = np.flatnonzero(labels == c)
        if q >= len(idx):
            raise DataError(f"--val-split {n}: class {c} has {len(idx)} training images, too few to hold out {q} "
                            "and train on the rest")
        held.append(rng.permutation(idx)[:q])
    held = np.sort(np.concatenate(held))
    rest = np.setdiff1d(np.arange(len(labels)), held)
    return Split(split.images[rest], labels[rest]), Split(split.images[held], labels[held])
