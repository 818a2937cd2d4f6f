"""Inductive bias against data size: a ViT and a small CNN, the same recipe, 1k to 50k CIFAR-10 images.

    python benchmarks/data_size.py --data ../shared/datasets/cifar10-jpeg.tar.gz --out runs/data-size
    cp runs/data-size/results.json benchmarks/results/data_size_cifar10.json

The paper (section 4.2, Figures 3-4) argues that a CNN's built-in locality and translation
equivariance win on little data, and that a ViT catches up and overtakes it once the data is
large enough to learn them. This runs that comparison at CIFAR scale: for each training-set
size, a class-balanced subset of the training images (the same images for both models), and
both models trained on it with one recipe (AdamW, 5% warmup then cosine, label smoothing,
clipping, random crop and flip: minivit/train/) for the same number of images through the
model (`--images-seen`), so only the number of distinct images changes, not the compute.
Only the peak learning rate is each model's own: 2e-3 for the ViT (the recipe of the 40-epoch
CIFAR-10 run in docs/results.md), 5e-3 for the CNN, which trains too slowly at 2e-3 (4 epochs
of the shipped 5,000-image subset, 1,000 test images: CNN 32.7% at 2e-3, 37.9% at 5e-3, 39.2% at
1e-2; the ViT 34.1% at 2e-3, 34.9% at 5e-3).

The models: `--preset` (default `cifar-tiny`: patch 4, dim 64, depth 4, 142K parameters) and
minivit.models.cnn.CNNConfig (three 3x3 conv-ReLU stages of 32, 64 and 128 channels with 2x2 max pools,
global average pool, linear head: 95K parameters), both minivit's own hand-written layers.

A small subset is repeated to at least `--min-epoch` images per epoch, so the test accuracy is
taken every few thousand images. During training it is measured on `--eval-images` test images;
the final figure of every run is on the whole test set. Every run has its own folder under
--out and resumes, so an interrupted experiment continues when the same command is run again.
"""
import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from minivit import ViTConfig  # noqa: E402
from minivit.machine import machine  # noqa: E402
from minivit.models.cnn import CNNConfig, count_params as cnn_params  # noqa: E402
from minivit.data import Dataset, Split, load_dataset  # noqa: E402
from minivit.atomic_files import write_text_atomic  # noqa: E402
from minivit.models.vit import count_params as vit_params  # noqa: E402
from minivit.train import TrainConfig, Trainer, evaluate  # noqa: E402
from pretrain_experiment import labelled_subset, repeated  # noqa: E402  (the same class-balanced subsets)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--preset", default="cifar-tiny")
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 50000], help="training images per run")
    p.add_argument("--images-seen", type=int, default=150_000, help="images through each model per run")
    p.add_argument("--min-epoch", type=int, default=5000)
    p.add_argument("--eval-images", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr-vit", type=float, default=2e-3, help="the ViT's peak learning rate (the 40-epoch recipe's)")
    p.add_argument("--lr-cnn", type=float, default=5e-3, help="the CNN's peak learning rate")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    data = load_dataset(a.data)
    K, n_all = len(data.classes), len(data.train.labels)
    if max(a.sizes) > n_all:
        p.error(f"--sizes: the data has only {n_all} training images")
    pick = np.sort(np.random.default_rng([a.seed, 1]).choice(len(data.test.labels),
                                                            min(a.eval_images, len(data.test.labels)), replace=False))
    quick_test = Split(data.test.images[pick], data.test.labels[pick])
    models = {"vit": ViTConfig.preset(a.preset, num_classes=K),
              "cnn": CNNConfig(image_size=data.image_shape[1], in_channels=data.image_shape[0], num_classes=K)}
    out = Path(a.out)
    results = {"command": " ".join(["python"] + sys.argv), "machine": machine(), "data": a.data, "test_images": len(data.test.labels),
               "images_seen": a.images_seen,
               "models": {"vit": {"preset": a.preset, "config": models["vit"].to_dict(),
                                  "parameters": vit_params(models["vit"])},
                          "cnn": {"config": models["cnn"].to_dict(), "parameters": cnn_params(models["cnn"])}},
               "runs": []}
    for n in a.sizes:
        subset = labelled_subset(data.train, n / n_all, a.seed)
        train, k = repeated(subset, a.min_epoch)
        epochs = max(1, round(a.images_seen / len(train.labels)))
        for name, cfg in models.items():
            tcfg = TrainConfig(epochs=epochs, batch_size=a.batch_size, lr=a.lr_vit if name == "vit" else a.lr_cnn,
                               warmup_epochs=0.05 * epochs, weight_decay=0.05, label_smoothing=0.1, seed=a.seed)
            t0 = time.perf_counter()
            tr = Trainer(cfg, tcfg, Dataset(train, quick_test, data.classes, data.name), out / f"{name}-{n}",
                         resume=True, progress=sys.stderr.isatty(), log=print, plots=False)
            tr.fit()
            if tr.interrupted:
                sys.exit(f"interrupted; run the same command again to continue from {out}")
            ev = evaluate(tr.params, cfg, data.test, tr.mean, tr.std, engine=tr.engine)
            tr.engine.close()
            row = {"model": name, "train_images": len(subset.labels), "repeats_per_epoch": k, "epochs": epochs,
                   "images_seen": epochs * len(train.labels), "test_acc": ev["accuracy"], "test_loss": ev["loss"],
                   "train_acc_last_epoch": tr.history[-1]["train_acc"], "seconds": tr.elapsed,
                   "wall_s_this_invocation": time.perf_counter() - t0, "train_config": asdict(tcfg),
                   "history": tr.history}
            results["runs"].append(row)
            print(f"{name} on {len(subset.labels)} images: test accuracy {ev['accuracy']:.4f} "
                  f"(train {row['train_acc_last_epoch']:.4f}), {tr.elapsed:.0f} s of training")
            write_text_atomic(out / "results.json", json.dumps(results, indent=1))
    print("\n  images |   ViT    CNN   (test accuracy, whole test set)")
    for n in a.sizes:
        acc = {r["model"]: r["test_acc"] for r in results["runs"] if r["train_images"] == n}
        print(f"  {n:6d} | {acc['vit']:.4f} {acc['cnn']:.4f}")


if __name__ == "__main__":
    main()
