"""GFLOP/s of the dense layers' matrix products on a training step's real shapes: NumPy's BLAS
against PyTorch's, one thread and two, each library alone in its own process, in turn.

    python benchmarks/blas_gflops.py                       # cifar-tiny, cifar-small, vit-ti16
    python benchmarks/blas_gflops.py --presets cifar-tiny --rounds 5

Where Intel's MKL is installed (the mkl wheel, minivit[fast]) the one-thread column adds minivit's own
products through it (minivit/cpu/blas.py), in a third process per round: MKL on every shape, including
those minivit leaves to NumPy (blas.SMALL_SIDE).

A CPU training step splits its batch into shards of about 2,048 tokens (minivit/train/engine.py),
and each shard runs every dense layer's three products: forward y = x W (M, Din) x (Din, Dout),
backward dx = dy W^T and dW = x^T dy. This times those products on the shards' shapes (M = the
shard's tokens) for each of the four dense layers of a block (qkv, proj, fc1, fc2), in float32,
and reports GFLOP/s (2 M Din Dout per product) against the machine's nominal peak.

With --threads 2 each library uses both cores for one product, as PyTorch does in its step;
minivit's step instead gives each core its own shard with a one-thread BLAS, so its relevant
figure is the one-thread one, times two. The peak assumes two 512-bit (AVX-512) or 256-bit (AVX2)
FMA units per core at the clock /proc/cpuinfo reports: a nominal ceiling, not a promise.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def shapes(preset):
    """[(layer, product, M, K, N)]: each product (M, K) x (K, N) a shard's dense layers run."""
    sys.path.insert(0, os.path.dirname(HERE))
    import minivit as mv
    from minivit.train.engine import Engine
    cfg = mv.ViTConfig.preset(preset)
    T = cfg.tokens_per_image
    M = max(1, Engine.TRAIN_TOKENS_PER_SHARD // T) * T
    D, H = cfg.dim, cfg.mlp_dim
    out = []
    for layer, din, dout in (("qkv", D, 3 * D), ("proj", D, D), ("fc1", D, H), ("fc2", H, D)):
        out += [(layer, "x W", M, din, dout), (layer, "dy W^T", M, dout, din), (layer, "x^T dy", din, M, dout)]
    return out


def measure(impl, threads, products, repeats):
    """Median seconds of each product, in this process."""
    import numpy as np
    rng = np.random.default_rng(0)
    if impl == "torch":
        import torch
        torch.set_num_threads(threads)
        mm = torch.matmul
        make = lambda r, c: torch.from_numpy(rng.standard_normal((r, c)).astype(np.float32))
        limit = None
    elif impl == "mkl":    # minivit's own products with Intel's MKL (minivit/cpu/blas.py): one thread, as each shard runs
        sys.path.insert(0, os.path.dirname(HERE))
        from minivit.cpu import blas
        from threadpoolctl import threadpool_limits
        assert blas.available(), "MKL is not installed: pip install mkl"
        blas.SMALL_SIDE = 1   # MKL's own speed on every shape, also where minivit leaves a product to NumPy
        mm = blas.matmul
        make = lambda r, c: rng.standard_normal((r, c)).astype(np.float32)
        limit = threadpool_limits(1, user_api="blas")
    else:
        from threadpoolctl import threadpool_limits
        mm = np.matmul
        make = lambda r, c: rng.standard_normal((r, c)).astype(np.float32)
        limit = threadpool_limits(threads, user_api="blas")
    times = []
    for _, _, M, K, N in products:
        a, b = make(M, K), make(K, N)
        for _ in range(3):
            mm(a, b)
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            mm(a, b)
            ts.append(time.perf_counter() - t0)
        times.append(statistics.median(ts))
    if limit is not None:
        limit.unregister()
    return times


def peak_gflops():
    """Nominal fp32 peak of one core, with what it assumed."""
    sys.path.insert(0, os.path.dirname(HERE))
    from minivit.machine import machine
    info = machine()
    ghz = None
    try:
        with open("/proc/cpuinfo") as f:
            mhz = [float(line.split(":")[1]) for line in f if line.startswith("cpu MHz")]
        ghz = max(mhz) / 1000 if mhz else None
    except OSError:
        pass
    lanes = 16 if "avx512f" in info.get("isa", []) else 8
    return (ghz * lanes * 2 * 2 if ghz else None), ghz, lanes, info


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["cifar-tiny", "cifar-small", "vit-ti16"])
    p.add_argument("--rounds", type=int, default=3, help="NumPy/PyTorch process pairs per thread count")
    p.add_argument("--repeats", type=int, default=30, help="timed calls of each product per process")
    p.add_argument("--out", help="write the rounds, the shapes and the machine to this JSON file")
    p.add_argument("--worker", nargs=3, metavar=("IMPL", "THREADS", "PRESET"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        impl, threads, preset = a.worker
        print(json.dumps(measure(impl, int(threads), shapes(preset), a.repeats)))
        return
    peak, ghz, lanes, info = peak_gflops()
    from minivit.cpu import blas
    mkl = blas.available()
    print(f"machine: {info['cpu']}, {info['cores']} cores, {' '.join(info.get('isa', []))}; BLAS libraries loaded: "
          f"{', '.join(info.get('blas', []))}; nominal peak "
          + (f"{peak:.0f} GFLOP/s a core ({ghz:.2f} GHz x {lanes} fp32 lanes x 2 FMA units x 2)" if peak else "unknown"))
    result = {"command": " ".join(["python"] + sys.argv), "machine": info, "peak_gflops_per_core": peak, "presets": {}}
    for preset in a.presets:
        prods = shapes(preset)
        flops = [2.0 * M * K * N for _, _, M, K, N in prods]
        rows = {}
        for threads in (1, 2):
            impls = ("numpy", "torch") + (("mkl",) if threads == 1 and mkl else ())
            runs = {impl: [] for impl in impls}
            for r in range(a.rounds):
                for impl in (impls if r % 2 == 0 else impls[::-1]):
                    cmd = [sys.executable, __file__, "--worker", impl, str(threads), preset, "--repeats", str(a.repeats)]
                    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                    runs[impl].append(json.loads(out.strip().splitlines()[-1]))
            for impl in runs:   # the median over rounds of each product's time
                rows[(impl, threads)] = [statistics.median(r[i] for r in runs[impl]) for i in range(len(prods))]
        mk = lambda g: f" / {g['mkl', 1]:6.1f}" if mkl else ""
        print(f"\n{preset}: shard of {prods[0][2]} tokens; GFLOP/s, one thread (NumPy / PyTorch"
              + (" / minivit's MKL" if mkl else "") + ") and two (NumPy / PyTorch)")
        print(f"{'layer':6} {'product':8} {'shape (M x K x N)':>20} {'1 thread':>26} {'2 threads':>17}")
        for i, (layer, name, M, K, N) in enumerate(prods):
            g = {key: flops[i] / t / 1e9 for key, t in ((k, rows[k][i]) for k in rows)}
            print(f"{layer:6} {name:8} {f'{M} x {K} x {N}':>20} {g['numpy', 1]:8.1f} / {g['torch', 1]:6.1f}{mk(g)} "
                  f"{g['numpy', 2]:8.1f} / {g['torch', 2]:6.1f}")
        total = {key: sum(flops) / sum(rows[key]) / 1e9 for key in rows}
        print(f"{'all':6} {'':8} {'':>20} {total['numpy', 1]:8.1f} / {total['torch', 1]:6.1f}{mk(total)} "
              f"{total['numpy', 2]:8.1f} / {total['torch', 2]:6.1f}"
              + (f"   (peak {peak:.0f} a core, {2 * peak:.0f} for two)" if peak else ""))
        result["presets"][preset] = {"products": [list(x) for x in prods],
                                     "seconds": {f"{impl}_{t}": rows[impl, t] for impl, t in rows},
                                     "gflops_all": {f"{impl}_{t}": total[impl, t] for impl, t in total}}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
