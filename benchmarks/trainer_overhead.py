"""Where a trainer step's time goes beyond the bare gradient step: making the batch (augmentation,
normalisation), the forward/backward itself, clipping, AdamW and the EMA, each timed in the loop
the trainer runs (minivit/train/), on random CIFAR-shaped uint8 images held in memory as the
loaded dataset is.

    python benchmarks/trainer_overhead.py --preset cifar-tiny --batch-size 256 \\
        --drop-path 0.1 --layer-scale 0.1 --ema 0.999
    python benchmarks/trainer_overhead.py ... --randaugment 2 --random-erasing 0.25

Prints the median milliseconds of each part over --steps steps (after --warmup), its share of the
step, and the images/s of the whole. All parts run in one process, one after the other, so their
shares are comparable; compare with other frameworks only through compare_step.py.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import minivit as mv  # noqa: E402
from minivit.data import Split  # noqa: E402
from minivit.train.optim import EMA  # noqa: E402
from minivit.config import TrainConfig  # noqa: E402
from minivit.train.batches import epoch_order, make_batch  # noqa: E402
from minivit.train.engine import Engine, blas_single_thread  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cifar-tiny")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--drop-path", type=float, default=0.0)
    p.add_argument("--layer-scale", type=float, default=0.0)
    p.add_argument("--ema", type=float, default=0.0)
    p.add_argument("--randaugment", type=int, default=0)
    p.add_argument("--random-erasing", type=float, default=0.0)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    a = p.parse_args()
    cfg = mv.ViTConfig.preset(a.preset, drop_path=a.drop_path, layer_scale=a.layer_scale)
    tcfg = TrainConfig(batch_size=a.batch_size, threads=a.threads, ema=a.ema, randaugment=a.randaugment,
                       random_erasing=a.random_erasing)
    rng = np.random.default_rng(0)
    n = 40 * a.batch_size
    C, S = cfg.in_channels, cfg.image_size
    split = Split(rng.integers(0, 256, (n, C, S, S), dtype=np.uint8), rng.integers(0, cfg.num_classes, n))
    mean, std = np.full(C, 0.5, np.float32), np.full(C, 0.25, np.float32)
    params = mv.init_params(cfg, seed=0)
    opt = mv.AdamW(lr=1e-3, weight_decay=0.05)
    ema = EMA(params, a.ema) if a.ema else None
    engine = Engine(cfg, a.threads)
    order = epoch_order(0, 0, n)
    parts = {k: [] for k in ("make_batch", "forward+backward", "clip", "adamw", "ema")}
    with blas_single_thread(a.threads):
        for i in range(a.warmup + a.steps):
            t = [time.perf_counter()]
            x, y = make_batch(split, tcfg, mean, std, 0, i % 40, i, order=order)
            t.append(time.perf_counter())
            loss, _, grads = engine.loss_and_grads(params, x, y, 0.1, 0, i)
            float(loss)
            t.append(time.perf_counter())
            mv.clip_grad_norm(grads, 1.0)
            t.append(time.perf_counter())
            opt.step(params, grads)
            t.append(time.perf_counter())
            if ema:
                ema.update(params)
            t.append(time.perf_counter())
            if i >= a.warmup:
                for k, t0, t1 in zip(parts, t[:-1], t[1:]):
                    parts[k].append((t1 - t0) * 1e3)
    engine.close()
    med = {k: statistics.median(v) for k, v in parts.items()}
    total = sum(med.values())
    print(f"{a.preset} B={a.batch_size} threads={a.threads} drop_path={a.drop_path} layer_scale={a.layer_scale} "
          f"ema={a.ema} randaugment={a.randaugment} random_erasing={a.random_erasing}")
    print(f"{'part':18s} {'ms':>8s} {'share':>7s}")
    for k, v in med.items():
        print(f"{k:18s} {v:8.1f} {v / total:7.1%}")
    print(f"{'step':18s} {total:8.1f}   {a.batch_size / total * 1e3:.0f} images/s "
          f"(forward+backward alone: {a.batch_size / med['forward+backward'] * 1e3:.0f})")


if __name__ == "__main__":
    main()
