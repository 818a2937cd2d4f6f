"""The minivit training recipe, run by PyTorch (CPU): the framework peer to compare against.

Same model (benchmarks/torch_vit.py, the test oracle), same initial weights
(minivit.init_params converted with to_timm, so mimetic initialisation too), same batches
(minivit.train.make_batch: shuffle, RandAugment, crop, flip, normalisation, random erasing),
same AdamW parameter groups, warmup-cosine schedule, clipping and label smoothing. LayerScale
gains are parameters as in minivit; stochastic depth draws its masks from torch's generator
(seeded by --seed), not minivit's streams. Only the arithmetic is PyTorch's autograd instead of
minivit's hand-written backward. Writes metrics.jsonl in minivit's format.

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
from minivit.train.optim import decays  # noqa: E402
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
    for name in ("drop_path", "layer_scale", "randaugment_magnitude", "random_erasing"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=None)
    p.add_argument("--attn-init", default=None, help="minivit's attention initialisation, e.g. mimetic")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--out", required=True)
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    given = lambda names: {k: getattr(a, k) for k in names if getattr(a, k) is not None}
    cfg = mv.ViTConfig.preset(a.preset, **given(("dim", "depth", "heads", "mlp_dim", "drop_path", "layer_scale", "attn_init")))
    t = TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, min_lr=a.min_lr, warmup_epochs=a.warmup,
                    weight_decay=a.weight_decay, label_smoothing=a.label_smoothing, clip_norm=a.clip_norm, seed=a.seed,
                    **given(("randaugment", "randaugment_magnitude", "random_erasing")))
    generator = torch.Generator().manual_seed(a.seed)  # stochastic depth's masks
    data = load_dataset(a.data)
    mean, std = channel_stats(data.train.images)
    init = mv.init_params(cfg, seed=t.seed)
    names = {timm._timm_name(k): k for k in init}
    sd = {k: torch.tensor(v, requires_grad=True) for k, v in mv.to_timm(init, cfg).items()}
    groups = [{"params": [v for k, v in sd.items() if decays(names[k], init[names[k]])], "weight_decay": t.weight_decay},
              {"params": [v for k, v in sd.items() if not decays(names[k], init[names[k]])], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=t.lr)
    steps_per_epoch = math.ceil(len(data.train.labels) / t.batch_size)
    total, warmup = t.epochs * steps_per_epoch, int(round(t.warmup_epochs * steps_per_epoch))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "command.txt").write_text(" ".join(["python"] + sys.argv) + "\n")
    (out / "machine.json").write_text(json.dumps(mv.backend.machine(), indent=2) + "\n")   # torch's version included
    metrics = open(out / "metrics.jsonl", "w")
    xtest = torch.from_numpy(normalize(data.test.images, mean, std))
    ytest = torch.from_numpy(data.test.labels)
    step, elapsed = 0, 0.0
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {mv.count_params(cfg):,} parameters; {total} steps")
    for epoch in range(t.epochs):
        t0, seen, loss_sum, correct = time.perf_counter(), 0, 0.0, 0
        for index in range(steps_per_epoch):
            x, y = make_batch(data.train, t, mean, std, epoch, index, step)
            x, y = torch.from_numpy(x), torch.from_numpy(y)
            lr = mv.warmup_cosine(step, total, warmup, t.lr, t.min_lr)
            for g in opt.param_groups:
                g["lr"] = lr
            logits = torch_vit(sd, x, cfg, generator)
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
        with torch.no_grad():
            logits = torch.cat([torch_vit(sd, xtest[i:i + 500], cfg) for i in range(0, len(ytest), 500)])
            test_loss = F.cross_entropy(logits, ytest).item()  # plain cross-entropy, as minivit's trainer reports it
            test_acc = (logits.argmax(1) == ytest).double().mean().item()
        row = {"epoch": epoch + 1, "step": step, "lr": lr, "train_loss": loss_sum / seen, "train_acc": correct / seen,
               "test_loss": test_loss, "test_acc": test_acc, "images_per_s": seen / dt, "elapsed_s": elapsed}
        metrics.write(json.dumps(row) + "\n")
        metrics.flush()
        print(f"epoch {epoch + 1}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} | test loss "
              f"{test_loss:.4f} acc {test_acc:.4f} | {row['images_per_s']:.0f} img/s, {elapsed:.0f} s", flush=True)


if __name__ == "__main__":
    main()
