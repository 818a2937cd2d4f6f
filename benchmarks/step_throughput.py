"""Training-step throughput: minivit (1 or N data-parallel threads) against PyTorch, same model and batch.

Each implementation does `--warmup` steps, then `--steps` timed steps of forward, loss, backward,
clipping and AdamW on random float32 images; the median step time gives images/s.

    python benchmarks/step_throughput.py --impl minivit --threads 2 --preset cifar-tiny --batch-size 256
    python benchmarks/step_throughput.py --impl minivit --threads 1 --preset cifar-tiny --batch-size 256
    python benchmarks/step_throughput.py --impl torch --threads 2 --preset cifar-tiny --batch-size 256
"""
import argparse
import statistics
import time

import numpy as np

import minivit as mv


def minivit_step(cfg, x, y, threads):
    from minivit.train import Engine, _blas_single_thread
    params = mv.init_params(cfg, seed=0)
    opt = mv.AdamW(lr=1e-3, weight_decay=0.05)
    engine = Engine(cfg, threads)
    ctx = _blas_single_thread(threads)
    ctx.__enter__()  # held for the whole benchmark, as the trainer does

    def step(i):
        loss, _, grads = engine.loss_and_grads(params, x, y, 0.1, 0, i)
        float(loss)
        mv.clip_grad_norm(grads, 1.0)
        opt.step(params, grads)
    return step


def torch_step(cfg, x, y, threads):
    import os
    import sys
    import torch
    import torch.nn.functional as F
    sys.path.insert(0, os.path.dirname(__file__))
    from torch_vit import torch_vit
    torch.set_num_threads(threads)
    sd = {k: torch.tensor(v, requires_grad=True) for k, v in mv.to_timm(mv.init_params(cfg, seed=0), cfg).items()}
    opt = torch.optim.AdamW(list(sd.values()), lr=1e-3, weight_decay=0.05)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def step(i):
        loss = F.cross_entropy(torch_vit(sd, tx, cfg), ty, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(sd.values()), 1.0)
        opt.step()
        loss.item()
    return step


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--impl", choices=["minivit", "torch"], default="minivit")
    p.add_argument("--preset", default="cifar-tiny")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    a = p.parse_args()
    cfg = mv.ViTConfig.preset(a.preset)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((a.batch_size, cfg.in_channels, cfg.image_size, cfg.image_size)).astype(np.float32)
    y = rng.integers(0, cfg.num_classes, a.batch_size)
    step = (minivit_step if a.impl == "minivit" else torch_step)(cfg, x, y, a.threads)
    for i in range(a.warmup):
        step(i)
    times = []
    for i in range(a.steps):
        t0 = time.perf_counter()
        step(a.warmup + i)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(f"{a.impl} threads={a.threads} preset={a.preset} batch={a.batch_size}: median step {med * 1e3:.1f} ms, "
          f"{a.batch_size / med:.0f} images/s (min {a.batch_size / max(times):.0f}, max {a.batch_size / min(times):.0f})")


if __name__ == "__main__":
    main()
