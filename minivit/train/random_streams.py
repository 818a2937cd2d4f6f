"""Every random draw of a run comes from its seed, through one table of streams (STREAMS).

The shuffle of epoch e is default_rng([seed, e]); what step s draws is default_rng([seed, s, number]), a
stream per purpose, so a checkpoint's step fixes all later randomness and a resumed run continues exactly
as an uninterrupted one. Evaluation draws nothing, except masked patch prediction's corruption of the
batch starting at image a, default_rng([seed, a]) (models/mpp.py: score), the same at every epoch.

Random streams per image: what a training forward pass draws for an image (its dropout masks, whether
drop path skips a branch, which patches PatchDropout keeps) depends on the seed, the step and the
image's place in the global batch, never on the shard, thread or MPI rank that computes it.

A shard of rows [a, b) of a step's global batch gets ImageStreams(seed, step, a, b). Image i draws
from its own Generator, default_rng([seed, step, 1, i]), made when it first draws; a draw of shape
(n, ...) is the n images' draws of shape (...), stacked. Two threads, or two machines, that split the
batch differently therefore draw the same numbers for every image, and a run's parameters do not
depend on how it was split (docs/distributed.md).
"""
import numpy as np

STREAMS = {               # name: the stream's number in default_rng([seed, step, number])
    "augment": 0,         # random crop and flip (train/batches.py)
    "dropout": 1,         # dropout, drop path, PatchDropout: image i's own default_rng([seed, step, 1, i])
    "masks": 2,           # masked patch prediction's corruption of the batch (models/mpp.py)
    "mix": 3,             # MixUp / CutMix (models/classify.py)
    "randaugment": 4,     # RandAugment (data/randaugment.py)
    "erasing": 5,         # random erasing (data/randaugment.py)
}


def shuffle_stream(seed, epoch):
    """The Generator of epoch `epoch`'s shuffle."""
    return np.random.default_rng([seed, epoch])


def step_stream(seed, step, name):
    """The Generator of step `step`'s draws for one purpose of STREAMS."""
    return np.random.default_rng([seed, step, STREAMS[name]])


def describe():
    """The table in words, as checkpoints record it."""
    return "; ".join(["shuffle default_rng([seed, epoch])"]
                     + [f"{name} default_rng([seed, step, {n}{', i' if name == 'dropout' else ''}])"
                        for name, n in STREAMS.items()])


class ImageStreams:
    """A Generator-like source for the rows [start, stop) of step `step`'s global batch. It answers
    `random(shape, dtype)`, the one call the layers make, with shape[0] == stop - start."""

    def __init__(self, seed, step, start, stop):
        self.key, self.start, self.stop = (seed, step, STREAMS["dropout"]), start, stop
        self._gens = None

    def generators(self):
        if self._gens is None:   # made on the first draw: a step without dropout makes none
            self._gens = [np.random.default_rng([*self.key, i]) for i in range(self.start, self.stop)]
        return self._gens

    def random(self, shape, dtype=np.float64):
        """Uniform [0, 1) numbers of `shape` (an int, or a tuple whose first entry is the shard's images)."""
        shape = (shape,) if np.isscalar(shape) else tuple(shape)
        if shape[0] != self.stop - self.start:
            raise ValueError(f"a draw of shape {shape} for a shard of {self.stop - self.start} images: "
                             "the first axis must be the images")
        # for image i: its own stream's next numbers of shape[1:]
        return np.stack([g.random(shape[1:], dtype=dtype) for g in self.generators()])
