"""Elementwise work in cache-sized pieces.

An elementwise layer written in NumPy is a chain of whole-array passes: GELU's x * x,
exp, the erf polynomial, the products, each reading and writing B x N x M floats. At
`vit-ti16` scale (10 images x 197 tokens x 768 features per shard, 6 MB per array) the
arrays and their temporaries outgrow the caches, and every pass goes out to main memory.
`in_pieces` cuts the rows into pieces of about PIECE_FLOATS floats, so that a piece and
its temporaries stay in the core's L2 cache through the whole chain. The arithmetic is
unchanged: every piece runs the same function the whole array would, and the results land
in the same output arrays. (Both cores are already busy: the training engine runs one
shard of the batch per core, minivit/train/trainer.py.)

Under CuPy, or for small arrays, the function simply runs once on the whole arrays.
"""
import numpy as np

from ..backend import get_array_module

PIECE_FLOATS = 1 << 17        # 128K floats: 512 KB in float32, the L2 cache of one core here


def in_pieces(fn, inputs, outputs):
    """Run fn(*input_rows, *output_rows) over the rows of the arrays, piece by piece.

    inputs and outputs: arrays (..., n) with the same leading shape, outputs C-contiguous.
    fn must act on each row alone (row i of every output depends only on row i of the
    inputs) and write its results into the output rows it is given. Returns the outputs
    as a tuple.
    """
    x = inputs[0]
    if get_array_module(x) is not np or x.size <= 2 * PIECE_FLOATS:
        fn(*inputs, *outputs)
        return tuple(outputs)
    ins = [a.reshape(-1, a.shape[-1]) for a in inputs]      # (rows, n); a copy only if not contiguous
    outs = [a.reshape(-1, a.shape[-1]) for a in outputs]    # views: writes land in the outputs
    rows = ins[0].shape[0]
    step = max(1, PIECE_FLOATS // x.shape[-1])              # rows per piece
    for i in range(0, rows, step):
        fn(*(a[i:i + step] for a in ins), *(a[i:i + step] for a in outs))
    return tuple(outputs)
