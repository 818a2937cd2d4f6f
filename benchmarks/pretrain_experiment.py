"""Does masked patch prediction help on CIFAR-10? Pre-train without labels, then fine-tune on 1%,
10% and 100% of the labels, against the same model trained from scratch on the same labels with
the same total compute (paper section 4.6 and Appendix B.1.2, at CIFAR scale).

    python benchmarks/pretrain_experiment.py --data ../shared/datasets/cifar10-jpeg.tar.gz \\
        --out runs/pretrain-experiment
    cp runs/pretrain-experiment/results.json benchmarks/results/pretrain_cifar10.json

1. Pre-train `--preset` with masked patch prediction on all training images, labels unused
   (`--pretrain-epochs` passes).
2. Few-shot linear accuracy (paper 4.1) and a linear probe of the frozen features, at
   initialisation and after pre-training, reading the class token or the mean patch token; and how
   far each block attends (mean attention distance, paper Figure 7) before and after.
3. For each label fraction: a class-balanced labelled subset (the same images for both arms).
   "pretrained" fine-tunes the pre-trained encoder with a new zero head on `--finetune-images`
   training images' worth of steps; "scratch" trains a fresh model on the same labels for that
   many plus the pre-training's images, so both arms cost the same number of forward-backward
   passes. Both use the same recipe (AdamW, warmup, cosine, crop and flip, label smoothing).

Compute is counted in images through the model: a pre-training step costs about what a training
step costs (the encoder is the same; the colour head adds about 7% on cifar-tiny), and the
wall-clock times are recorded beside. A small labelled subset is repeated to at least
`--min-epoch` images per epoch so that the test accuracy is taken every few thousand images,
not after every 500. During training the test accuracy is measured on `--eval-images` test
images; the final figure of every run is on the whole test set.

Every run lives in its own folder under --out and resumes, so an interrupted experiment is
continued by running the same command again.
"""
import argparse
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from minivit import ViTConfig, forward, init_params, with_new_head  # noqa: E402
from minivit.machine import machine  # noqa: E402
from minivit.data import Dataset, Split, load_dataset, normalize  # noqa: E402
from minivit.tools.fewshot import features, fewshot_accuracy, linear_probe  # noqa: E402
from minivit.atomic_files import write_text_atomic  # noqa: E402
from minivit.train import TrainConfig, Trainer, evaluate  # noqa: E402
from minivit.tools.visualize import attention_maps, mean_attention_distance  # noqa: E402


def labelled_subset(split, fraction, seed):
    """A class-balanced `fraction` of a split: the same count of each class, drawn with `seed`."""
    rng = np.random.default_rng(seed)
    idx = []
    for c in np.unique(split.labels):
        members = np.flatnonzero(split.labels == c)
        idx.append(rng.choice(members, max(1, int(round(fraction * len(members)))), replace=False))
    idx = np.sort(np.concatenate(idx))
    return Split(split.images[idx], split.labels[idx])


def repeated(split, min_images):
    """The split repeated whole until it has at least `min_images` images: one 'epoch' of it."""
    k = max(1, math.ceil(min_images / len(split.labels)))
    return Split(np.concatenate([split.images] * k), np.concatenate([split.labels] * k)), k


def run(cfg, tcfg, data, out, init=None):
    """Train (or resume, or just load a finished run) and time it."""
    t = Trainer(cfg, tcfg, data, out, resume=True, progress=sys.stderr.isatty(), log=print, init=init)
    t.fit()
    if t.interrupted:
        sys.exit(f"interrupted; run the same command again to continue from {out}")
    return t


def frozen_scores(params, cfg, data, mean, std, shots, draws, seed):
    """Few-shot accuracy (paper 4.1) per shot count, and a linear probe on all training images."""
    train = features(params, data.train.images, cfg, mean, std)
    test = features(params, data.test.images, cfg, mean, std)
    K = len(data.classes)
    scores = {str(k): fewshot_accuracy(train, data.train.labels, test, data.test.labels, k, K, draws, seed=seed)[0]
              for k in shots}
    scores["probe"] = linear_probe(train, data.train.labels, test, data.test.labels, K)[0]
    return scores


