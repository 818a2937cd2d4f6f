"""Nanoseconds per float32 element of the elementwise kernels a ViT's forward pass leans on,
NumPy against PyTorch, one thread, each library alone in its own process, rounds alternating.

    python benchmarks/elementwise_cost.py --rounds 5

Each kernel runs on a 131,072-float array (512 KB, one core's L2 cache here; the softmaxes on
its first whole rows of 65, 197 or 256) into a preallocated
output, so only the arithmetic is timed, not memory traffic. minivit's softmax and exact GELU are
built from NumPy passes such as `exp` and `multiply`; PyTorch's `gelu` and `softmax` are one fused
loop each, which NumPy cannot write (docs/results.md, "Inference, and where it falls short"). The
table gives, per kernel, the median over rounds of each round's median, with the range over rounds.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

N = 1 << 17
ROWS = (65, 197, 256)  # softmax row lengths: cifar-tiny/-small's 65 tokens, vit-ti16's 197, and 256
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rows(x, n):
    """The first whole rows of n of the flat array x, as an (N // n, n) view."""
    return x[:N // n * n].reshape(-1, n)


def measure(lib):
    import numpy as np
    x = (np.random.default_rng(0).standard_normal(N) * 3).astype(np.float32)
    out = np.empty_like(x)
    if lib == "torch":
        import torch
        torch.set_num_threads(1)
        X, O = torch.from_numpy(x), torch.from_numpy(out)
        F = torch.nn.functional
        kernels = {"exp": lambda: torch.exp(X, out=O), "multiply": lambda: torch.mul(X, X, out=O),
                   "tanh": lambda: torch.tanh(X, out=O), "gelu (exact)": lambda: F.gelu(X)}
        softmax_of = {n: (lambda S: lambda: torch.softmax(S, -1))(torch.from_numpy(rows(x, n))) for n in ROWS}
    else:
        sys.path.insert(0, ROOT)
        from minivit.train.mallopt import keep_freed_memory
        keep_freed_memory()  # as minivit's trainer does: temporaries reuse freed memory, no page faults
        from minivit.layers.activations import gelu_forward
        from minivit.layers.attention import softmax
        kernels = {"exp": lambda: np.exp(x, out=out), "multiply": lambda: np.multiply(x, x, out=out),
                   "tanh": lambda: np.tanh(x, out=out), "gelu (exact)": lambda: gelu_forward(x, "exact", False)}
        softmax_of = {n: (lambda s: lambda: softmax(s))(rows(x, n)) for n in ROWS}
    sizes = dict.fromkeys(kernels, N)                   # floats each kernel works on
    for n in ROWS:
        kernels[f"softmax (rows of {n})"] = softmax_of[n]
        sizes[f"softmax (rows of {n})"] = N // n * n
    result = {}
    for name, f in kernels.items():
        for _ in range(50):
            f()
        times = []
        for _ in range(200):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        result[name] = statistics.median(times) / sizes[name] * 1e9
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--worker", choices=["numpy", "torch"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(measure(a.worker)))
        return
    runs = {"numpy": [], "torch": []}
    for r in range(a.rounds):
        for lib in (("numpy", "torch") if r % 2 == 0 else ("torch", "numpy")):
            env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
            r_out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", lib], capture_output=True,
                                   text=True, env=env, check=True)
            runs[lib].append(json.loads(r_out.stdout))
    print("| kernel | NumPy / minivit, ns per float | PyTorch, ns per float | ratio |")
    print("| --- | --- | --- | --- |")
    for name in runs["numpy"][0]:
        n = [r[name] for r in runs["numpy"]]
        t = [r[name] for r in runs["torch"]]
        print(f"| {name} | {statistics.median(n):.2f} ({min(n):.2f}–{max(n):.2f}) | "
              f"{statistics.median(t):.2f} ({min(t):.2f}–{max(t):.2f}) | {statistics.median(n) / statistics.median(t):.1f} |")


if __name__ == "__main__":
    main()
