"""Training batches: each epoch's shuffle, and a batch's augmentation and normalisation, every draw
from default_rng([seed, epoch]) or default_rng([seed, step, stream])."""
import numpy as np

from ..backend import fused_kernels, xp as backend_xp
from ..data.transforms import augment, normalize
from ..data.randaugment import rand_augment, random_erase


def epoch_order(seed, epoch, n):
    """The shuffled order of the n training images in `epoch`: default_rng([seed, epoch])."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def make_batch(split, tcfg, mean, std, epoch, index, step, dtype="float32", order=None):
    """Batch `index` of `epoch`: its images augmented with the streams of `step` and normalised,
    on the configured backend. Shuffle: epoch_order (pass `order` to reuse it within an epoch).
    In order: RandAugment on the uint8 images (default_rng([seed, step, 4])), random crop and
    flip (default_rng([seed, step, 0])), normalisation, random erasing (default_rng([seed, step, 5]))."""
    if order is None:
        order = epoch_order(tcfg.seed, epoch, len(split.labels))
    idx = np.sort(order[index * tcfg.batch_size:(index + 1) * tcfg.batch_size])
    xp = backend_xp()
    images = xp.asarray(split.images[idx])  # uint8: on a GPU the one copy, augmented and normalised there
    if tcfg.randaugment:
        images = rand_augment(images, np.random.default_rng([tcfg.seed, step, 4]), tcfg.randaugment,
                              tcfg.randaugment_magnitude)
    rng = np.random.default_rng([tcfg.seed, step, 0]) if tcfg.augment else None
    gpu = fused_kernels() if xp is not np else None
    if gpu:  # one kernel crops, flips and normalises (minivit/gpu/kernels.py), with the same draws
        x = gpu.augment_normalize(images, mean, std, dtype, rng)
    else:
        x = normalize(images if rng is None else augment(images, rng), mean, std, xp, dtype)
    if tcfg.random_erasing:
        x = random_erase(x, np.random.default_rng([tcfg.seed, step, 5]), tcfg.random_erasing)
    return x, xp.asarray(split.labels[idx])
