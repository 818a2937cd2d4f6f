"""Training batches: each epoch's shuffle, and a batch's augmentation and normalisation, every draw
from its stream of train/random_streams.py."""
import numpy as np

from ..backend import fused, xp as backend_xp
from ..data.transforms import augment, normalize
from ..data.randaugment import rand_augment, random_erase
from .random_streams import shuffle_stream, step_stream


def epoch_order(seed, epoch, n):
    """The shuffled order of the n training images in `epoch`."""
    return shuffle_stream(seed, epoch).permutation(n)


def make_batch(split, tcfg, mean, std, epoch, index, step, dtype="float32", order=None, keep=None):
    """Batch `index` of `epoch`: its images augmented with the streams of `step` and normalised,
    on the configured backend. Shuffle: epoch_order (pass `order` to reuse it within an epoch).
    In order: RandAugment on the uint8 images, random crop and flip, normalisation, random erasing,
    each from its stream of step `step` (train/random_streams.py).

    keep: build only the images at these positions of the batch (sorted; an MPI rank's share, see
    batch_positions): every draw is still made for the whole batch, and each image takes its own."""
    if order is None:
        order = epoch_order(tcfg.seed, epoch, len(split.labels))
    idx = np.sort(order[index * tcfg.batch_size:(index + 1) * tcfg.batch_size])
    B = len(idx)
    some = dict(keep=keep, batch=B) if keep is not None else {}
    if keep is not None:
        idx = idx[keep]
    xp = backend_xp()
    images = xp.asarray(split.images[idx])  # uint8: on a GPU the one copy, augmented and normalised there
    if tcfg.randaugment:
        images = rand_augment(images, step_stream(tcfg.seed, step, "randaugment"), tcfg.randaugment,
                              tcfg.randaugment_magnitude, **some)
    rng = step_stream(tcfg.seed, step, "augment") if tcfg.augment else None
    kernel = fused(images, "augment_normalize") if keep is None else None
    if kernel:  # one kernel crops, flips and normalises (on a GPU: minivit/gpu/kernels.py), with the same draws
        x = kernel(images, mean, std, dtype, rng)
    else:
        x = normalize(images if rng is None else augment(images, rng, **some), mean, std, xp, dtype)
    if tcfg.random_erasing:
        x = random_erase(x, step_stream(tcfg.seed, step, "erasing"), tcfg.random_erasing, **some)
    return x, xp.asarray(split.labels[idx])


def batch_positions(n, rows, mixing=False):
    """The positions of a batch of n images that a rank must build to compute its `rows`: the rows
    themselves, and with MixUp/CutMix (image b is mixed with image n-1-b) their partners too.
    -> (keep, partner, mine): keep sorted; partner[j] the place in keep of keep[j]'s partner (None
    without mixing); mine the places in keep of the rows."""
    mine = np.arange(n)[rows]
    keep = np.union1d(mine, n - 1 - mine) if mixing else mine
    partner = np.searchsorted(keep, n - 1 - keep) if mixing else None
    return keep, partner, np.searchsorted(keep, mine)
