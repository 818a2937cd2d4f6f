"""Training-step (or inference) throughput of minivit or PyTorch, same model and batch, in this process.

Each implementation does `--warmup` steps, then `--steps` timed steps of forward, loss, backward,
clipping and AdamW on random float32 images (`--mode eval`: forward only, as `evaluate` runs it,
with torch.no_grad() for PyTorch); the median step time gives images/s. The step's memory is the
growth of the process's peak resident set over the steps (ru_maxrss after them minus the resident
set before the first one), after one step on two images has loaded each library's own code (numba's
compiled kernels, PyTorch's primitives), so the libraries' own code and data are not counted.
To compare the two frameworks, run them in turn in separate processes: benchmarks/compare_step.py.

    python benchmarks/step_throughput.py --impl minivit --threads 2 --preset cifar-tiny --batch-size 256
    python benchmarks/step_throughput.py --impl minivit --threads 1 --preset cifar-tiny --batch-size 256
    python benchmarks/step_throughput.py --impl torch --threads 2 --preset cifar-tiny --batch-size 256

`--preset cnn` times minivit's CNN baseline (minivit.models.cnn.CNNConfig(); minivit only).
minivit uses its fused CPU kernels where numba is installed; MINIVIT_FUSED=0 runs its NumPy lines.
"""
import argparse
import json
import resource
import statistics
import time
from dataclasses import replace

import os
import sys

import numpy as np

import minivit as mv

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # torch_vit, beside this file


def minivit_step(cfg, x, y, threads):
    from minivit.models import family_of
    from minivit.train.engine import Engine, blas_single_thread
    params = family_of(cfg).init_params(cfg, seed=0)
    opt = mv.AdamW(lr=1e-3, weight_decay=0.05)
    engine = Engine(cfg, threads)
    ctx = blas_single_thread(threads)
    ctx.__enter__()  # held for the whole benchmark, as the trainer does

    def step(i):
        loss, _, grads = engine.loss_and_grads(params, x, y, 0.1, 0, i)
        float(loss)
        mv.clip_grad_norm(grads, 1.0)
        opt.step(params, grads)
    return step


def minivit_eval(cfg, x, y, threads):
    from minivit.models import family_of
    from minivit.train.engine import Engine, blas_single_thread
    params = family_of(cfg).init_params(cfg, seed=0)
    engine = Engine(cfg, threads)
    blas_single_thread(threads).__enter__()
    return lambda i: engine.predict_logits(params, x).argmax(axis=1)


def torch_eval(cfg, x, y, threads):
    import torch
    from torch_vit import torch_vit
    torch.set_num_threads(threads)
    sd = {k: torch.tensor(v) for k, v in mv.to_timm(mv.init_params(cfg, seed=0), cfg).items()}
    tx = torch.from_numpy(x)

    def step(i):
        with torch.no_grad():
            return torch_vit(sd, tx, cfg).argmax(dim=1)
    return step


def rss_mb():
    """Current resident set of this process, in MB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2 ** 20


def torch_step(cfg, x, y, threads):
    import torch
    from torch_vit import torch_train_step
    torch.set_num_threads(threads)
    return torch_train_step(cfg, x, y)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--impl", choices=["minivit", "torch"], default="minivit")
    p.add_argument("--preset", default="cifar-tiny")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--mode", choices=["train", "eval"], default="train")
    p.add_argument("--image-size", type=int, default=None,
                   help="train or read the preset at this image size (a multiple of its patch), e.g. 16 for the "
                        "first stage of --resize-schedule 16:0.25,24:0.5; default: the preset's")
    p.add_argument("--json", action="store_true", help="print one JSON line (for compare_step.py)")
    a = p.parse_args()
    if a.preset == "cnn" and a.impl != "minivit":
        p.error("--preset cnn is minivit's CNN baseline; the PyTorch peer is a ViT")
    cfg = mv.CNNConfig() if a.preset == "cnn" else mv.ViTConfig.preset(a.preset)
    if a.image_size:
        cfg = replace(cfg, image_size=a.image_size)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((a.batch_size, cfg.in_channels, cfg.image_size, cfg.image_size)).astype(np.float32)
    y = rng.integers(0, cfg.num_classes, a.batch_size)
    make = {("minivit", "train"): minivit_step, ("torch", "train"): torch_step,
            ("minivit", "eval"): minivit_eval, ("torch", "eval"): torch_eval}[a.impl, a.mode]
    # One step on two images first: each library loads its own code (numba's compiled kernels, PyTorch's
    # oneDNN primitives) on first use, which is not the step's memory.
    make(cfg, x[:2], y[:2], a.threads)(0)
    step = make(cfg, x, y, a.threads)
    rss0 = rss_mb()
    for i in range(a.warmup):
        step(i)
    times = []
    for i in range(a.steps):
        t0 = time.perf_counter()
        step(a.warmup + i)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    step_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0
    if a.json:
        print(json.dumps({"impl": a.impl, "mode": a.mode, "preset": a.preset, "image_size": cfg.image_size,
                          "batch": a.batch_size,
                          "threads": a.threads, "images_per_s": a.batch_size / med, "step_ms": med * 1e3,
                          "step_mb": step_mb, "torch": sys.modules["torch"].__version__ if "torch" in sys.modules else None,
                          "cpu_kernels": a.impl == "minivit" and mv.backend.cpu_kernels() is not None}))
        return
    print(f"{a.impl} {a.mode} threads={a.threads} preset={a.preset} size={cfg.image_size} batch={a.batch_size}: median step {med * 1e3:.1f} ms, "
          f"{a.batch_size / med:.0f} images/s (min {a.batch_size / max(times):.0f}, max {a.batch_size / min(times):.0f}), "
          f"step memory {step_mb:.0f} MB")


if __name__ == "__main__":
    main()