def attention_distance(params, cfg, images, mean, std):
    """Mean attention distance in pixels per block (averaged over heads) on `images`: how far each
    block looks (the paper's Figure 7, right), for the encoder alone, uncorrupted."""
    params, cfg = with_new_head(params, cfg, cfg.num_classes)
    _, cache = forward(params, normalize(images, mean, std), cfg)
    return mean_attention_distance(attention_maps(cache), cfg.grid, cfg.patch_size).mean(axis=1).round(2).tolist()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--preset", default="cifar-tiny")
    p.add_argument("--out", required=True)
    p.add_argument("--pretrain-epochs", type=int, default=4)
    p.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    p.add_argument("--finetune-images", type=int, nargs="+", default=[50_000, 100_000, 200_000],
                   help="images through the model when fine-tuning, one per fraction")
    p.add_argument("--min-epoch", type=int, default=5000)
    p.add_argument("--eval-images", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5, 10, 25])
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if len(a.fractions) != len(a.finetune_images):
        p.error("give one --finetune-images per --fraction")
    out = Path(a.out)
    data = load_dataset(a.data)
    K = len(data.classes)
    pick = np.random.default_rng([a.seed, 1]).choice(len(data.test.labels), min(a.eval_images, len(data.test.labels)),
                                                   replace=False)
    quick_test = Split(data.test.images[np.sort(pick)], data.test.labels[np.sort(pick)])
    results = {"command": " ".join(["python"] + sys.argv), "machine": machine(), "preset": a.preset, "data": a.data,
               "train_images": len(data.train.labels), "test_images": len(data.test.labels), "runs": {}}

    # 1. pre-training: the training images without their labels
    cfg = ViTConfig.preset(a.preset, num_classes=K, head="mpp")
    pre_tcfg = TrainConfig(epochs=a.pretrain_epochs, batch_size=a.batch_size, lr=a.lr, warmup_epochs=0.5,
                           label_smoothing=0.0, seed=a.seed)
    pre = run(cfg, pre_tcfg, Dataset(data.train, quick_test, data.classes, data.name), out / "pretrain")
    pre_images = a.pretrain_epochs * len(data.train.labels)
    results["pretrain"] = {"train_config": asdict(pre_tcfg), "images": pre_images, "seconds": pre.elapsed,
                           "history": pre.history}
    print(f"pre-trained: {pre.elapsed:.0f} s of training, colour accuracy {pre.history[-1]['test_acc']:.3f}")

    # 2. the frozen features, before and after: the class token (which masked patch prediction never
    #    trains: its loss reads only patch tokens) and the mean of the patch tokens
    encoder = pre.params
    fresh = init_params(ViTConfig.preset(a.preset, num_classes=K), seed=a.seed)
    results["fewshot"] = {
        pool: {name: frozen_scores(params, ViTConfig.preset(a.preset, num_classes=K, head=head, pool=pool), data,
                                   pre.mean, pre.std, a.shots, a.draws, a.seed)
               for name, params, head in (("init", fresh, "classify"), ("pretrained", encoder, "mpp"))}
        for pool in ("token", "gap")}
    print("frozen features:", json.dumps(results["fewshot"]))
    sample = data.test.images[pick[:256]]
    results["attention_distance"] = {
        "init": attention_distance(fresh, ViTConfig.preset(a.preset, num_classes=K), sample, pre.mean, pre.std),
        "pretrained": attention_distance(encoder, cfg, sample, pre.mean, pre.std)}

    # 3. fine-tuning against scratch, per label fraction, at equal compute
    for fraction, ft_images in zip(a.fractions, a.finetune_images):
        labelled = labelled_subset(data.train, fraction, a.seed)
        epoch_split, reps = repeated(labelled, a.min_epoch)
        per_epoch = len(epoch_split.labels)
        arms = {"pretrained": ft_images, "scratch": ft_images + pre_images}
        for arm, images in arms.items():
            epochs = max(1, round(images / per_epoch))
            tcfg = TrainConfig(epochs=epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed)
            init, ccfg = with_new_head(encoder, cfg, K) if arm == "pretrained" else (None, ViTConfig.preset(a.preset, num_classes=K))
            name = f"{fraction:g}-{arm}"
            t = run(ccfg, tcfg, Dataset(epoch_split, quick_test, data.classes, data.name), out / name, init=init)
            final = evaluate(t.params, ccfg, data.test, t.mean, t.std)
            results["attention_distance"][name] = attention_distance(t.params, ccfg, sample, t.mean, t.std)
            results["runs"][name] = {"fraction": fraction, "labelled_images": len(labelled.labels), "repeats": reps,
                                     "arm": arm, "images": epochs * per_epoch, "epochs": epochs,
                                     "seconds": t.elapsed, "test_acc": final["accuracy"], "test_loss": final["loss"],
                                     "history": t.history}
            print(f"{name}: {len(labelled.labels)} labelled images, {epochs * per_epoch:,} images of training, "
                  f"test accuracy {final['accuracy']:.4f}")
            write_text_atomic(out / "results.json", json.dumps(results, indent=1))
    write_text_atomic(out / "results.json", json.dumps(results, indent=1))
    print(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
