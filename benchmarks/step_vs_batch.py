"""A training step's time against its batch size at 16, 24 and 32 pixels, split into what each step pays once
(the per-step cost) and what grows with the images (the per-image cost).

The step is the trainer's (minivit/train/trainer.py), part by part, on the fifth hour's model (`--recipe hour
--pool token`: cifar-tiny, mimetic attention, LayerScale, drop path, PatchDropout 0.25, the class token: the model
of its raw file), on random CIFAR-shaped uint8 images held in memory as a loaded dataset is:

- batch: make_batch, the crop, flip and normalisation of this rank's images (at 32 pixels);
- resize: the bicubic resize of the batch to the stage's size (none at 32);
- forward+backward: Engine.loss_and_grads at that size, the 8 x 8 position table resampled inside the step;
- wait: a barrier after the forward and backward, where the faster rank waits for the slower (under mpiexec);
- allreduce: World.sum_step, the ranks' one sum of the gradients, once both are there (under mpiexec only);
- clip and adamw: the global-norm clipping and the optimiser's update, which touch every parameter once a step
  whatever the batch.

Each size runs --warmup rounds, then --steps timed ones; a round is one step of each batch size in turn, so that
the machine's drift over minutes reaches every batch size alike. The figures are medians on rank 0. For each size
and part a straight line t = a + b B is fitted over the batches by least squares: a is the part's cost per step,
b its cost per image. Run it as the recipe trains, two ranks of one thread each:

    mpiexec -n 2 python benchmarks/step_vs_batch.py --threads 1 --out benchmarks/results/step_vs_batch.json

or in one process (`--threads 2`). The JSON keeps every median, the fits and the machine.
"""
import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import minivit as mv  # noqa: E402
from minivit.config import RECIPES, TrainConfig  # noqa: E402
from minivit.data import Split  # noqa: E402
from minivit.layers.resample import resize_batch  # noqa: E402
from minivit.machine import machine  # noqa: E402
from minivit.train.batches import batch_positions, epoch_order, make_batch  # noqa: E402
from minivit.train.distributed import current_world  # noqa: E402
from minivit.train.engine import Engine, blas_single_thread  # noqa: E402

PARTS = ("batch", "resize", "forward+backward", "wait", "allreduce", "clip", "adamw")


def fit(batches, ms):
    """Least squares t = a + b B -> (a ms per step, b ms per image)."""
    b, a = np.polyfit(np.asarray(batches, float), np.asarray(ms, float), 1)
    return float(a), float(b)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 24, 32])
    p.add_argument("--batches", type=int, nargs="+", default=[64, 128, 256, 512])
    p.add_argument("--threads", type=int, default=1, help="data-parallel threads per process")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--out", help="write the medians, the fits and the machine to this JSON file (rank 0)")
    a = p.parse_args()
    world = current_world()
    recipe = RECIPES["hour"]
    cfg = mv.ViTConfig.preset(recipe.preset, **{**recipe.model, "pool": "token"})   # the class token, as measured
    tcfg = TrainConfig(**{**recipe.train, "threads": a.threads})
    rng = np.random.default_rng(0)
    n = 2 * max(a.batches)
    split = Split(rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n))
    mean, std = np.full(3, 0.47), np.full(3, 0.25)
    order = epoch_order(0, 0, n)
    engine = Engine(cfg, a.threads)
    rows = []
    with blas_single_thread(a.threads, world.size):
        for size in a.sizes:
            small = None if size == cfg.image_size else replace(cfg, image_size=size)
            # One model and optimiser per batch size, and the batch sizes taken in turn, step after step: the
            # machine's speed drifts over minutes, and interleaving lets every batch size see the same drift.
            state = {B: (mv.init_params(cfg, seed=0), mv.AdamW(lr=1e-3, weight_decay=tcfg.weight_decay),
                         replace(tcfg, batch_size=B), batch_positions(B, world.rows(B))) for B in a.batches}
            times = {B: {k: [] for k in PARTS} for B in a.batches}
            for i in range(a.warmup + a.steps):
                for B in a.batches:
                    params, opt, t_batch, (keep, _, mine) = state[B]
                    world.barrier()
                    t = [time.perf_counter()]
                    x, y = make_batch(split, t_batch, mean, std, 0, i % (n // B), i, order=order, keep=keep)
                    x, y = x[mine], y[mine]
                    t.append(time.perf_counter())
                    x = x if small is None else resize_batch(x, size)
                    t.append(time.perf_counter())
                    loss, correct, grads = engine.loss_and_grads(params, x, y, tcfg.label_smoothing, 0, i,
                                                                 first=world.rows(B).start, batch=B, cfg=small)
                    float(loss)
                    t.append(time.perf_counter())
                    world.barrier()                 # waiting for the slower rank, apart from the sum itself
                    t.append(time.perf_counter())
                    grads, loss, correct, _ = world.sum_step(grads, loss, correct)
                    t.append(time.perf_counter())
                    mv.clip_grad_norm(grads, tcfg.clip_norm)
                    t.append(time.perf_counter())
                    opt.step(params, grads)
                    t.append(time.perf_counter())
                    if i >= a.warmup:
                        for k, t0, t1 in zip(PARTS, t[:-1], t[1:]):
                            times[B][k].append((t1 - t0) * 1e3)
            for B in a.batches:
                med = {k: statistics.median(v) for k, v in times[B].items()}
                med["step"] = sum(med.values())
                rows.append({"size": size, "batch": B, "ms": med, "images_per_s": B / med["step"] * 1e3})
                if world.is_root:
                    print(f"{size:2d} px, batch {B:4d}: step {med['step']:7.1f} ms, {B / med['step'] * 1e3:6.0f} images/s; "
                          + ", ".join(f"{k} {med[k]:.1f}" for k in PARTS), flush=True)
    engine.close()
    if not world.is_root:
        return
    fits = {}
    for size in a.sizes:
        mine_rows = [r for r in rows if r["size"] == size]
        bs = [r["batch"] for r in mine_rows]
        fits[str(size)] = {k: dict(zip(("per_step_ms", "per_image_ms"), fit(bs, [r["ms"][k] for r in mine_rows])))
                           for k in (*PARTS, "step")}
        f = fits[str(size)]["step"]
        print(f"{size} px: per step {f['per_step_ms']:.1f} ms, per image {f['per_image_ms'] * 1e3:.0f} us "
              f"(so at batch 256 the per-step share is {f['per_step_ms'] / (f['per_step_ms'] + 256 * f['per_image_ms']):.0%})")
    if a.out:
        Path(a.out).write_text(json.dumps({"command": " ".join(["python"] + sys.argv), "ranks": world.size,
                                           "threads": a.threads, "model": cfg.to_dict(), "rows": rows, "fits": fits,
                                           "machine": machine()}, indent=1) + "\n")


if __name__ == "__main__":
    main()
