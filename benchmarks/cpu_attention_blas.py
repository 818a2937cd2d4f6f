"""Attention's products on a CPU: MKL's batch (minivit/cpu/blas.py) against NumPy's loop over its BLAS.

    python benchmarks/cpu_attention_blas.py

The fused attention kernels (minivit/cpu/kernels.py: attention_forward and attention_backward, the
products and the numba softmax) on one shard's q, k, v, as views of a (B, N, 3, H, d) qkv array the
way mhsa_forward makes them, for cifar-small (22 images of 65 tokens, 4 heads of 32) and vit-ti16
(8 images of 197 tokens, 3 heads of 64). "mkl" runs every product through MKL (the SMALL_PRODUCT rule
lifted), "numpy" through NumPy's `@` (MKL off); one BLAS thread, and also two Python threads on a
shard each, as the trainer runs them. Rounds alternate the two; medians of milliseconds per forward
and backward. This is the measurement behind blas.SMALL_PRODUCT (docs/cpu_kernels.md).
"""
import argparse
import os
import statistics
import sys
import threading
import time

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from minivit.cpu import blas, kernels  # noqa: E402

SHAPES = {"cifar-small": (22, 4, 65, 32), "vit-ti16": (8, 3, 197, 64)}


def shard(B, H, N, d, seed):
    """q, k, v (B, H, N, d) as views of one qkv array, and an upstream gradient in the heads' layout."""
    rng = np.random.default_rng(seed)
    q, k, v = rng.standard_normal((B, N, 3, H, d), dtype=np.float32).transpose(2, 0, 3, 1, 4)
    dout = rng.standard_normal((B, N, H, d), dtype=np.float32).transpose(0, 2, 1, 3)
    return q, k, v, dout


def forward_backward(q, k, v, dout):
    out, cache = kernels.attention_forward(q, k, v, 0.125)
    kernels.attention_backward(dout, cache)


def ms_per_call(shards, threads, repeats):
    """Milliseconds per forward and backward, `threads` Python threads each on its own shard."""
    for s in shards:
        forward_backward(*s)                                 # warm: compile or load the kernels
    pool = [threading.Thread(target=lambda i=i: [forward_backward(*shards[i]) for _ in range(repeats)])
            for i in range(threads)]
    t = time.perf_counter()
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    return (time.perf_counter() - t) / repeats / threads * 1e3


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=20)
    a = p.parse_args()
    if not blas.available():
        sys.exit("MKL is not installed here: pip install mkl")
    blas.SMALL_PRODUCT = 1
    threadpool_limits(1, user_api="blas")
    print(f"{blas.version()}; ms per forward and backward, one shard (1 thread) or one shard each (2 threads)")
    for name, shape in SHAPES.items():
        shards = [shard(*shape, seed) for seed in range(2)]
        times = {}
        for r in range(a.rounds):
            for lib in (("mkl", "numpy") if r % 2 == 0 else ("numpy", "mkl")):
                blas.use_mkl(lib == "mkl")
                for threads in (1, 2):
                    times.setdefault((lib, threads), []).append(ms_per_call(shards, threads, a.repeats))
        blas.use_mkl(True)
        B, H, N, d = shape
        line = ", ".join(f"{lib} {threads} thread{'s' if threads > 1 else ''} {statistics.median(t):.2f}"
                         for (lib, threads), t in sorted(times.items(), key=lambda kv: (kv[0][1], kv[0][0])))
        print(f"{name} ({B} images, {H} heads, {N} x {N} x {d}): {line}")


if __name__ == "__main__":
    main()
