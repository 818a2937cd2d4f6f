"""Two cores for the CPU kernels: numba's parallel loops, or the trainer's shards on two threads?

    python benchmarks/cpu_kernel_threads.py

minivit's CPU kernels (minivit/cpu/kernels.py) are serial loops compiled with nogil, and the trainer
uses the two cores by giving each thread its own shards of the batch (minivit/train/engine.py). The
alternative is numba's `parallel=True` with `prange` over the rows, one call splitting its rows
over numba's threads. This times, on one training step's softmax and LayerNorm shapes for
cifar-tiny at batch 256 (a shard of 31 images, 8 of them per step):

  serial        the kernel over all 8 shards in turn, on one core (the one-thread baseline);
  shards        two Python threads, each running the kernel over its 4 shards (minivit's way);
  prange        a parallel twin of the kernel (below), over each shard in turn, numba's 2 threads.

Medians of --repeats runs of the whole step's worth of calls.
"""
import argparse
import math
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numba  # noqa: E402

from minivit.cpu import kernels  # noqa: E402


@numba.njit(parallel=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract", "arcp", "nsz"})
def softmax_prange(x, out, scale, shift, shared):
    """kernels.softmax_kernel with its row loop as numba's prange."""
    rows, n = x.shape
    for i in numba.prange(rows):
        row = np.empty(n, x.dtype)
        top = shift if shared else kernels.row_max(x, i, n, scale)
        s = scale - scale
        for j in range(n):
            e = kernels.exp_of(scale * x[i, j] - top)
            row[j] = e
            s += e
        r = (scale / scale) / s
        for j in range(n):
            out[i, j] = row[j] * r


@numba.njit(parallel=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract", "arcp", "nsz"})
def layernorm_prange(x, w, b, eps, y, xhat, rstd):
    """kernels.layernorm_forward_kernel with its row loop as numba's prange."""
    rows, D = x.shape
    for i in numba.prange(rows):
        s = 0.0
        for j in range(D):
            s += x[i, j]
        mean = s / D
        ss = 0.0
        for j in range(D):
            c = x[i, j] - mean
            ss += c * c
        r = 1.0 / math.sqrt(ss / D + eps)
        for j in range(D):
            h = (x[i, j] - mean) * r
            xhat[i, j] = h
            y[i, j] = h * w[j] + b[j]
        rstd[i] = r


def timed(fn, repeats):
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=30)
    a = p.parse_args()
    numba.set_num_threads(2)
    rng = np.random.default_rng(0)
    shards, images, heads, n, dim = 8, 31, 4, 65, 64
    # One step: a block's softmax over (31, 4, 65, 65) scores per shard, LayerNorm over (31 * 65, 64).
    scores = [rng.standard_normal((images * heads * n, n)).astype(np.float32) for _ in range(shards)]
    probs = [np.empty_like(s) for s in scores]
    xs = [rng.standard_normal((images * n, dim)).astype(np.float32) for _ in range(shards)]
    w, b = np.ones(dim, np.float32), np.zeros(dim, np.float32)
    ln_out = [(np.empty_like(x), np.empty_like(x), np.empty(len(x), np.float32)) for x in xs]

    def sm(kernel, ids):
        for i in ids:
            kernel(scores[i], probs[i], np.float32(0.25), np.float32(scores[i].max() * 0.25), True)

    def ln(kernel, ids):
        for i in ids:
            kernel(xs[i], w, b, 1e-6, *ln_out[i])

    pool = ThreadPoolExecutor(2)
    halves = [range(0, shards, 2), range(1, shards, 2)]
    print(f"numba {numba.__version__}, {numba.get_num_threads()} threads for prange; medians of {a.repeats}")
    for name, run, serial, par in (("softmax", sm, kernels.softmax_kernel, softmax_prange),
                                   ("layernorm", ln, kernels.layernorm_forward_kernel, layernorm_prange)):
        t_serial = timed(lambda: run(serial, range(shards)), a.repeats)
        t_shards = timed(lambda: list(pool.map(lambda ids: run(serial, ids), halves)), a.repeats)
        t_prange = timed(lambda: run(par, range(shards)), a.repeats)
        print(f"{name:10} serial {t_serial * 1e3:6.2f} ms   two threads on shards {t_shards * 1e3:6.2f} ms "
              f"({t_serial / t_shards:.2f}x)   prange {t_prange * 1e3:6.2f} ms ({t_serial / t_prange:.2f}x)")


if __name__ == "__main__":
    main()
