"""What the fused CPU kernels cost at start-up: importing numba, then the first float32 training step of
cifar-tiny (2 images), with an empty kernel cache (numba compiles every kernel the step uses), then with
the cache it left (numba loads them), and with the kernels off.

    python benchmarks/cpu_kernels_compile.py

Each line is a fresh process; the cache is a temporary NUMBA_CACHE_DIR, so the package's own cache is
not touched.
"""
import os
import subprocess
import sys
import tempfile

code = ("import time, numpy as np, minivit as mv; t0 = time.perf_counter(); mv.backend.cpu_kernels(); t1 = time.perf_counter(); "
        "cfg = mv.ViTConfig.preset('cifar-tiny'); p = mv.init_params(cfg); x = np.zeros((2, 3, 32, 32), np.float32); "
        "lg, c = mv.forward(p, x, cfg, train=True, rng=np.random.default_rng(0)); l, d = mv.cross_entropy(lg, np.array([0, 1]), 0.1); "
        "g = mv.backward(d, c); mv.AdamW().step(p, g); t2 = time.perf_counter(); print(f'{t1 - t0:.2f} {t2 - t1:.2f}')")
with tempfile.TemporaryDirectory() as d:
    env = dict(os.environ, NUMBA_CACHE_DIR=d)
    for label in ("cold cache (compiles)", "warm cache (loads)", "warm cache again"):
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
        print(f"{label}: import numba {out[0]} s, first float32 training step of cifar-tiny on 2 images {out[1]} s")
off = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, MINIVIT_FUSED="0"), capture_output=True, text=True, check=True).stdout.split()
print(f"kernels off (MINIVIT_FUSED=0): {off[0]} s, first step {off[1]} s")
