"""Where a minivit training step on a GPU spends its host time: cProfile over a few steps.

    python benchmarks/gpu_profile.py --preset cifar-small --batch-size 256 --steps 20

A small ViT on a GPU is launch-bound: the GPU finishes each kernel before Python has issued
the next, so the step takes as long as the host needs to issue its kernels. The profile
(sorted by own time) shows which calls that host time goes to, and counts them per step.
"""
import argparse
import cProfile
import io
import pstats

import numpy as np


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cifar-small")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--kernels", action="store_true",
                   help="instead: the GPU time of each kernel over the steps (read through PyTorch's profiler, "
                        "which records every kernel on the device, CuPy's included)")
    a = p.parse_args()
    import os
    import sys
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import minivit as mv
    from gpu_step import minivit_step
    cfg = mv.ViTConfig.preset(a.preset)
    step, sync, _ = minivit_step(cfg, a.batch_size)
    for i in range(5):
        step(i)
    sync()
    if a.kernels:
        return kernel_table(step, sync, a)
    prof = cProfile.Profile()
    prof.enable()
    for i in range(a.steps):
        step(5 + i)
    sync()
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    print(f"{a.preset}, batch {a.batch_size}: {stats.total_tt / a.steps * 1e3:.2f} ms of host time per step "
          f"(under the profiler), {stats.total_calls / a.steps:.0f} Python-visible calls per step")
    stats.sort_stats("tottime").print_stats(a.top)
    print("\n".join(l for l in out.getvalue().splitlines() if l.strip())[:12000])


def kernel_table(step, sync, a):
    """GPU time per kernel name over a.steps steps, largest first, and the GPU's busy time per step."""
    import time
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for i in range(a.steps):
            step(5 + i)
        sync()
        wall = time.perf_counter() - t0
    rows = {}
    for e in prof.events():
        if e.device_type.name != "CUDA":
            continue
        n, t = rows.get(e.name, (0, 0.0))
        rows[e.name] = (n + 1, t + e.device_time_total if hasattr(e, "device_time_total") else t + e.cuda_time_total)
    busy = sum(t for _, t in rows.values()) / a.steps / 1e3
    launches = sum(n for n, _ in rows.values()) / a.steps
    print(f"{a.preset}, batch {a.batch_size}: {wall / a.steps * 1e3:.2f} ms per step (under the profiler), "
          f"GPU busy {busy:.2f} ms per step, {launches:.0f} kernels and copies per step")
    print(f"{'ms/step':>8} {'calls/step':>10}  kernel")
    for name, (n, t) in sorted(rows.items(), key=lambda kv: -kv[1][1])[:a.top]:
        print(f"{t / a.steps / 1e3:8.3f} {n / a.steps:10.1f}  {name[:110]}")


if __name__ == "__main__":
    main()
