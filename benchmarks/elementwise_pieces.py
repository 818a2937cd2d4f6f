"""GELU and softmax on whole arrays against cache-sized pieces of rows (minivit/layers/cache_pieces.py), in turn.

Two threads each run the layer on their own vit-ti16 shard, as the trainer's two threads do:
GELU forward on (8, 197, 768) and the in-place softmax on (8, 3, 197, 197) attention logits.
"Whole" sets PIECE_FLOATS above the array size, so the same code runs as one call per array.
Rounds alternate whole / pieces; the figures are medians over repeats in each round.

    python benchmarks/elementwise_pieces.py --rounds 4
"""
import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from minivit.layers import cache_pieces as pieces
from minivit.train import allocator
from minivit.layers.activations import gelu_forward
from minivit.layers.attention import softmax


def median_ms(fn, arrays, pool, repeats):
    times = []
    for _ in range(repeats):
        work = [a.copy() for a in arrays]               # softmax overwrites its input
        t = time.perf_counter()
        list(pool.map(fn, work))
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--repeats", type=int, default=20)
    a = p.parse_args()
    allocator.keep_freed_memory()
    rng = np.random.default_rng(0)
    cases = {"gelu (8, 197, 768)": (gelu_forward, [rng.standard_normal((8, 197, 768), dtype=np.float32)
                                                   for _ in range(2)]),
             "softmax (8, 3, 197, 197)": (lambda x: softmax(x, out=x),
                                          [rng.standard_normal((8, 3, 197, 197), dtype=np.float32) for _ in range(2)])}
    default = pieces.PIECE_FLOATS
    pool = ThreadPoolExecutor(2)
    for name, (fn, arrays) in cases.items():
        whole, cut = [], []
        for r in range(a.rounds):
            for mode in (("whole", "pieces") if r % 2 == 0 else ("pieces", "whole")):
                pieces.PIECE_FLOATS = arrays[0].size if mode == "whole" else default
                (whole if mode == "whole" else cut).append(median_ms(fn, arrays, pool, a.repeats))
        pieces.PIECE_FLOATS = default
        print(f"{name}, two threads: whole {min(whole):.1f}-{max(whole):.1f} ms, "
              f"pieces {min(cut):.1f}-{max(cut):.1f} ms (per-round medians, {a.rounds} rounds)")


if __name__ == "__main__":
    main()
