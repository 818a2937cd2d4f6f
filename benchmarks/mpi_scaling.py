"""Training throughput on MPI ranks against threads: images/s of a training step with 1 rank x 1 thread,
2 ranks x 1 thread and 1 rank x 2 threads, and the Allreduce's time per step (docs/distributed.md).

    python benchmarks/mpi_scaling.py [--presets cifar-tiny:256 cifar-small:128 vit-ti16:16] [--rounds 3] [--steps 12]

Each setting runs in its own process (mpiexec -n 2 for two ranks), in turn, round after round (A B C
A B C ...), so a slow moment of the machine falls on all of them; the table gives the medians. A
step is the trainer's: the global batch built and augmented (crop and flip), this rank's rows
forward and backward in shards, the one Allreduce (train/distributed.py), clipping, AdamW.
Random images stand in for CIFAR (the speed does not depend on the pixels). Needs mpi4py and an
mpiexec (pip install mpi4py mpich). Run it with the machine otherwise idle.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = (("1 rank x 1 thread", 1, 1), ("2 ranks x 1 thread", 2, 1), ("1 rank x 2 threads", 1, 2))


def worker(preset, batch, threads, steps, warmup=2):
    """One setting, in this process (and its sibling ranks): prints a JSON line on rank 0."""
    sys.path.insert(0, ROOT)
    from minivit import ViTConfig, init_params
    from minivit.config import TrainConfig
    from minivit.data.splits import Split
    from minivit.train.batches import batch_positions, make_batch
    from minivit.train.distributed import current_world
    from minivit.train.engine import Engine, blas_single_thread
    from minivit.train.optim import AdamW, clip_grad_norm

    world = current_world()
    cfg = ViTConfig.preset(preset)
    tcfg = TrainConfig(batch_size=batch, threads=threads, seed=0)
    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, (batch * 4, 3, cfg.image_size, cfg.image_size), dtype=np.uint8),
                  rng.integers(0, cfg.num_classes, batch * 4))
    mean, std = np.full(3, 127.5), np.full(3, 73.9)
    params, opt, engine = init_params(cfg, seed=0), AdamW(lr=1e-4, weight_decay=0.05), Engine(cfg, threads)
    step_s, sum_s = [], []
    with blas_single_thread(threads, world.size):
        for s in range(warmup + steps):
            world.barrier()
            t0 = time.perf_counter()
            rows = world.rows(batch)
            keep, _, mine = batch_positions(batch, rows)
            x, y = make_batch(split, tcfg, mean, std, 0, s % 4, s, keep=keep)   # this rank's rows, the batch's draws
            loss, correct, grads = engine.loss_and_grads(params, x[mine], y[mine], 0.1, 0, s, first=rows.start,
                                                         batch=batch)
            t1 = time.perf_counter()
            grads, loss, correct, _ = world.sum_step(grads, loss, correct)
            t2 = time.perf_counter()
            clip_grad_norm(grads, 1.0)
            opt.step(params, grads)
            float(loss)
            if s >= warmup:
                step_s.append(time.perf_counter() - t0)
                sum_s.append(t2 - t1)
    engine.close()
    n_bytes = sum(v.nbytes for v in params.values())
    if world.is_root:
        print(json.dumps({"step_s": float(np.median(step_s)), "allreduce_s": float(np.median(sum_s)),
                          "gradient_bytes": n_bytes}))


def run_setting(preset, batch, ranks, threads, steps):
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", preset, str(batch), str(threads), str(steps)]
    if ranks > 1:
        cmd = [mpiexec, "-n", str(ranks)] + cmd
    env = {k: v for k, v in os.environ.items() if k not in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# The scaling model of docs/distributed.md: N machines, each with this machine's step time T for its own
# batch (weak scaling: the global batch grows with N), the gradients summed by a ring Allreduce after the
# backward pass (no overlap with it): 2 (N - 1) / N x bytes / bandwidth, plus 2 (N - 1) messages of
# latency ALPHA. Efficiency = T / (T + that).
ALPHA_S = 50e-6   # one message's latency on a switched Ethernet with TCP: an assumption, stated in the docs


def allreduce_seconds(n, nbytes, gbit_s, alpha=ALPHA_S):
    return 2 * (n - 1) / n * nbytes * 8 / (gbit_s * 1e9) + 2 * (n - 1) * alpha


def model_table(rows, machines=(2, 4, 8, 16, 32, 64), links=(1, 10)):
    """rows: (preset, batch per machine, step seconds T, gradient bytes) -> a Markdown table."""
    head = "| preset (batch per machine, T) | gradient MB | link | " + " | ".join(f"N={n}" for n in machines) + " |"
    out = [head, "|" + " --- |" * (3 + len(machines))]
    for preset, batch, step, nbytes in rows:
        for gbit in links:
            eff = [step / (step + allreduce_seconds(n, nbytes, gbit)) for n in machines]
            out.append(f"| {preset} ({batch}, {step * 1e3:.0f} ms) | {nbytes / 1e6:.2f} | {gbit} Gbit/s | "
                       + " | ".join(f"{e:.0%}" for e in eff) + " |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["cifar-tiny:256", "cifar-small:128", "vit-ti16:16"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--model", action="store_true", help="also print the scaling model's table from the measured "
                    "2-ranks step times (docs/distributed.md)")
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        preset, batch, threads, steps = a.worker
        return worker(preset, int(batch), int(threads), int(steps))
    sys.path.insert(0, ROOT)
    from minivit.machine import machine
    print(f"machine: {json.dumps(machine())}")
    print(f"{'preset':<12} {'batch':>5}  {'setting':<20} {'images/s':>9} {'step ms':>8} {'allreduce ms':>13} "
          f"{'gradient MB':>12}")
    measured = []
    for spec in a.presets:
        preset, batch = spec.split(":")
        results = {name: [] for name, _, _ in SETTINGS}
        for _ in range(a.rounds):
            for name, ranks, threads in SETTINGS:
                results[name].append(run_setting(preset, int(batch), ranks, threads, a.steps))
        for name, _, _ in SETTINGS:
            step = float(np.median([r["step_s"] for r in results[name]]))
            red = float(np.median([r["allreduce_s"] for r in results[name]]))
            mb = results[name][0]["gradient_bytes"] / 1e6
            spread = [int(batch) / r["step_s"] for r in results[name]]
            print(f"{preset:<12} {batch:>5}  {name:<20} {int(batch) / step:>9.0f} {step * 1e3:>8.1f} {red * 1e3:>13.2f} "
                  f"{mb:>12.2f}   (images/s {min(spread):.0f}-{max(spread):.0f})")
            if name.startswith("2 ranks"):   # a machine's step with both its cores
                measured.append((preset, int(batch), step, results[name][0]["gradient_bytes"]))
    if a.model:
        print("\nscaling model (weak scaling, ring Allreduce, no overlap, latency "
              f"{ALPHA_S * 1e6:.0f} us a message):\n" + model_table(measured))


if __name__ == "__main__":
    main()
