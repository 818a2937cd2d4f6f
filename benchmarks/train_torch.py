"""The minivit training recipe, run by PyTorch (CPU): the framework peer to compare against.

Same model (benchmarks/torch_vit.py, the test oracle), same initial weights
(minivit.init_params converted with to_timm, so mimetic initialisation too), same batches
(minivit.train.make_batch: shuffle, RandAugment, crop, flip, normalisation, random erasing),
same AdamW parameter groups, warmup-cosine schedule, clipping and label smoothing. LayerScale
gains are parameters as in minivit; stochastic depth draws its masks from torch's generator
(seeded by --seed), not minivit's streams. Only the arithmetic is PyTorch's autograd instead of
minivit's hand-written backward. Writes metrics.jsonl in minivit's format.

The budget techniques of `minivit train` too: --time-budget (the learning rate decays by training
time, as minivit's trainer does), --schedule linear, --patch-dropout (each image's kept patches drawn
from minivit's per-image streams, so the same patches as minivit's), --resize-schedule (the batch
resized by minivit's resize_batch, the position table by bilinear interpolation with aligned corners,
as minivit's), --val-split (epochs scored on held-out images, the test set read once at the end), --pool gap,
--patch-init whiten (minivit's own whitening of the same training images, before the weights are converted), and
--tta (the last validation reading and the test reading scored again on the views, as minivit's trainer does).

    python benchmarks/train_torch.py --data ../shared/datasets/cifar10-jpeg.tar.gz \\
        --preset cifar-tiny --epochs 40 --batch-size 256 --lr 2e-3 --warmup 2 --out runs/torch-tiny-40ep
"""
import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
import minivit as mv  # noqa: E402
from minivit.data import channel_stats, load_dataset, normalize  # noqa: E402
from minivit.io import timm  # noqa: E402
import numpy as np  # noqa: E402
from minivit.config import resize_stages, stage_at  # noqa: E402
from minivit.machine import machine  # noqa: E402
from minivit.data.splits import hold_out  # noqa: E402
from minivit.data.transforms import tta_views  # noqa: E402
from minivit.models.init import whiten_patch_embed  # noqa: E402
from minivit.train.trainer import WHITEN_IMAGES  # noqa: E402
from minivit.layers.resample import resize_batch  # noqa: E402
from minivit.train.optim import budget_decay, decays, warmup_decay  # noqa: E402
from minivit.train.random_streams import ImageStreams  # noqa: E402
from minivit.train import TrainConfig, make_batch  # noqa: E402
from torch_vit import torch_vit  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="subset")
    p.add_argument("--preset", default="cifar-tiny")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr", type=float, default=1e-5)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--clip-norm", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    for name in ("dim", "depth", "heads", "mlp_dim", "randaugment"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    for name in ("drop_path", "layer_scale", "randaugment_magnitude", "random_erasing", "patch_dropout"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=None)
    p.add_argument("--attn-init", default=None, help="minivit's attention initialisation, e.g. mimetic")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--schedule", default="cosine", choices=["cosine", "linear"])
    p.add_argument("--time-budget", type=float, default=0.0, help="minutes of training time; 0: --epochs")
    p.add_argument("--resize-schedule", default="", help="as minivit train's, e.g. 16:0.25,24:0.5")
    p.add_argument("--val-split", type=int, default=0)
    p.add_argument("--pool", default=None, choices=["token", "gap"], help="as minivit's --pool")
    p.add_argument("--patch-init", default="", choices=["", "whiten"], help="as minivit's --patch-init")
    p.add_argument("--tta", default="", choices=["", "flip", "flip-shift"], help="as minivit's --tta")
    p.add_argument("--out", required=True)
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    given = lambda names: {k: getattr(a, k) for k in names if getattr(a, k) is not None}
    cfg = mv.ViTConfig.preset(a.preset, **given(("dim", "depth", "heads", "mlp_dim", "drop_path", "layer_scale", "attn_init",
                                                 "patch_dropout", "pool")))
    t = TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, min_lr=a.min_lr, warmup_epochs=a.warmup,
                    weight_decay=a.weight_decay, label_smoothing=a.label_smoothing, clip_norm=a.clip_norm, seed=a.seed,
                    schedule=a.schedule, time_budget=a.time_budget, resize_schedule=a.resize_schedule,
                    val_split=a.val_split, patch_init=a.patch_init, tta=a.tta, **given(("randaugment", "randaugment_magnitude", "random_erasing")))
    stages = resize_stages(t.resize_schedule)
    budget = t.time_budget * 60
    generator = torch.Generator().manual_seed(a.seed)  # stochastic depth's masks
    data = load_dataset(a.data)
    train, val = (hold_out(data.train, t.val_split) if t.val_split else (data.train, None))
    mean, std = channel_stats(train.images)   # of the images it trains on, as minivit's trainer
    init = mv.init_params(cfg, seed=t.seed)
    if t.patch_init == "whiten":   # minivit's trainer's whitening, of the same images
        init = whiten_patch_embed(init, normalize(train.images[:WHITEN_IMAGES], mean, std, dtype="float64"), cfg)
    names = {timm._timm_name(k): k for k in init}
    sd = {k: torch.tensor(v, requires_grad=True) for k, v in mv.to_timm(init, cfg).items()}
    groups = [{"params": [v for k, v in sd.items() if decays(names[k], init[names[k]])], "weight_decay": t.weight_decay},
              {"params": [v for k, v in sd.items() if not decays(names[k], init[names[k]])], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=t.lr)
    steps_per_epoch = math.ceil(len(train.labels) / t.batch_size)
    total, warmup = (math.inf if budget else t.epochs * steps_per_epoch), int(round(t.warmup_epochs * steps_per_epoch))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "command.txt").write_text(" ".join(["python"] + sys.argv) + "\n")
    (out / "machine.json").write_text(json.dumps(machine(), indent=2) + "\n")   # torch's version included
    metrics = open(out / "metrics.jsonl", "w")
    def scored(split, tta=""):
        """Plain cross-entropy and accuracy on a Split, in eval mode (as minivit's trainer reports them); with
        `tta`, of the views' weighted logits (minivit's tta_views)."""
        x, ys = normalize(split.images, mean, std), torch.from_numpy(split.labels)
        with torch.no_grad():
            logits = sum(w * torch.cat([torch_vit(sd, torch.from_numpy(np.ascontiguousarray(v[i:i + 500])), cfg)
                                        for i in range(0, len(ys), 500)]) for w, v in tta_views(x, tta))
        return F.cross_entropy(logits, ys).item(), (logits.argmax(1) == ys).double().mean().item()

    step, elapsed, warmup_end = 0, 0.0, None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {mv.count_params(cfg):,} parameters; "
          + (f"{t.time_budget:g} minutes" if budget else f"{total} steps"))
    epoch = 0
    while step < total and not (budget and elapsed >= budget):
        t0, seen, loss_sum, correct = time.perf_counter(), 0, 0.0, 0
        for index in range(steps_per_epoch):
            now = elapsed + time.perf_counter() - t0
            if budget and now >= budget:
                break
            x, y = make_batch(train, t, mean, std, epoch, index, step)
            stage = stage_at(stages, now / budget if budget else step / total)
            if stage:                                                   # progressive resizing, as minivit's
                x = resize_batch(x, stage[0])
            keep = None
            if cfg.patch_dropout:                                       # the patches minivit's streams keep
                n = (x.shape[-1] // cfg.patch_size) ** 2
                k = max(1, int(round((1.0 - cfg.patch_dropout) * n)))
                u = ImageStreams(t.seed, step, 0, len(y)).random((len(y), n))
                keep = torch.from_numpy(np.sort(np.argsort(u, axis=1)[:, :k], axis=1))
            x, y = torch.from_numpy(x), torch.from_numpy(y)
            if not budget or step < warmup:
                lr = warmup_decay(step, total, warmup, t.lr, t.min_lr, t.schedule)
            else:                                                       # decay by training time, as minivit's trainer
                warmup_end = now if warmup_end is None else warmup_end
                lr = budget_decay(now, warmup_end, budget, t.lr, t.min_lr, t.schedule)
            for g in opt.param_groups:
                g["lr"] = lr
            logits = torch_vit(sd, x, cfg, generator, keep)
            loss = F.cross_entropy(logits, y, label_smoothing=t.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(sd.values()), t.clip_norm)
            opt.step()
            step += 1
            seen += len(y)
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
        dt = time.perf_counter() - t0
        elapsed += dt
        epoch += 1
        row = {"epoch": epoch, "step": step, "lr": lr, "train_loss": loss_sum / max(seen, 1),
               "train_acc": correct / max(seen, 1), "images_per_s": seen / dt, "elapsed_s": elapsed}
        name, held = ("val", val) if val is not None else ("test", data.test)
        row[f"{name}_loss"], row[f"{name}_acc"] = scored(held)
        last = step >= total or (budget and elapsed >= budget)
        if last and t.tta:                                              # the last reading on the views too
            row[f"{name}_tta_loss"], row[f"{name}_tta_acc"] = scored(held, t.tta)
        if val is not None and last:                                    # the test set, read once
            row["test_loss"], row["test_acc"] = scored(data.test)
            if t.tta:
                row["test_tta_loss"], row["test_tta_acc"] = scored(data.test, t.tta)
        metrics.write(json.dumps(row) + "\n")
        metrics.flush()
        print(f"epoch {epoch}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} | {name} loss "
              f"{row[name + '_loss']:.4f} acc {row[name + '_acc']:.4f}"
              + (f" | test acc {row['test_acc']:.4f}" if "test_acc" in row and name == "val" else "")
              + f" | {row['images_per_s']:.0f} img/s, {elapsed:.0f} s", flush=True)


if __name__ == "__main__":
    main()
